//! AES-128 and AES-256 encryption, fixsliced, eight blocks at once in wasm
//! `simd128` registers: the block cipher under the guest's AES-GCM.
//!
//! Wasm has no AES instructions, so RustCrypto's `aes` runs its portable
//! fixsliced backend there (Adomnicai and Peyrin, "Fixslicing AES-like
//! Ciphers", <https://eprint.iacr.org/2020/1123>), four blocks at a time in
//! `u64` words. That backend is written once over a `Word` trait (one
//! bit plane of the bitsliced state; `u16`, `u32` and `u64` in the crate).
//! This module is that code, taken from `aes` 0.9.4
//! (`src/backends/fixslice/`, MIT or Apache-2.0, original C code by
//! Alexandre Adomnicai), trimmed to encryption, which is all counter mode
//! needs, plus one more `Word`: [`Cols8`], eight blocks in one `v128`,
//! four 32-bit rows with each column a byte. The state's bit planes keep
//! the crate's order, so its S-box circuit and MixColumns run unchanged;
//! every rotation they make is by whole rows and columns, which here is
//! whole bytes, one `i8x16.shuffle` (in the crate's `u64` word a column is
//! a nibble). Packing eight blocks into planes is a 4x4 byte transpose per
//! block and the crate's three rounds of bit swaps.
//!
//! The key schedule runs on the crate's `u16` word (one block), as the
//! crate's does; its round keys are kept spread to eight blocks. There is
//! no single-block path: [`crate::aes_gcm_simd128`] asks for eight blocks
//! at a time, the tag mask with the first seven keystream blocks, so a
//! short record costs one eight-block computation where `aes-gcm` over the
//! crate's cipher costs one per block beyond its last four-block batch.
//!
//! Constant time: fixslicing is bitslicing. The S-box is a Boolean circuit
//! (Boyar, Peralta and Calik), ShiftRows and MixColumns are fixed
//! rotations and masks, and nothing branches on, or indexes memory by, the
//! key or the data; the only branches are on the round count. wasm
//! `simd128` integer instructions have no data-dependent timing in the
//! engines we target (wasmtime lowers them to SSE integer instructions).
//!
//! Secrets: the round keys are wiped on drop. As in the crate, the
//! round keys loaded for one message and the bitsliced state live on the
//! stack for that call and are not wiped.
//!
//! Only compiled for `wasm32` with `simd128`; everywhere else the guest
//! uses RustCrypto's `aes`, and the differential tests compare the two.

use core::arch::wasm32::{
    i8x16_shuffle, i64x2_shl, u8x16_splat, u64x2, u64x2_extract_lane, u64x2_shr, u64x2_splat, v128,
    v128_and, v128_not, v128_or, v128_xor,
};
use core::ops::{BitAnd, BitAndAssign, BitOr, BitOrAssign, BitXor, BitXorAssign, Not, Shl, Shr};

use cipher::array::{Array, ArraySize};
use cipher::consts::{U1, U8, U16};
use zeroize::{Zeroize, ZeroizeOnDrop};

#[path = "aes_simd128/aes128.rs"]
mod aes128;
#[path = "aes_simd128/aes256.rs"]
mod aes256;
#[path = "aes_simd128/mix_columns.rs"]
mod mix_columns;
#[path = "aes_simd128/sbox.rs"]
mod sbox;
#[path = "aes_simd128/utils.rs"]
mod utils;

/// One AES block.
pub type Block = Array<u8, U16>;
/// The bitsliced state: eight words, one per bit of a byte.
type State<W> = [W; 8];
/// The blocks one call of a word's computation takes.
type BatchBlocks<W> = Array<Block, <W as Word>::Blocks>;
/// The word round keys are kept in (one block), as in the crate.
type MinWord = u16;

/// One row of a bitsliced AES state: the crate's `Word` trait, unchanged.
trait Word:
    Sized
    + Copy
    + Default
    + 'static
    + BitAnd<Output = Self>
    + BitAndAssign
    + BitOr<Output = Self>
    + BitOrAssign
    + BitXor<Output = Self>
    + BitXorAssign
    + Not<Output = Self>
    + Shl<u32, Output = Self>
    + Shr<u32, Output = Self>
{
    /// Number of 128-bit blocks bitsliced together in one state.
    type Blocks: ArraySize;

    /// Width in bits of one row of the bitsliced state (4 for `u16`, 16
    /// for a `u64` lane).
    const ROW_BITS: u32 = (size_of::<Self>() * 2) as u32;
    /// Half of `ROW_BITS`.
    const HALF_ROW: u32 = Self::ROW_BITS / 2;
    /// Quarter of `ROW_BITS`.
    const QUARTER_ROW: u32 = Self::ROW_BITS / 4;

    /// Distance in bits to rotate a state row by `(rows, cols)` positions.
    #[inline(always)]
    fn ror_distance(rows: u32, cols: u32) -> u32 {
        rows * Self::ROW_BITS + cols * Self::QUARTER_ROW
    }

    /// Rotate right by `n` bits.
    fn ror(self, n: u32) -> Self;

    /// Pack the same nibble across all 4 rows of the word.
    fn uniform_row(b: u8) -> Self;

    /// Place one nibble at each of the 4 row positions (row 0 = LSB).
    fn pack_rows(r0: u8, r1: u8, r2: u8, r3: u8) -> Self;

    /// Replicate byte `b` across every byte of the word.
    fn byte_repeat(b: u8) -> Self;

    /// Pack `Self::Blocks` input blocks into a bitsliced 8-row state slice.
    fn bitslice(output: &mut [Self], input: &Array<Block, Self::Blocks>);

    /// Unpack a bitsliced 8-row state slice into `Self::Blocks` blocks.
    fn inv_bitslice(input: &[Self]) -> Array<Block, Self::Blocks>;
}

