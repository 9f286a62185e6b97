//! Helpers for the unit tests.

use alloc::vec::Vec;

pub(crate) fn unhex(s: &str) -> Vec<u8> {
    crate::vectors::unhex(s).expect("test vector is valid hex")
}
