//! ChaCha20 (RFC 8439, the IETF variant: 96-bit nonce, 32-bit block
//! counter) computing four blocks at once with WebAssembly `simd128`, for
//! the guest's ChaCha20-Poly1305 ([`crate::chacha20poly1305_simd128`]).
//!
//! RustCrypto's `chacha20` has SSE2, AVX2, AVX-512 and NEON backends but
//! none for wasm, where it runs one block at a time in scalar code. This is
//! the missing computation, shaped for the AEAD rather than for `cipher`'s
//! stream-cipher traits: [`MessageKeystream`] yields the keystream of one
//! message four blocks at a time, from block 0. Block 0 keys Poly1305 and
//! the text starts at block 1, so a record of up to three blocks costs one
//! computation and every four blocks after that one more, the fewest there
//! can be. Through the stream-cipher wrapper the same record cost one
//! computation more: asked for block 0 and then for blocks 1 to 4, it had
//! to start again at block 1 (under keep-alive HTTP load, ChaCha20 was the
//! largest part of the guest's time).
//!
//! Layout: sixteen `v128` registers, register `i` holding word `i` of the
//! state of four consecutive blocks (lane `j` is block `counter + j`). A
//! quarter round is then plain lane-wise add, xor and rotate; the 16- and
//! 8-bit rotations are byte shuffles. At the end each 4x4 group of words is
//! transposed so every block's bytes come out in order.
//!
//! Constant time: ChaCha20 is add-rotate-xor on 32-bit words. Nothing here
//! branches on, or indexes memory by, the key, the nonce, the counter or
//! the data; the only branches are on lengths the caller already knows.
//! wasm `simd128` integer instructions have no data-dependent timing in the
//! engines we target (wasmtime lowers them to SSE/AVX integer
//! instructions).
//!
//! Secrets: the state and the buffered keystream are wiped on drop. As in
//! RustCrypto's own SIMD backends, the working registers (and what the
//! compiler spills of them) are not wiped.
//!
//! Only compiled for `wasm32` with `simd128`; everywhere else the crate uses
//! RustCrypto's `chacha20poly1305`, and the differential tests
//! (`tests/tests/vectors.rs`) compare the two on 100,000 random messages.

use core::arch::wasm32::{
    i8x16_shuffle, i32x4_shuffle, u32x4, u32x4_add, u32x4_shl, u32x4_shr, u32x4_splat, u64x2,
    u64x2_extract_lane, v128, v128_or, v128_xor,
};

use zeroize::{Zeroize, ZeroizeOnDrop};

/// "expand 32-byte k".
const CONSTANTS: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// 64-bit words in four blocks.
const CHUNK_WORDS: usize = 4 * 64 / 8;

/// The keystream of one message (one key and nonce), four blocks at a time
/// from block 0.
pub struct MessageKeystream {
    /// Constants, key, the counter of the next four blocks, nonce.
    state: [u32; 16],
    /// The last four blocks computed, as little-endian 64-bit words:
    /// filled straight from the vector lanes, and wiped on drop with a
    /// quarter of the volatile stores bytes would take.
    chunk: [u64; CHUNK_WORDS],
    /// Words of `chunk` already used.
    used: usize,
}

