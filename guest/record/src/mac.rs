//! HMAC keys: CryptoAPI's MAC keys, imported from blobs and used in the guest.

use alloc::vec::Vec;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Sha256, Sha384};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::suite::MacAlgorithm;

/// The longest HMAC key a blob may carry. Longer keys are hashed by HMAC
/// anyway, so callers should hash them first.
pub const MAX_MAC_KEY_LEN: usize = 128;

/// An imported HMAC key. No `Debug`, no `Clone`: the key is zeroized on drop
/// and never leaves except sealed.
pub struct MacKey {
    pub(crate) algorithm: MacAlgorithm,
    pub(crate) key: Zeroizing<Vec<u8>>,
    pub(crate) exportable: bool,
    pub(crate) connection_id: u64,
}

impl MacKey {
    /// A MAC key from raw material, as the host seals it.
    pub fn new(
        algorithm: MacAlgorithm,
        key: &[u8],
        exportable: bool,
        connection_id: u64,
    ) -> Result<Self> {
        if key.is_empty() || key.len() > MAX_MAC_KEY_LEN {
            return Err(Error::InvalidArgument("mac key length"));
        }
        Ok(Self {
            algorithm,
            key: Zeroizing::new(key.to_vec()),
            exportable,
            connection_id,
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> MacAlgorithm {
        self.algorithm
    }

    /// Whether the key may be exported.
    pub fn exportable(&self) -> bool {
        self.exportable
    }

    /// The connection the key belongs to.
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }

    /// The full-length tag of `data`.
    pub fn compute(&self, data: &[u8]) -> Vec<u8> {
        compute(self.algorithm, &self.key, data)
    }

    /// Checks `tag` in constant time. A shorter tag is compared as a
    /// left-truncated one and must be at least half the full length.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> Result<bool> {
        let full = self.algorithm.output_len();
        if tag.len() > full || tag.len() < full / 2 {
            return Err(Error::InvalidArgument("mac tag length"));
        }
        fn check<M: Mac + KeyInit>(key: &[u8], data: &[u8], tag: &[u8], full: usize) -> bool {
            let mut mac = <M as KeyInit>::new_from_slice(key).expect("hmac takes any key length");
            mac.update(data);
            if tag.len() == full {
                mac.verify_slice(tag).is_ok()
            } else {
                mac.verify_truncated_left(tag).is_ok()
            }
        }
        Ok(match self.algorithm {
            MacAlgorithm::HmacSha256 => check::<Hmac<Sha256>>(&self.key, data, tag, full),
            MacAlgorithm::HmacSha384 => check::<Hmac<Sha384>>(&self.key, data, tag, full),
        })
    }
}

/// One-shot HMAC, for known-answer tests and the MAC key.
pub fn compute(algorithm: MacAlgorithm, key: &[u8], data: &[u8]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut mac = <M as KeyInit>::new_from_slice(key).expect("hmac takes any key length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }
    match algorithm {
        MacAlgorithm::HmacSha256 => run::<Hmac<Sha256>>(key, data),
        MacAlgorithm::HmacSha384 => run::<Hmac<Sha384>>(key, data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::unhex;
    use crate::vectors as v;

    #[test]
    fn rfc4231_case2() {
        let key = MacKey::new(MacAlgorithm::HmacSha256, &unhex(v::RFC4231_2_KEY), true, 1).unwrap();
        let data = unhex(v::RFC4231_2_DATA);
        assert_eq!(key.compute(&data), unhex(v::RFC4231_2_SHA256));
        assert!(key.verify(&data, &unhex(v::RFC4231_2_SHA256)).unwrap());
        assert!(
            key.verify(&data, &unhex(v::RFC4231_2_SHA256)[..16])
                .unwrap()
        );
        let mut bad = unhex(v::RFC4231_2_SHA256);
        bad[31] ^= 1;
        assert!(!key.verify(&data, &bad).unwrap());
        assert!(
            key.verify(&data, &bad[..8]).is_err(),
            "tags under half length are refused"
        );
        assert_eq!(
            compute(MacAlgorithm::HmacSha384, &unhex(v::RFC4231_2_KEY), &data),
            unhex(v::RFC4231_2_SHA384)
        );
    }
}
