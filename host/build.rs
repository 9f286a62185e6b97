//! Builds the reference guest component for `wasm32-wasip2`, which the
//! library embeds: once for the `dataplane` world (WASI only, runs under
//! the stock wasmtime CLI) and once with the `host-keys` feature for the
//! `dataplane-host-keys` world.

#[path = "../guest/components.rs"]
mod components;

fn main() {
    let root = components::workspace_root(1);
    components::rerun_if_guest_changed(&root);
    // cargo-fuzz builds the library for its parsers (handshake driver,
    // PROXY header, worker frames) on nightly, which need no component:
    // embed empty ones rather than build the guest with fuzzing flags.
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        components::placeholder("keyferry_guest");
        components::placeholder("keyferry_guest_host_keys");
        return;
    }
    components::ensure_target();
    components::library(&root, &[], "keyferry_guest");
    components::library(&root, &["host-keys"], "keyferry_guest_host_keys");
}
