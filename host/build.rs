//! Builds the reference guest component for `wasm32-wasip2` and embeds it.
//!
//! The guest is built twice: for the `dataplane` world (WASI only, runs
//! under the stock wasmtime CLI) and with the `host-keys` feature for the
//! `dataplane-host-keys` world. Nested cargo gets its own target directory
//! under OUT_DIR and a cleaned environment, so it neither deadlocks on the
//! outer build's lock nor inherits the host's flags.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the workspace root")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));

    for path in [
        "guest/src",
        "guest/Cargo.toml",
        "wit",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=KEYFERRY_GUEST_PROFILE");

    ensure_target();

    let target_dir = out_dir.join("guest-target");
    let plain = build_guest(&root, &target_dir, &[]);
    let plain_out = out_dir.join("keyferry_guest.wasm");
    std::fs::copy(&plain, &plain_out).expect("copy guest component");
    let host_keys = build_guest(&root, &target_dir, &["--features", "host-keys"]);
    let host_keys_out = out_dir.join("keyferry_guest_host_keys.wasm");
    std::fs::copy(&host_keys, &host_keys_out).expect("copy host-keys guest component");

    let plugins = build_examples(&root, &target_dir);

    let generated = format!(
        "/// The reference guest component (`dataplane` world).\n\
         pub const GUEST_COMPONENT: &[u8] = include_bytes!({plain:?});\n\
         /// The reference guest built for the `dataplane-host-keys` world.\n\
         pub const GUEST_COMPONENT_HOST_KEYS: &[u8] = include_bytes!({hk:?});\n\
         /// Where the plain component was written, for tools that run it directly.\n\
         pub const GUEST_COMPONENT_PATH: &str = {plain:?};\n\
         /// The `uppercase_plugin` example (guest/examples), a plugin on the record layer.\n\
         pub const EXAMPLE_PLUGIN_UPPERCASE_PATH: &str = {up:?};\n\
         /// The `misbehaving_plugin` example: traps, loops or exhausts memory on request.\n\
         pub const EXAMPLE_PLUGIN_MISBEHAVING_PATH: &str = {mis:?};\n",
        plain = plain_out.display().to_string(),
        hk = host_keys_out.display().to_string(),
        up = plugins[0].display().to_string(),
        mis = plugins[1].display().to_string(),
    );
    std::fs::write(out_dir.join("guest_artifacts.rs"), generated)
        .expect("write guest_artifacts.rs");
}

/// Adds the wasm target with rustup when it is missing; RUSTUP_AUTO_INSTALL
/// is off on CI machines, so nothing else would.
fn ensure_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .and_then(|o| {
            o.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string()))
        });
    if let Some(sysroot) = &sysroot
        && sysroot.join("lib/rustlib").join(TARGET).exists()
    {
        return;
    }
    println!("cargo:warning=adding the {TARGET} target with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!(
            "the {TARGET} target is not installed and `rustup target add {TARGET}` failed ({other:?}); \
             install it by hand and build again"
        ),
    }
}

/// Builds the example plugins; they share the guest's dependencies, so this
/// costs little once the reference guest is built.
fn build_examples(root: &Path, target_dir: &Path) -> [PathBuf; 2] {
    let names = ["uppercase_plugin", "misbehaving_plugin"];
    let mut args = vec!["--no-default-features"];
    for name in names {
        args.extend(["--example", name]);
    }
    run_guest_cargo(root, target_dir, &args, false);
    let dir = target_dir.join(TARGET).join(profile_dir()).join("examples");
    names.map(|n| dir.join(format!("{n}.wasm")))
}

fn profile() -> String {
    env::var("KEYFERRY_GUEST_PROFILE").unwrap_or_else(|_| "release".into())
}

fn profile_dir() -> String {
    match profile().as_str() {
        "dev" => "debug".into(),
        p => p.into(),
    }
}

fn build_guest(root: &Path, target_dir: &Path, extra: &[&str]) -> PathBuf {
    run_guest_cargo(root, target_dir, extra, true);
    target_dir
        .join(TARGET)
        .join(profile_dir())
        .join("keyferry_guest.wasm")
}

fn run_guest_cargo(root: &Path, target_dir: &Path, extra: &[&str], lib: bool) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = profile();
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--package",
            "keyferry-guest",
            "--target",
            TARGET,
            "--profile",
            &profile,
        ])
        .args(if lib { &["--lib"][..] } else { &[][..] })
        .args(extra)
        .env("CARGO_TARGET_DIR", target_dir)
        // The guest is small; a whole-program optimized build is fast and
        // is what the benchmarks should measure.
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        // wasmtime supports the SIMD proposal; let LLVM and the crypto
        // crates use 128-bit vectors.
        .env(
            "CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS",
            "-Ctarget-feature=+simd128",
        );
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "CARGO_LLVM_COV",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    for (key, _) in env::vars() {
        if key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_CFG_")
            || key.starts_with("DEP_")
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().expect("run cargo for the guest");
    assert!(
        status.success(),
        "building the guest component failed; see the cargo output above"
    );
}
