//! The fault thread: reads userfaultfd events and serves page faults
//! itself, never behind prefetch I/O.

use super::fill::Place;
use super::Shared;
use crate::error::Error;
use crate::uffd::host::Staging;
use crate::uffd::sys::uffd_msg;
use crate::uffd::Event;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Give this thread's reads precedence in the block layer's queue (the
/// faulting page jumps the prefetch reads): the real-time I/O class when
/// permitted, else the highest best-effort level. Best effort: a scheduler
/// without priorities ignores it.
fn raise_io_priority() {
    const IOPRIO_WHO_PROCESS: i64 = 1;
    let rt = (1i64 << 13) | 4;
    let be0 = 2i64 << 13;
    for prio in [rt, be0] {
        // SAFETY: ioprio_set(2) with integer arguments for the calling
        // thread (who = 0); no memory is passed.
        if unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0i64, prio) } == 0 {
            return;
        }
    }
}

pub(super) fn run(sh: Arc<Shared>, mut staging: Staging) {
    raise_io_priority();
    if sh.chunk != 0 {
        // The first fault (usually right after the start) pays no buffer
        // or codec set-up: ~1-5 ms for 1 MiB chunks on a loaded machine.
        let _ = sh.img.prepare_chunk_reads(sh.block);
        staging.zero(0, staging.len());
    }
    let mut msgs = [uffd_msg::default(); 64];
    let mut events = Vec::with_capacity(msgs.len());
    // Faults whose placement met a pending event (`EAGAIN`).
    let mut deferred: Vec<u64> = Vec::new();
    loop {
        let ms = if deferred.is_empty() { 100 } else { 1 };
        if let Err(e) = sh.uffd.poll(sh.waker.raw_fd(), ms) {
            sh.latch(e);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if sh.stop_fault.load(Ordering::Acquire) {
            return;
        }
        let mut from = Instant::now();
        read_batch(&sh, &mut msgs, &mut events);
        for ev in events.drain(..) {
            if let Event::Fault { addr, .. } = ev {
                if addr >= sh.host.start && addr < sh.host.end() {
                    let g = (addr - sh.host.start) / sh.granule;
                    sh.faults.fetch_add(1, Ordering::Relaxed);
                    sh.note_fault();
                    sh.queue.touched(g * sh.granule);
                    let read = serve(&sh, g, &mut staging, &mut deferred);
                    let now = Instant::now();
                    sh.note_service(now - from, read);
                    from = now;
                }
            }
        }
        for g in std::mem::take(&mut deferred) {
            let _ = serve(&sh, g, &mut staging, &mut deferred);
        }
    }
}

/// Read every pending event while holding `layout` exclusively, handling
/// the ones that change the range (see the module docs); page faults are
/// left in `events` to be served after the lock is released.
fn read_batch(sh: &Shared, msgs: &mut [uffd_msg], events: &mut Vec<Event>) {
    let _exclusive = sh.layout.write();
    loop {
        let before = events.len();
        let n = match sh.uffd.read_events(msgs, events) {
            Ok(n) => n,
            Err(e) => {
                sh.latch(e);
                0
            }
        };
        let mut i = before;
        while i < events.len() {
            if matches!(events[i], Event::Fault { .. }) {
                i += 1;
            } else {
                let ev = events.remove(i);
                range_event(sh, ev);
            }
        }
        if n < msgs.len() {
            return;
        }
    }
}

/// An event that is not a page fault.
fn range_event(sh: &Shared, ev: Event) {
    match ev {
        Event::Remove { start, end } | Event::Unmap { start, end } => {
            // Granules wholly inside the range are discarded: served as zero
            // from now on, never filled from the image.
            let s = start.max(sh.host.start);
            let e = end.min(sh.host.end());
            if s < e {
                let g0 = (s - sh.host.start).div_ceil(sh.granule);
                let g1 = (e - sh.host.start) / sh.granule;
                if g0 < g1 {
                    sh.gone.set_range(g0, g1 - g0);
                    sh.settle(g0, g1 - g0);
                }
            }
        }
        Event::Remap { from, to, len } => sh.latch_fatal(Error::from_errno(
            format!(
                "on-demand restore of ramblock '{}': the range was moved with mremap (0x{from:x}+0x{len:x} -> 0x{to:x}) while served; it is not followed",
                sh.idstr
            ),
            libc::EFAULT,
        )),
        // Never sent: UFFD_FEATURE_EVENT_FORK is not requested, and the
        // range is MADV_DONTFORK (a child has no mapping there).
        Event::Fork { child } => drop(child),
        Event::Unknown(code) => sh.latch_fatal(Error::from_errno(
            format!(
                "on-demand restore of ramblock '{}': unknown userfaultfd event 0x{code:x}",
                sh.idstr
            ),
            libc::EPROTO,
        )),
        Event::Fault { .. } => {}
    }
}

/// Serve a fault on granule `g`: zero when discarded, a wake when already
/// placed, else read it (its own buffer, no lock) and place it; on a
/// chunked block, read its chunk and place the chunk (`chunks.rs`).
/// Returns the time the read took (zero for a chunked block: not split).
fn serve(sh: &Shared, g: u64, staging: &mut Staging, deferred: &mut Vec<u64>) -> Duration {
    let mut took = Duration::ZERO;
    let res = if sh.gone.test(g) {
        sh.place_run(g, 1, None)
    } else if sh.settled.test(g) {
        let _ = sh.uffd.wake(sh.addr(g), sh.granule);
        Ok(Place::Done)
    } else if sh.chunk != 0 {
        // An error placed nothing: the faulting thread stays blocked.
        sh.serve_chunked(g, staging)
    } else {
        let t = Instant::now();
        let read = sh.read(g, 1, staging, 0);
        took = t.elapsed();
        match read {
            Ok(true) => sh.place_run(g, 1, Some(staging.ptr())),
            Ok(false) => sh.place_run(g, 1, None),
            Err(e) => {
                // Nothing placed: the faulting thread stays blocked.
                sh.latch(e);
                return took;
            }
        }
    };
    match res {
        Ok(Place::Done) => {}
        Ok(Place::Again) => deferred.push(g),
        Err(e) => sh.latch(e),
    }
    took
}
