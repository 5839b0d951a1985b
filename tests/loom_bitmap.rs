//! Model checking of the bitmap publish protocol with loom (every
//! interleaving and every C11 weak-memory outcome loom models).
//!
//! The protocol (`src/image/bitmap.rs`, `Image::flush_bitmaps` in
//! `src/image/state.rs`): a page writer writes the page (`pwritev`), then
//! `fetch_or`s its bit (`AcqRel`) and raises the dirty flag with
//! `swap(true, Release)`. A sync takes the dirty flag
//! (`swap(false, AcqRel)`), snapshots the words (`load(Acquire)`),
//! `fdatasync`s, and writes the snapshot out. Claims:
//! - safety: a bit in the bitmap on disk always has its page durable;
//! - no lost update: once everyone is done, the bitmap on disk equals the
//!   words (a set bit written out, a cleared one cleared), or the dirty
//!   flag is still raised (so the next sync writes them).
//!
//! The model is a copy of those steps on loom's atomics (the library keeps
//! `std` atomics); `model_matches_the_library` fails when the orderings in
//! `src/image/bitmap.rs` change, so the copy cannot drift silently. The
//! kernel side (page data, `fdatasync`, the bitmap write) is a loom
//! `Mutex`: system calls on one file are ordered.
//!
//! Negative controls show the checker can fail: snapshotting before taking
//! the dirty flag loses a bit in some interleaving; a `Relaxed` flag RMW,
//! and the plain `store(true, Release)` the library used before, lose one
//! through weak-memory outcomes that an interleavings-only model
//! (tests/faults.rs `protocol_model`) cannot see. ARCHITECTURE.md
//! ("Concurrency evidence") explains the plain-store case, why it is a real
//! C11 outcome and not one of loom's false alarms, and
//! [`swap_store_litmus_is_a_loom_false_alarm`] pins the false alarm loom
//! 0.7 does raise.

use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

/// loom's preemption bound: 3 covers every lost-bit schedule the negative
/// controls need and keeps the run to seconds.
const PREEMPTIONS: usize = 3;

/// What the file holds: page data written, what the last `fdatasync` made
/// durable, and the bitmap word on disk.
#[derive(Default)]
struct Disk {
    data: u64,
    durable: u64,
    bitmap: u64,
}

/// The variants the model checks; `Library` is what `src/` does.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Library,
    SnapshotBeforeTake,
    RelaxedDirtySwap,
    PlainDirtyStore,
}

struct Model {
    word: AtomicU64,
    dirty: AtomicBool,
    disk: Mutex<Disk>,
    variant: Variant,
}

impl Model {
    /// `store_pages` + `AtomicBitmap::set_range` (one word).
    fn write_page(&self, bit: u32) {
        self.disk.lock().unwrap().data |= 1 << bit;
        let old = self.word.fetch_or(1 << bit, Ordering::AcqRel);
        if old & (1 << bit) == 0 {
            self.raise_dirty();
        }
    }

    /// `discard_pages` + `AtomicBitmap::clear_range` (one word): the page
    /// became zero. The hole punch does not unset `data`: a punched page
    /// reads as zeros, which is its content now.
    fn zero_page(&self, bit: u32) {
        let old = self.word.fetch_and(!(1 << bit), Ordering::AcqRel);
        if old & (1 << bit) != 0 {
            self.raise_dirty();
        }
    }

    fn raise_dirty(&self) {
        match self.variant {
            Variant::PlainDirtyStore => self.dirty.store(true, Ordering::Release),
            Variant::RelaxedDirtySwap => _ = self.dirty.swap(true, Ordering::Relaxed),
            _ => _ = self.dirty.swap(true, Ordering::Release),
        }
    }

    /// `flush_bitmaps`: take dirty, snapshot, fdatasync, write the bitmap.
    fn sync(&self) {
        let (took, snap) = if self.variant == Variant::SnapshotBeforeTake {
            let snap = self.word.load(Ordering::Acquire);
            (self.dirty.swap(false, Ordering::AcqRel), snap)
        } else {
            let took = self.dirty.swap(false, Ordering::AcqRel);
            (took, self.word.load(Ordering::Acquire))
        };
        let mut d = self.disk.lock().unwrap();
        d.durable = d.data; // fdatasync
        if took {
            d.bitmap = snap;
        }
        assert_eq!(
            d.bitmap & !d.durable,
            0,
            "a bit on disk whose page is not durable"
        );
    }
}

