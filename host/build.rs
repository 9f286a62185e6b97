//! Builds the reference guest component for `wasm32-wasip2`, which the
//! library embeds: once for the `dataplane` world (WASI only, runs under
//! the stock wasmtime CLI) and once with the `host-keys` feature for the
//! `dataplane-host-keys` world.

#[path = "../guest/components.rs"]
mod components;

fn main() {
    let root = components::workspace_root(1);
    components::rerun_if_guest_changed(&root);
    components::ensure_target();
    components::library(&root, &[], "keyferry_guest");
    components::library(&root, &["host-keys"], "keyferry_guest_host_keys");
}