impl Word for u16 {
    type Blocks = U1;

    #[inline(always)]
    fn ror(self, n: u32) -> u16 {
        self.rotate_right(n)
    }

    #[inline(always)]
    fn uniform_row(b: u8) -> u16 {
        (b as u16) * 0x1111
    }

    #[inline(always)]
    fn pack_rows(r0: u8, r1: u8, r2: u8, r3: u8) -> u16 {
        (r0 as u16) | ((r1 as u16) << 4) | ((r2 as u16) << 8) | ((r3 as u16) << 12)
    }

    #[inline(always)]
    fn byte_repeat(b: u8) -> u16 {
        (b as u16) * 0x0101
    }

    /// Bitslices one block: the bit index goes from (column, row,
    /// position) `c1 c0 r1 r0 p2 p1 p0` to `p2 p1 p0 r1 r0 c1 c0`.
    fn bitslice(output: &mut [u16], input: &Array<Block, U1>) {
        debug_assert_eq!(output.len(), 8);
        let b = input[0].as_slice();
        fn read_reordered(input: &[u8]) -> u16 {
            (u16::from(input[0x0])) | (u16::from(input[0x2]) << 8)
        }
        let mut t = [
            read_reordered(&b[0x00..0x03]),
            read_reordered(&b[0x04..0x07]),
            read_reordered(&b[0x08..0x0b]),
            read_reordered(&b[0x0c..0x0f]),
            read_reordered(&b[0x01..0x04]),
            read_reordered(&b[0x05..0x08]),
            read_reordered(&b[0x09..0x0c]),
            read_reordered(&b[0x0d..0x10]),
        ];
        bitslice_swaps(&mut t);
        output[..8].copy_from_slice(&t);
    }

    fn inv_bitslice(input: &[u16]) -> Array<Block, U1> {
        debug_assert_eq!(input.len(), 8);
        let mut t = [
            input[0], input[1], input[2], input[3], input[4], input[5], input[6], input[7],
        ];
        bitslice_swaps(&mut t);
        fn write_reordered(rows: u16, output: &mut [u8]) {
            output[0x0] = rows as u8;
            output[0x2] = (rows >> 8) as u8;
        }
        let mut output = Array::<Block, U1>::default();
        write_reordered(t[0], &mut output[0][0x00..0x03]);
        write_reordered(t[1], &mut output[0][0x04..0x07]);
        write_reordered(t[2], &mut output[0][0x08..0x0b]);
        write_reordered(t[3], &mut output[0][0x0c..0x0f]);
        write_reordered(t[4], &mut output[0][0x01..0x04]);
        write_reordered(t[5], &mut output[0][0x05..0x08]);
        write_reordered(t[6], &mut output[0][0x09..0x0c]);
        write_reordered(t[7], &mut output[0][0x0d..0x10]);
        output
    }
}

/// A row pattern per row (a nibble each, bit `c` for column `c`) spread
/// over [`Cols8`]: byte `r * 4 + c` all ones where row `r`'s bit `c` is set.
#[inline(always)]
const fn spread_rows(rows: [u8; 4]) -> u128 {
    let mut bits = 0u16;
    let mut r = 0;
    while r < 4 {
        bits |= ((rows[r] & 0xf) as u16) << (r * 4);
        r += 1;
    }
    spread_bits(bits)
}

/// A 16-bit pattern of one block (bit `r * 4 + c`, as a round key word
/// keeps it) spread over [`Cols8`]: byte `r * 4 + c` all ones where the
/// bit is set.
#[inline(always)]
const fn spread_bits(k: u16) -> u128 {
    let mut x = 0u128;
    let mut i = 0;
    while i < 16 {
        if (k >> i) & 1 == 1 {
            x |= 0xff << (i * 8);
        }
        i += 1;
    }
    x
}

