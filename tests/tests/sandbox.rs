//! The sandbox's limits hold: a guest that runs out of fuel or memory traps
//! its own store only, with a typed error, and other instances carry on.

use keyferry::error::SandboxError;
use keyferry::{
    AeadAlgorithm, Error, ExecutionBound, GuestComponent, GuestEngine, SandboxConfig, TrapKind,
};

#[test]
fn running_out_of_fuel_is_a_typed_trap_and_poisons_only_that_instance() {
    let tight = GuestEngine::new(
        SandboxConfig::default().with_execution_bound(ExecutionBound::Fuel(1_000)),
    )
    .expect("engine");
    let component = GuestComponent::reference(&tight).expect("compile");
    match component.instantiate() {
        Err(e) if e.trap() == Some(TrapKind::OutOfFuel) => {}
        other => panic!("expected out of fuel, got {:?}", other.err()),
    }

    let roomy = GuestEngine::new(
        SandboxConfig::default().with_execution_bound(ExecutionBound::Fuel(50_000_000)),
    )
    .expect("engine");
    let component = GuestComponent::reference(&roomy).expect("compile");
    let g = component.instantiate().expect("instantiate within budget");
    // Sealing 4 MiB of ChaCha20 needs far more than 50M instructions.
    let big = vec![0u8; 4 << 20];
    match g.aead_seal(
        AeadAlgorithm::ChaCha20Poly1305,
        &[0; 32],
        &[0; 12],
        &[],
        &big,
    ) {
        Err(e) if e.trap() == Some(TrapKind::OutOfFuel) => {
            // wasmtime's own error, and its trap, stay attached as sources.
            let mut chain = Vec::new();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                chain.push(c.to_string());
                cause = c.source();
            }
            assert!(chain.iter().any(|c| c.contains("fuel")), "{chain:?}");
        }
        other => panic!("expected out of fuel, got {:?}", other.map(|v| v.len())),
    }
    assert!(g.is_poisoned());
    assert!(matches!(
        g.describe(),
        Err(Error::Sandbox(SandboxError::Poisoned))
    ));
    // A sibling instance of the same component is untouched.
    let sibling = component.instantiate().expect("instantiate");
    assert!(sibling.describe().unwrap().contains("keyferry-guest"));
}

#[test]
fn exceeding_the_memory_cap_is_a_typed_trap() {
    let engine =
        GuestEngine::new(SandboxConfig::default().with_memory_limit(8 << 20)).expect("engine");
    let component = GuestComponent::reference(&engine).expect("compile");
    let g = component.instantiate().expect("instantiate under the cap");
    let big = vec![0u8; 16 << 20];
    match g.aead_seal(AeadAlgorithm::Aes128Gcm, &[0; 16], &[0; 12], &[], &big) {
        Err(e) if e.trap() == Some(TrapKind::ResourceLimit) => {}
        other => panic!(
            "expected a resource-limit trap, got {:?}",
            other.map(|v| v.len())
        ),
    }
    assert!(matches!(
        g.self_check(),
        Err(Error::Sandbox(SandboxError::Poisoned))
    ));
    let sibling = component.instantiate().expect("instantiate");
    assert!(sibling.self_check().unwrap().contains("ok"));
}

#[test]
fn pooled_engines_instantiate_many_guests() {
    let engine = GuestEngine::new(SandboxConfig::default().with_pooling(16)).expect("engine");
    let component = GuestComponent::reference(&engine).expect("compile");
    let guests: Vec<_> = (0..16)
        .map(|_| component.instantiate().expect("instantiate"))
        .collect();
    let ids: std::collections::HashSet<_> = guests
        .iter()
        .map(|g| g.exchange_key().unwrap().id)
        .collect();
    assert_eq!(ids.len(), 16, "every instance makes its own exchange key");
    // The pool is full: the next instance is refused, not crashed.
    assert!(matches!(
        component.instantiate(),
        Err(Error::Sandbox(
            SandboxError::Trap { .. } | SandboxError::Engine { .. }
        ))
    ));
    drop(guests);
    component
        .instantiate()
        .expect("slots come back when instances drop");
}

#[test]
fn a_long_lived_instance_rotates_its_key_and_stays_bounded() {
    use keyferry::{Direction, TrafficKeyMaterial};
    use keyferry_record::{BlobError, Error as RecordError};
    let g = keyferry_tests::guest();
    let material = |i: u32| {
        let mut secret = [0u8; 32];
        secret[..4].copy_from_slice(&i.to_be_bytes());
        TrafficKeyMaterial::from_tls13_secret(
            AeadAlgorithm::ChaCha20Poly1305,
            Direction::Seal,
            &secret,
            0,
            u64::from(i),
        )
        .unwrap()
    };
    let first_key = g.exchange_key().unwrap();
    let early = g.seal_traffic_key(&material(u32::MAX)).unwrap();
    let every = keyferry_guest::instance::ROTATE_EVERY;
    let mut memory = Vec::new();
    for i in 0..4 * every {
        // What a shared instance does per connection: import, then end.
        let key = g
            .import_traffic_key(&g.seal_traffic_key(&material(i)).unwrap())
            .unwrap();
        g.drop_traffic_key(key).unwrap();
        if (i + 1) % every == 0 {
            memory.push(g.memory_bytes());
        }
    }
    assert!(!g.is_poisoned());
    assert_ne!(
        g.exchange_key().unwrap(),
        first_key,
        "the exchange key rotated"
    );
    // What it remembers stops growing once old epochs are retired.
    assert!(
        memory[3] <= memory[1] + 64 * 1024,
        "linear memory per 1024 imports: {memory:?}"
    );
    // A blob sealed to a key two rotations old opens nowhere.
    assert!(matches!(
        g.import_traffic_key(&early),
        Err(Error::Record(RecordError::Blob(BlobError::WrongRecipient)))
    ));
}

