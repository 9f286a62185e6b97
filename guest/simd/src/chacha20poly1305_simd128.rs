//! ChaCha20-Poly1305 (RFC 8439 section 2.8) over the guest's `simd128`
//! ChaCha20 ([`crate::chacha20_simd128`]) and Poly1305
//! ([`crate::poly1305_simd128`]), behind the same `aead` traits as
//! RustCrypto's `chacha20poly1305`, so the record layer uses either.
//!
//! RustCrypto's `ChaChaPoly1305` takes any stream cipher but hard-wires
//! its own Poly1305, so this is the construction again: the Poly1305 key
//! from keystream block 0, the text from block 1, and the tag over
//! `aad | pad16 | ciphertext | pad16 | len(aad) | len(ciphertext)`.
//! Opening checks the tag (in constant time, with `subtle`) before it
//! decrypts anything. Both directions work in the output buffer (copied
//! from the input first when they differ), as TLS records are protected in
//! place.

use chacha20poly1305::aead::array::Array;
use chacha20poly1305::aead::consts::{U12, U16, U32};
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::aead::{AeadCore, AeadInOut, Error, KeyInit, KeySizeUser, TagPosition};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::chacha20_simd128::MessageKeystream;
use crate::poly1305_simd128::Poly1305;

/// The AEAD, keyed.
pub struct ChaCha20Poly1305 {
    key: Array<u8, U32>,
}

impl Drop for ChaCha20Poly1305 {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl ZeroizeOnDrop for ChaCha20Poly1305 {}

impl KeySizeUser for ChaCha20Poly1305 {
    type KeySize = U32;
}

impl KeyInit for ChaCha20Poly1305 {
    fn new(key: &Array<u8, U32>) -> Self {
        Self { key: *key }
    }
}

impl AeadCore for ChaCha20Poly1305 {
    type NonceSize = U12;
    type TagSize = U16;
    const TAG_POSITION: TagPosition = TagPosition::Postfix;
}

/// The keystream positioned at block 1, and the Poly1305 keyed from
/// block 0.
fn start(key: &Array<u8, U32>, nonce: &Array<u8, U12>) -> (MessageKeystream, Poly1305) {
    let mut stream = MessageKeystream::new(key.as_ref(), nonce.as_ref());
    let mut mac_key = [0u8; 32];
    stream.mac_key(&mut mac_key);
    let mac = Poly1305::new(&mac_key);
    mac_key.zeroize();
    (stream, mac)
}

/// Absorbs `data` padded with zeros to a multiple of 16 bytes.
fn update_padded(mac: &mut Poly1305, data: &[u8]) {
    let whole = data.len() - data.len() % 16;
    mac.update_blocks(&data[..whole]);
    if whole < data.len() {
        let mut last = [0u8; 16];
        last[..data.len() - whole].copy_from_slice(&data[whole..]);
        mac.update_blocks(&last);
        last.zeroize();
    }
}

/// Messages whose MAC input (AAD, text, each padded, and the lengths) fits
/// here are authenticated in one Poly1305 call, from a copy. Each call pays
/// for lining up its powers of `r` and for adding its two lanes, and a TLS
/// record's AAD, text and lengths would be three or four calls; under
/// keep-alive HTTP load most records are this small.
const ONE_CALL: usize = 1024;

fn tag(mut mac: Poly1305, aad: &[u8], ciphertext: &[u8]) -> Result<[u8; 16], Error> {
    let mut lengths = [0u8; 16];
    lengths[..8].copy_from_slice(&u64::try_from(aad.len()).map_err(|_| Error)?.to_le_bytes());
    lengths[8..].copy_from_slice(
        &u64::try_from(ciphertext.len())
            .map_err(|_| Error)?
            .to_le_bytes(),
    );
    let text_at = aad.len().next_multiple_of(16);
    let lengths_at = text_at + ciphertext.len().next_multiple_of(16);
    if lengths_at + 16 <= ONE_CALL {
        // Only public bytes (AAD, ciphertext, lengths): nothing to wipe.
        let mut input = [0u8; ONE_CALL];
        input[..aad.len()].copy_from_slice(aad);
        input[text_at..][..ciphertext.len()].copy_from_slice(ciphertext);
        input[lengths_at..][..16].copy_from_slice(&lengths);
        mac.update_blocks(&input[..lengths_at + 16]);
    } else {
        update_padded(&mut mac, aad);
        update_padded(&mut mac, ciphertext);
        mac.update_blocks(&lengths);
    }
    Ok(mac.finalize())
}

/// Most bytes one nonce may protect: the 32-bit block counter, less block 0.
const MAX_TEXT: u64 = (u32::MAX as u64) * 64;

impl AeadInOut for ChaCha20Poly1305 {
    fn encrypt_inout_detached(
        &self,
        nonce: &Array<u8, U12>,
        associated_data: &[u8],
        buffer: InOutBuf<'_, '_, u8>,
    ) -> Result<Array<u8, U16>, Error> {
        if buffer.len() as u64 >= MAX_TEXT {
            return Err(Error);
        }
        let (mut stream, mac) = start(&self.key, nonce);
        let text = buffer.into_out_with_copied_in();
        stream.apply(text);
        Ok(tag(mac, associated_data, text)?.into())
    }

    fn decrypt_inout_detached(
        &self,
        nonce: &Array<u8, U12>,
        associated_data: &[u8],
        buffer: InOutBuf<'_, '_, u8>,
        expected: &Array<u8, U16>,
    ) -> Result<(), Error> {
        if buffer.len() as u64 >= MAX_TEXT {
            return Err(Error);
        }
        let (mut stream, mac) = start(&self.key, nonce);
        let computed = tag(mac, associated_data, buffer.get_in())?;
        if bool::from(computed.as_slice().ct_eq(expected.as_slice())) {
            stream.apply(buffer.into_out_with_copied_in());
            Ok(())
        } else {
            Err(Error)
        }
    }
}
