//! GHASH (NIST SP 800-38D section 6.4) for the guest's AES-GCM
//! ([`crate::aes_gcm_simd128`]), four blocks per reduction.
//!
//! Wasm has no carry-less multiply, so the product in GF(2^128) is Thomas
//! Pornin's constant-time "multiplication with holes" from BearSSL
//! (`ghash_ctmul64.c`, MIT), the method RustCrypto's `polyval` uses on
//! 64-bit targets: a 64x64 carry-less product is sixteen integer
//! multiplications of operands with every fourth bit kept, the high half
//! comes from the same on bit-reversed operands, and Karatsuba makes a
//! 128x128 product from three 64x64 ones. What this module adds is
//! aggregation, since the reduction and the bit reversals are linear:
//!
//! - `Y = ((Y ^ X0) H^4) ^ (X1 H^3) ^ (X2 H^2) ^ (X3 H)`, so four blocks'
//!   products are summed unreduced and reduced once, and the three
//!   reversals of the product's high halves happen once per four blocks;
//! - `H`, `H^2`, `H^3` and `H^4`, their bit reversals and Karatsuba sums
//!   are split into their four masked parts once per key;
//! - bit reversals are done 128 bits at a time, a byte shuffle and two
//!   `i8x16.swizzle` nibble-table lookups (wasm has no bit-reverse
//!   instruction: `u64::reverse_bits` is about forty), and a block's
//!   big-endian load is one byte shuffle.
//!
//! Constant time: multiplications, shifts, masks and XORs on the key and
//! the data, and swizzles whose tables are constants in registers. Nothing
//! branches on, or indexes memory by, the key, the accumulator or the data;
//! the only branches are on lengths. wasm `i64.mul` is constant time in
//! wasmtime on x86-64 (`imul`).
//!
//! Secrets: the key's powers are wiped on drop, and each message's
//! accumulator when its hash is taken.
//!
//! Only compiled for `wasm32` with `simd128`; the differential tests
//! compare the AES-GCM built on it with RustCrypto's `aes-gcm` natively.

use core::arch::wasm32::{
    i8x16_shuffle, u8x16, u8x16_shr, u8x16_splat, u8x16_swizzle, u64x2, u64x2_extract_lane, v128,
    v128_and, v128_or,
};

use zeroize::{Zeroize, ZeroizeOnDrop};

/// The masks that keep every fourth bit, from bit 0, 1, 2 and 3.
const M: [u64; 4] = [
    0x1111_1111_1111_1111,
    0x2222_2222_2222_2222,
    0x4444_4444_4444_4444,
    0x8888_8888_8888_8888,
];

/// `rev4(n) << 4` and `rev4(n)` for each nibble `n`: a byte's bits
/// reversed are its low nibble's reversal on top and its high nibble's
/// below.
const REV_LOW_NIBBLE: v128 = u8x16(
    0x00, 0x80, 0x40, 0xc0, 0x20, 0xa0, 0x60, 0xe0, 0x10, 0x90, 0x50, 0xd0, 0x30, 0xb0, 0x70, 0xf0,
);
const REV_HIGH_NIBBLE: v128 = u8x16(
    0x0, 0x8, 0x4, 0xc, 0x2, 0xa, 0x6, 0xe, 0x1, 0x9, 0x5, 0xd, 0x3, 0xb, 0x7, 0xf,
);

/// `x` with every fourth bit kept, in its four phases.
#[inline(always)]
fn split(x: u64) -> [u64; 4] {
    [x & M[0], x & M[1], x & M[2], x & M[3]]
}

/// Adds the low 64 bits of the carry-less product of `x` and `y` (both
/// split) to `acc`, by phase and unmasked: each of the four integer
/// products' bits of its own phase are right (a position's count of
/// terms fits below the next bit of that phase within 64 bits), and
/// XOR-ing several products before masking keeps them right.
#[inline(always)]
fn mul_acc(x: [u64; 4], y: &[u64; 4], acc: &mut [u64; 4]) {
    let [x0, x1, x2, x3] = x;
    let [y0, y1, y2, y3] = *y;
    let m = u64::wrapping_mul;
    acc[0] ^= m(x0, y0) ^ m(x1, y3) ^ m(x2, y2) ^ m(x3, y1);
    acc[1] ^= m(x0, y1) ^ m(x1, y0) ^ m(x2, y3) ^ m(x3, y2);
    acc[2] ^= m(x0, y2) ^ m(x1, y1) ^ m(x2, y0) ^ m(x3, y3);
    acc[3] ^= m(x0, y3) ^ m(x1, y2) ^ m(x2, y1) ^ m(x3, y0);
}

