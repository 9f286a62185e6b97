//! Builds the `keyferry` command's built-in application components (the
//! HTTP responder and echo) from `guest/examples`, for `serve` to embed.

#[path = "../../guest/components.rs"]
mod components;

fn main() {
    let root = components::workspace_root(2);
    components::rerun_if_guest_changed(&root);
    components::ensure_target();
    // Without std in the component: fewer imports, cheaper instances.
    components::examples(&root, &["component-runtime"], &["http_app", "echo_app"]);
}
