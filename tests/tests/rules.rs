//! Every blob and record rule, broken on purpose: each gets a typed error,
//! never a trap or a panic, and the instance stays usable where the rule
//! says it should.

use keyferry::{AeadAlgorithm, ContentType, Direction, Error, ProtocolVersion, TrafficKeyMaterial};
use keyferry_record::cipher::RecordCipher;
use keyferry_record::mac::MacKey;
use keyferry_record::record::xor_nonce;
use keyferry_record::{Alert, BlobError, Error as RecordError, MacAlgorithm, UnusableReason};
use keyferry_tests::guest;

const SECRET: [u8; 32] = [0x42; 32];

fn material(direction: Direction, sequence: u64, connection_id: u64) -> TrafficKeyMaterial {
    TrafficKeyMaterial::from_tls13_secret(
        AeadAlgorithm::Aes128Gcm,
        direction,
        &SECRET,
        sequence,
        connection_id,
    )
    .unwrap()
}

fn blob_error(r: Result<impl Sized, Error>) -> BlobError {
    match r {
        Err(Error::Record(RecordError::Blob(b))) => b,
        Err(e) => panic!("expected a blob error, got {e}"),
        Ok(_) => panic!("expected a blob error, got success"),
    }
}

fn alert(r: Result<impl Sized, Error>) -> Alert {
    match r {
        Err(e) => e
            .alert()
            .unwrap_or_else(|| panic!("expected an alert, got {e}")),
        Ok(_) => panic!("expected an alert, got success"),
    }
}

#[test]
fn tampered_truncated_and_misaddressed_blobs_are_refused() {
    let g = guest();
    let blob = g
        .seal_traffic_key(&material(Direction::Seal, 0, 1))
        .unwrap();

    // Every truncation, from empty to one byte short.
    for len in 0..blob.len() {
        let e = blob_error(g.import_traffic_key(&blob[..len]));
        assert!(
            matches!(e, BlobError::Malformed | BlobError::AuthenticationFailed),
            "len {len}: {e}"
        );
    }
    // A flipped bit anywhere in the sealed part.
    for i in 22..blob.len() {
        let mut bad = blob.clone();
        bad[i] ^= 0x01;
        let e = blob_error(g.import_traffic_key(&bad));
        assert!(
            matches!(e, BlobError::AuthenticationFailed | BlobError::Malformed),
            "byte {i}: {e}"
        );
    }
    // The clear header: magic, version, kind, recipient.
    let mut bad = blob.clone();
    bad[0] ^= 1;
    assert_eq!(blob_error(g.import_traffic_key(&bad)), BlobError::Malformed);
    // The host wraps blobs for its own instances in format 2.
    assert_eq!(blob[4], 2);
    let mut newer = blob.clone();
    newer[4] = 4;
    assert_eq!(
        blob_error(g.import_traffic_key(&newer)),
        BlobError::UnsupportedVersion(4)
    );
    // A wrapped blob passed off as an HPKE one (format 1) or a worker
    // session's (format 3) names no key of this instance.
    for version in [1, 3] {
        let mut other = blob.clone();
        other[4] = version;
        assert_eq!(
            blob_error(g.import_traffic_key(&other)),
            BlobError::WrongRecipient,
            "relabelled as version {version}"
        );
    }
    let mut kind = blob.clone();
    kind[5] = 2;
    assert_eq!(
        blob_error(g.import_traffic_key(&kind)),
        BlobError::WrongKind
    );
    let mut recipient = blob.clone();
    recipient[10] ^= 1;
    assert_eq!(
        blob_error(g.import_traffic_key(&recipient)),
        BlobError::WrongRecipient
    );

    // Sealed to another instance.
    let other = guest();
    let theirs = other
        .seal_traffic_key(&material(Direction::Seal, 0, 2))
        .unwrap();
    assert_eq!(
        blob_error(g.import_traffic_key(&theirs)),
        BlobError::WrongRecipient
    );

    // After all that, the good blob still imports, once.
    let key = g.import_traffic_key(&blob).unwrap();
    assert_eq!(blob_error(g.import_traffic_key(&blob)), BlobError::Replayed);
    assert!(
        g.seal(&key, ContentType::ApplicationData, b"still works", 0)
            .is_ok()
    );
    assert!(!g.is_poisoned());
}

