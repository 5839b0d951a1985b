//! Model checking of the on-demand restore's fault/prefetch hand-off
//! (`src/lazy/`) with loom: every interleaving (up to a preemption bound)
//! of the fault thread, a prefetch worker, guest threads and the kernel.
//!
//! The protocol (`src/lazy/mod.rs` docs, `fault.rs`, `fill.rs`):
//! - the fault thread reads the events while holding `layout` exclusively;
//!   a `REMOVE` event marks the granule `gone` and `settled` inside that
//!   section. It then serves each fault without a lock: `gone` -> zero
//!   page, `settled` -> wake, else read the image and copy; `EAGAIN` (an
//!   event is pending) defers the fault to after the next read of events;
//! - a prefetch worker reads a granule's image data, then holds `layout`
//!   shared from its re-check of `settled` to the end of its copy, and
//!   retries `EAGAIN` after dropping the lock;
//! - a placer sets `settled` after its ioctl succeeded or failed with
//!   `EEXIST` (then it wakes the waiters).
//!
//! The kernel is a loom `Mutex` + `Condvar`, with the semantics the
//! protocol relies on: a copy into a present page fails with `EEXIST`; any
//! copy fails with `EAGAIN` from the moment `madvise(MADV_DONTNEED)` posts
//! its `REMOVE` event until that event has been read; `madvise` zaps the
//! page only after the read (a separate step: a copy can land in between
//! and is zapped with the range); a copy wakes the page's waiters; a
//! woken thread whose page is still missing faults again.
//!
//! Claims, checked in every execution:
//! - a page touched after `madvise(MADV_DONTNEED)` returned reads zero
//!   (never image data placed after the zap: "resurrected");
//! - a page never discarded reads the image's data, and no zero page is
//!   placed over a granule that was not discarded;
//! - every faulting thread is woken (otherwise loom reports a deadlock);
//! - at the end every granule is settled, and a settled granule that was
//!   not discarded holds the image's data.
//!
//! Negative controls (each makes loom fail): a worker that re-checks
//! `settled` without holding `layout`, a fault thread that marks `gone`
//! after releasing `layout`, and a fault thread that drops an `EAGAIN`ed
//! fault instead of deferring it.
//!
//! The live snapshot's claim-bit hand-off is modelled too (`mod snapshot`
//! below, with its own claims and controls). `model_matches_the_library`
//! fails when the steps the models copy change in `src/lazy/`,
//! `src/snapshot/` or `src/uffd/pages.rs`.

use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::sync::{Arc, Condvar, Mutex, RwLock};
use loom::thread;
use std::collections::VecDeque;

/// Enough for every failing schedule of the negative controls.
const PREEMPTIONS: usize = 2;

/// Two granules; the image holds data (not zeros) in both.
const N: usize = 2;
const IMAGE: [u8; N] = [11, 12];

#[derive(Clone, Copy, Debug)]
enum Ev {
    Fault(usize),
    Remove(usize),
}

/// The kernel side of one registered range.
#[derive(Default)]
struct Kernel {
    page: [Option<u8>; N],
    events: VecDeque<Ev>,
    /// `mmap_changing`: copies answer `EAGAIN` while it is non-zero.
    changing: u32,
    removes_posted: u32,
    removes_read: u32,
    /// Wake generation per page (a woken waiter re-checks and refaults).
    wakes: [u32; N],
    /// Granules whose `madvise` has started (zero pages are allowed there).
    discarding: [bool; N],
}

#[derive(Debug, PartialEq)]
enum Res {
    Placed,
    Exists,
    Again,
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Library,
    WorkerWithoutLayout,
    GoneAfterLayout,
    DropDeferred,
}

struct Model {
    k: Mutex<Kernel>,
    cv: Condvar,
    settled: AtomicU64,
    gone: AtomicU64,
    layout: RwLock<()>,
    stop: AtomicBool,
    variant: Variant,
}

impl Model {
    fn new(variant: Variant) -> Model {
        Model {
            k: Mutex::new(Kernel::default()),
            cv: Condvar::new(),
            settled: AtomicU64::new(0),
            gone: AtomicU64::new(0),
            layout: RwLock::new(()),
            stop: AtomicBool::new(false),
            variant,
        }
    }

