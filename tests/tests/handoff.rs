//! The host runs the handshake, hands the connection's data plane to a
//! guest, and nothing is lost or duplicated: against a live rustls peer, in
//! both roles, both TLS versions and every suite.

use std::io::Write;
use std::sync::Arc;

use keyferry::dataplane::DataPlane;
use keyferry::handshake::Handshake;
use keyferry_record::Alert;
use keyferry_record::connection::Closed;
use keyferry_tests::handoff::{configs, connect, drain, feed_peer, peer_to_plane, run};
use keyferry_tests::{Role, all_suites, guest};
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

#[test]
fn handshake_handoff_and_data_in_every_suite_and_role() {
    for suite in all_suites() {
        let configs = configs(suite);
        for role in [Role::Client, Role::Server] {
            let ctx = format!("{} as {role:?}", suite.name());
            let (mut plane, first, mut peer, _) = connect(suite, role, &configs, 4096, |_| {});
            assert!(first.plaintext.is_empty(), "{ctx}");
            if role == Role::Client && suite.version == keyferry::ProtocolVersion::Tls13 {
                // The server's tickets arrive after the handoff, through the guest.
                let (_, d) = peer_to_plane(&mut peer, &mut plane, &[], 4096);
                assert_eq!(
                    d.tickets, 2,
                    "{ctx}: tickets reach the host's resumption store"
                );
            }
            let facts = plane.facts().clone();
            assert_eq!(facts.suite, suite.name(), "{ctx}");
            if role == Role::Server {
                assert_eq!(
                    facts.server_name.as_deref(),
                    Some("localhost"),
                    "{ctx}: SNI reaches the guest"
                );
            } else {
                assert!(
                    facts.peer_certificate.is_some(),
                    "{ctx}: the server certificate's subject"
                );
            }

            // Both ways.
            let data = pattern(100_000, 1);
            let wire = plane.send(&data).unwrap();
            assert_eq!(
                feed_peer(&mut peer, &wire).unwrap(),
                data,
                "{ctx}: plane -> peer"
            );
            let data = pattern(70_000, 2);
            assert_eq!(
                peer_to_plane(&mut peer, &mut plane, &data, 4096).0,
                data,
                "{ctx}: peer -> plane"
            );

            if suite.version == keyferry::ProtocolVersion::Tls13 {
                // Peer KeyUpdate with update_requested: the guest answers.
                peer.refresh_traffic_keys().unwrap();
                let data = pattern(20_000, 3);
                assert_eq!(
                    peer_to_plane(&mut peer, &mut plane, &data, 4096).0,
                    data,
                    "{ctx}: after peer update"
                );
                let data = pattern(5_000, 4);
                let wire = plane.send(&data).unwrap();
                assert_eq!(
                    feed_peer(&mut peer, &wire).unwrap(),
                    data,
                    "{ctx}: after our answer"
                );
                let (seal, open) = plane.key_states().unwrap();
                assert_eq!(
                    (seal.generation, open.generation),
                    (1, 1),
                    "{ctx}: peer update applied and answered"
                );
                // Our KeyUpdate request: rustls answers without
                // update_requested, and the guest applies it without
                // answering again.
                let update = plane.key_update(true).unwrap();
                assert!(feed_peer(&mut peer, &update).unwrap().is_empty(), "{ctx}");
                let data = pattern(3_000, 5);
                let (got, d) = peer_to_plane(&mut peer, &mut plane, &data, 4096);
                assert_eq!(got, data, "{ctx}: after the peer's answer");
                assert!(d.closed.is_none(), "{ctx}");
                let (seal, open) = plane.key_states().unwrap();
                assert_eq!(
                    (seal.generation, open.generation),
                    (2, 2),
                    "{ctx}: no answer to an answer"
                );
            }

            // close_notify from the peer is a clean end.
            peer.send_close_notify();
            let (got, d) = peer_to_plane(&mut peer, &mut plane, &[], 4096);
            assert!(got.is_empty());
            assert_eq!(d.closed, Some(Closed::CloseNotify), "{ctx}");
            let close = plane.close().unwrap();
            assert!(close.done, "{ctx}");
            feed_peer(&mut peer, &close.to_send).unwrap();
        }
    }
}

