//! Poly1305 (RFC 8439 section 2.5) for whole 16-byte blocks, two blocks at
//! once with WebAssembly `simd128`.
//!
//! RustCrypto's `poly1305` runs scalar code in wasm, and after the
//! four-block ChaCha20 ([`crate::chacha20_simd128`]) it was half of a
//! record's time. This is the classic 26-bit-limb arithmetic
//! (poly1305-donna) with two accumulators side by side in the lanes of a
//! vector: every pair of blocks is `(h + m) * r²` in both lanes, and the
//! last pair of each call multiplies the second lane by `r` instead, so
//! that adding the lanes gives exactly the serial result
//! `sum(m_i * r^(n-i+1))`. Two pairs go in one step, `(h + m01) * r⁴ +
//! m23 * r²`, so the carry chain, which each step waits for, runs once per
//! four blocks. An odd last block goes through the scalar step. The
//! products are `i64x2.extmul_low_i32x4_u` (27x28-bit at most, well inside
//! 64 bits), summed ten at a time, then carried.
//!
//! Only whole blocks, each with the 2^128 bit set: that is every block
//! ChaCha20-Poly1305 authenticates (the AEAD pads AAD and ciphertext to 16
//! bytes itself), and the only use here.
//!
//! Constant time: multiplications, additions, shifts and masks on
//! secret-derived limbs, no branch or index on them; the final reduction
//! selects with a mask, as donna does. Branches depend only on lengths.
//! The key, the accumulator and the powers of `r` are wiped on drop.

use core::arch::wasm32::{
    i32x4_shuffle, i64x2_add, i64x2_shl, u32x4, u32x4_add, u32x4_shl, u64x2,
    u64x2_extmul_low_u32x4, u64x2_extract_lane, u64x2_shr, u64x2_splat, v128, v128_and, v128_or,
};

use zeroize::{Zeroize, ZeroizeOnDrop};

const MASK: u32 = 0x3ff_ffff;

/// A Poly1305 state over whole blocks.
pub struct Poly1305 {
    /// `r`, clamped, in 26-bit limbs.
    r: [u32; 5],
    /// `r²`, reduced, in 26-bit limbs.
    r2: [u32; 5],
    /// `r³`, for the last four blocks of a call.
    r3: [u32; 5],
    /// `r⁴`: four blocks (two per lane) per step.
    r4: [u32; 5],
    /// The accumulator, partially reduced.
    h: [u32; 5],
    /// `s`, the second half of the key.
    s: [u32; 4],
}

impl Drop for Poly1305 {
    fn drop(&mut self) {
        self.r.zeroize();
        self.r2.zeroize();
        self.r3.zeroize();
        self.r4.zeroize();
        self.h.zeroize();
        self.s.zeroize();
    }
}

impl ZeroizeOnDrop for Poly1305 {}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A block's five limbs, with the 2^128 bit.
fn limbs(block: &[u8]) -> [u32; 5] {
    [
        le32(block, 0) & MASK,
        (le32(block, 3) >> 2) & MASK,
        (le32(block, 6) >> 4) & MASK,
        (le32(block, 9) >> 6) & MASK,
        (le32(block, 12) >> 8) | (1 << 24),
    ]
}

