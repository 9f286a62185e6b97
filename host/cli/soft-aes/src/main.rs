//! Seals and opens records with RustCrypto's AES-GCM built with software
//! AES, and prints MB/s, one line per AEAD and operation:
//! `AES-128-GCM seal 201.3`. `keyferry bench --soft-aes PATH` runs it with
//! its own records, rounds and record size, and sets the figures beside
//! the guest's.
//!
//! Usage: `keyferry-soft-aes RECORDS ROUNDS RECORD_SIZE`.

#[cfg(not(aes_backend = "soft"))]
compile_error!(
    "build from host/cli/soft-aes (its .cargo/config.toml sets --cfg aes_backend=\"soft\")"
);

use std::hint::black_box;
use std::time::Instant;

use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
use aes_gcm::{Aes128Gcm, Aes256Gcm};

/// The median of `rounds` timings of `records` records, in MB/s.
fn median(rounds: usize, bytes: usize, mut once: impl FnMut()) -> f64 {
    let mut rates: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            once();
            bytes as f64 / start.elapsed().as_secs_f64() / 1e6
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn run<A: AeadInOut + KeyInit>(name: &str, records: usize, rounds: usize, size: usize) {
    let aead = A::new_from_slice(&[0x3c; 32][..A::key_size()]).expect("key length");
    let nonce = Nonce::<A>::try_from(&[7u8; 12][..]).expect("nonce length");
    let aad = [23u8, 3, 3, 64, 17];
    let mut buffers = vec![vec![0xa5u8; size]; records];
    let mut tags = vec![Tag::<A>::default(); records];
    let seal = median(rounds, records * size, || {
        // Each round seals the last round's output again: the same work.
        for (buffer, tag) in buffers.iter_mut().zip(&mut tags) {
            *tag = aead
                .encrypt_inout_detached(&nonce, &aad, buffer.as_mut_slice().into())
                .expect("seal");
        }
        black_box(&buffers);
    });
    // Opening a copy, so every round opens the same records; the copy is
    // about 1% of the time.
    let open = median(rounds, records * size, || {
        for (buffer, tag) in buffers.iter().zip(&tags) {
            let mut copy = buffer.clone();
            aead.decrypt_inout_detached(&nonce, &aad, copy.as_mut_slice().into(), tag)
                .expect("open");
            black_box(&copy);
        }
    });
    println!("{name} seal {seal:.1}");
    println!("{name} open {open:.1}");
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("RECORDS ROUNDS RECORD_SIZE"))
        .collect();
    let [records, rounds, size] = args[..] else {
        panic!("usage: keyferry-soft-aes RECORDS ROUNDS RECORD_SIZE");
    };
    run::<Aes128Gcm>("AES-128-GCM", records.max(1), rounds.max(1), size);
    run::<Aes256Gcm>("AES-256-GCM", records.max(1), rounds.max(1), size);
}
