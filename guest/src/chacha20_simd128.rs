//! ChaCha20 (RFC 8439, the IETF variant: 96-bit nonce, 32-bit block
//! counter) computing four blocks at once with WebAssembly `simd128`.
//!
//! RustCrypto's `chacha20` has SSE2, AVX2, AVX-512 and NEON backends but
//! none for wasm, where it runs one block at a time in scalar code. This is
//! the missing backend, built the way RustCrypto's are: a core type that
//! implements `cipher`'s `StreamCipherCore` and hands a backend with four
//! parallel blocks (`ParBlocksSize = U4`) to the caller's closure. Wrapped
//! in `StreamCipherCoreWrapper` it is a drop-in `StreamCipher +
//! StreamCipherSeek` (`chacha20poly1305::ChaChaPoly1305` takes it as it
//! is); the guest's AEAD is [`crate::chacha20poly1305_simd128`], which
//! pairs it with the `simd128` Poly1305.
//!
//! Layout: sixteen `v128` registers, register `i` holding word `i` of the
//! state of four consecutive blocks (lane `j` is block `counter + j`). A
//! quarter round is then plain lane-wise add, xor and rotate; the 16- and
//! 8-bit rotations are byte shuffles. At the end each 4x4 group of words is
//! transposed so every block's bytes come out in order.
//!
//! Constant time: ChaCha20 is add-rotate-xor on 32-bit words. Nothing here
//! branches on, or indexes memory by, the key, the nonce, the counter or
//! the data; the only branches are on lengths the caller already knows
//! (how many blocks). wasm `simd128` integer instructions have no
//! data-dependent timing in the engines we target (wasmtime lowers them to
//! SSE/AVX integer instructions).
//!
//! Single blocks (a message's tail, the Poly1305 key) cost a four-block
//! computation too, so the other three are kept: the next single blocks,
//! or the next four, come from that cache while the counter is in its
//! range. A short record (block 0 for the MAC key, a few data blocks)
//! then costs one computation instead of one per block; under keep-alive
//! HTTP load, single blocks were a third of the guest's time.
//!
//! Secrets: the state and the cached keystream are wiped on drop. As in
//! RustCrypto's own SIMD backends, the working registers (and what the
//! compiler spills of them) are not wiped; the keystream is written only
//! into the caller's blocks and the cache.
//!
//! Only compiled for `wasm32` with `simd128`; everywhere else the crate uses
//! RustCrypto's `chacha20`, and the differential tests compare the two.

use core::arch::wasm32::{
    i8x16_shuffle, i32x4_shuffle, u32x4, u32x4_add, u32x4_shl, u32x4_shr, u32x4_splat,
    u64x2_extract_lane, v128, v128_or, v128_xor,
};

use ::cipher::array::Array;
use ::cipher::consts::{U4, U12, U32, U64};
use ::cipher::{
    BlockSizeUser, IvSizeUser, KeyIvInit, KeySizeUser, ParBlocks, ParBlocksSizeUser,
    StreamCipherBackend, StreamCipherClosure, StreamCipherCore, StreamCipherCoreWrapper,
    StreamCipherSeekCore,
};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// "expand 32-byte k".
const CONSTANTS: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// ChaCha20 with the four-block `simd128` backend, as a stream cipher.
pub type ChaCha20 = StreamCipherCoreWrapper<ChaCha20Core>;

/// The state: constants, key, block counter, nonce; and the keystream of
/// the last four blocks computed for a single-block request.
pub struct ChaCha20Core {
    state: [u32; 16],
    /// Four blocks as little-endian 64-bit words: wiped on drop with a
    /// quarter of the volatile stores bytes would take, and filled straight
    /// from the vector lanes.
    cache: [u64; 4 * WORDS],
    /// The counter of the cache's first block; `None` until it is filled.
    cached_at: Option<u32>,
}

/// Bytes in a block.
const BLOCK: usize = 64;

/// 64-bit words in a block.
const WORDS: usize = BLOCK / 8;

impl KeySizeUser for ChaCha20Core {
    type KeySize = U32;
}

impl IvSizeUser for ChaCha20Core {
    type IvSize = U12;
}

impl BlockSizeUser for ChaCha20Core {
    type BlockSize = U64;
}

