//! The components the library and the CLI ship prebuilt (`host/components`,
//! `host/cli/components`) are exactly what the guest's sources build: this
//! test's build script rebuilds them (release, the pinned toolchain, source
//! paths remapped), and each must match its committed file byte for byte.
//! After changing the guest, write the new ones with
//! `KEYFERRY_UPDATE_COMPONENTS=1 cargo test -p keyferry-tests --test artifacts`
//! and commit them.

use std::path::{Path, PathBuf};

fn rebuilt(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("OUT_DIR")).join(format!("{name}.wasm"))).expect("rebuilt")
}

fn shipped(dir: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir)
        .join(format!("{name}.wasm"))
}

#[test]
fn shipped_components_are_what_the_sources_build() {
    if std::env::var("KEYFERRY_GUEST_PROFILE").is_ok_and(|p| p != "release") {
        eprintln!("guest components built with another profile: nothing to compare");
        return;
    }
    let update = std::env::var_os("KEYFERRY_UPDATE_COMPONENTS").is_some();
    let mut stale = Vec::new();
    for (dir, name) in [
        ("host/components", "keyferry_guest"),
        ("host/components", "keyferry_guest_host_keys"),
        ("host/components", "keyferry_http_front"),
        ("host/cli/components", "http_app"),
        ("host/cli/components", "echo_app"),
    ] {
        let (path, bytes) = (shipped(dir, name), rebuilt(name));
        if std::fs::read(&path).ok().as_deref() == Some(&bytes[..]) {
            continue;
        }
        if update {
            std::fs::write(&path, &bytes).expect("write the component");
        } else {
            stale.push(format!("{dir}/{name}.wasm"));
        }
    }
    assert!(
        stale.is_empty(),
        "shipped components differ from a rebuild of the sources: {stale:?}; \
         rebuild them with KEYFERRY_UPDATE_COMPONENTS=1 cargo test -p keyferry-tests --test artifacts"
    );
}
