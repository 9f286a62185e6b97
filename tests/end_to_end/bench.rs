//! `keyferry bench` prints its table and writes the same figures as a
//! chart and as JSON.

use std::process::Command;

use keyferry_tests::process::{keyferry, temp_dir};

/// A short `keyferry bench` into `out`, with `extra` arguments.
fn bench(out: &std::path::Path, extra: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(keyferry())
        .args(["bench", "--records", "2", "--rounds", "1", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// `run`'s stdout, after checking it succeeded.
fn succeeded(run: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    stdout
}

#[test]
fn bench_writes_its_table_a_chart_and_json() {
    let out = temp_dir("bench");
    let run = bench(&out, &[]);
    let stdout = succeeded(&run);
    assert!(stdout.contains("guest/rustls"), "{stdout}");
    assert!(stdout.contains("wrote "), "{stdout}");
    // No progress bar when stderr is not a terminal.
    assert!(!String::from_utf8_lossy(&run.stderr).contains("round 1"));

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("bench.json")).unwrap()).unwrap();
    let suites = json["suites"].as_array().unwrap();
    assert_eq!(suites.len(), keyferry::suites::ALL.len());
    for s in suites {
        for variant in ["guest", "guest_host_key", "native", "rustls"] {
            for op in ["seal", "open"] {
                let mbps = s[variant][op].as_f64().unwrap();
                assert!(mbps > 0.0, "{} {variant} {op}: {mbps}", s["suite"]);
            }
        }
        // Copies across the boundary, counted: one each way, with the key
        // in the guest and with a host-resident key (whose sealed records
        // and opened bodies stay in the host). A new crossing shows up here.
        for (variant, copies) in [("guest_copies", 1.0), ("guest_host_key_copies", 1.0)] {
            for field in ["seal_in", "seal_out", "open_in", "open_out"] {
                let got = s[variant][field].as_f64().unwrap();
                assert!(
                    (copies..copies + 0.01).contains(&got),
                    "{} {variant} {field}: {got}",
                    s["suite"]
                );
            }
        }
        assert!(stdout.contains("across the sandbox boundary"), "{stdout}");
        // The table shows the same figure, to one decimal.
        let guest_seal = s["guest"]["seal"].as_f64().unwrap();
        assert!(
            stdout.contains(&format!("{guest_seal:.1}")),
            "{guest_seal:.1} not in {stdout}"
        );
    }
    for handoff in ["handoff", "handoff_on_demand"] {
        assert_eq!(json[handoff]["runs"], 10, "{handoff}");
        assert!(
            json[handoff]["median_us"].as_f64().unwrap() > 0.0,
            "{handoff}"
        );
    }
    assert!(
        stdout.contains("serve's HTTP component, pooled slots"),
        "{stdout}"
    );

    let svg = std::fs::read_to_string(out.join("bench.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
    for label in [
        "TLS 1.3 AES-128-GCM",
        "TLS 1.2 ChaCha20",
        "rustls (ring)",
        "seal",
        "open",
    ] {
        assert!(svg.contains(label), "{label} not in the chart");
    }
}

/// `--soft-aes` runs the comparison binary (built here from
/// host/cli/soft-aes, with software AES) and sets its figures beside the
/// guest's, in the table and the JSON.
#[test]
fn bench_compares_the_guests_aes_gcm_with_software_aes_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/cli/soft-aes");
    let built = Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "--quiet"])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(built.success(), "building host/cli/soft-aes");
    let binary = dir.join("target/release/keyferry-soft-aes");
    let out = temp_dir("bench-soft-aes");
    let stdout = succeeded(&bench(&out, &["--soft-aes".as_ref(), binary.as_os_str()]));
    assert!(stdout.contains("guest/native-soft"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("bench.json")).unwrap()).unwrap();
    for s in json["suites"].as_array().unwrap() {
        let aes = s["suite"].as_str().unwrap().contains("_GCM_");
        for op in ["seal", "open"] {
            let mbps = s["native_soft"][op].as_f64();
            // Figures for the AES-GCM suites, none for ChaCha20-Poly1305.
            assert_eq!(mbps.is_some_and(|m| m > 0.0), aes, "{s}");
        }
    }
    // A binary that prints something else is refused, not half read.
    let run = bench(&out, &["--soft-aes".as_ref(), "/bin/true".as_ref()]);
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("not both figures for AES-"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