/// The product bits of each phase from `acc`.
#[inline(always)]
fn finish(acc: &[u64; 4]) -> u64 {
    (acc[0] & M[0]) | (acc[1] & M[1]) | (acc[2] & M[2]) | (acc[3] & M[3])
}

/// One power of `H` as the multiplication wants it: `(h0, h1, h0 ^ h1)`
/// and their bit reversals, each split.
#[derive(Default)]
struct Power([[u64; 4]; 6]);

impl Power {
    fn new(h1: u64, h0: u64) -> Self {
        let (h0r, h1r) = (h0.reverse_bits(), h1.reverse_bits());
        Self([
            split(h0),
            split(h1),
            split(h0 ^ h1),
            split(h0r),
            split(h1r),
            split(h0r ^ h1r),
        ])
    }
}

/// The Karatsuba products of up to four blocks, summed unreduced.
#[derive(Default)]
struct Sums([[u64; 4]; 6]);

impl Sums {
    /// Adds `x * power`, for `x = (x1, x0)` and its reversal `(x1r, x0r)`.
    #[inline(always)]
    fn add(&mut self, (x1, x0): (u64, u64), (x1r, x0r): (u64, u64), power: &Power) {
        let p = &power.0;
        mul_acc(split(x0), &p[0], &mut self.0[0]);
        mul_acc(split(x1), &p[1], &mut self.0[1]);
        mul_acc(split(x0 ^ x1), &p[2], &mut self.0[2]);
        mul_acc(split(x0r), &p[3], &mut self.0[3]);
        mul_acc(split(x1r), &p[4], &mut self.0[4]);
        mul_acc(split(x0r ^ x1r), &p[5], &mut self.0[5]);
    }

    /// The sum reduced: BearSSL's recombination, shift and reduction.
    #[inline(always)]
    fn reduce(&self) -> (u64, u64) {
        let z = |i: usize| finish(&self.0[i]);
        let (z0, z1, mut z2) = (z(0), z(1), z(2));
        let (mut z0h, mut z1h, mut z2h) = (z(3), z(4), z(5));
        z2 ^= z0 ^ z1;
        z2h ^= z0h ^ z1h;
        (z0h, z1h) = reverse_bits2(z0h, z1h);
        (z2h, _) = reverse_bits2(z2h, 0);
        (z0h, z1h, z2h) = (z0h >> 1, z1h >> 1, z2h >> 1);
        let (mut v0, mut v1, mut v2, mut v3) = (z0, z0h ^ z2, z1 ^ z2h, z1h);
        v3 = (v3 << 1) | (v2 >> 63);
        v2 = (v2 << 1) | (v1 >> 63);
        v1 = (v1 << 1) | (v0 >> 63);
        v0 <<= 1;
        v2 ^= v0 ^ (v0 >> 1) ^ (v0 >> 2) ^ (v0 >> 7);
        v1 ^= (v0 << 63) ^ (v0 << 62) ^ (v0 << 57);
        v3 ^= v1 ^ (v1 >> 1) ^ (v1 >> 2) ^ (v1 >> 7);
        v2 ^= (v1 << 63) ^ (v1 << 62) ^ (v1 << 57);
        (v3, v2)
    }
}

/// Every byte's bits reversed.
#[inline(always)]
fn reverse_byte_bits(v: v128) -> v128 {
    v128_or(
        u8x16_swizzle(REV_LOW_NIBBLE, v128_and(v, u8x16_splat(0x0f))),
        u8x16_swizzle(REV_HIGH_NIBBLE, u8x16_shr(v, 4)),
    )
}

/// `(a.reverse_bits(), b.reverse_bits())`, both at once: the bytes
/// reversed with a shuffle and each byte's bits with two swizzles, where
/// `u64::reverse_bits` is about forty instructions in wasm.
#[inline(always)]
fn reverse_bits2(a: u64, b: u64) -> (u64, u64) {
    let v = u64x2(a, b);
    let r = reverse_byte_bits(i8x16_shuffle::<
        7,
        6,
        5,
        4,
        3,
        2,
        1,
        0,
        15,
        14,
        13,
        12,
        11,
        10,
        9,
        8,
    >(v, v));
    (u64x2_extract_lane::<0>(r), u64x2_extract_lane::<1>(r))
}