impl KeyIvInit for ChaCha20Core {
    fn new(key: &Array<u8, U32>, iv: &Array<u8, U12>) -> Self {
        let mut state = [0u32; 16];
        state[..4].copy_from_slice(&CONSTANTS);
        for (word, bytes) in state[4..12].iter_mut().zip(key.chunks_exact(4)) {
            *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        for (word, bytes) in state[13..].iter_mut().zip(iv.chunks_exact(4)) {
            *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        Self {
            state,
            cache: [0; 4 * WORDS],
            cached_at: None,
        }
    }
}

impl StreamCipherSeekCore for ChaCha20Core {
    type Counter = u32;

    fn get_block_pos(&self) -> u32 {
        self.state[12]
    }

    fn set_block_pos(&mut self, pos: u32) {
        self.state[12] = pos;
    }
}

impl StreamCipherCore for ChaCha20Core {
    fn remaining_blocks(&self) -> Option<usize> {
        // As RustCrypto's IETF variant: the counter must not wrap.
        usize::try_from(u32::MAX - self.state[12]).ok()
    }

    fn process_with_backend(&mut self, f: impl StreamCipherClosure<BlockSize = Self::BlockSize>) {
        f.call(&mut Backend(self));
    }
}

impl ChaCha20Core {
    /// Where block `counter` sits in the cache, if it is there. Counters
    /// are public (positions in the stream), so this may branch on them.
    fn cached(&self, counter: u32) -> Option<usize> {
        let index = counter.wrapping_sub(self.cached_at?);
        (index < 4).then_some(index as usize)
    }
}

impl Drop for ChaCha20Core {
    fn drop(&mut self) {
        self.state.zeroize();
        self.cache.zeroize();
    }
}

impl ZeroizeOnDrop for ChaCha20Core {}

struct Backend<'a>(&'a mut ChaCha20Core);

impl BlockSizeUser for Backend<'_> {
    type BlockSize = U64;
}

impl ParBlocksSizeUser for Backend<'_> {
    type ParBlocksSize = U4;
}

impl StreamCipherBackend for Backend<'_> {
    fn gen_ks_block(&mut self, block: &mut Array<u8, U64>) {
        let core = &mut *self.0;
        let counter = core.state[12];
        let index = match core.cached(counter) {
            Some(index) => index,
            None => {
                let rows = keystream(&core.state);
                for (row, cached) in rows.iter().zip(core.cache.chunks_exact_mut(WORDS)) {
                    for (lanes, words) in row.iter().zip(cached.chunks_exact_mut(2)) {
                        words[0] = u64x2_extract_lane::<0>(*lanes);
                        words[1] = u64x2_extract_lane::<1>(*lanes);
                    }
                }
                core.cached_at = Some(counter);
                0
            }
        };
        copy_words(&core.cache[index * WORDS..][..WORDS], block);
        core.state[12] = counter.wrapping_add(1);
    }

    fn gen_par_ks_blocks(&mut self, blocks: &mut ParBlocks<Self>) {
        let core = &mut *self.0;
        let counter = core.state[12];
        if core.cached(counter) == Some(0) {
            for (cached, block) in core.cache.chunks_exact(WORDS).zip(blocks.iter_mut()) {
                copy_words(cached, block);
            }
        } else {
            let rows = keystream(&core.state);
            for (row, block) in rows.iter().zip(blocks.iter_mut()) {
                store(row, block);
            }
        }
        core.state[12] = counter.wrapping_add(4);
    }
}

/// Writes cached words into a block's bytes, little-endian.
#[inline(always)]
fn copy_words(words: &[u64], out: &mut [u8]) {
    for (word, bytes) in words.iter().zip(out.chunks_exact_mut(8)) {
        bytes.copy_from_slice(&word.to_le_bytes());
    }
}

/// Writes one block's four rows of words, little-endian, into `out`.
#[inline(always)]
fn store(rows: &[v128; 4], out: &mut [u8]) {
    for (row, bytes) in rows.iter().zip(out.chunks_exact_mut(16)) {
        bytes[..8].copy_from_slice(&u64x2_extract_lane::<0>(*row).to_le_bytes());
        bytes[8..].copy_from_slice(&u64x2_extract_lane::<1>(*row).to_le_bytes());
    }
}

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
