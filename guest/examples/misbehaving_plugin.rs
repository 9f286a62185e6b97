//! A deliberately broken plugin, for the host's sandbox tests: it echoes,
//! except that a line `trap` makes it trap, `loop` makes it spin forever,
//! `grow` makes it allocate until its memory cap stops it, and `sleep`
//! makes it wait on a clock for an hour (a blocking WASI poll). The host
//! must end only that connection, with an alert, and keep serving others.
//! A line `print` is not broken at all: it writes to the plugin's stdout
//! and stderr (which the host discards), as a plugin's debug output or a
//! Rust panic message does, and echoes; the host must serve it.
#![cfg(target_arch = "wasm32")]

use keyferry_guest::application::{Application, Reply};
use keyferry_guest::connection::Facts;

struct Broken;

impl Application for Broken {
    fn new(_facts: &Facts) -> Self {
        Broken
    }

    fn receive(&mut self, plaintext: &[u8], reply: &mut Reply) {
        match String::from_utf8_lossy(plaintext).trim() {
            "trap" => core::arch::wasm32::unreachable(),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = core::hint::black_box(n.wrapping_add(1));
                }
            }
            "sleep" => std::thread::sleep(std::time::Duration::from_secs(3600)),
            "print" => {
                println!("plugin stdout");
                eprintln!("plugin stderr");
                reply.send(plaintext);
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    core::hint::black_box(&hoard);
                }
            }
            _ => reply.send(plaintext),
        }
    }
}

keyferry_guest::export_application!(Broken);
