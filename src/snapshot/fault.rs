//! The snapshot's fault thread: first writes to protected pages.

use super::copies::Copies;
use super::Shared;
use crate::error::Error;
use crate::uffd::sys::uffd_msg;
use crate::uffd::Event;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(super) fn run(sh: Arc<Shared>) {
    let mut msgs = [uffd_msg::default(); 64];
    let mut events = Vec::with_capacity(msgs.len());
    // Pages whose un-protect met a pending event (`EAGAIN`).
    let mut retry: Vec<u64> = Vec::new();
    loop {
        let ms = if retry.is_empty() { 100 } else { 1 };
        if let Err(e) = sh.uffd.poll(sh.waker.raw_fd(), ms) {
            sh.latch(e);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if sh.stop.load(Ordering::Acquire) {
            return;
        }
        loop {
            events.clear();
            let n = match sh.uffd.read_events(&mut msgs, &mut events) {
                Ok(n) => n,
                Err(e) => {
                    sh.latch(e);
                    0
                }
            };
            for ev in events.drain(..) {
                handle(&sh, ev, &mut retry);
            }
            if n < msgs.len() {
                break;
            }
        }
        for p in std::mem::take(&mut retry) {
            lift(&sh, p, &mut retry);
        }
    }
}

fn handle(sh: &Shared, ev: Event, retry: &mut Vec<u64>) {
    match ev {
        Event::Fault { addr, .. } => {
            if addr < sh.host.start || addr >= sh.host.end() {
                return;
            }
            let p = (addr - sh.host.start) / sh.ps;
            sh.wp_faults.fetch_add(1, Ordering::Relaxed);
            // Claim and copy under the copies' lock (see `save_words`).
            let mut copies = sh.copies.lock();
            let won = sh.claimed.claim(p);
            let copied = won && copy_out(sh, &mut copies, p);
            drop(copies);
            if copied {
                lift(sh, p, retry);
            } else if !won && sh.saved.test(p) {
                let _ = sh.uffd.wake(sh.host.start + p * sh.ps, sh.ps);
            }
            // Else a saver holds the claim; its un-protect wakes the writer.
        }
        Event::Remove { start, end } | Event::Unmap { start, end } => {
            let s = start.max(sh.host.start);
            let e = end.min(sh.host.end());
            if s < e {
                let (a, b) = (
                    (s - sh.host.start) / sh.ps,
                    (e - sh.host.start).div_ceil(sh.ps),
                );
                if !sh.saved.all(a, b) {
                    sh.latch(Error::from_errno(
                        format!(
                            "live snapshot of ramblock '{}': offset 0x{:x}+0x{:x} was discarded (MADV_DONTNEED/munmap) before it was saved; the image cannot hold its start-instant contents",
                            sh.idstr,
                            a * sh.ps,
                            (b - a) * sh.ps
                        ),
                        libc::EFAULT,
                    ));
                }
            }
        }
        Event::Remap { .. } => sh.latch(Error::from_errno(
            format!(
                "live snapshot of ramblock '{}': the range was moved with mremap",
                sh.idstr
            ),
            libc::EFAULT,
        )),
        // Never sent: UFFD_FEATURE_EVENT_FORK is not requested, and the
        // range is MADV_DONTFORK (a child has no mapping there).
        Event::Fork { child } => drop(child),
        Event::Unknown(code) => sh.latch(Error::from_errno(
            format!(
                "live snapshot of ramblock '{}': unknown userfaultfd event 0x{code:x}",
                sh.idstr
            ),
            libc::EPROTO,
        )),
    }
}

/// Lift page `p`'s protection; on `EAGAIN` (an event is pending) keep it
/// for after the next read of events.
fn lift(sh: &Shared, p: u64, retry: &mut Vec<u64>) {
    match sh.try_unprotect(p, 1) {
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => retry.push(p),
        r => sh.unprotect_result(p, r),
    }
}

/// Copy page `p` (still protected: start-instant bytes) into a slot; its
/// protection is lifted next. With no slot free (the guest writes faster
/// than the disk takes pages), the page is queued for a saver to write
/// straight from guest memory instead, and the writer waits for that:
/// memory stays bounded and the fault thread never does I/O.
/// Returns whether the page was copied.
fn copy_out(sh: &Shared, copies: &mut Copies, p: u64) -> bool {
    let m = match sh.host.read(p * sh.ps, sh.ps) {
        Ok(m) => m,
        Err(e) => {
            sh.latch(e);
            return false;
        }
    };
    // SAFETY: the view is readable for one page (bounds-checked).
    if unsafe { copies.insert(p, m.as_ptr()) } {
        sh.copied_out.fetch_add(1, Ordering::Relaxed);
        true
    } else {
        sh.urgent.lock().push(p);
        false
    }
}
