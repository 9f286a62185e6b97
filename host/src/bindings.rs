
wasmtime::component::bindgen!({
    path: "../wit",
    world: "dataplane-host-keys",
});