/// A block as its two big-endian halves `(x1, x0)` and their bit
/// reversals: one load, one byte shuffle, two swizzles.
#[inline(always)]
fn load(block: &[u8]) -> ((u64, u64), (u64, u64)) {
    let lo = u64::from_le_bytes(block[..8].try_into().expect("16-byte block"));
    let hi = u64::from_le_bytes(block[8..16].try_into().expect("16-byte block"));
    let v = u64x2(lo, hi);
    let be = i8x16_shuffle::<7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8>(v, v);
    // A big-endian half's bit reversal is its bytes' bits reversed, read
    // little-endian.
    let reversed = reverse_byte_bits(v);
    (
        (u64x2_extract_lane::<0>(be), u64x2_extract_lane::<1>(be)),
        (
            u64x2_extract_lane::<0>(reversed),
            u64x2_extract_lane::<1>(reversed),
        ),
    )
}

/// A GHASH key: `H` to `H^4`, prepared.
pub struct GHashKey {
    /// `H^(i + 1)`.
    powers: [Power; 4],
}

impl GHashKey {
    /// Prepares `h = E(0^128)`.
    pub fn new(h: &[u8; 16]) -> Self {
        let (h1, h0) = (
            u64::from_be_bytes(h[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(h[8..].try_into().expect("8 bytes")),
        );
        let mut powers: [Power; 4] = Default::default();
        powers[0] = Power::new(h1, h0);
        let (mut p1, mut p0) = (h1, h0);
        for i in 1..4 {
            let mut sums = Sums::default();
            sums.add((p1, p0), (p1.reverse_bits(), p0.reverse_bits()), &powers[0]);
            (p1, p0) = sums.reduce();
            powers[i] = Power::new(p1, p0);
        }
        Self { powers }
    }

    /// A hash under this key, empty.
    pub fn start(&self) -> GHash<'_> {
        GHash {
            key: self,
            y: (0, 0),
        }
    }
}

impl Drop for GHashKey {
    fn drop(&mut self) {
        for power in &mut self.powers {
            power.0.iter_mut().for_each(|p| p.zeroize());
        }
    }
}

impl ZeroizeOnDrop for GHashKey {}

/// One message's hash in progress.
pub struct GHash<'a> {
    key: &'a GHashKey,
    /// The accumulator `Y`, as its big-endian halves `(y1, y0)`.
    y: (u64, u64),
}

impl GHash<'_> {
    /// Absorbs `blocks`, a whole number of 16-byte blocks: four at a
    /// time, then the rest one at a time.
    fn absorb(&mut self, blocks: &[u8]) {
        debug_assert_eq!(blocks.len() % 16, 0);
        let mut groups = blocks.chunks_exact(64);
        for group in &mut groups {
            self.group(group);
        }
        for block in groups.remainder().chunks_exact(16) {
            self.group(block);
        }
    }

    /// `Y = ((Y ^ X0) H^n) ^ ... ^ (X(n-1) H)` for the `n` blocks of
    /// `group` (one to four).
    #[inline(always)]
    fn group(&mut self, group: &[u8]) {
        let n = group.len() / 16;
        let mut sums = Sums::default();
        for (k, block) in group.chunks_exact(16).enumerate() {
            let ((mut x1, mut x0), (mut x1r, mut x0r)) = load(block);
            if k == 0 {
                let (y1, y0) = self.y;
                let (y1r, y0r) = reverse_bits2(y1, y0);
                (x1, x0) = (x1 ^ y1, x0 ^ y0);
                (x1r, x0r) = (x1r ^ y1r, x0r ^ y0r);
            }
            sums.add((x1, x0), (x1r, x0r), &self.key.powers[n - 1 - k]);
        }
        self.y = sums.reduce();
    }

    /// Absorbs `data` padded with zeros to a whole number of blocks.
    pub fn update_padded(&mut self, data: &[u8]) {
        let whole = data.len() - data.len() % 16;
        self.absorb(&data[..whole]);
        if whole < data.len() {
            let mut last = [0u8; 16];
            last[..data.len() - whole].copy_from_slice(&data[whole..]);
            self.absorb(&last);
            last.zeroize();
        }
    }

    /// The hash, after the lengths block `len(aad) || len(text)` in bits.
    pub fn finalize(mut self, aad_len: u64, text_len: u64) -> [u8; 16] {
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&(aad_len * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&(text_len * 8).to_be_bytes());
        self.absorb(&lengths);
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.y.0.to_be_bytes());
        out[8..].copy_from_slice(&self.y.1.to_be_bytes());
        // The accumulator is wiped as `self` drops.
        out
    }
}

impl Drop for GHash<'_> {
    fn drop(&mut self) {
        self.y.0.zeroize();
        self.y.1.zeroize();
    }
}