    // --- kernel -------------------------------------------------------

    /// `UFFDIO_COPY` (`val` from the image) or `UFFDIO_ZEROPAGE` (0).
    fn ioctl_place(&self, g: usize, val: u8) -> Res {
        let mut k = self.k.lock().unwrap();
        if k.changing > 0 {
            return Res::Again;
        }
        if k.page[g].is_some() {
            return Res::Exists;
        }
        assert!(
            val == IMAGE[g] || k.discarding[g],
            "a zero page placed over granule {g}, which was never discarded"
        );
        k.page[g] = Some(val);
        k.wakes[g] += 1;
        self.cv.notify_all();
        Res::Placed
    }

    /// `UFFDIO_WAKE`.
    fn ioctl_wake(&self, g: usize) {
        let mut k = self.k.lock().unwrap();
        k.wakes[g] += 1;
        self.cv.notify_all();
    }

    /// A guest load of granule `g`: blocks in the fault until woken,
    /// faults again while the page is missing.
    fn touch(&self, g: usize) -> u8 {
        let mut k = self.k.lock().unwrap();
        loop {
            if let Some(v) = k.page[g] {
                return v;
            }
            k.events.push_back(Ev::Fault(g));
            self.cv.notify_all();
            let gen = k.wakes[g];
            while k.wakes[g] == gen {
                k = self.cv.wait(k).unwrap();
            }
        }
    }

    /// `madvise(MADV_DONTNEED)` of granule `g`: post `REMOVE`, wait until
    /// it is read, then (a separate step) zap.
    fn madvise_dontneed(&self, g: usize) {
        let mut k = self.k.lock().unwrap();
        k.discarding[g] = true;
        k.changing += 1;
        k.removes_posted += 1;
        let ticket = k.removes_posted;
        k.events.push_back(Ev::Remove(g));
        self.cv.notify_all();
        while k.removes_read < ticket {
            k = self.cv.wait(k).unwrap();
        }
        k.changing -= 1;
        self.cv.notify_all();
        drop(k);
        self.k.lock().unwrap().page[g] = None;
    }

    /// A retry's sleep (the worker's 50 us, the fault thread's 1 ms poll),
    /// fairly scheduled: it ends once the `madvise` that made the copy
    /// answer `EAGAIN` has gone on (loom cannot run an unbounded spin).
    /// The fault thread also ends it when events arrive (`poll`).
    fn sleep_until_no_event_pending(&self, or_events: bool) {
        let mut k = self.k.lock().unwrap();
        while k.changing > 0 && (!or_events || k.events.is_empty()) {
            k = self.cv.wait(k).unwrap();
        }
    }

    // --- library ------------------------------------------------------

    fn test(bits: &AtomicU64, g: usize) -> bool {
        bits.load(Ordering::Acquire) & (1 << g) != 0 // PageSet::test
    }

    fn set(bits: &AtomicU64, g: usize) {
        bits.fetch_or(1 << g, Ordering::AcqRel); // PageSet::set_range
    }

    /// `Shared::place_run` for one granule.
    fn place_run(&self, g: usize, val: u8) -> Res {
        let r = self.ioctl_place(g, val);
        match r {
            Res::Placed => Self::set(&self.settled, g),
            Res::Exists => {
                self.ioctl_wake(g);
                Self::set(&self.settled, g);
            }
            Res::Again => {}
        }
        r
    }

    /// `prefetch::worker` + `Shared::fill`/`place` over every granule.
    fn worker(&self) {
        for (g, &image) in IMAGE.iter().enumerate() {
            if Self::test(&self.settled, g) {
                continue;
            }
            let val = image; // the read into the staging buffer
            loop {
                let shared = if self.variant == Variant::WorkerWithoutLayout {
                    None
                } else {
                    Some(self.layout.read().unwrap())
                };
                if Self::test(&self.settled, g) {
                    break;
                }
                if self.place_run(g, val) != Res::Again {
                    break;
                }
                drop(shared);
                self.sleep_until_no_event_pending(false);
            }
        }
    }