/// Two writers (bits 0 and 1 of one word; the first then zeroes its page
/// again) and a syncer that syncs twice, every interleaving with up to
/// [`PREEMPTIONS`] preemptions.
fn check(variant: Variant) {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(PREEMPTIONS);
    model.check(move || {
        let m = Arc::new(Model {
            word: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            disk: Mutex::new(Disk::default()),
            variant,
        });
        let writers: Vec<_> = (0..2)
            .map(|bit| {
                let m = m.clone();
                thread::spawn(move || {
                    m.write_page(bit);
                    if bit == 0 {
                        m.zero_page(bit);
                    }
                })
            })
            .collect();
        let s = m.clone();
        let syncer = thread::spawn(move || {
            s.sync();
            s.sync();
        });
        for w in writers {
            w.join().unwrap();
        }
        syncer.join().unwrap();
        let word = m.word.load(Ordering::Acquire);
        let on_disk = m.disk.lock().unwrap().bitmap;
        assert!(
            word == on_disk || m.dirty.load(Ordering::Acquire),
            "lost bit: word {word:#b}, on disk {on_disk:#b}, dirty flag clear"
        );
    });
}

#[test]
fn bitmap_publish_protocol_holds_under_loom() {
    check(Variant::Library);
}

#[test]
#[should_panic(expected = "lost bit")]
fn loom_catches_snapshot_before_take_dirty() {
    check(Variant::SnapshotBeforeTake);
}

#[test]
#[should_panic(expected = "lost bit")]
fn loom_catches_a_relaxed_dirty_flag() {
    check(Variant::RelaxedDirtySwap);
}

/// The library's former code. Under C11 this loses a bit (see
/// ARCHITECTURE.md); loom 0.7 also raises its RMW false alarm on it, so
/// this control alone would not prove that: a loom patched for that bug
/// fails it too, and the hand proof does not depend on loom.
#[test]
#[should_panic(expected = "lost bit")]
fn loom_catches_a_plain_dirty_store() {
    check(Variant::PlainDirtyStore);
}

/// The reduced program, one flag: a thread stores `true`; main swaps in
/// `false`, joins, loads. C11 forbids "the swap read `false` and the flag
/// ends `false`": a read-modify-write reads the value immediately before
/// its own write in modification order, so a swap that read the initial
/// `false` precedes the store, which then is the last write; the final
/// load happens after both and must read it. loom 0.7 reports that outcome
/// anyway (tokio-rs/loom#254: it does not order later stores after an
/// RMW's write; unmerged fix tokio-rs/loom#391). This test pins the false
/// alarm: when it stops panicking, loom is fixed, and the `should_panic`
/// goes.
#[test]
#[should_panic(expected = "C11 forbids")]
fn swap_store_litmus_is_a_loom_false_alarm() {
    loom::model(|| {
        let d = Arc::new(AtomicBool::new(false));
        let d1 = d.clone();
        let t = thread::spawn(move || d1.store(true, Ordering::Release));
        let took = d.swap(false, Ordering::AcqRel);
        t.join().unwrap();
        let last = d.load(Ordering::Acquire);
        assert!(took || last, "C11 forbids took=false, final=false");
    });
}

/// The model above copies these operations; change both together.
#[test]
fn model_matches_the_library() {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/image/bitmap.rs"))
        .unwrap();
    for needle in [
        "self.words[w].fetch_or(mask, Ordering::AcqRel)",
        "self.dirty.swap(true, Ordering::Release);",
        "self.dirty.swap(false, Ordering::AcqRel)",
        "out.extend_from_slice(&w.load(Ordering::Acquire).to_le_bytes());",
    ] {
        assert!(
            src.contains(needle),
            "src/image/bitmap.rs no longer has `{needle}`: update tests/loom_bitmap.rs's model to match"
        );
    }
    let state = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/image/state.rs"))
        .unwrap();
    let take = state.find(".filter(|(_, b)| b.bitmap.take_dirty())");
    let snap = state.find(".map(|(i, b)| (i, b.bitmap.to_le_bytes()))");
    assert!(
        matches!((take, snap), (Some(t), Some(s)) if t < s),
        "flush_bitmaps must take the dirty flag before the snapshot (as the model does)"
    );
}