#[test]
fn eof_without_close_notify_is_truncation() {
    let suite = all_suites()[2];
    let configs = configs(suite);
    let (mut plane, _, mut peer, _) = connect(suite, Role::Server, &configs, 4096, |_| {});
    let data = pattern(1000, 9);
    assert_eq!(peer_to_plane(&mut peer, &mut plane, &data, 7).0, data);
    let d = plane.end_of_stream().unwrap();
    assert_eq!(
        d.closed,
        Some(Closed::Truncated),
        "EOF without close_notify is never a clean close"
    );
}

#[test]
fn data_in_the_same_flight_as_finished_arrives_exactly_once() {
    // TLS 1.3: the client may send data right behind its Finished. (A TLS
    // 1.2 client must wait for the server's Finished, which comes last.)
    for suite in all_suites()
        .into_iter()
        .filter(|s| s.version == keyferry::ProtocolVersion::Tls13)
    {
        let configs = configs(suite);
        // The client (peer) writes as soon as its handshake completes, so
        // its Finished and its first data travel together.
        let early = pattern(30_000, 5);
        let (mut plane, first, mut peer, _) =
            connect(suite, Role::Server, &configs, 100_000, |peer| {
                peer.writer().write_all(&early).unwrap();
            });
        let mut got = first.plaintext.to_vec();
        let (more, _) = peer_to_plane(&mut peer, &mut plane, b" and after", 4096);
        got.extend(more);
        let expected = [early.as_slice(), b" and after"].concat();
        assert!(
            got == expected,
            "{}: {} bytes arrived, {} sent",
            suite.name(),
            got.len(),
            expected.len()
        );
    }
}

#[test]
fn half_rtt_data_from_a_server_reaches_the_guest_client_once() {
    let suite = all_suites()[0];
    let c = configs(suite);
    let mut server_config = (*c.server).clone();
    server_config.send_half_rtt_data = true;
    let server_config = Arc::new(server_config);
    let mut peer: rustls::Connection = rustls::ServerConnection::new(server_config).unwrap().into();
    let half_rtt = pattern(20_000, 6);
    peer.writer().write_all(&half_rtt).unwrap();
    let hs = Handshake::client(&c.client, ServerName::try_from("localhost").unwrap(), 3).unwrap();
    let handoff = run(hs, &mut peer, 1_000_000, |_| {});
    let (mut plane, first) = DataPlane::new(guest(), handoff).unwrap();
    let mut got = first.plaintext.to_vec();
    let (more, _) = peer_to_plane(&mut peer, &mut plane, b"!", 4096);
    got.extend(more);
    assert_eq!(got, [half_rtt.as_slice(), b"!"].concat());
}

#[test]
fn one_byte_at_a_time_and_random_splits_give_the_same_bytes() {
    let suite = all_suites()[0];
    let configs = configs(suite);
    // The whole handshake one byte at a time, then data in odd splits.
    let (mut plane, _, mut peer, _) = connect(suite, Role::Server, &configs, 1, |_| {});
    let data = pattern(50_000, 8);
    let mut expected = Vec::new();
    let mut seed = 0x9e3779b9u32;
    let mut got = Vec::new();
    for chunk in data.chunks(7000) {
        peer.writer().write_all(chunk).unwrap();
        expected.extend_from_slice(chunk);
        let wire = drain(&mut peer);
        let mut rest = &wire[..];
        while !rest.is_empty() {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let n = (seed as usize % 300 + 1).min(rest.len());
            got.extend_from_slice(&plane.receive(&rest[..n]).unwrap().plaintext);
            rest = &rest[n..];
        }
    }
    assert_eq!(got, expected);
}

