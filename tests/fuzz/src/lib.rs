//! What the fuzz targets share: real keys for both ends of a connection, so
//! the fuzzer's bytes reach the record layer's parsing behind the AEAD, not
//! just the tag check in front of it.

use keyferry_record::cipher::RecordCipher;
use keyferry_record::connection::{Connection, Facts, Role};
use keyferry_record::record::{TrafficKey, TrafficKeyMaterial, xor_nonce};
use keyferry_record::{AeadAlgorithm, Direction, ProtocolVersion};

/// The six record protections the guest implements.
pub const SUITES: [(ProtocolVersion, AeadAlgorithm); 6] = [
    (ProtocolVersion::Tls13, AeadAlgorithm::Aes128Gcm),
    (ProtocolVersion::Tls13, AeadAlgorithm::Aes256Gcm),
    (ProtocolVersion::Tls13, AeadAlgorithm::ChaCha20Poly1305),
    (ProtocolVersion::Tls12, AeadAlgorithm::Aes128Gcm),
    (ProtocolVersion::Tls12, AeadAlgorithm::Aes256Gcm),
    (ProtocolVersion::Tls12, AeadAlgorithm::ChaCha20Poly1305),
];

/// The suite a fuzzer byte picks.
pub fn suite(byte: u8) -> (ProtocolVersion, AeadAlgorithm) {
    SUITES[byte as usize % SUITES.len()]
}

/// Material for one direction of a connection; `seed` tells the two
/// directions apart. Both ends build theirs from the same seed.
pub fn material(
    (version, aead): (ProtocolVersion, AeadAlgorithm),
    direction: Direction,
    seed: u8,
) -> TrafficKeyMaterial {
    match version {
        ProtocolVersion::Tls13 => TrafficKeyMaterial::from_tls13_secret(
            aead,
            direction,
            &vec![seed; aead.tls13_hash().output_len()],
            0,
            1,
        )
        .expect("a well-formed secret"),
        ProtocolVersion::Tls12 => TrafficKeyMaterial::new(
            version,
            aead,
            direction,
            &vec![seed; aead.key_len()],
            &[seed ^ 0x5a; 12],
            &[],
            0,
            1,
        ),
    }
}

/// A usable key.
pub fn key(suite: (ProtocolVersion, AeadAlgorithm), direction: Direction, seed: u8) -> TrafficKey {
    TrafficKey::from_material(material(suite, direction, seed), None).expect("valid material")
}

/// The facts of a connection the fuzz targets drive.
pub fn facts(version: ProtocolVersion, role: Role) -> Facts {
    Facts {
        role,
        version,
        suite: "fuzz".into(),
        server_name: Some("fuzz.example".into()),
        alpn: Some(b"http/1.1".to_vec()),
        peer_certificate: None,
        connection_id: 1,
    }
}

/// A server connection under test and the peer's two keys: the peer seals
/// with `.1` what the connection opens, and opens with `.2` what it seals.
pub fn server_and_peer(
    suite: (ProtocolVersion, AeadAlgorithm),
) -> (Connection, TrafficKey, TrafficKey) {
    let conn = Connection::new(
        key(suite, Direction::Seal, 1),
        key(suite, Direction::Open, 2),
        facts(suite.0, Role::Server),
    )
    .expect("matching keys");
    (
        conn,
        key(suite, Direction::Seal, 2),
        key(suite, Direction::Open, 1),
    )
}

/// A TLS 1.3 record whose inner plaintext (content, type byte, padding) is
/// exactly `inner`, protected with the key `seed` gives at `sequence`. This
/// reaches what a peer with the key can send and the record layer's own
/// sealing refuses to make: an all-zero inner plaintext, unknown inner
/// types, oversize inner plaintexts.
pub fn tls13_record(
    aead: AeadAlgorithm,
    seed: u8,
    sequence: u64,
    outer_type: u8,
    inner: &[u8],
) -> Vec<u8> {
    let m = material((ProtocolVersion::Tls13, aead), Direction::Seal, seed);
    let cipher = RecordCipher::new(aead, &m.key).expect("key length");
    let iv: [u8; 12] = m.iv[..].try_into().expect("12-byte iv");
    let len = inner.len() + 16;
    let mut record = vec![outer_type, 3, 3, (len >> 8) as u8, len as u8];
    let mut body = inner.to_vec();
    let tag = cipher
        .seal_in_place(&xor_nonce(&iv, sequence), &record[..5], &mut body)
        .expect("sealable");
    record.extend_from_slice(&body);
    record.extend_from_slice(&tag);
    record
}

/// `bytes` in pieces of `size` bytes (the last may be shorter); 0 means
/// all at once. The inputs of the byte-stream targets start with it.
pub fn pieces(size: u8, bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let size = match size {
        0 => bytes.len().max(1),
        n => n as usize,
    };
    bytes.chunks(size)
}