    /// `fault::run`: poll, `read_batch`, serve faults, then the deferred.
    fn fault_thread(&self) {
        let mut deferred: Vec<usize> = Vec::new();
        loop {
            {
                let mut k = self.k.lock().unwrap();
                while k.events.is_empty()
                    && deferred.is_empty()
                    && !self.stop.load(Ordering::Acquire)
                {
                    k = self.cv.wait(k).unwrap();
                }
                if self.stop.load(Ordering::Acquire) {
                    return;
                }
                let idle = k.events.is_empty();
                drop(k);
                if idle {
                    // poll(1 ms) with only deferred faults to retry
                    self.sleep_until_no_event_pending(true);
                }
            }
            let faults = self.read_batch();
            for g in faults {
                self.serve(g, &mut deferred);
            }
            for g in std::mem::take(&mut deferred) {
                self.serve(g, &mut deferred);
            }
        }
    }

    /// `fault::read_batch` + `range_event`.
    fn read_batch(&self) -> Vec<usize> {
        let exclusive = self.layout.write().unwrap();
        let events: Vec<Ev> = {
            let mut k = self.k.lock().unwrap();
            let evs: Vec<Ev> = k.events.drain(..).collect();
            k.removes_read += evs.iter().filter(|e| matches!(e, Ev::Remove(_))).count() as u32;
            self.cv.notify_all();
            evs
        };
        let mut removed = Vec::new();
        let mut faults = Vec::new();
        for ev in events {
            match ev {
                Ev::Fault(g) => faults.push(g),
                Ev::Remove(g) => removed.push(g),
            }
        }
        if self.variant == Variant::GoneAfterLayout {
            drop(exclusive);
        }
        for g in removed {
            Self::set(&self.gone, g);
            Self::set(&self.settled, g);
        }
        faults
    }

    /// `fault::serve`.
    fn serve(&self, g: usize, deferred: &mut Vec<usize>) {
        let r = if Self::test(&self.gone, g) {
            self.place_run(g, 0)
        } else if Self::test(&self.settled, g) {
            self.ioctl_wake(g);
            Res::Placed
        } else {
            self.place_run(g, IMAGE[g])
        };
        if r == Res::Again && self.variant != Variant::DropDeferred {
            deferred.push(g);
        }
    }

    fn stop_fault_thread(&self) {
        let _k = self.k.lock().unwrap();
        self.stop.store(true, Ordering::Release);
        self.cv.notify_all();
    }

    /// After every thread is done: the state `Lazy::wait` reports complete.
    fn check_final(&self) {
        let k = self.k.lock().unwrap();
        for (g, &image) in IMAGE.iter().enumerate() {
            assert!(Self::test(&self.settled, g), "granule {g} never settled");
            if !Self::test(&self.gone, g) {
                assert_eq!(
                    k.page[g],
                    Some(image),
                    "granule {g} settled but not holding the image's data"
                );
            }
        }
    }
}

fn run(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(PREEMPTIONS);
    b.check(f);
}

/// A prefetch worker fills both granules while the guest touches granule
/// 1 (the fault thread and the worker race to place it: `EEXIST`) and
/// discards granule 0, then touches it again.
fn prefetch_and_discard(variant: Variant) {
    run(move || {
        let m = Arc::new(Model::new(variant));
        let f = m.clone();
        let fault = thread::spawn(move || f.fault_thread());
        let w = m.clone();
        let worker = thread::spawn(move || w.worker());
        let gm = m.clone();
        let guest = thread::spawn(move || {
            assert_eq!(gm.touch(1), IMAGE[1], "wrong data in granule 1");
            gm.madvise_dontneed(0);
            assert_eq!(
                gm.touch(0),
                0,
                "resurrected: image data after MADV_DONTNEED"
            );
        });
        worker.join().unwrap();
        guest.join().unwrap();
        m.stop_fault_thread();
        fault.join().unwrap();
        m.check_final();
    });
}