/// One bitsliced plane of eight blocks in one `v128`: four 32-bit rows,
/// each column one byte, each block one bit of it (bit `r * 32 + c * 8 +
/// b` is row `r`, column `c` of block `b`). The crate's own words keep a
/// column in a nibble (`u64`: four blocks) or less, so its column
/// rotations are bit rotations; here every rotation the algorithm makes
/// (whole rows and whole columns) is a whole-byte rotation of the 128
/// bits: one byte shuffle.
#[derive(Clone, Copy)]
struct Cols8(v128);

impl Default for Cols8 {
    #[inline(always)]
    fn default() -> Self {
        Self(u64x2_splat(0))
    }
}

macro_rules! lane_op {
    ($trait:ident, $method:ident, $assign_trait:ident, $assign:ident, $op:ident) => {
        impl $trait for Cols8 {
            type Output = Self;
            #[inline(always)]
            fn $method(self, rhs: Self) -> Self {
                Self($op(self.0, rhs.0))
            }
        }
        impl $assign_trait for Cols8 {
            #[inline(always)]
            fn $assign(&mut self, rhs: Self) {
                self.0 = $op(self.0, rhs.0);
            }
        }
    };
}

lane_op!(BitAnd, bitand, BitAndAssign, bitand_assign, v128_and);
lane_op!(BitOr, bitor, BitOrAssign, bitor_assign, v128_or);
lane_op!(BitXor, bitxor, BitXorAssign, bitxor_assign, v128_xor);

impl Not for Cols8 {
    type Output = Self;
    #[inline(always)]
    fn not(self) -> Self {
        Self(v128_not(self.0))
    }
}

// Shifts are per 64-bit lane. Every shift the algorithm makes on this word
// moves bits within a 32-bit row, never across the lanes' boundary: by 1,
// 2 and 4 within a byte (bitslicing), by 16 within a row (ShiftRows twice,
// before AES-128's last round).
impl Shl<u32> for Cols8 {
    type Output = Self;
    #[inline(always)]
    fn shl(self, n: u32) -> Self {
        Self(i64x2_shl(self.0, n))
    }
}

impl Shr<u32> for Cols8 {
    type Output = Self;
    #[inline(always)]
    fn shr(self, n: u32) -> Self {
        Self(u64x2_shr(self.0, n))
    }
}

impl From<u128> for Cols8 {
    #[inline(always)]
    fn from(x: u128) -> Self {
        Self(u64x2(x as u64, (x >> 64) as u64))
    }
}

/// A block as a `v128`, bytes in order.
#[inline(always)]
fn load(block: &Block) -> v128 {
    let (lo, hi) = block.split_at(8);
    u64x2(
        u64::from_le_bytes(lo.try_into().expect("8 bytes")),
        u64::from_le_bytes(hi.try_into().expect("8 bytes")),
    )
}

/// Writes a `v128` to a block, bytes in order.
#[inline(always)]
fn store(v: v128, block: &mut Block) {
    block[..8].copy_from_slice(&u64x2_extract_lane::<0>(v).to_le_bytes());
    block[8..].copy_from_slice(&u64x2_extract_lane::<1>(v).to_le_bytes());
}

/// A block's bytes from column order (`c * 4 + r`, AES's) to row order
/// (`r * 4 + c`), and back: a 4x4 transpose.
#[inline(always)]
fn transpose(v: v128) -> v128 {
    i8x16_shuffle::<0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15>(v, v)
}

/// Rotates the 128 bits right by `K` bytes.
macro_rules! ror_bytes {
    ($x:expr, $($k:literal => [$($i:literal),+]),+ $(,)?) => {
        |k: u32| match k {
            $($k => i8x16_shuffle::<$($i),+>($x, $x),)+
            _ => unreachable!("a rotation by {k} bytes"),
        }
    };
}

impl Word for Cols8 {
    type Blocks = U8;

