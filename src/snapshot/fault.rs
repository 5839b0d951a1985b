//! The snapshot's fault thread: first writes to protected pages.

use super::Shared;
use crate::error::Error;
use crate::uffd::sys::uffd_msg;
use crate::uffd::Event;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Most bytes of copied-out pages waiting to be written (4096 pages of
/// 4 KiB, 8 huge pages of 2 MiB).
const MAX_QUEUED_BYTES: u64 = 16 << 20;

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
            if sh.claimed.claim(p) {
                copy_out(sh, p, retry);
            } else if sh.saved.test(p) {
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

/// Copy page `p` (still protected: start-instant bytes) out, lift its
/// protection, queue the copy. With too many copies queued (the guest
/// writes faster than the disk takes them), the page is queued for a saver
/// to write straight from guest memory instead, and the writer waits for
/// that: memory stays bounded and the fault thread never does I/O.
fn copy_out(sh: &Shared, p: u64, retry: &mut Vec<u64>) {
    if sh.copies.lock().len() as u64 * sh.ps >= MAX_QUEUED_BYTES {
        sh.urgent.lock().push(p);
        return;
    }
    let mut buf = vec![0u8; sh.ps as usize];
    match sh.host.read(p * sh.ps, sh.ps) {
        // SAFETY: the view is readable for one page (bounds-checked) and
        // `buf` holds one page; raw copy, no reference to guest memory.
        Ok(m) => unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), buf.as_mut_ptr(), buf.len()) },
        Err(e) => return sh.latch(e),
    }
    sh.copied_out.fetch_add(1, Ordering::Relaxed);
    sh.copies.lock().push((p, buf));
    lift(sh, p, retry);
}
