//! Helpers for the unit tests.

pub(crate) fn unhex(s: &str) -> Vec<u8> {
    crate::selfcheck::unhex(s).expect("test vector is valid hex")
}
