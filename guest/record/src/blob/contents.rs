//! What every blob carries once opened, the same in every format: the
//! blob id, the connection id, the flags, and the key's state. Buffers
//! that hold a key are sized exactly and never grow, so no unwiped copy is
//! ever freed.

use alloc::vec::Vec;
use zeroize::Zeroizing;

use super::MAX_BUFFERED;
use crate::error::{BlobError, Error, Result};
use crate::mac::MacKey;
use crate::record::TrafficKeyMaterial;
use crate::suite::{AeadAlgorithm, Direction, MacAlgorithm, ProtocolVersion};

const FLAG_EXPORTABLE: u8 = 1;
const FLAG_HOST_RESIDENT: u8 = 2;

/// The clear contents of a traffic-key blob. The buffer is sized exactly
/// and never grows: a reallocation would free a block holding the key, IV
/// and secret without wiping it.
pub(super) fn traffic_key_contents(
    m: &TrafficKeyMaterial,
    blob_id: &[u8; 16],
) -> Result<Zeroizing<Vec<u8>>> {
    let len = COMMON_LEN
        + 3
        + 4
        + 8
        + 8
        + 8
        + (1 + m.key.len())
        + (1 + m.iv.len())
        + (1 + m.secret.len())
        + (4 + m.buffered_plaintext.len())
        + (4 + m.buffered_ciphertext.len());
    let mut w = Zeroizing::new(Vec::with_capacity(len));
    put_common(
        &mut w,
        blob_id,
        m.connection_id,
        m.exportable,
        m.host_key_ref.is_some(),
    );
    w.push(m.version.code());
    w.push(m.aead.code());
    w.push(m.direction.code());
    w.extend_from_slice(&m.generation.to_be_bytes());
    w.extend_from_slice(&m.sequence.to_be_bytes());
    w.extend_from_slice(&m.auto_update_limit.to_be_bytes());
    w.extend_from_slice(&m.host_key_ref.unwrap_or(0).to_be_bytes());
    put_short(&mut w, &m.key)?;
    put_short(&mut w, &m.iv)?;
    put_short(&mut w, &m.secret)?;
    put_long(&mut w, &m.buffered_plaintext)?;
    put_long(&mut w, &m.buffered_ciphertext)?;
    exactly_sized(w, len)
}

/// The clear contents of a MAC-key blob, sized exactly as above.
pub(super) fn mac_key_contents(key: &MacKey, blob_id: &[u8; 16]) -> Result<Zeroizing<Vec<u8>>> {
    let len = COMMON_LEN + 1 + (1 + key.key.len());
    let mut w = Zeroizing::new(Vec::with_capacity(len));
    put_common(&mut w, blob_id, key.connection_id, key.exportable, false);
    w.push(key.algorithm.code());
    put_short(&mut w, &key.key)?;
    exactly_sized(w, len)
}

/// Checks that a secret buffer was filled to exactly the size it was
/// allocated with, so no earlier, unwiped block of it was ever freed.
fn exactly_sized(w: Zeroizing<Vec<u8>>, len: usize) -> Result<Zeroizing<Vec<u8>>> {
    if w.len() != len || w.capacity() != len {
        return Err(Error::InvalidArgument("blob contents mis-sized"));
    }
    Ok(w)
}

/// Parses a traffic-key blob's clear contents.
pub(super) fn traffic_key_from_contents(inner: &[u8]) -> Result<([u8; 16], TrafficKeyMaterial)> {
    let mut r = Reader(inner);
    let (blob_id, connection_id, exportable, host_resident) = r.common()?;
    let version = ProtocolVersion::from_code(r.u8()?).ok_or(BlobError::Malformed)?;
    let aead = AeadAlgorithm::from_code(r.u8()?).ok_or(BlobError::Malformed)?;
    let direction = Direction::from_code(r.u8()?).ok_or(BlobError::Malformed)?;
    let generation = r.u32()?;
    let sequence = r.u64()?;
    let auto_update_limit = r.u64()?;
    let key_ref = r.u64()?;
    let key = Zeroizing::new(r.short()?.to_vec());
    let iv = Zeroizing::new(r.short()?.to_vec());
    let secret = Zeroizing::new(r.short()?.to_vec());
    let buffered_plaintext = Zeroizing::new(r.long()?.to_vec());
    let buffered_ciphertext = r.long()?.to_vec();
    r.finish()?;
    if !host_resident && key_ref != 0 {
        return Err(BlobError::Malformed.into());
    }
    Ok((
        blob_id,
        TrafficKeyMaterial {
            version,
            aead,
            direction,
            generation,
            sequence,
            auto_update_limit,
            key,
            iv,
            secret,
            host_key_ref: host_resident.then_some(key_ref),
            exportable,
            connection_id,
            buffered_plaintext,
            buffered_ciphertext,
        },
    ))
}