#[inline(always)]
fn le64(b: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Two blocks' limbs, with the 2^128 bit: block `a` in lane 0 and `b` in
/// lane 1 of each vector, as [`lanes`] lays out [`limbs`] of each. Both
/// blocks are read as two little-endian 64-bit words and cut with vector
/// shifts and masks, instead of ten 32-bit reads put into lanes one by one.
#[inline(always)]
fn limbs2(a: &[u8], b: &[u8]) -> [v128; 5] {
    let lo = u64x2(le64(a, 0), le64(b, 0));
    let hi = u64x2(le64(a, 8), le64(b, 8));
    let mask = u64x2_splat(u64::from(MASK));
    let limbs = [
        v128_and(lo, mask),
        v128_and(u64x2_shr(lo, 26), mask),
        v128_and(v128_or(u64x2_shr(lo, 52), i64x2_shl(hi, 12)), mask),
        v128_and(u64x2_shr(hi, 14), mask),
        v128_or(u64x2_shr(hi, 40), u64x2_splat(1 << 24)),
    ];
    // Each limb is the low half of its 64-bit lane: to 32-bit lanes 0 and
    // 1 (lanes 2 and 3 are never read).
    limbs.map(|v| i32x4_shuffle::<0, 2, 0, 2>(v, v))
}

/// `h * r` mod 2^130 - 5, partially reduced (limbs below 2^26, but for
/// `h1`, which may reach 2^26 + 2^10).
fn mul(h: &[u32; 5], r: &[u32; 5]) -> [u32; 5] {
    let [h0, h1, h2, h3, h4] = h.map(u64::from);
    let [r0, r1, r2, r3, r4] = r.map(u64::from);
    let [s1, s2, s3, s4] = [r1 * 5, r2 * 5, r3 * 5, r4 * 5];
    let d0 = h0 * r0 + h1 * s4 + h2 * s3 + h3 * s2 + h4 * s1;
    let d1 = h0 * r1 + h1 * r0 + h2 * s4 + h3 * s3 + h4 * s2;
    let d2 = h0 * r2 + h1 * r1 + h2 * r0 + h3 * s4 + h4 * s3;
    let d3 = h0 * r3 + h1 * r2 + h2 * r1 + h3 * r0 + h4 * s4;
    let d4 = h0 * r4 + h1 * r3 + h2 * r2 + h3 * r1 + h4 * r0;
    carry([d0, d1, d2, d3, d4])
}

/// Two lanes of [`mul`]: lanes 0 and 1 of `h` times lanes 0 and 1 of `r`
/// (`s` is `5 * r`, per lane).
#[inline(always)]
fn mul2(h: &[v128; 5], r: &[v128; 5], s: &[v128; 5]) -> [v128; 5] {
    carry2(products2(h, r, s))
}

/// `h * r + m * q`, two lanes, carried once: two pairs of blocks per
/// carry. The carry chain is the loop's critical path (each pair's product
/// waits for the last one's carry), so sharing it between two pairs takes
/// half of it off; the `m * q` products do not depend on `h` at all. The
/// sums stay below 2^59: limbs below 2^27.6 times `5 * r` below 2^28.4,
/// ten at a time.
#[inline(always)]
fn mul_add2(
    h: &[v128; 5],
    r: &[v128; 5],
    s: &[v128; 5],
    m: &[v128; 5],
    q: &[v128; 5],
    t: &[v128; 5],
) -> [v128; 5] {
    let hr = products2(h, r, s);
    let mq = products2(m, q, t);
    carry2(core::array::from_fn(|i| i64x2_add(hr[i], mq[i])))
}

/// The five 64-bit limb sums of `h * r` in lanes 0 and 1, not carried.
#[inline(always)]
fn products2(h: &[v128; 5], r: &[v128; 5], s: &[v128; 5]) -> [v128; 5] {
    let m = |a: v128, b: v128| u64x2_extmul_low_u32x4(a, b);
    let sum = |terms: [v128; 5]| {
        let [a, b, c, d, e] = terms;
        i64x2_add(i64x2_add(i64x2_add(a, b), i64x2_add(c, d)), e)
    };
    let [h0, h1, h2, h3, h4] = *h;
    let d0 = sum([
        m(h0, r[0]),
        m(h1, s[4]),
        m(h2, s[3]),
        m(h3, s[2]),
        m(h4, s[1]),
    ]);
    let d1 = sum([
        m(h0, r[1]),
        m(h1, r[0]),
        m(h2, s[4]),
        m(h3, s[3]),
        m(h4, s[2]),
    ]);
    let d2 = sum([
        m(h0, r[2]),
        m(h1, r[1]),
        m(h2, r[0]),
        m(h3, s[4]),
        m(h4, s[3]),
    ]);
    let d3 = sum([
        m(h0, r[3]),
        m(h1, r[2]),
        m(h2, r[1]),
        m(h3, r[0]),
        m(h4, s[4]),
    ]);
    let d4 = sum([
        m(h0, r[4]),
        m(h1, r[3]),
        m(h2, r[2]),
        m(h3, r[1]),
        m(h4, r[0]),
    ]);
    [d0, d1, d2, d3, d4]
}

/// Carries two lanes of 64-bit limb sums back into 26-bit limbs (partially
/// reduced), in 32-bit lanes 0 and 1.
#[inline(always)]
fn carry2(d: [v128; 5]) -> [v128; 5] {
    let [d0, d1, d2, d3, d4] = d;
    let mask = u64x2(u64::from(MASK), u64::from(MASK));
    let d1 = i64x2_add(d1, u64x2_shr(d0, 26));
    let d2 = i64x2_add(d2, u64x2_shr(d1, 26));
    let d3 = i64x2_add(d3, u64x2_shr(d2, 26));
    let d4 = i64x2_add(d4, u64x2_shr(d3, 26));
    let c = u64x2_shr(d4, 26);
    let d0 = i64x2_add(v128_and(d0, mask), i64x2_add(i64x2_shl(c, 2), c));
    let d1 = i64x2_add(v128_and(d1, mask), u64x2_shr(d0, 26));
    // Back to 32-bit lanes 0 and 1: the low half of each 64-bit lane.
    let narrow = |v: v128| i32x4_shuffle::<0, 2, 0, 2>(v, v);
    [
        narrow(v128_and(d0, mask)),
        narrow(d1),
        narrow(v128_and(d2, mask)),
        narrow(v128_and(d3, mask)),
        narrow(v128_and(d4, mask)),
    ]
}

fn lanes(a: &[u32; 5], b: &[u32; 5]) -> [v128; 5] {
    core::array::from_fn(|i| u32x4(a[i], b[i], 0, 0))
}

fn times5(v: &[v128; 5]) -> [v128; 5] {
    v.map(|x| u32x4_add(u32x4_shl(x, 2), x))
}

impl Poly1305 {
    /// Keyed with the 32-byte one-time key `r || s`.
    pub fn new(key: &[u8; 32]) -> Self {
        let r = [
            le32(key, 0) & 0x3ff_ffff,
            (le32(key, 3) >> 2) & 0x3ff_ff03,
            (le32(key, 6) >> 4) & 0x3ff_c0ff,
            (le32(key, 9) >> 6) & 0x3f0_3fff,
            (le32(key, 12) >> 8) & 0x00f_ffff,
        ];
        let r2 = mul(&r, &r);
        let r3 = mul(&r2, &r);
        let r4 = mul(&r2, &r2);
        let s = [le32(key, 16), le32(key, 20), le32(key, 24), le32(key, 28)];
        Self {
            r,
            r2,
            r3,
            r4,
            h: [0; 5],
            s,
        }
    }

    /// Absorbs `blocks`, whose length must be a multiple of 16.
    pub fn update_blocks(&mut self, blocks: &[u8]) {
        debug_assert_eq!(blocks.len() % 16, 0);
        let pairs = blocks.chunks_exact(32);
        let count = pairs.len();
        if count > 0 {
            // Every pair is (h + m) * r² in both lanes, and the last pair
            // of the call multiplies lane 1 by r instead. Two pairs at a
            // time that is (h + m01) * r⁴ + m23 * r², or, ending the call,
            // (h + m01) * (r⁴, r³) + m23 * (r², r).
            let power = |a: &[u32; 5], b: &[u32; 5]| {
                let v = lanes(a, b);
                (times5(&v), v)
            };
            let (s2, r2) = power(&self.r2, &self.r2);
            let (s4, r4) = power(&self.r4, &self.r4);
            let (s_last, last) = power(&self.r2, &self.r);
            let (s_last4, last4) = power(&self.r4, &self.r3);
            let mut h = lanes(&self.h, &[0; 5]);
            let add = |h: &mut [v128; 5], m: &[v128; 5]| {
                for (hi, mi) in h.iter_mut().zip(m) {
                    *hi = u32x4_add(*hi, *mi);
                }
            };
            let mut done = 0;
            while count - done >= 2 {
                let quad = &blocks[32 * done..32 * (done + 2)];
                let m01 = limbs2(&quad[..16], &quad[16..32]);
                let m23 = limbs2(&quad[32..48], &quad[48..]);
                add(&mut h, &m01);
                done += 2;
                h = if done == count {
                    mul_add2(&h, &last4, &s_last4, &m23, &last, &s_last)
                } else {
                    mul_add2(&h, &r4, &s4, &m23, &r2, &s2)
                };
            }
            if done < count {
                let pair = &blocks[32 * done..32 * (done + 1)];
                add(&mut h, &limbs2(&pair[..16], &pair[16..]));
                h = mul2(&h, &last, &s_last);
            }
            // The two lanes' sum is the serial accumulator.
            let mut sum = [0u64; 5];
            for (total, v) in sum.iter_mut().zip(&h) {
                let wide = u64x2_extmul_low_u32x4(*v, u32x4(1, 1, 0, 0));
                *total = u64x2_extract_lane::<0>(wide) + u64x2_extract_lane::<1>(wide);
            }
            self.h = carry(sum);
        }
        let rest = pairs.remainder();
        if !rest.is_empty() {
            let m = limbs(rest);
            let mut h = self.h;
            for (hi, mi) in h.iter_mut().zip(m) {
                *hi += mi;
            }
            self.h = mul(&h, &self.r);
        }
    }

    /// The tag.
    pub fn finalize(self) -> [u8; 16] {
        let mut h = self.h;
        // Fully carry.
        let mut c;
        c = h[1] >> 26;
        h[1] &= MASK;
        h[2] += c;
        c = h[2] >> 26;
        h[2] &= MASK;
        h[3] += c;
        c = h[3] >> 26;
        h[3] &= MASK;
        h[4] += c;
        c = h[4] >> 26;
        h[4] &= MASK;
        h[0] += c * 5;
        c = h[0] >> 26;
        h[0] &= MASK;
        h[1] += c;
        // g = h + 5 - 2^130; keep h if that borrowed (h < p), else g.
        let mut g = [0u32; 5];
        g[0] = h[0].wrapping_add(5);
        c = g[0] >> 26;
        g[0] &= MASK;
        for i in 1..4 {
            g[i] = h[i].wrapping_add(c);
            c = g[i] >> 26;
            g[i] &= MASK;
        }
        g[4] = h[4].wrapping_add(c).wrapping_sub(1 << 26);
        let keep_g = (g[4] >> 31).wrapping_sub(1);
        for (hi, gi) in h.iter_mut().zip(g) {
            *hi = (*hi & !keep_g) | (gi & keep_g);
        }
        // h mod 2^128, then + s.
        let words = [
            h[0] | (h[1] << 26),
            (h[1] >> 6) | (h[2] << 20),
            (h[2] >> 12) | (h[3] << 14),
            (h[3] >> 18) | (h[4] << 8),
        ];
        let mut tag = [0u8; 16];
        let mut f = 0u64;
        for (i, (w, s)) in words.iter().zip(self.s).enumerate() {
            f = u64::from(*w) + u64::from(s) + (f >> 32);
            tag[4 * i..4 * i + 4].copy_from_slice(&(f as u32).to_le_bytes());
        }
        // `self` (and its accumulator) is wiped when it drops here.
        h.zeroize();
        g.zeroize();
        tag
    }
}

/// Carries 64-bit limb sums back into 26-bit limbs (partially reduced).
fn carry(d: [u64; 5]) -> [u32; 5] {
    let [d0, mut d1, mut d2, mut d3, mut d4] = d;
    d1 += d0 >> 26;
    d2 += d1 >> 26;
    d3 += d2 >> 26;
    d4 += d3 >> 26;
    let mut out = [
        (d0 as u32) & MASK,
        (d1 as u32) & MASK,
        (d2 as u32) & MASK,
        (d3 as u32) & MASK,
        (d4 as u32) & MASK,
    ];
    let c = (d4 >> 26) * 5 + u64::from(out[0]);
    out[0] = (c as u32) & MASK;
    out[1] += (c >> 26) as u32;
    out
}
