//! Session-ticket keys a fleet shares, so a client that got a ticket from
//! one `serve` process resumes with another (nginx's
//! `ssl_session_ticket_key`).
//!
//! The key file holds one or more 48-byte keys back to back: a 16-byte key
//! name, then a 32-byte ChaCha20-Poly1305 key. The first key issues
//! tickets; all of them open tickets, so a rotation prepends a new key and
//! keeps the previous one until its tickets have expired. Make one with
//! `head -c 48 /dev/urandom > ticket.key`.

use std::path::Path;
use std::sync::RwLock;

use keyferry_record::AeadAlgorithm;
use keyferry_record::cipher::{NONCE_LEN, RecordCipher, TAG_LEN};
use rustls::server::ProducesTickets;

use keyferry::error::{ConfigError, Result};

/// Bytes per key in the file.
pub const KEY_LEN: usize = 48;
const NAME_LEN: usize = 16;
/// How long a ticket is good for: 12 hours, within RFC 8446's 7 days.
const LIFETIME_SECS: u32 = 12 * 60 * 60;

/// Ticket keys; no `Debug` of the keys, no `Clone`. The set can be
/// replaced while serving ([`TicketKeys::replace`], on SIGHUP).
pub struct TicketKeys {
    keys: RwLock<Vec<TicketKey>>,
}

struct TicketKey {
    name: [u8; NAME_LEN],
    cipher: RecordCipher,
}

impl core::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("keys", &self.current().len())
            .finish_non_exhaustive()
    }
}

impl TicketKeys {
    /// Reads a key file (see the module docs). Errors name the file, never
    /// its bytes.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes =
            zeroize::Zeroizing::new(std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.into(),
                source,
            })?);
        Self::from_bytes(&bytes).ok_or_else(|| ConfigError::TicketKeys { path: path.into() }.into())
    }

    /// Keys from their bytes: a non-empty multiple of [`KEY_LEN`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(KEY_LEN) {
            return None;
        }
        let keys = bytes
            .chunks_exact(KEY_LEN)
            .map(|k| {
                let (name, key) = k.split_at(NAME_LEN);
                Some(TicketKey {
                    name: name.try_into().ok()?,
                    cipher: RecordCipher::new(AeadAlgorithm::ChaCha20Poly1305, key).ok()?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            keys: RwLock::new(keys),
        })
    }

    /// Takes the keys of `other`: new tickets use its first key, and only
    /// its keys open tickets from now on.
    pub fn replace(&self, other: TicketKeys) {
        let keys = other.keys.into_inner().unwrap_or_else(|e| e.into_inner());
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, Vec<TicketKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    /// name || nonce || ChaCha20-Poly1305(state) with the name as AAD.
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.current();
        let key = keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = key
            .cipher
            .seal_in_place(&nonce, &key.name, &mut out[start..])
            .ok()?;
        out.extend_from_slice(&tag);
        Some(out)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let (name, rest) = ticket.split_at_checked(NAME_LEN)?;
        let (nonce, rest) = rest.split_at_checked(NONCE_LEN)?;
        let (body, tag) = rest.split_at_checked(rest.len().checked_sub(TAG_LEN)?)?;
        let keys = self.current();
        let key = keys.iter().find(|k| k.name == name)?;
        let nonce: &[u8; NONCE_LEN] = nonce.try_into().ok()?;
        let mut out = body.to_vec();
        key.cipher
            .open_in_place(nonce, &key.name, &mut out, tag)
            .ok()?;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_file_still_opens_old_tickets_and_nothing_forged() {
        let old = TicketKeys::from_bytes(&[1; KEY_LEN]).unwrap();
        let ticket = old.encrypt(b"session state").unwrap();
        assert_eq!(old.decrypt(&ticket).unwrap(), b"session state");

        let mut rotated = vec![2u8; KEY_LEN];
        rotated.extend_from_slice(&[1; KEY_LEN]);
        let rotated = TicketKeys::from_bytes(&rotated).unwrap();
        assert_eq!(rotated.decrypt(&ticket).unwrap(), b"session state");
        let new_ticket = rotated.encrypt(b"newer").unwrap();
        assert!(old.decrypt(&new_ticket).is_none(), "an unknown key name");

        let mut forged = ticket.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(old.decrypt(&forged).is_none());
        for cut in 0..ticket.len() {
            assert!(old.decrypt(&ticket[..cut]).is_none(), "cut at {cut}");
        }
        // A reload to the rotated file: old tickets still open, and new
        // ones come from the new first key.
        old.replace(
            TicketKeys::from_bytes(&{
                let mut r = vec![2u8; KEY_LEN];
                r.extend_from_slice(&[1; KEY_LEN]);
                r
            })
            .unwrap(),
        );
        assert_eq!(old.decrypt(&ticket).unwrap(), b"session state");
        assert_eq!(old.encrypt(b"x").unwrap()[..NAME_LEN], [2; NAME_LEN]);
        assert!(TicketKeys::from_bytes(&[0; 47]).is_none());
        assert!(TicketKeys::from_bytes(&[]).is_none());
    }
}