/// Parses a MAC-key blob's clear contents.
pub(super) fn mac_key_from_contents(inner: &[u8]) -> Result<([u8; 16], MacKey)> {
    let mut r = Reader(inner);
    let (blob_id, connection_id, exportable, host_resident) = r.common()?;
    let algorithm = MacAlgorithm::from_code(r.u8()?).ok_or(BlobError::Malformed)?;
    let key = r.short()?;
    r.finish()?;
    if host_resident {
        return Err(BlobError::Malformed.into());
    }
    let key = MacKey::new(algorithm, key, exportable, connection_id)
        .map_err(|_| BlobError::InvalidState)?;
    Ok((blob_id, key))
}

/// Blob id, connection id, flags.
const COMMON_LEN: usize = 16 + 8 + 1;

fn put_common(
    w: &mut Vec<u8>,
    blob_id: &[u8; 16],
    connection_id: u64,
    exportable: bool,
    host: bool,
) {
    w.extend_from_slice(blob_id);
    w.extend_from_slice(&connection_id.to_be_bytes());
    let mut flags = 0;
    if exportable {
        flags |= FLAG_EXPORTABLE;
    }
    if host {
        flags |= FLAG_HOST_RESIDENT;
    }
    w.push(flags);
}

fn put_short(w: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    let len =
        u8::try_from(bytes.len()).map_err(|_| Error::InvalidArgument("key field too long"))?;
    w.push(len);
    w.extend_from_slice(bytes);
    Ok(())
}

fn put_long(w: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    if bytes.len() > MAX_BUFFERED {
        return Err(Error::InvalidArgument("buffered bytes over the blob limit"));
    }
    w.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    w.extend_from_slice(bytes);
    Ok(())
}

/// A bounds-checked reader: every short read is `Malformed`, never a panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(BlobError::Malformed.into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn short(&mut self) -> Result<&'a [u8]> {
        let n = self.u8()? as usize;
        self.take(n)
    }

    fn long(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > MAX_BUFFERED {
            return Err(BlobError::Malformed.into());
        }
        self.take(n)
    }

    fn common(&mut self) -> Result<([u8; 16], u64, bool, bool)> {
        let id: [u8; 16] = self.take(16)?.try_into().expect("16 bytes");
        let connection_id = self.u64()?;
        let flags = self.u8()?;
        if flags & !(FLAG_EXPORTABLE | FLAG_HOST_RESIDENT) != 0 {
            return Err(BlobError::Malformed.into());
        }
        Ok((
            id,
            connection_id,
            flags & FLAG_EXPORTABLE != 0,
            flags & FLAG_HOST_RESIDENT != 0,
        ))
    }

    fn finish(&self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(BlobError::Malformed.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_buffers_never_grow_so_no_unwiped_copy_is_freed() {
        // The suite `serve` prefers and the largest: a buffer sized short
        // of these (as a fixed 128 bytes was) reallocates mid-write.
        for (version, aead) in [
            (ProtocolVersion::Tls13, AeadAlgorithm::ChaCha20Poly1305),
            (ProtocolVersion::Tls13, AeadAlgorithm::Aes256Gcm),
            (ProtocolVersion::Tls13, AeadAlgorithm::Aes128Gcm),
            (ProtocolVersion::Tls12, AeadAlgorithm::Aes256Gcm),
        ] {
            for buffered in [0usize, 1, 200, 16 * 1024 + 5] {
                let mut m = match version {
                    ProtocolVersion::Tls13 => TrafficKeyMaterial::from_tls13_secret(
                        aead,
                        Direction::Open,
                        &vec![3; aead.tls13_hash().output_len()],
                        5,
                        9,
                    )
                    .unwrap(),
                    ProtocolVersion::Tls12 => TrafficKeyMaterial::new(
                        version,
                        aead,
                        Direction::Open,
                        &vec![3; aead.key_len()],
                        &[4; 12],
                        &[],
                        5,
                        9,
                    ),
                };
                m.buffered_plaintext = Zeroizing::new(vec![1; buffered]);
                m.buffered_ciphertext = vec![2; buffered / 2];
                let w = traffic_key_contents(&m, &[3; 16]).unwrap();
                assert_eq!(w.len(), w.capacity(), "{version:?} {aead:?} {buffered}");
            }
        }
        let mac = MacKey::new(MacAlgorithm::HmacSha384, &[5; 48], true, 1).unwrap();
        let w = mac_key_contents(&mac, &[4; 16]).unwrap();
        assert_eq!(w.len(), w.capacity());
    }
}
