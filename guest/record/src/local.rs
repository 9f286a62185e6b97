//! State that lives as long as the component instance, without std.
//!
//! A component instance runs on one thread (`wasm32-wasip2` has no
//! threads), so a `static` there is one per instance. Natively, where the
//! host calls this crate from many threads, the same declaration is a
//! `thread_local!`: one per thread, as before.

#[cfg(target_arch = "wasm32")]
use core::cell::RefCell;

// The `Sync` below rests on there being one thread. Wasm with threads has
// the `atomics` feature: refuse to build there rather than share a
// `RefCell` between threads.
#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
compile_error!("keyferry-record's per-instance statics assume wasm without threads");

/// A `static` of one component instance: what `instance_local!` declares
/// in wasm, with the part of `LocalKey`'s API the guest crates use. Public
/// only for the macro; its `Sync` is sound because this file refuses to
/// build for wasm with threads (above).
#[cfg(target_arch = "wasm32")]
pub struct InstanceLocal<T>(T);

// SAFETY: in wasm32-wasip2 there is one thread, so no value is ever shared
// between threads; the interior mutability inside (a `RefCell`) is then
// safe as it is in a `thread_local!`.
#[cfg(target_arch = "wasm32")]
unsafe impl<T> Sync for InstanceLocal<T> {}

#[cfg(target_arch = "wasm32")]
impl<T> InstanceLocal<T> {
    /// A value for the instance's lifetime.
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// Runs `f` on the value, as `LocalKey::with`.
    pub fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0)
    }
}

#[cfg(target_arch = "wasm32")]
impl<T> InstanceLocal<RefCell<T>> {
    /// Runs `f` on the value borrowed mutably, as
    /// `LocalKey::with_borrow_mut`.
    pub fn with_borrow_mut<R>(&'static self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }
}

/// Declares a `static` that is one per component instance in wasm and one
/// per thread natively. Its initializer must be `const`.
#[doc(hidden)]
#[macro_export]
macro_rules! instance_local {
    ($(#[$meta:meta])* static $name:ident: $ty:ty = const { $init:expr };) => {
        #[cfg(not(target_arch = "wasm32"))]
        std::thread_local! {
            $(#[$meta])*
            static $name: $ty = const { $init };
        }
        #[cfg(target_arch = "wasm32")]
        $(#[$meta])*
        static $name: $crate::local::InstanceLocal<$ty> = $crate::local::InstanceLocal::new($init);
    };
}