#[test]
fn version_1_blobs_sealed_with_hpke_still_import_once_and_only_where_addressed() {
    use keyferry_record::blob;
    let g = guest();
    let exchange = g.exchange_key().unwrap();
    let v1 =
        blob::seal_traffic_key(&exchange.public_key, &material(Direction::Seal, 5, 1)).unwrap();
    assert_eq!(v1[4], 1);
    // Another instance cannot open it, and a tampered copy fails.
    assert_eq!(
        blob_error(guest().import_traffic_key(&v1)),
        BlobError::WrongRecipient
    );
    let mut bad = v1.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert_eq!(
        blob_error(g.import_traffic_key(&bad)),
        BlobError::AuthenticationFailed
    );
    let key = g.import_traffic_key(&v1).unwrap();
    assert_eq!(g.state(&key).unwrap().sequence, 5);
    assert_eq!(blob_error(g.import_traffic_key(&v1)), BlobError::Replayed);
}

#[test]
fn mac_and_traffic_blobs_are_not_interchangeable() {
    let g = guest();
    let mac = g
        .seal_mac_key(&MacKey::new(MacAlgorithm::HmacSha256, &[7; 32], true, 1).unwrap())
        .unwrap();
    assert_eq!(blob_error(g.import_traffic_key(&mac)), BlobError::WrongKind);
    let traffic = g
        .seal_traffic_key(&material(Direction::Open, 0, 1))
        .unwrap();
    assert_eq!(blob_error(g.import_mac_key(&traffic)), BlobError::WrongKind);
    // Both still import as what they are.
    g.import_mac_key(&mac).unwrap();
    g.import_traffic_key(&traffic).unwrap();
}

/// A TLS 1.3 key and IV that its secret does not derive are refused where
/// they enter: the host will not wrap them for an instance, and the guest
/// will not import them from a blob sealed to its exchange key (which
/// another process or another instance may have made). The guest trusts
/// the host's check for blobs wrapped with its own secret.
#[test]
fn inconsistent_state_is_refused() {
    let g = guest();
    let mut m = material(Direction::Seal, 0, 1);
    m.iv[0] ^= 1; // no longer derives from the secret
    assert_eq!(blob_error(g.seal_traffic_key(&m)), BlobError::InvalidState);
    let recipient = g.exchange_key().unwrap().public_key;
    let sealed = keyferry_record::blob::seal_traffic_key(&recipient, &m).unwrap();
    assert_eq!(
        blob_error(g.import_traffic_key(&sealed)),
        BlobError::InvalidState
    );
    // The same material with its IV put back imports through both ways.
    m.iv[0] ^= 1;
    g.import_traffic_key(&keyferry_record::blob::seal_traffic_key(&recipient, &m).unwrap())
        .unwrap();
    let m = material(Direction::Open, 0, 1);
    g.import_traffic_key(&g.seal_traffic_key(&m).unwrap())
        .unwrap();
    let mut m = material(Direction::Seal, 0, 2);
    m.auto_update_limit = 0;
    assert_eq!(
        blob_error(g.import_traffic_key(&g.seal_traffic_key(&m).unwrap())),
        BlobError::InvalidState
    );
}

#[test]
fn sequence_rollback_is_refused() {
    let g = guest();
    let key = g
        .import_traffic_key(
            &g.seal_traffic_key(&material(Direction::Seal, 10, 77))
                .unwrap(),
        )
        .unwrap();
    for _ in 0..5 {
        g.seal(&key, ContentType::ApplicationData, b"x", 0).unwrap();
    }
    // A second live copy of the same key is refused outright.
    let copy = g
        .seal_traffic_key(&material(Direction::Seal, 15, 77))
        .unwrap();
    assert_eq!(blob_error(g.import_traffic_key(&copy)), BlobError::Replayed);
    g.drop_traffic_key(key).unwrap();
    // An older snapshot would reuse nonces 12..14: refused.
    let stale = g
        .seal_traffic_key(&material(Direction::Seal, 12, 77))
        .unwrap();
    assert_eq!(
        blob_error(g.import_traffic_key(&stale)),
        BlobError::SequenceRollback
    );
    // Where the key left off is fine.
    let fresh = g
        .seal_traffic_key(&material(Direction::Seal, 15, 77))
        .unwrap();
    let key = g.import_traffic_key(&fresh).unwrap();
    assert_eq!(g.state(&key).unwrap().sequence, 15);
}

#[test]
fn a_key_relabelled_with_another_connection_id_is_still_the_same_key() {
    let g = guest();
    let key = g
        .import_traffic_key(
            &g.seal_traffic_key(&material(Direction::Seal, 0, 77))
                .unwrap(),
        )
        .unwrap();
    for _ in 0..5 {
        g.seal(&key, ContentType::ApplicationData, b"x", 0).unwrap();
    }
    // The same key and IV claiming to be another connection: while the
    // first handle lives, a second live copy; after it, a rollback to 0.
    let relabelled = material(Direction::Seal, 0, 78);
    assert_eq!(
        blob_error(g.import_traffic_key(&g.seal_traffic_key(&relabelled).unwrap())),
        BlobError::Replayed
    );
    g.drop_traffic_key(key).unwrap();
    assert_eq!(
        blob_error(g.import_traffic_key(&g.seal_traffic_key(&relabelled).unwrap())),
        BlobError::SequenceRollback
    );
}

