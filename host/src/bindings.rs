//! Generated wasmtime bindings for the `keyferry:dataplane` package: one
//! `bindgen!` for the largest world, so every WIT type has one Rust copy.
//! Smaller worlds (application plugins) are driven through the same
//! per-interface exports.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "dataplane-host-keys",
});