/// No prefetch: one guest thread faults on granule 1 while another
/// discards granule 0, so the fault thread's copy can meet `EAGAIN`.
fn fault_during_remove(variant: Variant) {
    run(move || {
        let m = Arc::new(Model::new(variant));
        let f = m.clone();
        let fault = thread::spawn(move || f.fault_thread());
        let g1 = m.clone();
        let toucher = thread::spawn(move || assert_eq!(g1.touch(1), IMAGE[1]));
        let g0 = m.clone();
        let discarder = thread::spawn(move || {
            g0.madvise_dontneed(0);
            assert_eq!(
                g0.touch(0),
                0,
                "resurrected: image data after MADV_DONTNEED"
            );
        });
        toucher.join().unwrap();
        discarder.join().unwrap();
        m.stop_fault_thread();
        fault.join().unwrap();
        let k = m.k.lock().unwrap();
        assert_eq!(k.page[1], Some(IMAGE[1]));
    });
}

#[test]
fn prefetch_fault_and_remove_hand_off_holds_under_loom() {
    prefetch_and_discard(Variant::Library);
}

#[test]
fn deferred_faults_are_served_under_loom() {
    fault_during_remove(Variant::Library);
}

#[test]
#[should_panic(expected = "resurrected")]
fn loom_catches_a_worker_without_the_layout_lock() {
    prefetch_and_discard(Variant::WorkerWithoutLayout);
}

#[test]
#[should_panic(expected = "resurrected")]
fn loom_catches_gone_marked_after_the_layout_lock() {
    prefetch_and_discard(Variant::GoneAfterLayout);
}

/// The guest thread stays blocked in its fault: every thread waits, and
/// loom reports the deadlock.
#[test]
#[should_panic(expected = "deadlock")]
fn loom_catches_a_dropped_eagain_fault() {
    fault_during_remove(Variant::DropDeferred);
}

