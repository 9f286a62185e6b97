//! Stock `wasi:http` components, made servable (DESIGN section 9).
//!
//! A component that exports `wasi:http/incoming-handler@0.2.x` is composed
//! at load time with the front keyferry ships (the record layer, an
//! HTTP/1.1 codec, and the `wasi:http/types` and `wasi:io` interfaces the
//! tenant imports). The result exports `keyferry:dataplane/connection`
//! like any application component, the front's
//! `keyferry:dataplane/http-session`, and the tenant's handler; the host
//! hands each request the front decodes to the handler
//! ([`crate::GuestInstance`]). The tenant is not modified.
//!
//! The host drives the two itself because a composition cannot be cyclic
//! (the tenant imports the front's `wasi:http/types`, so the front cannot
//! import the tenant's handler), and a third component to call the
//! handler cost every connection's instance three more core instances, a
//! linear memory and a table.
//!
//! The tenant's imports that carry plaintext are wired to the front, so
//! request and response bytes stay in the sandbox. The rest (randomness,
//! the wall clock, the environment, exit) come from the host. An import
//! that is neither is refused here, by name, before anything runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};
use wac_graph::types::{Package, are_semver_compatible};
use wac_graph::{CompositionGraph, EncodeOptions};

/// The front of a served `wasi:http` component: the guest library built
/// with `http-front` (shipped prebuilt, as the reference component is).
pub const HTTP_FRONT: &[u8] = include_bytes!("../components/keyferry_http_front.wasm");

/// The interface every keyferry application component exports.
pub const CONNECTION: &str = "keyferry:dataplane/connection@0.1.0";

/// The front's interface the host calls for each request of a composed
/// `wasi:http` component.
pub const HTTP_SESSION: &str = "keyferry:dataplane/http-session@0.1.0";

/// The tenant's export a composed `wasi:http` component serves with, at
/// whichever 0.2.x version it was built.
pub const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2.";

/// What a component is, judged by its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentKind {
    /// A keyferry application component (`keyferry:dataplane/connection`).
    Application,
    /// A stock `wasi:http` component (`wasi:http/incoming-handler@0.2.x`).
    WasiHttp,
}

/// Why a component cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    /// The bytes are not a WebAssembly component (a core module, or not
    /// Wasm at all).
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// The component exports neither `keyferry:dataplane/connection` nor
    /// `wasi:http/incoming-handler@0.2.x`.
    #[error(
        "the component exports neither keyferry:dataplane/connection nor wasi:http/incoming-handler@0.2.x (it exports: {exports})"
    )]
    WrongWorld {
        /// What it does export, comma-separated.
        exports: String,
    },
    /// The component imports an interface a served component cannot have.
    #[error(
        "the component imports {import}, which a served wasi:http component cannot use: {reason}"
    )]
    UnsupportedImport {
        /// The import's name, e.g. `wasi:sockets/tcp@0.2.0`.
        import: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The composition failed (a type that does not match, for one).
    #[error("composing the component with keyferry's front failed: {0}")]
    Composition(String),
}

/// Imports the host provides to a served component: none of them carries
/// plaintext or a `wasi:io` type.
const FROM_HOST: &[&str] = &[
    "wasi:random/random@0.2",
    "wasi:random/insecure@0.2",
    "wasi:random/insecure-seed@0.2",
    "wasi:clocks/wall-clock@0.2",
    "wasi:cli/environment@0.2",
    "wasi:cli/exit@0.2",
    "wasi:cli/terminal-input@0.2",
    "wasi:cli/terminal-output@0.2",
    "wasi:cli/terminal-stdin@0.2",
    "wasi:cli/terminal-stdout@0.2",
    "wasi:cli/terminal-stderr@0.2",
];

/// Whether `name` (`pkg/iface@version`) is one of `prefixes` (`pkg/iface@major.minor`).
fn listed(name: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| name.starts_with(p))
}

/// What a component is, from its exports. Parses the component; compiles
/// nothing.
pub fn kind_of(wasm: &[u8]) -> Result<ComponentKind, ComposeError> {
    match wasm.get(..8) {
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
        Some([0, b'a', b's', b'm', _, _, 0, 0]) => {
            return Err(ComposeError::NotAComponent(
                "a core WebAssembly module (build for wasm32-wasip2, or wrap it with `wasm-tools component new`)".into(),
            ));
        }
        _ => {
            return Err(ComposeError::NotAComponent(
                "not WebAssembly at all (magic header not detected)".into(),
            ));
        }
    }
    let mut graph = CompositionGraph::new();
    let package = Package::from_bytes("keyferry:probe", None, wasm.to_vec(), graph.types_mut())
        .map_err(|e| ComposeError::NotAComponent(format!("{e:#}")))?;
    let world = &graph.types()[package.ty()];
    if world.exports.contains_key(CONNECTION) {
        return Ok(ComponentKind::Application);
    }
    if world
        .exports
        .keys()
        .any(|e| e.starts_with(INCOMING_HANDLER))
    {
        return Ok(ComponentKind::WasiHttp);
    }
    Err(ComposeError::WrongWorld {
        exports: if world.exports.is_empty() {
            "nothing".into()
        } else {
            world.exports.keys().cloned().collect::<Vec<_>>().join(", ")
        },
    })
}

