//! System randomness read ahead, a buffer at a time.
//!
//! Every connection's instance takes a fresh 32-byte wrapping secret and
//! every blob a salt and an id. Read one at a time, each is a `getrandom`
//! system call in the host (about 0.7 us of a connection's sandbox work,
//! measured with `perf`: glibc 2.36 has no vDSO `getrandom`) or a host call
//! in a guest. A [`Pool`] reads several draws' worth in one call and hands
//! the bytes out in order, each exactly once: the bytes are the system's
//! own output, unchanged, so a draw is exactly as good as a direct read.
//!
//! What is buffered is wiped as it is handed out, and the rest when the
//! pool drops (natively, when its thread exits; in wasm the host wipes the
//! instance's memory). Natively a pool remembers the process that filled
//! it: a child forked without exec, which would hand out its parent's next
//! bytes again, wipes what it inherited and reads its own.

use zeroize::Zeroize;

use crate::error::{Error, Result};

/// `N` bytes of system randomness, handed out front to back.
pub(crate) struct Pool<const N: usize> {
    bytes: [u8; N],
    /// Bytes already handed out (and wiped).
    used: usize,
    /// The process whose read filled the buffer (0: none yet).
    #[cfg(not(target_arch = "wasm32"))]
    filled_by: u32,
}

impl<const N: usize> Pool<N> {
    /// An empty pool: the first draw fills it.
    pub(crate) const fn new() -> Self {
        Self {
            bytes: [0; N],
            used: N,
            #[cfg(not(target_arch = "wasm32"))]
            filled_by: 0,
        }
    }

    /// Fills `out` with bytes no other draw from any pool gets.
    pub(crate) fn fill(&mut self, out: &mut [u8]) -> Result<()> {
        if out.len() > N {
            return Err(Error::InvalidArgument(
                "more randomness than the buffer holds",
            ));
        }
        #[cfg(not(target_arch = "wasm32"))]
        if self.filled_by != std::process::id() {
            // Filled before a fork: another process has these bytes.
            self.bytes.zeroize();
            self.used = N;
        }
        if N - self.used < out.len() {
            // What is left is too short for this draw: wiped and skipped.
            self.bytes.zeroize();
            // Empty until the read succeeds: a failed read leaves zeros,
            // which are never handed out.
            self.used = N;
            getrandom::fill(&mut self.bytes)
                .map_err(|_| Error::InvalidArgument("no system randomness"))?;
            self.used = 0;
            #[cfg(not(target_arch = "wasm32"))]
            {
                self.filled_by = std::process::id();
            }
        }
        let taken = &mut self.bytes[self.used..self.used + out.len()];
        out.copy_from_slice(taken);
        taken.zeroize();
        self.used += out.len();
        Ok(())
    }
}

impl<const N: usize> Drop for Pool<N> {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_never_repeat_and_handed_out_bytes_are_wiped() {
        let mut pool = Pool::<96>::new();
        let mut seen = std::collections::HashSet::new();
        // Sizes that leave a short tail, so refills skip bytes too.
        for round in 0..64 {
            let mut out = [0u8; 40];
            let len = if round % 3 == 0 { 40 } else { 16 };
            pool.fill(&mut out[..len]).unwrap();
            assert!(seen.insert(out[..len].to_vec()), "a draw repeated");
            assert!(
                pool.bytes[..pool.used].iter().all(|&b| b == 0),
                "a handed-out byte stayed in the buffer"
            );
        }
    }

    /// A pool filled by another process (as after a fork) hands out none
    /// of what it holds: it reads afresh.
    #[test]
    fn bytes_filled_by_another_process_are_not_handed_out() {
        let mut pool = Pool::<64>::new();
        let mut first = [0u8; 16];
        pool.fill(&mut first).unwrap();
        let inherited = pool.bytes;
        pool.filled_by = pool.filled_by.wrapping_add(1);
        let mut next = [0u8; 16];
        pool.fill(&mut next).unwrap();
        assert_ne!(next[..], inherited[16..32], "the parent's next bytes");
        assert_eq!(pool.used, 16, "read afresh");
        assert_eq!(pool.filled_by, std::process::id());
    }

    #[test]
    fn a_draw_longer_than_the_pool_is_refused() {
        let mut pool = Pool::<16>::new();
        let mut out = [0u8; 17];
        assert!(matches!(
            pool.fill(&mut out),
            Err(Error::InvalidArgument(_))
        ));
        pool.fill(&mut out[..16]).unwrap();
        assert_ne!(out[..16], [0; 16]);
    }
}
