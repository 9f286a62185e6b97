//! keyferry's guest components, and the SDK to build your own.
//!
//! - The reference data-plane **component** (built for `wasm32-wasip2`),
//!   exporting the `keyferry:dataplane` WIT interfaces: traffic keys and
//!   MAC keys imported from sealed blobs, record seal and open, KeyUpdate,
//!   export and migration, and a self-check.
//! - The **front** of a served wasi:http component (feature `http-front`):
//!   the record layer, an HTTP/1.1 codec, and the interfaces the tenant
//!   imports.
//! - The **application SDK**: [`application::Application`] (what a
//!   component does with the plaintext) and `export_application!` to
//!   build a component of it, as `examples/` do.
//!
//! The record core itself (records, key schedule, blobs, a connection's
//! data plane) is `keyferry-record`, re-exported here under the same
//! module names so an application needs this crate only. The modules of
//! this crate are [`instance`] (one guest's keys), [`registry`] (single use
//! and rollback checks), [`application`], [`selfcheck`], [`front`] (the
//! wasi:http front), and in wasm the WIT glue.
#![no_std]
#![cfg_attr(not(target_arch = "wasm32"), forbid(unsafe_code))]
#![warn(missing_docs, unreachable_pub, unused_qualifications)]

extern crate alloc;
// Natively the host links this crate and its tests run: std is there, for
// per-thread buffers and the tests. In wasm, a component with the
// `component-runtime` feature links no std at all; plugins get std.
#[cfg(any(test, not(target_arch = "wasm32"), not(feature = "component-runtime")))]
#[cfg_attr(test, macro_use)]
extern crate std;

pub mod application;
pub mod front;
pub mod instance;
pub mod registry;
pub mod selfcheck;

pub use keyferry_record::{
    AeadAlgorithm, Alert, BlobError, ContentType, Direction, Error, KeyServiceError, MacAlgorithm,
    ProtocolVersion, Result, UnusableReason,
};
pub use keyferry_record::{
    blob, blob_aead, cipher, connection, error, framing, key_service, keyschedule, mac, record,
    suite,
};

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod exports;

/// Generated WIT bindings, for [`export_application!`] and the glue. The
/// world follows the features: `application-plugin` for plugins, the
/// reference component's `dataplane` (or `dataplane-host-keys`) otherwise.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    reason = "generated code"
)]
pub mod bindings {
    #[cfg(not(any(feature = "reference-component", feature = "http-front")))]
    wit_bindgen::generate!({
        path: "../wit",
        world: "application-plugin",
        pub_export_macro: true,
    });
    #[cfg(all(feature = "http-front", not(feature = "reference-component")))]
    wit_bindgen::generate!({
        path: "../wit",
        world: "http-front",
        pub_export_macro: true,
        generate_all,
    });
    #[cfg(all(feature = "reference-component", not(feature = "host-keys")))]
    wit_bindgen::generate!({
        path: "../wit",
        world: "dataplane",
        pub_export_macro: true,
    });
    #[cfg(feature = "host-keys")]
    wit_bindgen::generate!({
        path: "../wit",
        world: "dataplane-host-keys",
        pub_export_macro: true,
    });
}

/// The reference component: its connections hand their plaintext to the host.
#[cfg(all(target_arch = "wasm32", feature = "reference-component"))]
#[allow(unreachable_pub, reason = "the generated export glue")]
mod reference_component {
    crate::export_application!(crate::application::Passthrough);
}

/// What a component needs when it has no Rust std: an allocator
/// (wasi-libc's `malloc`, as std uses on WASI), a panic handler, which
/// traps, and `cabi_realloc` (the canonical ABI's allocator, which std
/// provides on `wasm32-wasip2`). Feature `component-runtime`; the
/// reference component and the built-in applications (`http_app`,
/// `echo_app`) use it.
///
/// Why: on `wasm32-wasip2`, std's panic machinery (its hook reads
/// `RUST_BACKTRACE` and writes to stderr) makes a component import 13 WASI
/// CLI and IO interfaces, and lowering those functions that take or return
/// lists needs two more core modules (the shim and fixup modules
/// `wasm-component-ld` adds). Every instance pays for them: a trivial std
/// component is made and dropped in about 8.5 us, the same one without std
/// in about 4.8 (wasmtime 48, pooled slots, batches of four). A host gives
/// a guest no stderr, so the message went nowhere; the trap is what the
/// host sees, then and now. Without the feature the crate links std in
/// wasm too, so plugins can use it (the test plugins do).
#[cfg(all(target_arch = "wasm32", feature = "component-runtime"))]
mod component_runtime {
    use alloc::alloc::{GlobalAlloc, Layout};

