//! The self-check: known-answer vectors and round trips, run inside the
//! sandbox by the component's `self-check` export (and natively by tests).

use crate::blob;
use crate::cipher;
use crate::error::{Alert, BlobError, Error, UnusableReason};
use crate::instance::Instance;
use crate::keyschedule::traffic_key_and_iv;
use crate::mac;
use crate::record::{TrafficKey, TrafficKeyMaterial};
use crate::suite::{AeadAlgorithm, ContentType, Direction, MacAlgorithm, ProtocolVersion};
use alloc::{format, string::String, string::ToString, vec, vec::Vec};
use keyferry_record::vectors as v;

pub use keyferry_record::vectors::unhex;

fn hex(s: &str) -> Vec<u8> {
    unhex(s).unwrap_or_default()
}

type Check = Result<(), String>;

/// A named check.
type NamedCheck = (&'static str, fn() -> Check);

fn ensure(cond: bool, what: &str) -> Check {
    if cond { Ok(()) } else { Err(what.to_string()) }
}

fn ok<T>(r: Result<T, Error>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Runs every check. On success returns one line per check; on failure the
/// first failing check and why.
pub fn run() -> Result<String, String> {
    let checks: [NamedCheck; 9] = [
        (
            "aes-128-gcm known answer (GCM spec test case 4)",
            aes128_kat,
        ),
        (
            "aes-256-gcm known answer (GCM spec test case 16)",
            aes256_kat,
        ),
        (
            "chacha20-poly1305 known answer (RFC 8439 2.8.2)",
            chacha_kat,
        ),
        (
            "hmac-sha256/384 known answers (RFC 4231 cases 2, 4)",
            hmac_kat,
        ),
        ("tls 1.3 key derivation (RFC 8448 section 3)", rfc8448_keys),
        ("tls 1.3 records (RFC 8448 section 3)", rfc8448_records),
        (
            "record round trips, every suite and version, with KeyUpdate",
            record_round_trips,
        ),
        ("failed open is final", failure_is_final),
        ("blob seal, import, single use, export", blob_round_trip),
    ];
    let mut report = String::new();
    for (name, check) in checks {
        check().map_err(|e| format!("FAIL {name}: {e}"))?;
        report.push_str("ok ");
        report.push_str(name);
        report.push('\n');
    }
    Ok(report)
}

fn aead_kat(
    alg: AeadAlgorithm,
    key: &str,
    nonce: &str,
    aad: &str,
    pt: &str,
    ct: &str,
    tag: &str,
) -> Check {
    let sealed = ok(
        cipher::seal(alg, &hex(key), &hex(nonce), &hex(aad), &hex(pt)),
        "seal",
    )?;
    let expected = [hex(ct), hex(tag)].concat();
    ensure(
        sealed == expected,
        "ciphertext and tag differ from the vector",
    )?;
    let opened = ok(
        cipher::open(alg, &hex(key), &hex(nonce), &hex(aad), &expected),
        "open",
    )?;
    ensure(opened == hex(pt), "plaintext differs from the vector")?;
    let mut tampered = expected;
    let last = tampered.len() - 1;
    tampered[last] ^= 0x80;
    ensure(
        cipher::open(alg, &hex(key), &hex(nonce), &hex(aad), &tampered)
            == Err(Error::Alert(Alert::BadRecordMac)),
        "a tampered tag was accepted",
    )
}

fn aes128_kat() -> Check {
    aead_kat(
        AeadAlgorithm::Aes128Gcm,
        v::GCM_TC4_KEY,
        v::GCM_TC4_IV,
        v::GCM_TC4_AAD,
        v::GCM_TC4_PT,
        v::GCM_TC4_CT,
        v::GCM_TC4_TAG,
    )
}

fn aes256_kat() -> Check {
    aead_kat(
        AeadAlgorithm::Aes256Gcm,
        v::GCM_TC16_KEY,
        v::GCM_TC16_IV,
        v::GCM_TC16_AAD,
        v::GCM_TC16_PT,
        v::GCM_TC16_CT,
        v::GCM_TC16_TAG,
    )
}

fn chacha_kat() -> Check {
    aead_kat(
        AeadAlgorithm::ChaCha20Poly1305,
        v::CHACHA_KEY,
        v::CHACHA_NONCE,
        v::CHACHA_AAD,
        v::CHACHA_PT,
        v::CHACHA_CT,
        v::CHACHA_TAG,
    )
}

fn hmac_kat() -> Check {
    let cases = [
        (
            MacAlgorithm::HmacSha256,
            v::RFC4231_2_KEY,
            v::RFC4231_2_DATA,
            v::RFC4231_2_SHA256,
        ),
        (
            MacAlgorithm::HmacSha384,
            v::RFC4231_2_KEY,
            v::RFC4231_2_DATA,
            v::RFC4231_2_SHA384,
        ),
        (
            MacAlgorithm::HmacSha256,
            v::RFC4231_4_KEY,
            v::RFC4231_4_DATA,
            v::RFC4231_4_SHA256,
        ),
        (
            MacAlgorithm::HmacSha384,
            v::RFC4231_4_KEY,
            v::RFC4231_4_DATA,
            v::RFC4231_4_SHA384,
        ),
    ];
    for (alg, key, data, tag) in cases {
        let key = ok(mac::MacKey::new(alg, &hex(key), false, 0), "mac key")?;
        ensure(
            key.compute(&hex(data)) == hex(tag),
            "tag differs from the vector",
        )?;
        ensure(
            ok(key.verify(&hex(data), &hex(tag)), "verify")?,
            "the vector's tag did not verify",
        )?;
        let mut bad = hex(tag);
        bad[0] ^= 1;
        ensure(
            !ok(key.verify(&hex(data), &bad), "verify")?,
            "a wrong tag verified",
        )?;
    }
    Ok(())
}

fn rfc8448_keys() -> Check {
    for (secret, key, iv) in [
        (
            v::RFC8448_SERVER_AP_SECRET,
            v::RFC8448_SERVER_AP_KEY,
            v::RFC8448_SERVER_AP_IV,
        ),
        (
            v::RFC8448_CLIENT_AP_SECRET,
            v::RFC8448_CLIENT_AP_KEY,
            v::RFC8448_CLIENT_AP_IV,
        ),
    ] {
        let (k, i) = ok(
            traffic_key_and_iv(AeadAlgorithm::Aes128Gcm, &hex(secret)),
            "derive",
        )?;
        ensure(
            k[..] == hex(key)[..] && i[..] == hex(iv)[..],
            "derived key or IV differs",
        )?;
    }
    Ok(())
}

fn rfc8448_key(secret: &str, direction: Direction) -> Result<TrafficKey, String> {
    let m = ok(
        TrafficKeyMaterial::from_tls13_secret(
            AeadAlgorithm::Aes128Gcm,
            direction,
            &hex(secret),
            0,
            8448,
        ),
        "material",
    )?;
    ok(TrafficKey::from_material(m, None), "key")
}

fn rfc8448_records() -> Check {
    let payload: Vec<u8> = (0u8..0x32).collect();
    // The client's first application record, sealed exactly as published.
    let mut seal = rfc8448_key(v::RFC8448_CLIENT_AP_SECRET, Direction::Seal)?;
    let record = ok(seal.seal(ContentType::ApplicationData, &payload, 0), "seal")?;
    ensure(
        record == hex(v::RFC8448_CLIENT_APPDATA_SEQ0_RECORD),
        "sealed record differs from RFC 8448",
    )?;
    // The server's NewSessionTicket (inner type handshake) then data at 1.
    let mut open = rfc8448_key(v::RFC8448_SERVER_AP_SECRET, Direction::Open)?;
    let (ty, nst) = ok(
        open.open(hex(v::RFC8448_SERVER_NST_SEQ0_RECORD)),
        "open ticket",
    )?;
    let inner = hex(v::RFC8448_SERVER_NST_SEQ0_INNER);
    ensure(
        ty == ContentType::Handshake && nst[..] == inner[..inner.len() - 1],
        "ticket record differs",
    )?;
    let (ty, data) = ok(
        open.open(hex(v::RFC8448_SERVER_APPDATA_SEQ1_RECORD)),
        "open data",
    )?;
    ensure(
        ty == ContentType::ApplicationData && data == payload,
        "data record differs",
    )
}

/// Material for a round trip: the same key for a seal and an open handle.
fn pair(version: ProtocolVersion, aead: AeadAlgorithm) -> Result<(TrafficKey, TrafficKey), String> {
    let make = |direction| -> Result<TrafficKey, String> {
        let m = match version {
            ProtocolVersion::Tls13 => {
                let secret = vec![0x5a; aead.tls13_hash().output_len()];
                ok(
                    TrafficKeyMaterial::from_tls13_secret(aead, direction, &secret, 7, 1),
                    "material",
                )?
            }
            ProtocolVersion::Tls12 => TrafficKeyMaterial::new(
                version,
                aead,
                direction,
                &vec![0x3c; aead.key_len()],
                &[0x11; 12],
                &[],
                7,
                1,
            ),
        };
        ok(TrafficKey::from_material(m, None), "key")
    };
    Ok((make(Direction::Seal)?, make(Direction::Open)?))
}

fn record_round_trips() -> Check {
    for version in [ProtocolVersion::Tls13, ProtocolVersion::Tls12] {
        for aead in AeadAlgorithm::ALL {
            let (mut seal, mut open) = pair(version, aead)?;
            for (len, padding) in [
                (0usize, 0usize),
                (1, 0),
                (1000, 32),
                (crate::record::MAX_PLAINTEXT, 0),
            ] {
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let padding = if version == ProtocolVersion::Tls13 && len < 1000 {
                    padding
                } else {
                    0
                };
                let record = ok(
                    seal.seal(ContentType::ApplicationData, &payload, padding),
                    "seal",
                )?;
                let (ty, got) = ok(open.open(record), "open")?;
                ensure(
                    ty == ContentType::ApplicationData && got == payload,
                    "round trip changed the data",
                )?;
            }
            if version == ProtocolVersion::Tls13 {
                let update = ok(seal.send_key_update(false), "send key update")?;
                let (ty, msg) = ok(open.open(update), "open key update")?;
                ensure(
                    ty == ContentType::Handshake && msg == [24, 0, 0, 1, 0],
                    "key update message",
                )?;
                ok(open.update(), "update")?;
                let record = ok(
                    seal.seal(ContentType::ApplicationData, b"after update", 0),
                    "seal",
                )?;
                let (_, got) = ok(open.open(record), "open after update")?;
                ensure(got == b"after update", "data after KeyUpdate")?;
                ensure(
                    seal.state().generation == 1 && seal.state().sequence == 1,
                    "generation and sequence",
                )?;
            } else {
                ensure(
                    seal.update() == Err(Error::WrongKeyType),
                    "TLS 1.2 refuses KeyUpdate",
                )?;
            }
        }
    }
    Ok(())
}

fn failure_is_final() -> Check {
    let (mut seal, mut open) = pair(ProtocolVersion::Tls13, AeadAlgorithm::ChaCha20Poly1305)?;
    let good = ok(seal.seal(ContentType::ApplicationData, b"one", 0), "seal")?;
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    ensure(
        open.open(bad) == Err(Error::Alert(Alert::BadRecordMac)),
        "tampered record opened",
    )?;
    ensure(
        open.open(good) == Err(Error::Unusable(UnusableReason::Failed)),
        "key usable after a failure",
    )
}

fn blob_round_trip() -> Check {
    let mut a = Instance::new(None);
    let mut b = Instance::new(None);
    let m = ok(
        TrafficKeyMaterial::from_tls13_secret(
            AeadAlgorithm::Aes128Gcm,
            Direction::Seal,
            &[7; 32],
            3,
            42,
        ),
        "material",
    )?;
    let sealed = ok(
        blob::seal_traffic_key(&a.exchange().public_key(), &m),
        "seal blob",
    )?;
    ensure(
        b.import_traffic_key(&sealed).err() == Some(Error::Blob(BlobError::WrongRecipient)),
        "blob opened in the wrong instance",
    )?;
    let mut key = ok(a.import_traffic_key(&sealed), "import")?;
    ensure(
        a.import_traffic_key(&sealed).err() == Some(Error::Blob(BlobError::Replayed)),
        "blob imported twice",
    )?;
    ok(key.seal(ContentType::ApplicationData, b"x", 0), "seal")?;
    let moved = ok(
        a.export_traffic_key(key, &b.exchange().public_key()),
        "export",
    )?;
    let key = ok(b.import_traffic_key(&moved), "import migrated")?;
    ensure(
        key.state().sequence == 4,
        "migrated key lost its sequence number",
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn self_check_passes_natively() {
        let report = super::run().unwrap();
        assert_eq!(report.lines().count(), 9, "{report}");
    }

    #[test]
    fn unhex_rejects_odd_and_non_hex() {
        assert_eq!(super::unhex("0a1"), None);
        assert_eq!(super::unhex("zz"), None);
        assert_eq!(super::unhex("0aFF"), Some(vec![10, 255]));
    }
}