#[test]
fn sixty_four_mib_each_way_with_automatic_key_updates() {
    let suite = all_suites()[0]; // TLS 1.3 AES-128-GCM: auto KeyUpdate applies
    let configs = configs(suite);
    let mut peer: rustls::Connection = rustls::ClientConnection::new(
        configs.client.clone(),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap()
    .into();
    let hs = Handshake::server(&configs.server, 64).unwrap();
    let mut handoff = run(hs, &mut peer, 1 << 20, |_| {});
    handoff.keys.seal.auto_update_limit = 1000;
    let (mut plane, _) = DataPlane::new(guest(), handoff).unwrap();
    const TOTAL: usize = 64 << 20;
    let block = pattern(1 << 20, 11);

    let (mut sent, mut received) = (Sha256::new(), Sha256::new());
    let mut n = 0;
    while n < TOTAL {
        let wire = plane.send(&block).unwrap();
        sent.update(&block);
        received.update(feed_peer(&mut peer, &wire).unwrap());
        n += block.len();
    }
    assert_eq!(
        sent.finalize(),
        received.finalize(),
        "64 MiB guest -> rustls, byte-exact"
    );
    let (seal, _) = plane.key_states().unwrap();
    assert!(
        seal.generation >= 4,
        "4096 records at 1000 per generation: {} updates",
        seal.generation
    );

    let (mut sent, mut received) = (Sha256::new(), Sha256::new());
    let mut n = 0;
    while n < TOTAL {
        sent.update(&block);
        let (got, _) = peer_to_plane(&mut peer, &mut plane, &block, 1 << 20);
        received.update(&got);
        n += block.len();
    }
    assert_eq!(
        sent.finalize(),
        received.finalize(),
        "64 MiB rustls -> guest, byte-exact"
    );
}

#[test]
fn a_ticket_that_arrived_through_the_guest_resumes_the_next_connection() {
    let suite = all_suites()[2];
    let configs = configs(suite);
    let (mut plane, _, mut peer, resumed) = connect(suite, Role::Client, &configs, 4096, |_| {});
    assert!(!resumed);
    let (_, d) = peer_to_plane(&mut peer, &mut plane, &[], 4096);
    assert!(
        d.tickets >= 1,
        "the server's tickets went through the guest to the host"
    );
    let (_, _, _, resumed) = connect(suite, Role::Client, &configs, 4096, |_| {});
    assert!(
        resumed,
        "the next connection resumed with a ticket the guest delivered"
    );
}

#[test]
fn a_tampered_record_ends_only_that_connection_with_bad_record_mac() {
    let suite = all_suites()[1];
    let configs = configs(suite);
    let (mut victim, _, mut victim_peer, _) = connect(suite, Role::Server, &configs, 4096, |_| {});
    let (mut other, _, mut other_peer, _) = connect(suite, Role::Server, &configs, 4096, |_| {});

    victim_peer.writer().write_all(b"will be tampered").unwrap();
    let mut wire = drain(&mut victim_peer);
    let last = wire.len() - 1;
    wire[last] ^= 0x40;
    let d = victim.receive(&wire).unwrap();
    assert_eq!(
        d.closed,
        Some(Closed::LocalAlert(Alert::BadRecordMac)),
        "the host learns why"
    );
    assert!(d.plaintext.is_empty());
    let err = feed_peer(&mut victim_peer, &d.to_send).unwrap_err();
    assert_eq!(
        err,
        rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac),
        "the peer got the alert"
    );

    // The other connection, and the host, carry on.
    let data = pattern(10_000, 12);
    assert_eq!(
        peer_to_plane(&mut other_peer, &mut other, &data, 4096).0,
        data
    );
    let wire = other.send(b"still here").unwrap();
    assert_eq!(feed_peer(&mut other_peer, &wire).unwrap(), b"still here");
}