    // wasi-libc's `malloc`, which the target ships (its `self-contained`
    // folder) and std uses on WASI. It takes the space left in the
    // initial memory before it grows it: an allocator that always grows
    // (the `dlmalloc` crate's) made every instance grow its memory, and
    // every reuse of a pooled slot then cost two `mprotect`s, one with a
    // TLB shootdown. wasm-ld takes only the objects used (`malloc` and
    // the memory functions LLVM calls, such as `memcmp`), and those import
    // nothing.
    #[link(name = "c")]
    unsafe extern "C" {
        fn malloc(size: usize) -> *mut u8;
        fn aligned_alloc(align: usize, size: usize) -> *mut u8;
        fn calloc(count: usize, size: usize) -> *mut u8;
        fn realloc(ptr: *mut u8, size: usize) -> *mut u8;
        fn free(ptr: *mut u8);
    }

    /// What `malloc` guarantees on wasm32 (std's `MIN_ALIGN` there).
    const MIN_ALIGN: usize = 8;

    struct WasiLibc;

    // SAFETY: the layouts' contracts are passed on to wasi-libc's
    // allocator as std's WASI allocator does: `malloc` for alignments it
    // guarantees, `aligned_alloc` above them, and a fresh allocation and
    // copy when `realloc` could not keep the alignment.
    unsafe impl GlobalAlloc for WasiLibc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if layout.align() <= MIN_ALIGN && layout.align() <= layout.size() {
                unsafe { malloc(layout.size()) }
            } else {
                unsafe { aligned_alloc(layout.align(), layout.size()) }
            }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if layout.align() <= MIN_ALIGN && layout.align() <= layout.size() {
                unsafe { calloc(layout.size(), 1) }
            } else {
                let ptr = unsafe { self.alloc(layout) };
                if !ptr.is_null() {
                    unsafe { core::ptr::write_bytes(ptr, 0, layout.size()) };
                }
                ptr
            }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
            unsafe { free(ptr) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if layout.align() <= MIN_ALIGN && layout.align() <= new_size {
                return unsafe { realloc(ptr, new_size) };
            }
            // SAFETY: the caller's alignment with the new size (the trait's
            // contract: it does not overflow when rounded up).
            let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            let fresh = unsafe { self.alloc(new) };
            if !fresh.is_null() {
                unsafe {
                    core::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
            }
            fresh
        }
    }

    #[global_allocator]
    static ALLOCATOR: WasiLibc = WasiLibc;

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        core::arch::wasm32::unreachable()
    }

    /// A fresh allocation when there was none, else a reallocation (as
    /// wit-bindgen's runtime has it for targets where std does not export
    /// one); out of memory traps.
    ///
    /// # Safety
    /// The canonical ABI's contract: `old_ptr` and `old_len` describe an
    /// allocation made here with `align`, or `old_len` is zero.
    #[unsafe(no_mangle)]
    unsafe extern "C" fn cabi_realloc(
        old_ptr: *mut u8,
        old_len: usize,
        align: usize,
        new_len: usize,
    ) -> *mut u8 {
        let ptr = if old_len == 0 {
            if new_len == 0 {
                return align as *mut u8;
            }
            // SAFETY: the caller's alignment, a power of two by the ABI.
            unsafe { alloc::alloc::alloc(Layout::from_size_align_unchecked(new_len, align)) }
        } else {
            // SAFETY: the caller vouches for the old allocation's layout.
            unsafe {
                alloc::alloc::realloc(
                    old_ptr,
                    Layout::from_size_align_unchecked(old_len, align),
                    new_len,
                )
            }
        };
        if ptr.is_null() {
            core::arch::wasm32::unreachable();
        }
        ptr
    }
}