#[test]
fn use_after_export_is_an_error_not_a_crash() {
    let g = guest();
    let key = g
        .import_traffic_key(
            &g.seal_traffic_key(&material(Direction::Seal, 0, 5))
                .unwrap(),
        )
        .unwrap();
    let stale = key.dangerous_duplicate();
    let target = guest();
    let blob = g
        .export_traffic_key(key, &target.exchange_key().unwrap())
        .unwrap();
    assert!(!blob.is_empty());
    let r = g.seal(&stale, ContentType::ApplicationData, b"after export", 0);
    assert!(r.is_err(), "a consumed handle must not seal");
    // Other instances are unaffected.
    let other = guest();
    assert!(other.self_check().unwrap().contains("ok"));
}

#[test]
fn non_exportable_keys_cannot_be_exported() {
    let g = guest();
    let mut m = material(Direction::Seal, 0, 9);
    m.exportable = false;
    let key = g
        .import_traffic_key(&g.seal_traffic_key(&m).unwrap())
        .unwrap();
    assert!(!g.state(&key).unwrap().exportable);
    let target = guest().exchange_key().unwrap();
    match g.export_traffic_key(key, &target) {
        Err(Error::Record(RecordError::NotExportable)) => {}
        other => panic!("expected not-exportable, got {:?}", other.map(|b| b.len())),
    }
    let mac = g
        .seal_mac_key(&MacKey::new(MacAlgorithm::HmacSha384, &[1; 48], false, 9).unwrap())
        .unwrap();
    let mac = g.import_mac_key(&mac).unwrap();
    assert!(matches!(
        g.export_mac_key(mac, &target),
        Err(Error::Record(RecordError::NotExportable))
    ));
    assert!(!g.is_poisoned());
}

/// Seals an arbitrary TLS 1.3 inner plaintext with the test key, to build
/// records a well-behaved sealer would never make.
fn raw_tls13(sequence: u64, outer_type: u8, inner: &[u8]) -> Vec<u8> {
    let m = material(Direction::Seal, 0, 0);
    let cipher = RecordCipher::new(AeadAlgorithm::Aes128Gcm, &m.key).unwrap();
    let iv: [u8; 12] = m.iv[..].try_into().unwrap();
    let len = (inner.len() + 16) as u16;
    let mut record = vec![outer_type, 3, 3];
    record.extend_from_slice(&len.to_be_bytes());
    let header = record.clone();
    let mut body = inner.to_vec();
    let tag = cipher
        .seal_in_place(&xor_nonce(&iv, sequence), &header, &mut body)
        .unwrap();
    record.extend(body);
    record.extend(tag);
    record
}

