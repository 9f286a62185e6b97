//! MixColumns in the fixsliced representation.
//!
//! Taken from RustCrypto's `aes` 0.9.4, `src/backends/fixslice/mix_columns.rs`
//! (MIT or Apache-2.0), trimmed to what encryption needs; see
//! [`super`] for why and for the word it adds.

use super::{State, Word};

/// Computation of the MixColumns transformation in the fixsliced representation,
/// with different rotations used according to the round number mod 4.
///
/// Based on Käsper-Schwabe, similar to https://github.com/Ko-/aes-armcortexm.
macro_rules! define_mix_columns {
    (
        $name:ident,
        $first_rotate:path,
        $second_rotate:path
    ) => {
        #[rustfmt::skip]
        pub(super) fn $name<W: Word>(state: &mut State<W>) {
            let (a0, a1, a2, a3, a4, a5, a6, a7) = (
                state[0], state[1], state[2], state[3], state[4], state[5], state[6], state[7]
            );
            let (b0, b1, b2, b3, b4, b5, b6, b7) = (
                $first_rotate(a0),
                $first_rotate(a1),
                $first_rotate(a2),
                $first_rotate(a3),
                $first_rotate(a4),
                $first_rotate(a5),
                $first_rotate(a6),
                $first_rotate(a7),
            );
            let (c0, c1, c2, c3, c4, c5, c6, c7) = (
                a0 ^ b0,
                a1 ^ b1,
                a2 ^ b2,
                a3 ^ b3,
                a4 ^ b4,
                a5 ^ b5,
                a6 ^ b6,
                a7 ^ b7,
            );
            state[0] = b0      ^ c7 ^ $second_rotate(c0);
            state[1] = b1 ^ c0 ^ c7 ^ $second_rotate(c1);
            state[2] = b2 ^ c1      ^ $second_rotate(c2);
            state[3] = b3 ^ c2 ^ c7 ^ $second_rotate(c3);
            state[4] = b4 ^ c3 ^ c7 ^ $second_rotate(c4);
            state[5] = b5 ^ c4      ^ $second_rotate(c5);
            state[6] = b6 ^ c5      ^ $second_rotate(c6);
            state[7] = b7 ^ c6      ^ $second_rotate(c7);
        }
    };
}

define_mix_columns!(mix_columns_0, rotate_rows_1, rotate_rows_2);

define_mix_columns!(
    mix_columns_1,
    rotate_rows_and_columns_1_1,
    rotate_rows_and_columns_2_2
);

define_mix_columns!(mix_columns_2, rotate_rows_and_columns_1_2, rotate_rows_2);

define_mix_columns!(
    mix_columns_3,
    rotate_rows_and_columns_1_3,
    rotate_rows_and_columns_2_2
);

#[inline(always)]
fn rotate_rows_1<W: Word>(x: W) -> W {
    x.ror(W::ror_distance(1, 0))
}

#[inline(always)]
fn rotate_rows_2<W: Word>(x: W) -> W {
    x.ror(W::ror_distance(2, 0))
}

#[inline(always)]
fn rotate_rows_and_columns_1_1<W: Word>(x: W) -> W {
    let a = x.ror(W::ror_distance(1, 1)) & W::uniform_row(0x7);
    let b = x.ror(W::ror_distance(0, 1)) & W::uniform_row(0x8);
    a | b
}

#[inline(always)]
fn rotate_rows_and_columns_1_2<W: Word>(x: W) -> W {
    let a = x.ror(W::ror_distance(1, 2)) & W::uniform_row(0x3);
    let b = x.ror(W::ror_distance(0, 2)) & W::uniform_row(0xc);
    a | b
}

#[inline(always)]
fn rotate_rows_and_columns_1_3<W: Word>(x: W) -> W {
    let a = x.ror(W::ror_distance(1, 3)) & W::uniform_row(0x1);
    let b = x.ror(W::ror_distance(0, 3)) & W::uniform_row(0xe);
    a | b
}

#[inline(always)]
fn rotate_rows_and_columns_2_2<W: Word>(x: W) -> W {
    let a = x.ror(W::ror_distance(2, 2)) & W::uniform_row(0x3);
    let b = x.ror(W::ror_distance(1, 2)) & W::uniform_row(0xc);
    a | b
}
