//! Builds the test plugins from `guest/examples`: `uppercase_plugin` (a
//! plugin on the guest library), `misbehaving_plugin` (traps, loops and
//! memory hogs on request) and `hostile_plugin`. Also rebuilds the
//! components the library and the CLI ship as committed artifacts
//! (`host/components`, `host/cli/components`), which `tests/artifacts.rs`
//! compares with them byte for byte.

#[path = "../guest/components.rs"]
mod components;

fn main() {
    let root = components::workspace_root(1);
    components::rerun_if_guest_changed(&root);
    components::ensure_target();
    // Plugins with std, as a plugin author may write them.
    components::examples(
        &root,
        &[],
        &["uppercase_plugin", "misbehaving_plugin", "hostile_plugin"],
    );
    // The shipped components, built as they were for the artifacts: the
    // reference component for both worlds, and the CLI's applications
    // without std (fewer imports, cheaper instances).
    components::library(&root, &[], "keyferry_guest");
    components::library(&root, &["host-keys"], "keyferry_guest_host_keys");
    components::examples(&root, &["component-runtime"], &["http_app", "echo_app"]);
    // The front a stock wasi:http component is composed with.
    components::http_front(&root);
    // Stock wasi:http components from other toolchains, served unmodified.
    components::tenants(&root);
    // And one from another language: JavaScript, through componentize-js.
    components::js_tenant(&root);
}
