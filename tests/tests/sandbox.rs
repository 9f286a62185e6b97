//! The sandbox's limits hold: a guest that runs out of fuel or memory traps
//! its own store only, with a typed error, and other instances carry on.

use keyferry::{AeadAlgorithm, Error, ExecutionBound, GuestEngine, SandboxConfig, TrapKind};

#[test]
fn running_out_of_fuel_is_a_typed_trap_and_poisons_only_that_instance() {
    let tight = GuestEngine::new(
        SandboxConfig::default().with_execution_bound(ExecutionBound::Fuel(20_000)),
    )
    .expect("engine");
    let component = tight.reference_component().expect("compile");
    match component.instantiate() {
        Err(Error::Trap(TrapKind::OutOfFuel)) => {}
        other => panic!("expected out of fuel, got {:?}", other.err()),
    }

    let roomy = GuestEngine::new(
        SandboxConfig::default().with_execution_bound(ExecutionBound::Fuel(50_000_000)),
    )
    .expect("engine");
    let component = roomy.reference_component().expect("compile");
    let mut g = component.instantiate().expect("instantiate within budget");
    // Sealing 4 MiB of ChaCha20 needs far more than 50M instructions.
    let big = vec![0u8; 4 << 20];
    match g.aead_seal(
        AeadAlgorithm::ChaCha20Poly1305,
        &[0; 32],
        &[0; 12],
        &[],
        &big,
    ) {
        Err(Error::Trap(TrapKind::OutOfFuel)) => {}
        other => panic!("expected out of fuel, got {:?}", other.map(|v| v.len())),
    }
    assert!(g.is_poisoned());
    assert!(matches!(g.describe(), Err(Error::Poisoned)));
    // A sibling instance of the same component is untouched.
    let mut sibling = component.instantiate().expect("instantiate");
    assert!(sibling.describe().unwrap().contains("keyferry-guest"));
}

#[test]
fn exceeding_the_memory_cap_is_a_typed_trap() {
    let engine =
        GuestEngine::new(SandboxConfig::default().with_memory_limit(8 << 20)).expect("engine");
    let component = engine.reference_component().expect("compile");
    let mut g = component.instantiate().expect("instantiate under the cap");
    let big = vec![0u8; 16 << 20];
    match g.aead_seal(AeadAlgorithm::Aes128Gcm, &[0; 16], &[0; 12], &[], &big) {
        Err(Error::Trap(TrapKind::ResourceLimit)) => {}
        other => panic!(
            "expected a resource-limit trap, got {:?}",
            other.map(|v| v.len())
        ),
    }
    assert!(matches!(g.self_check(), Err(Error::Poisoned)));
    let mut sibling = component.instantiate().expect("instantiate");
    assert!(sibling.self_check().unwrap().is_ok());
}

#[test]
fn pooled_engines_instantiate_many_guests() {
    let engine = GuestEngine::new(SandboxConfig::default().with_pooling(16)).expect("engine");
    let component = engine.reference_component().expect("compile");
    let guests: Vec<_> = (0..16)
        .map(|_| component.instantiate().expect("instantiate"))
        .collect();
    let ids: std::collections::HashSet<_> = guests.iter().map(|g| g.exchange_key().id).collect();
    assert_eq!(ids.len(), 16, "every instance makes its own exchange key");
    // The pool is full: the next instance is refused, not crashed.
    assert!(matches!(
        component.instantiate(),
        Err(Error::Trap(_) | Error::Engine(_))
    ));
    drop(guests);
    component
        .instantiate()
        .expect("slots come back when instances drop");
}
