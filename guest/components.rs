//! Builds components from the `keyferry-guest` crate for `wasm32-wasip2`.
//! Shared by the build scripts that need them (the library's reference
//! component, the CLI's built-in applications, the tests' plugins): each
//! includes this file with `#[path]`.
//!
//! Nested cargo gets a cleaned environment, so it does not inherit the
//! host's flags, and a target directory of its own beside the outer
//! build's profiles (`target/guest-components`), so it never waits on the
//! outer build's lock. That directory is shared by every build script and
//! profile: the guest and its dependencies compile once per checkout
//! rather than once per build script (six copies of ~180 MiB each, and
//! the CPU time to make them, before it was shared).
#![allow(dead_code, reason = "each build script uses the part it needs")]

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// The workspace root, from a build script whose manifest is `depth`
/// folders below it.
pub fn workspace_root(depth: usize) -> PathBuf {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    manifest_dir
        .ancestors()
        .nth(depth)
        .expect("the crate sits inside the workspace")
        .to_path_buf()
}

/// Tells cargo to rebuild when the guest's sources change.
pub fn rerun_if_guest_changed(root: &Path) {
    for path in [
        "guest/src",
        "guest/record",
        "guest/simd",
        "guest/examples",
        "guest/Cargo.toml",
        "guest/components.rs",
        "tests/tenants",
        "wit",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=KEYFERRY_GUEST_PROFILE");
}

/// Adds the wasm target with rustup when it is missing; RUSTUP_AUTO_INSTALL
/// is off on CI machines, so nothing else would.
pub fn ensure_target() {
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

/// Builds the guest library as a component with `features`, and copies it
/// to `OUT_DIR/<name>.wasm`.
pub fn library(root: &Path, features: &[&str], name: &str) -> PathBuf {
    let mut args = vec!["--lib"];
    for feature in features {
        args.extend(["--features", feature]);
    }
    let _lock = lock_target_dir();
    cargo(root, &args);
    copy_out(
        &target_dir()
            .join(TARGET)
            .join(profile_dir())
            .join("keyferry_guest.wasm"),
        name,
    )
}

/// Builds the front keyferry composes with a stock `wasi:http` component
/// (DESIGN section 9): the guest library with `http-front` and without
/// the reference component, copied to `OUT_DIR/keyferry_http_front.wasm`.
pub fn http_front(root: &Path) -> PathBuf {
    let _lock = lock_target_dir();
    cargo(
        root,
        &["--lib", "--no-default-features", "--features", "http-front"],
    );
    let dir = target_dir().join(TARGET).join(profile_dir());
    copy_out(&dir.join("keyferry_guest.wasm"), "keyferry_http_front")
}

/// Builds the stock `wasi:http` components the tests serve
/// (`tests/tenants`, two workspaces with their own locks), and copies each
/// to `OUT_DIR/<name>.wasm`: `plain_tenant`, `wstd_example`, `api_proxy`,
/// `api_proxy_streaming`.
pub fn tenants(root: &Path) -> Vec<PathBuf> {
    let _lock = lock_target_dir();
    cargo(
        root,
        &[
            "--manifest-path",
            "tests/tenants/Cargo.toml",
            "--package",
            "plain-tenant",
            "--package",
            "wstd-example",
            "--package",
            "api-proxy-streaming",
        ],
    );
    cargo(
        root,
        &[
            "--manifest-path",
            "tests/tenants/api-proxy/Cargo.toml",
            "--package",
            "api-proxy",
        ],
    );
    let dir = target_dir().join(TARGET).join(profile_dir());
    [
        "plain_tenant",
        "wstd_example",
        "api_proxy",
        "api_proxy_streaming",
    ]
    .iter()
    .map(|n| copy_out(&dir.join(format!("{n}.wasm")), n))
    .collect()
}

/// Builds the JavaScript `wasi:http` component the tests serve
/// (`tests/tenants/js`) with componentize-js, installed from npm by its
/// committed lock into `target/guest-components/js-tenant`, and copies it
/// to `OUT_DIR/js_tenant.wasm`. Needs Node.js and npm.
pub fn js_tenant(root: &Path) -> PathBuf {
    let _lock = lock_target_dir();
    let src = root.join("tests/tenants/js");
    let work = target_dir().join("js-tenant");
    let deps = work.join("wit/deps");
    std::fs::create_dir_all(&deps).unwrap_or_else(|e| panic!("create {}: {e}", deps.display()));
    for file in ["package.json", "package-lock.json", "app.js"] {
        copy(&src.join(file), &work.join(file));
    }
    copy(&src.join("world.wit"), &work.join("wit/world.wit"));
    // componentize-js 0.23.0's engine is built against wasi 0.2.10: the
    // same WIT at that version (items added later are declared as of it;
    // the engine imports none of them).
    for package in std::fs::read_dir(root.join("wit/deps")).expect("wit/deps") {
        let package = package.expect("wit/deps entry").path();
        let to = deps.join(package.file_name().expect("a name"));
        std::fs::create_dir_all(&to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
        for file in std::fs::read_dir(&package).expect("a WIT package") {
            let file = file.expect("a WIT file").path();
            let text = std::fs::read_to_string(&file).expect("read WIT");
            let text = text
                .replace("@0.2.12", "@0.2.10")
                .replace("@since(version = 0.2.11)", "@since(version = 0.2.10)")
                .replace("@since(version = 0.2.12)", "@since(version = 0.2.10)");
            std::fs::write(to.join(file.file_name().expect("a name")), text).expect("write WIT");
        }
    }
    let lock = std::fs::read(work.join("package-lock.json")).expect("the lock");
    let installed = work.join("node_modules/.keyferry-lock");
    if std::fs::read(&installed).ok().as_deref() != Some(&lock[..]) {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel", "error"])
                .current_dir(&work),
            "npm ci (install Node.js 20 and npm: apt-get install nodejs npm)",
        );
        std::fs::write(&installed, &lock).expect("mark the install");
    }
    run(
        Command::new("node")
            .args([
                "node_modules/@bytecodealliance/componentize-js/src/cli.js",
                "app.js",
                "--wit",
                "wit",
                "--world-name",
                "app",
                "--out",
                "app.wasm",
            ])
            .current_dir(&work),
        "componentize-js",
    );
    copy_out(&work.join("app.wasm"), "js_tenant")
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("{what}: could not start it: {e}"));
    assert!(status.success(), "{what} failed: {status}");
}

/// Builds application components from `guest/examples` (without the
/// reference component's exports) with `features`, and copies each to
/// `OUT_DIR/<name>.wasm`.
pub fn examples(root: &Path, features: &[&str], names: &[&str]) -> Vec<PathBuf> {
    let mut args = vec!["--no-default-features"];
    for feature in features {
        args.extend(["--features", feature]);
    }
    for name in names {
        args.extend(["--example", name]);
    }
    let _lock = lock_target_dir();
    cargo(root, &args);
    let dir = target_dir()
        .join(TARGET)
        .join(profile_dir())
        .join("examples");
    names
        .iter()
        .map(|n| copy_out(&dir.join(format!("{n}.wasm")), n))
        .collect()
}

/// Writes an empty `OUT_DIR/<name>.wasm` for builds that embed no
/// component (fuzzing); loading it fails with a typed error.
pub fn placeholder(name: &str) -> PathBuf {
    let to = out_dir().join(format!("{name}.wasm"));
    std::fs::write(&to, b"").unwrap_or_else(|e| panic!("write {}: {e}", to.display()));
    to
}

fn out_dir() -> PathBuf {
    PathBuf::from(env::var("OUT_DIR").expect("set by cargo"))
}

/// `OUT_DIR` is `<target>/<profile>/build/<package>-<hash>/out`; the
/// shared directory sits in `<target>`. A layout that does not match gets
/// a directory of its own under `OUT_DIR`, as every build had before.
fn target_dir() -> PathBuf {
    let out = out_dir();
    match out.ancestors().nth(4) {
        Some(target) if out.ancestors().nth(2).is_some_and(|b| b.ends_with("build")) => {
            target.join("guest-components")
        }
        _ => out.join("guest-target"),
    }
}

/// Holds the shared target directory from a build to the copy of its
/// output. Cargo's own lock covers only the nested build: two build
/// scripts that ask for the library with different features produce the
/// same file name, and without this one could copy the other's component.
fn lock_target_dir() -> std::fs::File {
    let dir = target_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join("keyferry-build-script.lock");
    let file =
        std::fs::File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    file
}

fn copy_out(built: &Path, name: &str) -> PathBuf {
    let to = out_dir().join(format!("{name}.wasm"));
    std::fs::copy(built, &to).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
    to
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

/// Cargo's home, where registry sources are unpacked.
fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"))
}

fn cargo(root: &Path, extra: &[&str]) {
    let extra: Vec<&str> = if extra.contains(&"--package") {
        extra.to_vec()
    } else {
        ["--package", "keyferry-guest"]
            .iter()
            .chain(extra)
            .copied()
            .collect()
    };
    let extra = &extra[..];
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = profile();
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--locked",
            "--target",
            TARGET,
            "--profile",
            &profile,
        ])
        .args(extra)
        .env("CARGO_TARGET_DIR", target_dir())
        // The guest is small; a whole-program optimized build is fast and
        // is what the benchmarks should measure.
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        // Debug info goes, function names stay: perf (with
        // KEYFERRY_PERF_MAP=1) and trap backtraces then name guest code.
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        // wasmtime supports the SIMD proposal; let LLVM and the crypto
        // crates use 128-bit vectors. Source paths in panic locations are
        // written without this machine's cargo home or checkout, so the
        // components are the same bytes wherever they are built with the
        // same toolchain (the shipped ones are checked against a rebuild).
        .env(
            "CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS",
            format!(
                "-Ctarget-feature=+simd128 --remap-path-prefix={}=/cargo --remap-path-prefix={}=/keyferry",
                cargo_home().display(),
                root.display()
            ),
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
        "building guest components failed; see the cargo output above"
    );
}