fn open_key(g: &mut keyferry::GuestInstance, connection_id: u64) -> keyferry::TrafficKeyHandle {
    g.import_traffic_key(
        &g.seal_traffic_key(&material(Direction::Open, 0, connection_id))
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn illegal_records_raise_the_rfc_alerts_and_are_final() {
    let cases: Vec<(&str, Vec<u8>, Alert)> = vec![
        (
            "protected change_cipher_spec",
            raw_tls13(0, 23, &[1, 20]),
            Alert::UnexpectedMessage,
        ),
        (
            "unknown inner type",
            raw_tls13(0, 23, b"x\x63"),
            Alert::UnexpectedMessage,
        ),
        (
            "all-zero inner plaintext",
            raw_tls13(0, 23, &[0; 20]),
            Alert::UnexpectedMessage,
        ),
        (
            "empty handshake",
            raw_tls13(0, 23, &[22]),
            Alert::UnexpectedMessage,
        ),
        (
            "empty alert",
            raw_tls13(0, 23, &[21, 0, 0]),
            Alert::UnexpectedMessage,
        ),
        (
            "outer type not application_data",
            raw_tls13(0, 22, b"hi\x17"),
            Alert::UnexpectedMessage,
        ),
        (
            "inner plaintext over 2^14+1",
            raw_tls13(0, 23, &[[0x61; 16385].as_slice(), &[23]].concat()),
            Alert::RecordOverflow,
        ),
        (
            "ciphertext over 2^14+256",
            {
                let mut r = vec![23, 3, 3];
                r.extend_from_slice(&((16384 + 257) as u16).to_be_bytes());
                r.extend(vec![0; 16384 + 257]);
                r
            },
            Alert::RecordOverflow,
        ),
        (
            "length field disagrees",
            {
                let mut r = raw_tls13(0, 23, b"ok\x17");
                r.push(0);
                r
            },
            Alert::DecodeError,
        ),
        ("short header", vec![23, 3], Alert::DecodeError),
        (
            "tampered tag",
            {
                let mut r = raw_tls13(0, 23, b"ok\x17");
                let n = r.len();
                r[n - 1] ^= 1;
                r
            },
            Alert::BadRecordMac,
        ),
        (
            "wrong sequence number",
            raw_tls13(1, 23, b"ok\x17"),
            Alert::BadRecordMac,
        ),
    ];
    for (i, (what, record, expected)) in cases.into_iter().enumerate() {
        // Every case uses the same key, so each gets its own instance: one
        // instance holds one live copy of a key.
        let mut g = guest();
        let key = open_key(&mut g, 1000 + i as u64);
        assert_eq!(alert(g.open(&key, &record)), expected, "{what}");
        // Failure is final: even a valid record no longer opens.
        let good = raw_tls13(0, 23, b"ok\x17");
        match g.open(&key, &good) {
            Err(Error::Record(RecordError::Unusable(UnusableReason::Failed))) => {}
            other => panic!(
                "{what}: key still usable after a failure: {:?}",
                other.map(|r| r.1)
            ),
        }
    }
    // A valid record with padding opens.
    let mut g = guest();
    let key = open_key(&mut g, 2000);
    let (ty, payload) = g
        .open(&key, &raw_tls13(0, 23, b"data\x17\0\0\0\0"))
        .unwrap();
    assert_eq!(
        (ty, payload.as_slice()),
        (ContentType::ApplicationData, &b"data"[..])
    );
    assert!(!g.is_poisoned());
}

#[test]
fn oversize_and_illegal_seals_are_refused() {
    let g = guest();
    let key = g
        .import_traffic_key(
            &g.seal_traffic_key(&material(Direction::Seal, 0, 3))
                .unwrap(),
        )
        .unwrap();
    assert_eq!(
        alert(g.seal(&key, ContentType::ApplicationData, &[0; 16385], 0)),
        Alert::RecordOverflow
    );
    assert_eq!(
        alert(g.seal(&key, ContentType::ChangeCipherSpec, &[1], 0)),
        Alert::UnexpectedMessage
    );
    assert_eq!(
        alert(g.seal(&key, ContentType::Handshake, &[], 0)),
        Alert::UnexpectedMessage
    );
    // Refusing to seal does not burn the key.
    assert!(
        g.seal(&key, ContentType::ApplicationData, &[0; 16384], 0)
            .is_ok()
    );
    // Wrong direction is its own error.
    assert!(matches!(
        g.open(&key, &[23, 3, 3, 0, 0]),
        Err(Error::Record(RecordError::WrongKeyType))
    ));
}

#[test]
fn sequence_numbers_never_wrap() {
    // ChaCha20-Poly1305: no automatic KeyUpdate resets the sequence first.
    let g = guest();
    let m = TrafficKeyMaterial::from_tls13_secret(
        AeadAlgorithm::ChaCha20Poly1305,
        Direction::Seal,
        &SECRET,
        u64::MAX - 2,
        4,
    )
    .unwrap();
    let key = g
        .import_traffic_key(&g.seal_traffic_key(&m).unwrap())
        .unwrap();
    assert!(
        g.seal(&key, ContentType::ApplicationData, b"last", 0)
            .is_ok()
    );
    assert!(matches!(
        g.seal(&key, ContentType::ApplicationData, b"wrap", 0),
        Err(Error::Record(RecordError::Unusable(
            UnusableReason::Exhausted
        )))
    ));
}

#[test]
fn tls12_aes_gcm_stops_at_its_record_limit() {
    let g = guest();
    let mut m = TrafficKeyMaterial::new(
        ProtocolVersion::Tls12,
        AeadAlgorithm::Aes128Gcm,
        Direction::Seal,
        &[1; 16],
        &[2; 12],
        &[],
        0,
        6,
    );
    m.auto_update_limit = 3;
    let key = g
        .import_traffic_key(&g.seal_traffic_key(&m).unwrap())
        .unwrap();
    for _ in 0..2 {
        g.seal(&key, ContentType::ApplicationData, b"x", 0).unwrap();
    }
    let exhausted = |r: Result<Vec<u8>, Error>| {
        matches!(
            r,
            Err(Error::Record(RecordError::Unusable(
                UnusableReason::Exhausted
            )))
        )
    };
    assert!(exhausted(g.seal(
        &key,
        ContentType::ApplicationData,
        b"x",
        0
    )));
    // The last record is kept for close_notify, so the peer sees a clean
    // end rather than a truncation; after it, nothing.
    g.seal(&key, ContentType::Alert, &[1, 0], 0)
        .expect("close_notify fits in the reserved record");
    assert!(exhausted(g.seal(&key, ContentType::Alert, &[1, 0], 0)));
}