/// A client connection attached to the hostile plugin, after a real
/// handshake (a client, so ticket events are ones it could accept).
fn hostile_client(component: &GuestComponent) -> keyferry::DataPlane {
    use keyferry::handshake::Handshake;
    use keyferry_tests::handoff::{configs, run};
    use rustls::pki_types::ServerName;
    let suite = keyferry_tests::all_suites()[0];
    let configs = configs(suite);
    let hs = Handshake::client(
        &configs.client,
        ServerName::try_from("localhost").unwrap(),
        7,
    )
    .expect("client handshake");
    let mut peer: rustls::Connection = rustls::ServerConnection::new(configs.server.clone())
        .expect("peer")
        .into();
    let handoff = run(hs, &mut peer, 1 << 20, |_| {});
    let guest = component.instantiate().expect("instantiate");
    keyferry::DataPlane::new(guest, handoff).expect("attach").0
}

#[test]
fn a_guest_that_floods_events_is_refused_before_any_reaches_rustls() {
    let engine = GuestEngine::new(SandboxConfig::default()).expect("engine");
    let wasm = std::fs::read(keyferry_tests::plugins::HOSTILE).expect("hostile plugin");
    let component = GuestComponent::new(&engine, &wasm).expect("compile");
    let mut plane = hostile_client(&component);
    match plane.receive(b"flood") {
        Err(Error::Guest(keyferry::error::GuestError::InvalidResult(what))) => {
            assert!(what.contains("too many events"), "{what}");
        }
        other => panic!("expected a refused flood, got {:?}", other.err()),
    }
    // The connection is over for the host, and nothing else is: a new
    // connection in a new instance of the same component attaches.
    let mut next = hostile_client(&component);
    assert_eq!(next.receive(b"hello").expect("a quiet step").tickets, 0);
}

#[test]
fn a_guest_cannot_make_the_host_lift_more_than_its_memory_from_aliased_lists() {
    let memory = 16 << 20;
    let engine =
        GuestEngine::new(SandboxConfig::default().with_memory_limit(memory)).expect("engine");
    let wasm = std::fs::read(keyferry_tests::plugins::HOSTILE).expect("hostile plugin");
    let component = GuestComponent::new(&engine, &wasm).expect("compile");
    let mut plane = hostile_client(&component);
    let guest = plane.guest().clone();
    // 256 events over one 1 MiB buffer: 256 MiB to lift from a guest that
    // may hold 16 MiB. The host-call fuel stops the lift; the call fails
    // and the instance is done for.
    let err = plane
        .receive(b"alias")
        .err()
        .expect("the aliased output is refused");
    // wasmtime's own error says which limit stopped it.
    match &err {
        Error::Sandbox(SandboxError::Trap { source, .. }) => {
            let why = source.to_string();
            assert!(why.contains("fuel allocated for hostcalls"), "{why}");
        }
        other => panic!("expected the host-call fuel to stop the lift, got {other:?}"),
    }
    assert!(guest.is_poisoned(), "the instance that tried is done for");
    assert!(
        guest.memory_bytes() < memory,
        "the guest stayed under its cap: {}",
        guest.memory_bytes()
    );
    let mut next = hostile_client(&component);
    assert!(
        next.receive(b"hello").is_ok(),
        "another connection carries on"
    );
}

#[test]
fn a_plugin_without_the_key_level_interfaces_says_so_and_still_serves() {
    use keyferry::error::GuestError;
    use keyferry::{Direction, TrafficKeyMaterial};
    let engine = GuestEngine::new(SandboxConfig::default()).expect("engine");
    let wasm = std::fs::read(keyferry_tests::plugins::UPPERCASE).expect("uppercase plugin");
    let component = GuestComponent::new(&engine, &wasm).expect("compile");
    assert!(!component.has_keys_interface());
    let g = component.instantiate().expect("instantiate");
    let material = TrafficKeyMaterial::from_tls13_secret(
        AeadAlgorithm::ChaCha20Poly1305,
        Direction::Seal,
        &[3; 32],
        0,
        1,
    )
    .unwrap();
    // Wrapping goes through `connection`, which every component exports.
    let blob = g.seal_traffic_key(&material).expect("wrap");
    // A key-level call is refused with a typed error, every time, and the
    // instance is not poisoned by asking.
    for _ in 0..2 {
        assert!(matches!(
            g.import_traffic_key(&blob),
            Err(Error::Guest(GuestError::MissingExport(
                "keyferry:dataplane/keys"
            )))
        ));
    }
    assert!(!g.is_poisoned());
}