/// The model above copies these steps; change both together.
#[test]
fn model_matches_the_library() {
    let read =
        |p: &str| std::fs::read_to_string(format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let has = |file: &str, needles: &[&str]| {
        let src = read(file);
        let mut at = 0;
        for n in needles {
            match src[at..].find(n) {
                Some(i) => at += i + n.len(),
                None => panic!(
                    "{file} no longer has `{n}` (after the previous step): update tests/loom_lazy.rs's model to match"
                ),
            }
        }
    };
    has(
        "src/uffd/pages.rs",
        &[
            "load(Ordering::Acquire) & (1 << (i % 64)) != 0",
            ".fetch_or(mask, Ordering::AcqRel)",
        ],
    );
    // read_batch: events read and range events handled under the write lock.
    has(
        "src/lazy/fault.rs",
        &[
            "fn read_batch(",
            "let _exclusive = sh.layout.write();",
            "sh.uffd.read_events(msgs, events)",
            "range_event(sh, ev);",
            "fn range_event(",
            "sh.gone.set_range(g0, g1 - g0);",
            "sh.settle(g0, g1 - g0);",
            "fn serve(",
            "if sh.gone.test(g) {",
            "sh.place_run(g, 1, None)",
            "} else if sh.settled.test(g) {",
            "sh.uffd.wake(",
            "Ok(Place::Again) => deferred.push(g),",
        ],
    );
    // place: the shared lock, then the re-check of `settled`, then the ioctl.
    has(
        "src/lazy/fill.rs",
        &[
            "pub(super) fn place(",
            "let _shared = self.layout.read();",
            "self.settled.runs(c, ce,",
            "if set ||",
            "out = self.place_run(s, k, p);",
            "pub(super) fn place_run(",
            "libc::EEXIST => {",
            "self.uffd.wake(",
            "libc::EAGAIN => return Ok(Place::Again),",
            "self.settle(s + i, placed);",
            "while self.place(a, m, src)? == Place::Again {",
        ],
    );
    // The worker's placer thread is the model's worker: it places what the
    // reader handed it through the same `place_all`.
    has(
        "src/lazy/prefetch.rs",
        &[
            "fn placer(",
            "if let Err(e) = sh.place_all(first, n, src) {",
        ],
    );
    // Snapshot: claim, read while protected, un-protect, mark saved.
    has(
        "src/uffd/pages.rs",
        &[
            "pub(crate) fn claim_word(",
            "self.words[w as usize].fetch_or(mask, Ordering::AcqRel);",
        ],
    );
    has(
        "src/snapshot/save.rs",
        &[
            "fn save_words(",
            "let won_word = sh.claimed.claim_word(i);",
            "let mut c = sh.copies.lock();",
            "} else if let Some(s) = c.take(p) {",
            "write_runs(sh, first, &src)",
            "runs(first, end, is_won, |s, k| sh.unprotect(s, k));",
            "sh.mark_saved(s, k)",
            "fn save_claimed(",
            ".read(first * sh.ps, len * sh.ps)",
            "sh.unprotect(first, len);",
            "Ok(()) => sh.mark_saved(first, len),",
        ],
    );
    has(
        "src/snapshot/fault.rs",
        &[
            "let mut copies = sh.copies.lock();",
            "let won = sh.claimed.claim(p);",
            "let copied = won && copy_out(sh, &mut copies, p);",
            "drop(copies);",
            "lift(sh, p, retry);",
            "} else if !won && sh.saved.test(p) {",
            "sh.uffd.wake(",
            "fn copy_out(",
            "sh.host.read(p * sh.ps, sh.ps)",
            "copies.insert(p, m.as_ptr())",
        ],
    );
}

/// The live snapshot's claim-bit hand-off (`src/snapshot/`): a saver claims
/// a word of pages (`claim_word`, `fetch_or` `AcqRel`), then under the
/// copies' lock takes the fault thread's copies of the word's other pages,
/// writes its won pages from guest memory (still write-protected) and the
/// copies, then lifts the protection of the won pages and marks all of
/// them saved; the fault thread, on a write fault, claims the page
/// (`claim`) and copies it out *under the copies' lock*, then lifts the
/// protection; when it loses the claim it wakes the writer only if the
/// page is saved (else the saver's un-protect wakes it). Claim: the image
/// holds every page's start-instant value (no copy is left behind by the
/// saver of its word), and every writer is woken.
mod snapshot {
    use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;
    use std::collections::VecDeque;

    const N: usize = 2;
    const START: [u8; N] = [1, 2];

    #[derive(Clone, Copy, PartialEq)]
    pub(super) enum Variant {
        Library,
        /// The fault thread lifts the protection even when a saver holds
        /// the claim.
        LiftWithoutClaim,
        /// The saver lifts the protection before reading the page.
        LiftBeforeSave,
        /// The fault thread claims before taking the copies' lock: a saver
        /// can look for the copy before it is stored, and leave it behind.
        ClaimOutsideLock,
    }

    #[derive(Default)]
    struct Kernel {
        mem: [u8; N],
        wp: [bool; N],
        faults: VecDeque<usize>,
        wakes: [u32; N],
        /// What the image holds.
        image: [Option<u8>; N],
    }

    struct Model {
        k: Mutex<Kernel>,
        cv: Condvar,
        /// The fault thread's copies (`snapshot::copies::Copies`).
        copies: Mutex<Vec<(usize, u8)>>,
        claimed: AtomicU64,
        saved: AtomicU64,
        stop: AtomicBool,
        variant: Variant,
    }

    impl Model {
        fn unprotect(&self, p: usize) {
            let mut k = self.k.lock().unwrap();
            k.wp[p] = false;
            k.wakes[p] += 1;
            self.cv.notify_all();
        }

        fn mark_saved(&self, p: usize) {
            self.saved.fetch_or(1 << p, Ordering::AcqRel);
            let _k = self.k.lock().unwrap();
            self.cv.notify_all();
        }

        /// A guest store: blocks in the write-protect fault until woken.
        fn write(&self, p: usize, v: u8) {
            let mut k = self.k.lock().unwrap();
            while k.wp[p] {
                k.faults.push_back(p);
                self.cv.notify_all();
                let gen = k.wakes[p];
                while k.wakes[p] == gen {
                    k = self.cv.wait(k).unwrap();
                }
            }
            k.mem[p] = v;
        }

        /// `save_words` (one word holding both pages).
        fn saver(&self) {
            let won = self.claimed.fetch_or((1 << N) - 1, Ordering::AcqRel);
            let won = !won & ((1 << N) - 1);
            let taken: Vec<(usize, u8)> = {
                let mut c = self.copies.lock().unwrap();
                let (mine, rest) = c.drain(..).partition(|&(p, _)| won & (1 << p) == 0);
                *c = rest;
                mine
            };
            for p in (0..N).filter(|p| won & (1 << p) != 0) {
                if self.variant == Variant::LiftBeforeSave {
                    self.unprotect(p);
                }
                let v = self.k.lock().unwrap().mem[p];
                self.k.lock().unwrap().image[p] = Some(v);
            }
            for &(p, v) in &taken {
                self.k.lock().unwrap().image[p] = Some(v);
            }
            for p in (0..N).filter(|p| won & (1 << p) != 0) {
                self.unprotect(p);
                self.mark_saved(p);
            }
            for &(p, _) in &taken {
                self.mark_saved(p);
            }
        }

        /// `snapshot::fault::run` + `handle` + `copy_out`.
        fn fault_thread(&self) {
            loop {
                let faults: Vec<usize> = {
                    let mut k = self.k.lock().unwrap();
                    while k.faults.is_empty() && !self.stop.load(Ordering::Acquire) {
                        k = self.cv.wait(k).unwrap();
                    }
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    k.faults.drain(..).collect()
                };
                for p in faults {
                    let early = (self.variant == Variant::ClaimOutsideLock)
                        .then(|| self.claimed.fetch_or(1 << p, Ordering::AcqRel));
                    let mut c = self.copies.lock().unwrap();
                    let old =
                        early.unwrap_or_else(|| self.claimed.fetch_or(1 << p, Ordering::AcqRel));
                    if old & (1 << p) == 0 {
                        let v = self.k.lock().unwrap().mem[p];
                        c.push((p, v));
                        drop(c);
                        self.unprotect(p);
                    } else if self.saved.load(Ordering::Acquire) & (1 << p) != 0 {
                        drop(c);
                        let mut k = self.k.lock().unwrap();
                        k.wakes[p] += 1;
                        self.cv.notify_all();
                    } else if self.variant == Variant::LiftWithoutClaim {
                        drop(c);
                        self.unprotect(p);
                    }
                }
            }
        }
    }

    /// One saver, the fault thread, and a guest writing both pages.
    pub(super) fn check(variant: Variant) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(super::PREEMPTIONS);
        b.check(move || {
            let m = Arc::new(Model {
                k: Mutex::new(Kernel {
                    mem: START,
                    wp: [true; N],
                    ..Kernel::default()
                }),
                cv: Condvar::new(),
                copies: Mutex::new(Vec::new()),
                claimed: AtomicU64::new(0),
                saved: AtomicU64::new(0),
                stop: AtomicBool::new(false),
                variant,
            });
            let f = m.clone();
            let fault = thread::spawn(move || f.fault_thread());
            let s = m.clone();
            let saver = thread::spawn(move || s.saver());
            let g = m.clone();
            let guest = thread::spawn(move || {
                g.write(1, 21);
                g.write(0, 20);
            });
            guest.join().unwrap();
            saver.join().unwrap();
            {
                let _k = m.k.lock().unwrap();
                m.stop.store(true, Ordering::Release);
                m.cv.notify_all();
            }
            fault.join().unwrap();
            let k = m.k.lock().unwrap();
            for (p, &start) in START.iter().enumerate() {
                assert_eq!(
                    k.image[p],
                    Some(start),
                    "torn snapshot: page {p} not saved with its start-instant value"
                );
            }
            assert_eq!(k.mem, [20, 21]);
        });
    }
}

#[test]
fn snapshot_claim_hand_off_holds_under_loom() {
    snapshot::check(snapshot::Variant::Library);
}

#[test]
#[should_panic(expected = "torn snapshot")]
fn loom_catches_a_lift_without_the_claim() {
    snapshot::check(snapshot::Variant::LiftWithoutClaim);
}

#[test]
#[should_panic(expected = "torn snapshot")]
fn loom_catches_a_lift_before_the_save() {
    snapshot::check(snapshot::Variant::LiftBeforeSave);
}

#[test]
#[should_panic(expected = "torn snapshot")]
fn loom_catches_a_claim_outside_the_copies_lock() {
    snapshot::check(snapshot::Variant::ClaimOutsideLock);
}