impl MessageKeystream {
    /// The keystream under `key` and `nonce`, with blocks 0 to 3 computed.
    pub fn new(key: &[u8; 32], nonce: &[u8; 12]) -> Self {
        let mut state = [0u32; 16];
        state[..4].copy_from_slice(&CONSTANTS);
        for (word, bytes) in state[4..12].iter_mut().zip(key.chunks_exact(4)) {
            *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        for (word, bytes) in state[13..].iter_mut().zip(nonce.chunks_exact(4)) {
            *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        let mut stream = Self {
            state,
            chunk: [0; CHUNK_WORDS],
            used: 0,
        };
        stream.refill();
        stream
    }

    /// Block 0's first 32 bytes, the Poly1305 key, into `key`; the stream
    /// then stands at block 1, where the text starts. Call it first.
    pub fn mac_key(&mut self, key: &mut [u8; 32]) {
        debug_assert_eq!(self.used, 0, "the MAC key is block 0");
        for (word, bytes) in self.chunk[..4].iter().zip(key.chunks_exact_mut(8)) {
            bytes.copy_from_slice(&word.to_le_bytes());
        }
        self.used = 64 / 8;
    }

    /// XORs the keystream into `data`, from where the stream stands. Only
    /// the last call of a message may end inside a 64-bit word: the rest
    /// of that word is not kept.
    pub fn apply(&mut self, data: &mut [u8]) {
        // What is left of the computed blocks, then whole four-block runs
        // straight from the registers (no round trip through the buffer),
        // then the tail from a fresh computation.
        let buffered = ((CHUNK_WORDS - self.used) * 8).min(data.len());
        let (head, rest) = data.split_at_mut(buffered);
        self.xor_buffered(head);
        let mut runs = rest.chunks_exact_mut(CHUNK_WORDS * 8);
        for run in &mut runs {
            let rows = keystream(&self.state);
            self.state[12] = self.state[12].wrapping_add(4);
            for (block, bytes) in rows.iter().zip(run.chunks_exact_mut(64)) {
                for (row, sixteen) in block.iter().zip(bytes.chunks_exact_mut(16)) {
                    let (lo, hi) = sixteen.split_at_mut(8);
                    let text = u64x2(
                        u64::from_le_bytes((&*lo).try_into().expect("8 bytes")),
                        u64::from_le_bytes((&*hi).try_into().expect("8 bytes")),
                    );
                    let out = v128_xor(text, *row);
                    lo.copy_from_slice(&u64x2_extract_lane::<0>(out).to_le_bytes());
                    hi.copy_from_slice(&u64x2_extract_lane::<1>(out).to_le_bytes());
                }
            }
        }
        let tail = runs.into_remainder();
        if !tail.is_empty() {
            self.refill();
            self.xor_buffered(tail);
        }
    }

    /// XORs buffered keystream into `data`, which is no longer than what
    /// is left of the buffer.
    fn xor_buffered(&mut self, data: &mut [u8]) {
        let whole = data.len() / 8;
        let mut words = data.chunks_exact_mut(8);
        for (bytes, key) in (&mut words).zip(&self.chunk[self.used..]) {
            let word = u64::from_le_bytes((&*bytes).try_into().expect("8 bytes"));
            bytes.copy_from_slice(&(word ^ key).to_le_bytes());
        }
        self.used += whole;
        let tail = words.into_remainder();
        if !tail.is_empty() {
            let key = self.chunk[self.used].to_le_bytes();
            for (byte, k) in tail.iter_mut().zip(key) {
                *byte ^= k;
            }
            self.used += 1;
        }
    }

    /// Computes the next four blocks and moves the counter past them. The
    /// AEAD bounds a message's length, so the counter never wraps into
    /// blocks already used.
    fn refill(&mut self) {
        let rows = keystream(&self.state);
        for (block, words) in rows.iter().zip(self.chunk.chunks_exact_mut(8)) {
            for (lanes, pair) in block.iter().zip(words.chunks_exact_mut(2)) {
                pair[0] = u64x2_extract_lane::<0>(*lanes);
                pair[1] = u64x2_extract_lane::<1>(*lanes);
            }
        }
        self.state[12] = self.state[12].wrapping_add(4);
        self.used = 0;
    }
}

impl Drop for MessageKeystream {
    fn drop(&mut self) {
        self.state.zeroize();
        self.chunk.zeroize();
    }
}

impl ZeroizeOnDrop for MessageKeystream {}

#[inline(always)]
fn rotl16(x: v128) -> v128 {
    i8x16_shuffle::<2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13>(x, x)
}

#[inline(always)]
fn rotl8(x: v128) -> v128 {
    i8x16_shuffle::<3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14>(x, x)
}

#[inline(always)]
fn rotl<const L: u32, const R: u32>(x: v128) -> v128 {
    v128_or(u32x4_shl(x, L), u32x4_shr(x, R))
}

#[inline(always)]
fn quarter_round(v: &mut [v128; 16], a: usize, b: usize, c: usize, d: usize) {
    v[a] = u32x4_add(v[a], v[b]);
    v[d] = rotl16(v128_xor(v[d], v[a]));
    v[c] = u32x4_add(v[c], v[d]);
    v[b] = rotl::<12, 20>(v128_xor(v[b], v[c]));
    v[a] = u32x4_add(v[a], v[b]);
    v[d] = rotl8(v128_xor(v[d], v[a]));
    v[c] = u32x4_add(v[c], v[d]);
    v[b] = rotl::<7, 25>(v128_xor(v[b], v[c]));
}

/// Blocks `counter .. counter + 4` of `state` before the rounds: lane `j`
/// of vector `i` is word `i` of block `counter + j`.
#[inline(always)]
fn initial(state: &[u32; 16]) -> [v128; 16] {
    let counter = state[12];
    core::array::from_fn(|i| {
        if i == 12 {
            u32x4(
                counter,
                counter.wrapping_add(1),
                counter.wrapping_add(2),
                counter.wrapping_add(3),
            )
        } else {
            u32x4_splat(state[i])
        }
    })
}

/// The keystream of blocks `counter .. counter + 4` of `state`, as each
/// block's four rows of four words. The counter wraps within the four
/// lanes exactly as four separate blocks would; the caller never asks past
/// `remaining_blocks`.
#[inline(always)]
fn keystream(state: &[u32; 16]) -> [[v128; 4]; 4] {
    let mut v = initial(state);
    for _ in 0..10 {
        quarter_round(&mut v, 0, 4, 8, 12);
        quarter_round(&mut v, 1, 5, 9, 13);
        quarter_round(&mut v, 2, 6, 10, 14);
        quarter_round(&mut v, 3, 7, 11, 15);
        quarter_round(&mut v, 0, 5, 10, 15);
        quarter_round(&mut v, 1, 6, 11, 12);
        quarter_round(&mut v, 2, 7, 8, 13);
        quarter_round(&mut v, 3, 4, 9, 14);
    }
    // The input again, rebuilt from memory rather than kept in registers
    // through the rounds: sixteen more live vectors would spill (the x86
    // backend has sixteen vector registers).
    for (word, first) in v.iter_mut().zip(initial(core::hint::black_box(state))) {
        *word = u32x4_add(*word, first);
    }
    // Words 4g..4g+4 of the four blocks: transpose so that row j holds
    // block j's four words, in order.
    let mut out = [[u32x4_splat(0); 4]; 4];
    for group in 0..4 {
        let [a, b, c, d] = [
            v[4 * group],
            v[4 * group + 1],
            v[4 * group + 2],
            v[4 * group + 3],
        ];
        let ab_lo = i32x4_shuffle::<0, 4, 1, 5>(a, b);
        let ab_hi = i32x4_shuffle::<2, 6, 3, 7>(a, b);
        let cd_lo = i32x4_shuffle::<0, 4, 1, 5>(c, d);
        let cd_hi = i32x4_shuffle::<2, 6, 3, 7>(c, d);
        let rows = [
            i32x4_shuffle::<0, 1, 4, 5>(ab_lo, cd_lo),
            i32x4_shuffle::<2, 3, 6, 7>(ab_lo, cd_lo),
            i32x4_shuffle::<0, 1, 4, 5>(ab_hi, cd_hi),
            i32x4_shuffle::<2, 3, 6, 7>(ab_hi, cd_hi),
        ];
        for (block, row) in out.iter_mut().zip(rows) {
            block[group] = row;
        }
    }
    out
}
