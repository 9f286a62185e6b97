//! The driver of a served `wasi:http` component (DESIGN section 9).
//!
//! A composition cannot be cyclic: the tenant imports the front's
//! `wasi:http/types`, so the front cannot import the tenant's handler. This
//! component sits beside both: it takes each request the front decoded and
//! calls the tenant's handler with it. It holds no plaintext of its own.
#![cfg_attr(target_arch = "wasm32", no_std)]

#[cfg(target_arch = "wasm32")]
mod component {
    extern crate alloc;

    wit_bindgen::generate!({
        path: "../../wit",
        world: "http-driver-world",
        generate_all,
    });

    use keyferry::dataplane::http_session;
    use wasi::http::incoming_handler;

    struct Driver;

    impl exports::keyferry::dataplane::http_driver::Guest for Driver {
        fn serve() -> bool {
            while let Some((request, outparam)) = http_session::next_request() {
                incoming_handler::handle(request, outparam);
                http_session::handled();
            }
            http_session::paused()
        }
    }

    export!(Driver);

    // No std: a panic traps (the host ends the connection), and the
    // canonical ABI's allocations come from a bump arena that the driver's
    // few small lists fit in. Nothing else allocates here.
    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        core::arch::wasm32::unreachable()
    }

    mod arena {
        use core::alloc::{GlobalAlloc, Layout};
        use core::cell::UnsafeCell;

        /// The driver only ever allocates the canonical ABI's small
        /// argument lists (none today: its calls pass resources), so a
        /// fixed arena that is never freed suffices.
        const SIZE: usize = 64 << 10;

        struct Arena {
            memory: UnsafeCell<[u8; SIZE]>,
            used: UnsafeCell<usize>,
        }

        // SAFETY: a component instance runs one thread.
        unsafe impl Sync for Arena {}

        unsafe impl GlobalAlloc for Arena {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                // SAFETY: single-threaded; the arena outlives every use.
                unsafe {
                    let used = &mut *self.used.get();
                    let base = self.memory.get().cast::<u8>();
                    let start =
                        (base as usize + *used).next_multiple_of(layout.align()) - base as usize;
                    let end = start.saturating_add(layout.size());
                    if end > SIZE {
                        return core::ptr::null_mut();
                    }
                    *used = end;
                    base.add(start)
                }
            }

            unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
        }

        #[global_allocator]
        static ARENA: Arena = Arena {
            memory: UnsafeCell::new([0; SIZE]),
            used: UnsafeCell::new(0),
        };
    }
}
