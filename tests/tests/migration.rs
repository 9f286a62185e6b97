//! Live keys and whole connections move between guest instances
//! mid-stream, exactly: the rustls peer keeps reading and writing without
//! noticing. Also host-resident keys, and the automatic AES-GCM KeyUpdate
//! against a live peer.

use std::io::Write;

use keyferry::{AeadAlgorithm, ContentType, Error, ProtocolVersion};
use keyferry_record::{BlobError, Error as RecordError};
use keyferry_tests::{
    Link, Role, all_suites, fixture, guest, guest_with_host_keys, handshake_and_export,
    handshake_into,
};

fn migrate(link: &mut Link, to: keyferry::GuestInstance) {
    let recipient = to.exchange_key().unwrap();
    let from = &mut link.guest;
    let seal = std::mem::replace(&mut link.seal, placeholder());
    let open = std::mem::replace(&mut link.open, placeholder());
    let seal_blob = from
        .export_traffic_key(seal, &recipient)
        .expect("export seal key");
    let open_blob = from
        .export_traffic_key(open, &recipient)
        .expect("export open key");
    link.seal = to.import_traffic_key(&seal_blob).expect("import seal key");
    link.open = to.import_traffic_key(&open_blob).expect("import open key");
    // The exported blobs are single use in their new home too.
    assert!(matches!(
        to.import_traffic_key(&seal_blob),
        Err(Error::Record(RecordError::Blob(BlobError::Replayed)))
    ));
    link.guest = to;
}

/// A handle that is never used: it stands in while the real ones move.
fn placeholder() -> keyferry::TrafficKeyHandle {
    let g = guest();
    let m = keyferry::TrafficKeyMaterial::from_tls13_secret(
        AeadAlgorithm::ChaCha20Poly1305,
        keyferry::Direction::Seal,
        &[1; 32],
        0,
        u64::MAX,
    )
    .unwrap();
    g.import_traffic_key(&g.seal_traffic_key(&m).unwrap())
        .unwrap()
}

#[test]
fn a_live_connection_moves_to_a_fresh_instance_mid_stream() {
    for suite in all_suites() {
        for role in [Role::Client, Role::Server] {
            let ctx = format!("{} as {role:?}", suite.name());
            let mut link = handshake_into(suite, role, guest());
            assert_eq!(link.guest_sends(b"before"), b"before", "{ctx}");
            assert_eq!(link.peer_sends(b"before").0, b"before", "{ctx}");
            if link.version == ProtocolVersion::Tls13 {
                let update = link.guest.send_key_update(&link.seal, false).unwrap();
                link.peer_receives(&update);
            }
            let before = link.guest.state(&link.seal).unwrap();

            migrate(&mut link, guest());

            let after = link.guest.state(&link.seal).unwrap();
            assert_eq!(after, before, "{ctx}: exact state moved");
            assert_eq!(
                link.guest_sends(b"after the move"),
                b"after the move",
                "{ctx}"
            );
            assert_eq!(
                link.peer_sends(b"peer after the move").0,
                b"peer after the move",
                "{ctx}"
            );
            // And once more, back to another new instance.
            migrate(&mut link, guest());
            assert_eq!(link.guest_sends(&[9; 30000]), vec![9; 30000], "{ctx}");
        }
    }
}

#[test]
fn host_resident_keys_stay_in_the_host_and_survive_export() {
    let store = fixture().engine.key_store().clone();
    for suite in all_suites() {
        let ctx = suite.name();
        let g = guest_with_host_keys();
        let (keys, peer) = handshake_and_export(suite, Role::Server, 0x4857);
        let version = keys.version;
        let seal = store
            .insert(keys.seal)
            .expect("move seal key into the store");
        let open = store
            .insert(keys.open)
            .expect("move open key into the store");
        assert!(
            seal.key.is_empty() && seal.secret.is_empty(),
            "{ctx}: the blob carries a reference only"
        );
        let seal_ref = seal.host_key_ref.unwrap();

        // A guest without the key-service import refuses it clearly.
        let plain = guest();
        assert!(
            matches!(
                plain.import_traffic_key(&plain.seal_traffic_key(&seal).unwrap()),
                Err(Error::Record(RecordError::Blob(
                    BlobError::HostKeysUnavailable
                )))
            ),
            "{ctx}"
        );

        let mut link = Link::import(g, version, &seal, &open, peer);
        assert!(link.guest.state(&link.seal).unwrap().host_resident, "{ctx}");
        assert_eq!(link.guest_sends(b"hw"), b"hw", "{ctx}");
        assert_eq!(link.peer_sends(b"hw back").0, b"hw back", "{ctx}");
        if version == ProtocolVersion::Tls13 {
            link.peer.refresh_traffic_keys().unwrap();
            assert_eq!(link.peer_sends(b"after update").0, b"after update", "{ctx}");
            assert_eq!(link.guest_sends(b"answered"), b"answered", "{ctx}");
        }

        // Exporting a host-resident key does not destroy it in the store.
        let held = store.len();
        let target = guest_with_host_keys();
        migrate(&mut link, target);
        assert_eq!(
            store.len(),
            held,
            "{ctx}: export destroyed a host-resident key"
        );
        assert_eq!(link.guest_sends(b"moved hw"), b"moved hw", "{ctx}");
        assert_eq!(
            link.peer_sends(b"moved hw back").0,
            b"moved hw back",
            "{ctx}"
        );
        assert!(store.remove(seal_ref), "{ctx}");
    }
}

