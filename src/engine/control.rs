//! The control of save/restore operations: a progress callback and cancel.
//!
//! A [`Control`] belongs to whoever starts operations (the C `mr_image`
//! handle holds one next to its image); the image itself knows nothing of
//! callbacks. Rules:
//! - calls of the callback are serialised (one at a time per control) and
//!   made on the thread that started the operation;
//! - every call reads the currently installed callback, so a replacement
//!   takes effect at the next call, also in a running operation;
//! - [`Control::set_progress`] from another thread waits until a call in
//!   progress has returned: after it returns, the old callback is never
//!   called again;
//! - from inside the callback (same thread) it does not wait: the running
//!   call finishes (its return value still counts) and the old callback is
//!   not called again, not even for the final report.

use parking_lot::{Mutex, ReentrantMutex};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Progress callback: (bytes done, bytes total) -> keep going.
pub type ProgressFn = Box<dyn FnMut(u64, u64) -> bool + Send>;

/// Progress callback and cancel state for operations on one image.
#[derive(Default)]
pub struct Control {
    /// Held while the callback runs and while it is replaced.
    calling: ReentrantMutex<()>,
    /// The installed callback (an `Arc` so a running call keeps the one it
    /// started even if it removes itself).
    progress: Mutex<Option<Arc<Mutex<ProgressFn>>>>,
    cancel_epoch: AtomicU64,
}

impl Control {
    /// A control with no callback.
    pub fn new() -> Control {
        Control::default()
    }

    /// Install (`Some`) or remove (`None`) the progress callback. See the
    /// module docs for when the old one stops being called.
    pub fn set_progress(&self, cb: Option<ProgressFn>) {
        let _calling = self.calling.lock();
        let old = std::mem::replace(
            &mut *self.progress.lock(),
            cb.map(|f| Arc::new(Mutex::new(f))),
        );
        // Dropped here, after the swap; when called from inside the
        // callback the running call still holds its own `Arc`.
        drop(old);
    }

    /// Whether a callback is installed.
    pub fn has_progress(&self) -> bool {
        self.progress.lock().is_some()
    }

    /// Call the installed callback; true (keep going) when there is none.
    pub(crate) fn report(&self, done: u64, total: u64) -> bool {
        let _calling = self.calling.lock();
        let cb = self.progress.lock().clone();
        match cb {
            // A callback that calls `report` on its own control would find
            // its mutex locked: `try_lock` makes that a no-op, not a hang.
            Some(cb) => match cb.try_lock() {
                Some(mut f) => f(done, total),
                None => true,
            },
            None => true,
        }
    }

    /// Cancel the operations running now (they fail with
    /// `Error::Cancelled`); later operations are not affected.
    pub fn cancel(&self) {
        self.cancel_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The current cancel epoch: an operation that started at epoch `e` is
    /// cancelled once the epoch differs.
    pub(crate) fn epoch(&self) -> u64 {
        self.cancel_epoch.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("progress", &self.has_progress())
            .field("cancel_epoch", &self.epoch())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn removal_from_inside_the_callback_stops_later_calls() {
        let ctl = Arc::new(Control::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let (c2, n2) = (Arc::clone(&ctl), Arc::clone(&calls));
        ctl.set_progress(Some(Box::new(move |_, _| {
            n2.fetch_add(1, Ordering::SeqCst);
            c2.set_progress(None);
            true
        })));
        assert!(ctl.report(0, 1));
        assert!(ctl.report(1, 1));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(!ctl.has_progress());
    }

    #[test]
    fn removal_from_another_thread_waits_for_a_running_call() {
        let ctl = Arc::new(Control::new());
        let running = Arc::new(AtomicUsize::new(0));
        let r2 = Arc::clone(&running);
        ctl.set_progress(Some(Box::new(move |_, _| {
            r2.store(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(100));
            r2.store(2, Ordering::SeqCst);
            true
        })));
        let c2 = Arc::clone(&ctl);
        let t = std::thread::spawn(move || c2.report(0, 1));
        while running.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        ctl.set_progress(None);
        // The call that was running has returned before removal did.
        assert_eq!(running.load(Ordering::SeqCst), 2);
        assert!(t.join().unwrap());
    }
}
