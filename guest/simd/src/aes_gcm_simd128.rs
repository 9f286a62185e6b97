//! AES-GCM (NIST SP 800-38D, 96-bit nonces, 128-bit tags) over the
//! guest's eight-block AES ([`crate::aes_simd128`]) and GHASH
//! ([`crate::ghash_simd128`]), behind the same `aead` traits as
//! RustCrypto's `aes-gcm`, so the record layer uses either.
//!
//! `aes-gcm` takes any block cipher, but its counter mode (`ctr`) hands
//! the cipher whole batches and then every block left over one at a time,
//! and the tag mask `E(J0)` alone too. With an eight-block cipher that is
//! one full computation per leftover block: a 100-byte record cost nine.
//! Here counter mode always asks for eight blocks, and the first eight are
//! `J0` (the tag mask) and the first seven keystream blocks, so a record of
//! up to 112 bytes costs one computation and a 16 KiB record 129.
//!
//! The construction is the standard's: `H = E(0^128)`, `J0 = nonce || 1`,
//! the text XORed with `E(inc32^i(J0))` for `i = 1, 2, ...`, and the tag
//! `GHASH(H, aad, ciphertext) XOR E(J0)`. Opening checks the tag (in
//! constant time, with `subtle`) before it decrypts anything. GHASH is
//! [`crate::ghash_simd128`], four blocks per reduction.
//!
//! Secrets: the cipher's round keys and the GHASH key are wiped on drop;
//! keystream is wiped after use.

use aes_gcm::aead::array::Array;
use aes_gcm::aead::consts::{U8, U12, U16, U32};
use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadCore, AeadInOut, Error, KeyInit, KeySizeUser, TagPosition};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::aes_simd128::{Aes8, Aes128, Aes256, Block};
use crate::ghash_simd128::GHashKey;

/// Most plaintext one nonce may protect (SP 800-38D: 2^39 - 256 bits).
const P_MAX: u64 = (1 << 36) - 32;
/// Most additional data (2^64 - 1 bits, capped to what a length holds).
const A_MAX: u64 = (1 << 61) - 1;

/// AES-GCM keyed with `A`: [`Aes128Gcm`] or [`Aes256Gcm`].
pub struct AesGcm<A: Aes8> {
    aes: A,
    ghash: GHashKey,
}

/// AES-128-GCM.
pub type Aes128Gcm = AesGcm<Aes128>;
/// AES-256-GCM.
pub type Aes256Gcm = AesGcm<Aes256>;

impl<A: Aes8> ZeroizeOnDrop for AesGcm<A> {}

impl KeySizeUser for Aes128Gcm {
    type KeySize = U16;
}

impl KeySizeUser for Aes256Gcm {
    type KeySize = U32;
}

impl KeyInit for Aes128Gcm {
    fn new(key: &Array<u8, U16>) -> Self {
        Self::keyed(key)
    }
}

impl KeyInit for Aes256Gcm {
    fn new(key: &Array<u8, U32>) -> Self {
        Self::keyed(key)
    }
}

impl<A: Aes8> AesGcm<A> {
    fn keyed(key: &[u8]) -> Self {
        // `KeyInit` passes an array of `A::KEY_LEN` bytes.
        let aes = A::new(key).expect("key length fixed by the key type");
        let mut h = A::encrypt8(&aes.widen(), &Array::default());
        let ghash = GHashKey::new(&h[0].0);
        wipe(&mut h);
        Self { aes, ghash }
    }

    /// The eight counter blocks from `inc32^first(j0)` on.
    fn counters(j0: &Block, first: u32) -> Array<Block, U8> {
        let start = u32::from_be_bytes([j0[12], j0[13], j0[14], j0[15]]).wrapping_add(first);
        Array::from_fn(|i| {
            let mut block = *j0;
            block[12..].copy_from_slice(&start.wrapping_add(i as u32).to_be_bytes());
            block
        })
    }

