wasmtime::component::bindgen!({
    path: "../wit",
    world: "application-plugin",
});
