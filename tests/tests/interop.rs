//! Records sealed in the guest open in rustls, and rustls's records open in
//! the guest, for every suite, both TLS versions and both roles, with
//! KeyUpdate in each direction and close_notify.

use keyferry::{ContentType, ProtocolVersion};
use keyferry_tests::{Role, all_suites, guest, handshake_into};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn guest_and_rustls_exchange_data_in_every_suite_and_role() {
    for suite in all_suites() {
        for role in [Role::Client, Role::Server] {
            let ctx = format!("{} as {role:?}", suite.name());
            let mut link = handshake_into(suite, role, guest());

            // Guest to peer: small, empty-ish, and full-size records.
            for (len, seed) in [(1usize, 1u8), (1000, 2), (16384, 3), (40000, 4)] {
                let data = pattern(len, seed);
                assert_eq!(
                    link.guest_sends(&data),
                    data,
                    "{ctx}: guest -> peer, {len} bytes"
                );
            }
            // Peer to guest.
            for (len, seed) in [(1usize, 5u8), (5000, 6), (70000, 7)] {
                let data = pattern(len, seed);
                let (got, other) = link.peer_sends(&data);
                assert_eq!(got, data, "{ctx}: peer -> guest, {len} bytes");
                assert!(other.is_empty(), "{ctx}: unexpected records {other:?}");
            }

            if link.version == ProtocolVersion::Tls13 {
                // The peer updates its keys and requests ours (rustls always
                // sets update_requested); the guest follows and answers.
                link.peer.refresh_traffic_keys().expect("peer KeyUpdate");
                let (got, other) = link.peer_sends(b"after the peer's update");
                assert_eq!(got, b"after the peer's update", "{ctx}");
                assert_eq!(
                    other,
                    vec![ContentType::Handshake],
                    "{ctx}: one KeyUpdate seen"
                );
                assert_eq!(link.guest.state(&link.open).unwrap().generation, 1, "{ctx}");
                assert_eq!(
                    link.guest.state(&link.seal).unwrap().generation,
                    1,
                    "{ctx}: answered"
                );
                assert_eq!(
                    link.guest_sends(b"guest after answering"),
                    b"guest after answering",
                    "{ctx}"
                );

                // The guest updates and requests; rustls answers.
                let update = link.guest.send_key_update(&link.seal, true).unwrap();
                assert!(link.peer_receives(&update).is_empty(), "{ctx}");
                assert_eq!(
                    link.guest_sends(b"after the guest's update"),
                    b"after the guest's update",
                    "{ctx}"
                );
                let (got, other) = link.peer_sends(b"peer after answering");
                assert_eq!(got, b"peer after answering", "{ctx}");
                assert_eq!(
                    other,
                    vec![ContentType::Handshake],
                    "{ctx}: the peer's answer"
                );
                assert_eq!(link.guest.state(&link.seal).unwrap().generation, 2, "{ctx}");
                assert_eq!(link.guest.state(&link.open).unwrap().generation, 2, "{ctx}");
            } else {
                assert!(
                    link.guest.send_key_update(&link.seal, false).is_err(),
                    "{ctx}: no KeyUpdate in TLS 1.2"
                );
            }

            // close_notify from the guest: rustls sees a clean close.
            let close = link
                .guest
                .seal(&link.seal, ContentType::Alert, &[1, 0], 0)
                .unwrap();
            link.peer_receives(&close);
            let mut buf = [0u8; 1];
            assert_eq!(
                std::io::Read::read(&mut link.peer.reader(), &mut buf).unwrap(),
                0,
                "{ctx}: rustls reports a clean EOF after the guest's close_notify"
            );
            // close_notify from the peer: the guest opens an alert record.
            link.peer.send_close_notify();
            let (got, other) = link.peer_sends(&[]);
            assert!(got.is_empty(), "{ctx}");
            assert_eq!(
                other,
                vec![ContentType::Alert],
                "{ctx}: close_notify arrives as an alert"
            );
        }
    }
}

#[test]
fn guest_seals_tls13_padding_that_rustls_strips() {
    let suite = all_suites()[2];
    let mut link = handshake_into(suite, Role::Server, guest());
    let record = link
        .guest
        .seal(&link.seal, ContentType::ApplicationData, b"padded", 200)
        .unwrap();
    assert_eq!(record.len(), 5 + 6 + 1 + 200 + 16, "padding is on the wire");
    assert_eq!(link.peer_receives(&record), b"padded");
    let overflow = link
        .guest
        .seal(&link.seal, ContentType::ApplicationData, &[0; 16384], 1);
    assert_eq!(
        overflow.unwrap_err().alert(),
        Some(keyferry_record::Alert::RecordOverflow)
    );
}
