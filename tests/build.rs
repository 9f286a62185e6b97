//! Builds the test plugins from `guest/examples`: `uppercase_plugin` (a
//! plugin on the guest library) and `misbehaving_plugin` (traps, loops and
//! memory hogs on request).

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
}