#[test]
fn client_authentication_facts_reach_the_guest() {
    use keyferry::tls::{ServerVerification, TlsOptions};
    let options = TlsOptions::default();
    let server_id = keyferry_server::certificate::self_signed(&["localhost".into()]).unwrap();
    let client_id =
        keyferry_server::certificate::self_signed(&["client.keyferry.test".into()]).unwrap();
    let mut client_roots = rustls::RootCertStore::empty();
    client_roots.add(client_id.chain()[0].clone()).unwrap();
    let server = Arc::new(
        options
            .clone()
            .with_client_verification(client_roots)
            .server_config(&server_id)
            .unwrap(),
    );
    let client = Arc::new(
        options
            .clone()
            .with_client_identity(Arc::new(client_id))
            .client_config(ServerVerification::DangerousNone)
            .unwrap(),
    );
    let mut peer: rustls::Connection =
        rustls::ClientConnection::new(client, ServerName::try_from("localhost").unwrap())
            .unwrap()
            .into();
    let handoff = run(
        Handshake::server(&server, 77).unwrap(),
        &mut peer,
        4096,
        |_| {},
    );
    let certificate = handoff
        .facts
        .peer_certificate
        .clone()
        .expect("the client's certificate");
    assert!(certificate.subject.starts_with("CN="), "{certificate:?}");
    assert!(!certificate.serial.is_empty() && certificate.sha256.len() == 95);
    let (mut plane, _) = DataPlane::new(guest(), handoff).unwrap();
    assert_eq!(plane.facts().peer_certificate.as_ref(), Some(&certificate));
    let wire = plane.send(b"authenticated").unwrap();
    assert_eq!(feed_peer(&mut peer, &wire).unwrap(), b"authenticated");

    // Without a client certificate the handshake fails with an alert, and
    // the error names the problem.
    let anonymous = Arc::new(
        options
            .client_config(ServerVerification::DangerousNone)
            .unwrap(),
    );
    let mut peer: rustls::Connection =
        rustls::ClientConnection::new(anonymous, ServerName::try_from("localhost").unwrap())
            .unwrap()
            .into();
    let mut hs = Handshake::server(&server, 78).unwrap();
    let mut failed = None;
    for _ in 0..10 {
        let wire = drain(&mut peer);
        hs.feed(&wire).unwrap();
        match hs.advance() {
            Ok(_) => {
                let _ = feed_peer(&mut peer, &hs.take_outgoing());
            }
            Err(e) => {
                let alert = hs.take_outgoing();
                assert!(!alert.is_empty(), "the client is told why");
                failed = Some(e.to_string());
                break;
            }
        }
    }
    assert!(
        failed
            .expect("the handshake must fail")
            .contains("certificate"),
        "typed handshake error"
    );
}

#[test]
fn blocking_transport_over_real_tcp() {
    use std::io::Read;
    let suite = all_suites()[2];
    let c = configs(suite);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_config = c.server.clone();
    let server = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(server_config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).unwrap();
        tls.write_all(&buf[..n].iter().rev().copied().collect::<Vec<_>>())
            .unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
    });
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    let hs = Handshake::client(&c.client, ServerName::try_from("localhost").unwrap(), 5).unwrap();
    let handoff = keyferry_server::transport::handshake(&mut sock, hs).unwrap();
    let (mut plane, first) = DataPlane::new(guest(), handoff).unwrap();
    sock.write_all(&first.to_send).unwrap();
    sock.write_all(&plane.send(b"blocking").unwrap()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.read(&mut buf).unwrap();
        let d = if n == 0 {
            plane.end_of_stream().unwrap()
        } else {
            plane.receive(&buf[..n]).unwrap()
        };
        got.extend_from_slice(&d.plaintext);
        sock.write_all(&d.to_send).unwrap();
        if d.closed.is_some() {
            assert_eq!(d.closed, Some(Closed::CloseNotify));
            break;
        }
    }
    assert_eq!(got, b"gnikcolb");
    server.join().unwrap();
}