    /// XORs `text` with the keystream `E(inc32^1(j0))`, ... `first`
    /// holds `E(j0)` (the tag mask) and the first seven keystream blocks.
    fn apply_keystream(wide: &A::Wide, j0: &Block, first: &Array<Block, U8>, text: &mut [u8]) {
        let (head, rest) = text.split_at_mut(text.len().min(112));
        xor_blocks(head, &first[1..]);
        let mut counter = 8u32;
        for chunk in rest.chunks_mut(128) {
            let mut batch = A::encrypt8(wide, &Self::counters(j0, counter));
            xor_blocks(chunk, &batch);
            wipe(&mut batch);
            counter = counter.wrapping_add(8);
        }
    }

    /// `GHASH(H, aad, ciphertext)` XOR `mask`.
    fn tag(&self, mask: &Block, aad: &[u8], ciphertext: &[u8]) -> Block {
        let mut ghash = self.ghash.start();
        ghash.update_padded(aad);
        ghash.update_padded(ciphertext);
        let mut tag = ghash.finalize(aad.len() as u64, ciphertext.len() as u64);
        for (t, m) in tag.iter_mut().zip(mask.iter()) {
            *t ^= m;
        }
        Block::from(tag)
    }

    /// The round keys for this message, `J0` for a 96-bit nonce, and the
    /// first eight blocks of the counter mode that starts there.
    fn start(&self, nonce: &Array<u8, U12>) -> (A::Wide, Block, Array<Block, U8>) {
        let wide = self.aes.widen();
        let mut j0 = Block::default();
        j0[..12].copy_from_slice(nonce);
        j0[15] = 1;
        let first = A::encrypt8(&wide, &Self::counters(&j0, 0));
        (wide, j0, first)
    }
}

/// XORs `text` with as much of `keystream` as it is long: plain slices,
/// so the compiler makes it `v128` loads, xors and stores.
fn xor_blocks(text: &mut [u8], keystream: &[Block]) {
    for (chunk, block) in text.chunks_mut(16).zip(keystream) {
        for (t, k) in chunk.iter_mut().zip(block.iter()) {
            *t ^= k;
        }
    }
}

/// Zeroizes eight blocks of keystream.
fn wipe(blocks: &mut Array<Block, U8>) {
    for block in blocks.iter_mut() {
        block.as_mut_slice().zeroize();
    }
}

impl<A: Aes8> AeadCore for AesGcm<A> {
    type NonceSize = U12;
    type TagSize = U16;
    const TAG_POSITION: TagPosition = TagPosition::Postfix;
}

impl<A: Aes8> AeadInOut for AesGcm<A> {
    fn encrypt_inout_detached(
        &self,
        nonce: &Array<u8, U12>,
        associated_data: &[u8],
        buffer: InOutBuf<'_, '_, u8>,
    ) -> Result<Array<u8, U16>, Error> {
        if buffer.len() as u64 > P_MAX || associated_data.len() as u64 > A_MAX {
            return Err(Error);
        }
        let (wide, j0, mut first) = self.start(nonce);
        let text = buffer.into_out_with_copied_in();
        Self::apply_keystream(&wide, &j0, &first, text);
        let tag = self.tag(&first[0], associated_data, text);
        wipe(&mut first);
        Ok(tag)
    }

    fn decrypt_inout_detached(
        &self,
        nonce: &Array<u8, U12>,
        associated_data: &[u8],
        buffer: InOutBuf<'_, '_, u8>,
        expected: &Array<u8, U16>,
    ) -> Result<(), Error> {
        if buffer.len() as u64 > P_MAX || associated_data.len() as u64 > A_MAX {
            return Err(Error);
        }
        let (wide, j0, mut first) = self.start(nonce);
        let computed = self.tag(&first[0], associated_data, buffer.get_in());
        let result = if bool::from(computed.as_slice().ct_eq(expected.as_slice())) {
            Self::apply_keystream(&wide, &j0, &first, buffer.into_out_with_copied_in());
            Ok(())
        } else {
            Err(Error)
        };
        wipe(&mut first);
        result
    }
}