    /// Every distance is whole bytes here (`ror_distance` is rows times
    /// 32 plus columns times 8), and a constant once inlined.
    #[inline(always)]
    fn ror(self, n: u32) -> Self {
        debug_assert_eq!(n % 8, 0);
        let x = self.0;
        let rotate = ror_bytes!(x,
            0 => [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
            1 => [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0],
            2 => [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1],
            3 => [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2],
            4 => [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3],
            5 => [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4],
            6 => [6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5],
            7 => [7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6],
            8 => [8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7],
            9 => [9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8],
            10 => [10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            11 => [11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            12 => [12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
            13 => [13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
            14 => [14, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
            15 => [15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
        );
        Self(rotate((n / 8) % 16))
    }

    #[inline(always)]
    fn uniform_row(b: u8) -> Self {
        Self::from(spread_rows([b; 4]))
    }

    #[inline(always)]
    fn pack_rows(r0: u8, r1: u8, r2: u8, r3: u8) -> Self {
        Self::from(spread_rows([r0, r1, r2, r3]))
    }

    #[inline(always)]
    fn byte_repeat(b: u8) -> Self {
        Self(u8x16_splat(b))
    }

    /// Bitslices eight blocks: block `k`'s bytes transposed to row order
    /// in word `k`, then the crate's swaps, which exchange the word index
    /// with the bit index within each byte: word `p` then holds bit `p` of
    /// every byte, at bit `(r * 4 + c) * 8 + k`.
    #[inline(always)]
    fn bitslice(output: &mut [Self], input: &Array<Block, U8>) {
        debug_assert_eq!(output.len(), 8);
        let mut t: [Self; 8] = core::array::from_fn(|k| Self(transpose(load(&input[k]))));
        bitslice_swaps(&mut t);
        output[..8].copy_from_slice(&t);
    }

    /// The inverse of [`Self::bitslice`]: the swaps, then each block's
    /// bytes back to column order.
    #[inline(always)]
    fn inv_bitslice(input: &[Self]) -> Array<Block, U8> {
        debug_assert_eq!(input.len(), 8);
        let mut t = [
            input[0], input[1], input[2], input[3], input[4], input[5], input[6], input[7],
        ];
        bitslice_swaps(&mut t);
        let mut output = Array::<Block, U8>::default();
        for (block, word) in output.iter_mut().zip(t) {
            store(transpose(word.0), block);
        }
        output
    }
}

/// The crate's delta-swap pipeline shared by `bitslice` and
/// `inv_bitslice` (it inverts itself).
#[inline(always)]
fn bitslice_swaps<W: Word>(t: &mut [W; 8]) {
    use utils::delta_swap_2;
    let [t0, t1, t2, t3, t4, t5, t6, t7] = t;
    let m0 = W::byte_repeat(0x55);
    delta_swap_2(t1, t0, 1, m0);
    delta_swap_2(t3, t2, 1, m0);
    delta_swap_2(t5, t4, 1, m0);
    delta_swap_2(t7, t6, 1, m0);
    let m1 = W::byte_repeat(0x33);
    delta_swap_2(t2, t0, 2, m1);
    delta_swap_2(t3, t1, 2, m1);
    delta_swap_2(t6, t4, 2, m1);
    delta_swap_2(t7, t5, 2, m1);
    let m2 = W::byte_repeat(0x0f);
    delta_swap_2(t4, t0, 4, m2);
    delta_swap_2(t5, t1, 4, m2);
    delta_swap_2(t6, t2, 4, m2);
    delta_swap_2(t7, t3, 4, m2);
}

/// Eight blocks encrypted at once: what counter mode asks of the cipher.
pub trait Aes8: ZeroizeOnDrop {
    /// The round keys as eight-block words, made once per message.
    type Wide;

    /// Keys the cipher; `None` if `key` has the wrong length.
    fn new(key: &[u8]) -> Option<Self>
    where
        Self: Sized;

    /// The round keys as eight-block words, for [`Self::encrypt8`].
    fn widen(&self) -> Self::Wide;

    /// Encrypts eight blocks.
    fn encrypt8(wide: &Self::Wide, blocks: &Array<Block, U8>) -> Array<Block, U8>;
}

/// Round keys splatted to eight-block words: stack-sized, for one message.
pub struct Wide<const N: usize>([Cols8; N]);

macro_rules! aes_cipher {
    ($name:ident, $module:ident, $key_len:literal, $rounds_words:literal, $doc:literal) => {
        #[doc = $doc]
        #[doc = " encryption, eight blocks at once in `simd128` registers."]
        ///
        /// Not `Clone` or `Debug`: it holds the round keys, which are wiped
        /// when it drops.
        pub struct $name {
            /// The round keys, each already spread to eight blocks.
            rk: $module::RoundKeys<u128>,
        }

        impl Aes8 for $name {
            type Wide = Wide<{ $rounds_words }>;

            fn new(key: &[u8]) -> Option<Self> {
                let key: &[u8; $key_len] = key.try_into().ok()?;
                let mut rk = $module::key_schedule::<MinWord>(key);
                let wide = rk.map(spread_bits);
                rk.zeroize();
                Some(Self { rk: wide })
            }

            #[inline]
            fn widen(&self) -> Self::Wide {
                Wide(self.rk.map(Cols8::from))
            }

            #[inline]
            fn encrypt8(wide: &Self::Wide, blocks: &Array<Block, U8>) -> Array<Block, U8> {
                $module::encrypt(&wide.0, blocks)
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                self.rk.zeroize();
            }
        }

        impl ZeroizeOnDrop for $name {}
    };
}

aes_cipher!(Aes128, aes128, 16, 88, "AES-128");
aes_cipher!(Aes256, aes256, 32, 120, "AES-256");