#[test]
fn an_oversize_record_during_the_handshake_gets_an_alert() {
    let c = configs(all_suites()[0]);
    for header in [[22u8, 3, 1, 0x48, 0x01], [22, 3, 1, 0xff, 0xff]] {
        let mut hs = Handshake::server(&c.server, 90).unwrap();
        hs.feed(&header).unwrap();
        let err = hs.advance().expect_err("an oversize record is refused");
        let alert = hs.take_outgoing();
        assert_eq!(
            alert.first(),
            Some(&21),
            "the peer is sent an alert record ({err})"
        );
    }
}

#[test]
fn a_buffered_rustls_connection_exports_the_bytes_it_has_not_processed() {
    // rustls's buffered connection drops at extraction what its deframer
    // still holds. `ExportableConnection` shows it nothing past the
    // handshake, so the records the peer wrote as soon as its own handshake
    // completed (behind its Finished, or behind a TLS 1.3 server's tickets)
    // and a record cut short all reach the guest.
    use keyferry::export::{ExportableConnection, SecretLog};
    use keyferry_tests::{Link, client_config, server_config, split_records};

    for suite in all_suites() {
        for role in [Role::Client, Role::Server] {
            let client_log = Arc::new(SecretLog::new());
            let server_log = Arc::new(SecretLog::new());
            let client = rustls::ClientConnection::new(
                client_config(suite, client_log.clone()),
                ServerName::try_from("localhost").unwrap(),
            )
            .unwrap();
            let server =
                rustls::ServerConnection::new(server_config(suite, server_log.clone())).unwrap();
            let (mut ours, mut peer, log): (ExportableConnection, rustls::Connection, _) =
                match role {
                    Role::Client => (ExportableConnection::new(client), server.into(), client_log),
                    Role::Server => (ExportableConnection::new(server), client.into(), server_log),
                };
            let data = pattern(40_000, 9);
            let mut held_back = Vec::new();
            while ours.is_handshaking() || ours.wants_write() || peer.wants_write() {
                let mut wire = Vec::new();
                while ours.wants_write() {
                    ours.write_tls(&mut wire).unwrap();
                }
                let mut rest = &wire[..];
                while !rest.is_empty() {
                    peer.read_tls(&mut rest).unwrap();
                    peer.process_new_packets().unwrap();
                }
                let writes_now = !peer.is_handshaking() && held_back.is_empty();
                if writes_now {
                    peer.writer().write_all(&data).unwrap();
                }
                let mut wire = Vec::new();
                while peer.wants_write() {
                    peer.write_tls(&mut wire).unwrap();
                }
                if writes_now {
                    held_back = wire.split_off(wire.len() - 7);
                }
                let mut rest = &wire[..];
                while !rest.is_empty() {
                    ours.read_tls(&mut rest).unwrap();
                    ours.process_new_packets().unwrap();
                }
            }
            assert_eq!(held_back.len(), 7, "{} {role:?}", suite.name());
            let keys = ours.dangerous_export_keys(&log, 11).unwrap();
            let mut link = Link::import(guest(), keys.version, &keys.seal, &keys.open, peer);
            drop(keys);
            let (plaintext, mut ciphertext) = link.guest.take_buffered(&link.open).unwrap();
            assert!(
                plaintext.is_empty() && ciphertext.len() > data.len(),
                "{} {role:?}: {} bytes of ciphertext buffered",
                suite.name(),
                ciphertext.len()
            );
            ciphertext.extend(held_back);
            let mut got = Vec::new();
            for record in split_records(&ciphertext) {
                match link.guest.open(&link.open, &record).unwrap() {
                    (keyferry::ContentType::ApplicationData, payload) => got.extend(payload),
                    (keyferry::ContentType::Handshake, ticket) => assert_eq!(ticket[0], 4),
                    (ty, _) => panic!("{ty:?}"),
                }
            }
            assert!(
                got == data,
                "{} {role:?}: {} bytes",
                suite.name(),
                got.len()
            );
            // The guest's key is where the peer's is: it opens what comes next.
            let (more, _) = link.peer_sends(b"next");
            assert_eq!(more, b"next");
        }
    }
}