/// Compositions made in this process, by the tenant's SHA-256.
type Compositions = Mutex<HashMap<[u8; 32], Arc<Vec<u8>>>>;

/// Compositions already made in this process, by the tenant's SHA-256: a
/// component is composed once however many engines load it.
fn cache() -> &'static Compositions {
    static CACHE: OnceLock<Compositions> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// Composes a stock `wasi:http` component (the tenant) with the front.
/// Cached by the tenant's hash.
pub fn compose_wasi_http(tenant: &[u8]) -> Result<Arc<Vec<u8>>, ComposeError> {
    let hash: [u8; 32] = Sha256::digest(tenant).into();
    if let Some(done) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&hash) {
        return Ok(done.clone());
    }
    let composed = Arc::new(compose(tenant)?);
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(hash, composed.clone());
    Ok(composed)
}

fn compose(tenant: &[u8]) -> Result<Vec<u8>, ComposeError> {
    let failed = |e: &dyn std::fmt::Display| ComposeError::Composition(e.to_string());
    let mut graph = CompositionGraph::new();
    let load = |graph: &mut CompositionGraph, name: &str, bytes: &[u8]| {
        Package::from_bytes(name, None, bytes.to_vec(), graph.types_mut())
    };
    let front =
        load(&mut graph, "keyferry:front", HTTP_FRONT).map_err(|e| failed(&format!("{e:#}")))?;
    let tenant = load(&mut graph, "keyferry:tenant", tenant)
        .map_err(|e| ComposeError::NotAComponent(format!("{e:#}")))?;
    let names = |p: &Package, imports: bool| -> Vec<String> {
        let world = &graph.types()[p.ty()];
        let map = if imports {
            &world.imports
        } else {
            &world.exports
        };
        map.keys().cloned().collect()
    };
    let front_exports = names(&front, false);
    let tenant_imports = names(&tenant, true);
    let tenant_exports = names(&tenant, false);
    let handler = tenant_exports
        .iter()
        .find(|e| e.starts_with(INCOMING_HANDLER))
        .cloned()
        .ok_or_else(|| ComposeError::WrongWorld {
            exports: tenant_exports.join(", "),
        })?;
    let from_front = |import: &str| {
        front_exports
            .iter()
            .find(|e| are_semver_compatible(e, import))
            .cloned()
    };
    for import in &tenant_imports {
        if from_front(import).is_none() && !listed(import, FROM_HOST) {
            return Err(ComposeError::UnsupportedImport {
                import: import.clone(),
                reason: refusal(import),
            });
        }
    }
    let front = graph.register_package(front).map_err(|e| failed(&e))?;
    let tenant = graph.register_package(tenant).map_err(|e| failed(&e))?;
    let (front, tenant) = (graph.instantiate(front), graph.instantiate(tenant));
    // The front's interfaces the tenant imports are exported too: the
    // handler's type names their resources, and an export may only name
    // resources the component exports.
    let mut exported = Vec::new();
    for import in &tenant_imports {
        if let Some(export) = from_front(import) {
            let alias = graph
                .alias_instance_export(front, &export)
                .map_err(|e| failed(&e))?;
            graph
                .set_instantiation_argument(tenant, import, alias)
                .map_err(|e| failed(&e))?;
            if !exported.contains(&export) {
                graph.export(alias, &export).map_err(|e| failed(&e))?;
                exported.push(export);
            }
        }
    }
    for (instance, name) in [
        (front, CONNECTION),
        (front, HTTP_SESSION),
        (tenant, handler.as_str()),
    ] {
        let alias = graph
            .alias_instance_export(instance, name)
            .map_err(|e| failed(&e))?;
        graph.export(alias, name).map_err(|e| failed(&e))?;
    }
    graph
        .encode(EncodeOptions {
            define_components: true,
            validate: true,
            processor: None,
        })
        .map_err(|e| failed(&e))
}

/// Why an import cannot be given to a served component.
fn refusal(import: &str) -> &'static str {
    if import.starts_with("wasi:http/") {
        "keyferry provides wasi:http types and a refusing outgoing-handler at 0.2.x only"
    } else if import.starts_with("wasi:") {
        "keyferry does not provide this WASI interface to served components"
    } else {
        "it is not a WASI interface keyferry provides"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_parts_are_components_of_their_kind() {
        assert_eq!(kind_of(HTTP_FRONT), Ok(ComponentKind::Application));
        assert!(matches!(
            kind_of(b"\0asm\x01\0\0\0"),
            Err(ComposeError::NotAComponent(_))
        ));
        assert!(matches!(
            kind_of(b"junk"),
            Err(ComposeError::NotAComponent(_))
        ));
    }
}
