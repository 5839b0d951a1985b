//! Panics the library catches print nothing.
//!
//! The C boundary turns a panic into `-EIO` and a message for
//! `mr_last_error()`; the default panic hook would also print the panic to
//! the host's stderr, which a library must not do. [`enter`] marks the
//! current thread as being inside the boundary; the hook installed by
//! [`install`] stays silent on such threads and hands every other panic to
//! the hook that was installed before (so a Rust host keeps its own).
//! Worker threads of the engine inherit the mark of the thread that started
//! them ([`active`]).

use std::cell::Cell;
use std::sync::Once;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Install the filtering hook once per process.
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !active() {
                previous(info);
            }
        }));
    });
}

/// Whether the current thread is inside the boundary.
pub(crate) fn active() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Marks the current thread as inside the boundary until dropped.
pub(crate) struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Mark the current thread as inside the boundary.
pub(crate) fn enter() -> Guard {
    DEPTH.with(|d| d.set(d.get() + 1));
    Guard(())
}