/// A tampered record fails to open where the host holds the record for a
/// host-resident key, and the key is done; the peer's next record is not
/// opened with it.
#[test]
fn a_tampered_record_held_in_the_host_fails_and_ends_the_key() {
    let store = fixture().engine.key_store().clone();
    for suite in all_suites() {
        let ctx = suite.name();
        let (keys, peer) = handshake_and_export(suite, Role::Server, 0x7a4d);
        let version = keys.version;
        let seal = store.insert(keys.seal).unwrap();
        let open = store.insert(keys.open).unwrap();
        let mut link = Link::import(guest_with_host_keys(), version, &seal, &open, peer);
        assert_eq!(link.peer_sends(b"first").0, b"first", "{ctx}");
        link.peer.writer().write_all(b"second").unwrap();
        let mut wire = Vec::new();
        while link.peer.wants_write() {
            link.peer.write_tls(&mut wire).unwrap();
        }
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert!(
            matches!(
                link.guest.open(&link.open, &wire),
                Err(Error::Record(RecordError::Alert(
                    keyferry_record::Alert::BadRecordMac
                )))
            ),
            "{ctx}"
        );
        wire[last] ^= 1;
        assert!(
            link.guest.open(&link.open, &wire).is_err(),
            "{ctx}: a key that failed opened the next record"
        );
        for key in [seal, open] {
            assert!(store.remove(key.host_key_ref.unwrap()), "{ctx}");
        }
    }
}

#[test]
fn aes_gcm_keys_update_themselves_before_the_limit() {
    let store = fixture().engine.key_store().clone();
    // Software keys, then host-resident keys, whose KeyUpdate record and
    // data record are both held in the host and come out in order.
    for (suite, host_resident) in all_suites()
        .into_iter()
        .take(2)
        .flat_map(|suite| [(suite, false), (suite, true)])
    {
        let (mut keys, peer) = handshake_and_export(suite, Role::Server, 7);
        assert!(matches!(
            keys.aead,
            AeadAlgorithm::Aes128Gcm | AeadAlgorithm::Aes256Gcm
        ));
        keys.seal.auto_update_limit = 3;
        let version = keys.version;
        let (guest, seal, open) = if host_resident {
            let seal = store.insert(keys.seal).unwrap();
            let open = store.insert(keys.open).unwrap();
            (guest_with_host_keys(), seal, open)
        } else {
            (guest(), keys.seal, keys.open)
        };
        let mut link = Link::import(guest, version, &seal, &open, peer);
        assert_eq!(
            link.guest.state(&link.seal).unwrap().host_resident,
            host_resident
        );
        let start = link.guest.state(&link.seal).unwrap().sequence;
        assert!(
            start <= 3,
            "{}: rustls sent {start} records before handoff",
            suite.name()
        );
        let mut sent = Vec::new();
        for i in 0..20u8 {
            let record = link
                .guest
                .seal(&link.seal, ContentType::ApplicationData, &[i; 100], 0)
                .unwrap();
            sent.extend(link.peer_receives(&record));
        }
        assert_eq!(
            sent,
            (0..20u8).flat_map(|i| [i; 100]).collect::<Vec<_>>(),
            "{}",
            suite.name()
        );
        let state = link.guest.state(&link.seal).unwrap();
        assert!(
            state.generation >= 6,
            "{}: generation {}",
            suite.name(),
            state.generation
        );
        assert!(state.sequence <= 3, "{}", suite.name());
        if let (Some(s), Some(o)) = (seal.host_key_ref, open.host_key_ref) {
            assert!(store.remove(s) && store.remove(o));
        }
    }
}

#[test]
fn a_whole_connection_migrates_with_a_record_half_received() {
    use keyferry_tests::handoff::{configs, connect, drain, feed_peer, peer_to_plane};
    let suite = all_suites()[2];
    let configs = configs(suite);
    let (plane, _, mut peer, _) = connect(suite, Role::Server, &configs, 4096, |_| {});
    let mut plane = plane;
    let data = vec![13u8; 3000];
    assert_eq!(peer_to_plane(&mut peer, &mut plane, &data, 4096).0, data);
    // Most of a full-size record in flight when the connection moves: it
    // travels in the open blob and completes in the new instance.
    let big = vec![14u8; 16000];
    peer.writer().write_all(&big).unwrap();
    let wire = drain(&mut peer);
    let (head, tail) = wire.split_at(10_000);
    assert!(plane.receive(head).unwrap().plaintext.is_empty());
    let mut plane = plane.migrate(guest()).expect("migrate");
    assert!(
        plane.receive(tail).unwrap().plaintext[..] == big[..],
        "the split record arrives whole"
    );
    let wire = plane.send(b"from the new instance").unwrap();
    assert_eq!(
        feed_peer(&mut peer, &wire).unwrap(),
        b"from the new instance"
    );
}
