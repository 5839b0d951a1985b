//! EIO (and friends) injected through the channel's fault injector at every
//! step that writes, syncs or reads: the error must reach the caller with
//! its errno and a message naming the block/offset, nothing panics, and the
//! file left behind is safe: it opens as incomplete (and, recovered, claims
//! no page whose write failed), or it is complete with exactly the right
//! contents (old contents for an in-place update that never started).

mod common;

use common::*;
use mappedram::channel::{FaultFn, FaultOp};
use mappedram::engine::{read_ramblock_to_vec, save_ramblock};
use mappedram::{Error, GuestSlice, Image, ImageFlags};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const MEM: u64 = 1 << 20;
const ZERO_EVERY: u64 = 5;
const EIO: i32 = libc::EIO;

/// Fail the `nth` (1-based) operation of kind `op` for which `pred(offset,
/// len)` holds, and with `sticky` every matching one after it, with `errno`.
/// Returns the injector and a counter of injected failures.
fn fail_nth(
    op: FaultOp,
    pred: impl Fn(u64, u64) -> bool + Send + Sync + 'static,
    nth: usize,
    sticky: bool,
    errno: i32,
) -> (FaultFn, Arc<AtomicUsize>) {
    let seen = AtomicUsize::new(0);
    let injected = Arc::new(AtomicUsize::new(0));
    let inj = injected.clone();
    let f: FaultFn = Arc::new(move |o, off, len| {
        if o != op || !pred(off, len) {
            return None;
        }
        let k = seen.fetch_add(1, Ordering::SeqCst) + 1;
        if k == nth || (sticky && k > nth) {
            inj.fetch_add(1, Ordering::SeqCst);
            Some(errno)
        } else {
            None
        }
    });
    (f, injected)
}

fn memory() -> Vec<Aligned> {
    specs(MEM)
        .iter()
        .enumerate()
        .map(|(b, s)| block_memory(1, b, s.used_length, ZERO_EVERY))
        .collect()
}

fn expected(mem: &[Aligned]) -> Vec<&[u8]> {
    mem.iter().map(|m| m.as_slice()).collect()
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    CompleteCorrect,
    DetectedIncomplete,
}

/// The state of the file after a fault. Complete: every block must equal
/// `want`. Incomplete: recovered, every page whose bit is set must equal
/// `want` (a bit is never published for a page whose write failed).
/// The writer may still hold the image: look without locking, as a crash
/// (or another host after power loss) would find the file.
fn file_state(path: &Path, want: &[&[u8]]) -> Result<Outcome, String> {
    match Image::open(path, ImageFlags::NO_LOCK) {
        Ok(img) => {
            if !img.is_complete() {
                return Err("opened without RECOVER but not complete".into());
            }
            compare_image(&img, want).map_err(|e| format!("complete but wrong: {e}"))?;
            Ok(Outcome::CompleteCorrect)
        }
        Err(Error::Incomplete(_)) => {
            let img = Image::open(path, ImageFlags::RECOVER | ImageFlags::NO_LOCK)
                .map_err(|e| format!("incomplete, and RECOVER fails: {e}"))?;
            for (b, w) in want.iter().enumerate() {
                let got = read_ramblock_to_vec(&img, b, 2)
                    .map_err(|e| format!("recovered read of block {b}: {e}"))?;
                for (p, (g, w)) in got
                    .chunks(PS as usize)
                    .zip(w.chunks(PS as usize))
                    .enumerate()
                {
                    if img.page_present(b, p as u64).unwrap() && g != w {
                        return Err(format!(
                            "incomplete image claims block {b} page {p}, whose data is wrong"
                        ));
                    }
                }
            }
            Ok(Outcome::DetectedIncomplete)
        }
        Err(e) => Err(format!("open failed: {e}")),
    }
}

/// Outcome counts of one test, printed at its end.
#[derive(Default, Debug)]
struct Tally {
    injected: usize,
    complete_correct: usize,
    detected_incomplete: usize,
}

impl Tally {
    fn add(&mut self, what: &str, injected: usize, path: &Path, want: &[&[u8]]) {
        assert!(injected > 0, "{what}: the fault was never injected");
        self.injected += injected;
        match file_state(path, want) {
            Ok(Outcome::CompleteCorrect) => self.complete_correct += 1,
            Ok(Outcome::DetectedIncomplete) => self.detected_incomplete += 1,
            Err(e) => panic!("{what}: WRONG file state: {e}"),
        }
    }
    fn print(&self, what: &str) {
        println!(
            "{what}: faults injected {}, complete-and-correct {}, detected-incomplete {}, wrong 0",
            self.injected, self.complete_correct, self.detected_incomplete
        );
    }
}

fn assert_errno(r: &Result<impl std::fmt::Debug, Error>, errno: i32, needles: &[&str], what: &str) {
    match r {
        Err(e) => {
            assert_eq!(e.errno(), errno, "{what}: {e}");
            let m = e.to_string();
            for n in needles {
                assert!(m.contains(n), "{what}: message lacks '{n}': {m}");
            }
        }
        Ok(v) => panic!("{what}: succeeded ({v:?}) despite the injected fault"),
    }
}

fn create(path: &Path, direct: bool) -> Image {
    let flags = if direct {
        ImageFlags::DIRECT
    } else {
        ImageFlags::default()
    };
    Image::create(path, "pc-i440fx-10.0", &specs(MEM), flags).unwrap()
}

fn save_all(img: &Image, mem: &[Aligned], threads: u32) -> mappedram::Result<()> {
    for (b, m) in mem.iter().enumerate() {
        let len = img.block_info(b)?.used_length as usize;
        // SAFETY: m is valid for the block's used_length bytes.
        let guest = unsafe { GuestSlice::new(m.ptr(), len) }?;
        save_ramblock(img, b, guest, None, threads)?;
    }
    Ok(())
}

#[test]
fn eio_on_the_nth_page_write_of_a_save() {
    let dir = TmpDir::new("faults-page");
    let mem = memory();
    let want = expected(&mem);
    let mut t = Tally::default();
    for (i, (nth, threads, direct, sticky)) in [
        (1, 1, false, false),
        (2, 1, true, false),
        (5, 4, false, true),
        (9, 2, true, true),
        (3, 3, false, false),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.join(&format!("page-{i}.img"));
        let img = create(&path, direct);
        let pages_at = img.block_info(0).unwrap().pages_offset;
        let (f, injected) = fail_nth(
            FaultOp::Write,
            move |off, _| off >= pages_at,
            nth,
            sticky,
            EIO,
        );
        img.channel().set_fault_injector(Some(f));
        let r = save_all(&img, &mem, threads);
        assert_errno(
            &r,
            EIO,
            &["ramblock '", "file offset 0x", "injected"],
            "save",
        );
        // The caller may still close: the bitmaps of what was written go out.
        img.channel().set_fault_injector(None);
        img.close().unwrap();
        t.add("page write", injected.load(Ordering::SeqCst), &path, &want);
        assert!(
            matches!(
                Image::open(&path, ImageFlags::default()),
                Err(Error::Incomplete(_))
            ),
            "a save that failed and was not finished must not look complete"
        );
    }
    t.print("EIO on page writes of save_ramblock");
    assert_eq!(t.complete_correct, 0);
}

#[test]
fn eio_on_hole_punch_of_a_page_that_became_zero() {
    let dir = TmpDir::new("faults-punch");
    let path = dir.join("punch.img");
    let mem = memory();
    let img = create(&path, false);
    save_all(&img, &mem, 2).unwrap();
    img.sync().unwrap();
    let (f, injected) = fail_nth(FaultOp::PunchHole, |_, _| true, 1, true, EIO);
    img.channel().set_fault_injector(Some(f));
    let zero = vec![0u8; PS as usize];
    let r = img.write_page(0, 0, &zero);
    assert_errno(&r, EIO, &["punch"], "write_page of a zero page");
    img.channel().set_fault_injector(None);
    img.close().unwrap();
    // The page now reads as zero (its bit was cleared: a clear bit means a
    // zero page whatever the slot holds), which is what was written.
    let mut now: Vec<Vec<u8>> = mem.iter().map(|m| m.as_slice().to_vec()).collect();
    now[0][..PS as usize].fill(0);
    let now_ref: Vec<&[u8]> = now.iter().map(|v| v.as_slice()).collect();
    let mut t = Tally::default();
    t.add(
        "punch hole",
        injected.load(Ordering::SeqCst),
        &path,
        &now_ref,
    );
    t.print("EIO on punch_hole");
}

#[test]
fn eio_on_the_bitmap_write_and_on_fdatasync_in_sync_then_retry() {
    let dir = TmpDir::new("faults-sync");
    let mem = memory();
    let want = expected(&mem);
    let mut t = Tally::default();
    // (what, op, which matching op fails)
    let cases: [(&str, FaultOp, usize); 4] = [
        ("bitmap write", FaultOp::Write, 1),
        ("second bitmap write", FaultOp::Write, 2),
        ("fdatasync of page data", FaultOp::Sync, 1),
        ("fdatasync of bitmaps", FaultOp::Sync, 2),
    ];
    for (i, (what, op, nth)) in cases.into_iter().enumerate() {
        let path = dir.join(&format!("sync-{i}.img"));
        let img = create(&path, i % 2 == 1);
        save_all(&img, &mem, 2).unwrap();
        let (f, injected) = fail_nth(op, |_, len| len < 4096, nth, false, EIO);
        img.channel().set_fault_injector(Some(f));
        let r = img.sync();
        let needle = if op == FaultOp::Sync {
            "fdatasync"
        } else {
            "bitmap at offset 0x"
        };
        assert_errno(&r, EIO, &[needle], what);
        img.channel().set_fault_injector(None);
        // Unfinished, whatever made it to disk.
        t.add(what, injected.load(Ordering::SeqCst), &path, &want);
        // The failed bitmaps are retried by the next sync; then finish.
        img.sync().unwrap();
        let r = Image::open(&path, ImageFlags::RECOVER | ImageFlags::NO_LOCK).unwrap();
        let nonzero = want[0]
            .chunks(PS as usize)
            .filter(|p| p.iter().any(|&b| b != 0))
            .count();
        assert_eq!(
            r.block_info(0).unwrap().pages_present,
            nonzero as u64,
            "{what}: the retried sync wrote the bitmap"
        );
        img.finish().unwrap();
        img.close().unwrap();
        assert_eq!(
            file_state(&path, &want),
            Ok(Outcome::CompleteCorrect),
            "{what}"
        );
    }
    t.print("EIO in sync (bitmap write, fdatasync)");
}

#[test]
fn eio_at_every_step_of_finish_and_close() {
    let dir = TmpDir::new("faults-finish");
    let mem = memory();
    let want = expected(&mem);
    let mut t = Tally::default();
    // Count finish's operations on a clean run first.
    let counts = {
        let path = dir.join("count.img");
        let img = create(&path, false);
        save_all(&img, &mem, 2).unwrap();
        let ops = Arc::new(parking_lot_free::Ops::default());
        let o2 = ops.clone();
        img.channel()
            .set_fault_injector(Some(Arc::new(move |op, _, _| {
                o2.count(op);
                None
            })));
        img.finish().unwrap();
        img.close().unwrap();
        ops.snapshot()
    };
    println!("finish + close does (writes, syncs, truncates): {counts:?}");
    assert!(counts.0 >= 2 && counts.1 >= 3, "{counts:?}");
    for (op, n) in [
        (FaultOp::Write, counts.0),
        (FaultOp::Sync, counts.1),
        (FaultOp::SetLen, counts.2),
    ] {
        for nth in 1..=n {
            let path = dir.join(&format!("finish-{op}-{nth}.img"));
            let img = create(&path, nth % 2 == 0);
            save_all(&img, &mem, 2).unwrap();
            let (f, injected) = fail_nth(op, |_, _| true, nth, false, EIO);
            img.channel().set_fault_injector(Some(f));
            let r = img.finish();
            let what = format!("{op} #{nth} of finish");
            if r.is_ok() {
                // Only close's final fdatasync is left to fail.
                let r = img.close();
                assert_errno(&r, EIO, &["fdatasync"], &format!("{what} (close)"));
            } else {
                assert_errno(&r, EIO, &["injected"], &what);
                // Close without finishing: stays incomplete.
                img.channel().set_fault_injector(None);
                img.close().unwrap();
            }
            t.add(&what, injected.load(Ordering::SeqCst), &path, &want);
        }
    }
    t.print("EIO at each write/fdatasync/truncate of finish and close");
    assert!(t.detected_incomplete > 0);
}

#[test]
fn eio_on_the_completion_record_then_finish_again() {
    let dir = TmpDir::new("faults-record");
    let path = dir.join("record.img");
    let mem = memory();
    let want = expected(&mem);
    let img = create(&path, false);
    save_all(&img, &mem, 2).unwrap();
    let eos = img.layout().eos_offset;
    // The stream end is written first, then the record (the last write
    // after the EOS).
    let (f, injected) = fail_nth(FaultOp::Write, move |off, _| off > eos + 8, 1, false, EIO);
    img.channel().set_fault_injector(Some(f));
    let r = img.finish();
    assert_errno(&r, EIO, &["completion record"], "finish");
    let mut t = Tally::default();
    t.add(
        "completion record",
        injected.load(Ordering::SeqCst),
        &path,
        &want,
    );
    assert_eq!(t.detected_incomplete, 1);
    // A second finish succeeds and completes the image.
    img.channel().set_fault_injector(None);
    img.finish().unwrap();
    img.close().unwrap();
    assert_eq!(file_state(&path, &want), Ok(Outcome::CompleteCorrect));
    t.print("EIO on the completion-record write");
}

#[test]
fn eio_on_the_update_mark_blocks_the_page_write() {
    let dir = TmpDir::new("faults-mark");
    let template = dir.join("template.img");
    let mem = memory();
    let want = expected(&mem);
    {
        let img = create(&template, false);
        save_all(&img, &mem, 2).unwrap();
        img.finish().unwrap();
        img.close().unwrap();
    }
    let original = std::fs::read(&template).unwrap();
    let mut t = Tally::default();
    let new_page = vec![0x5au8; PS as usize];
    // (op that fails, the message part)
    for (i, (op, needle)) in [
        (FaultOp::Write, "marking the image as being updated"),
        (FaultOp::Sync, "marking the image as being updated"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.join(&format!("mark-{i}.img"));
        std::fs::copy(&template, &path).unwrap();
        let img = Image::open(&path, ImageFlags::READ_WRITE).unwrap();
        let (f, injected) = fail_nth(op, |_, _| true, 1, false, EIO);
        img.channel().set_fault_injector(Some(f));
        let r = img.write_page(0, 3 * PS, &new_page);
        assert_errno(
            &r,
            EIO,
            &[needle],
            &format!("write_page with the mark's {op} failing"),
        );
        let was_present = want[0][3 * PS as usize..4 * PS as usize]
            .iter()
            .any(|&b| b != 0);
        assert_eq!(
            img.page_present(0, 3).unwrap(),
            was_present,
            "bit unchanged"
        );
        img.channel().set_fault_injector(None);
        img.close().unwrap();
        // The page write never happened: the page slot is unchanged, and
        // the file is either byte-identical (the mark write failed) or
        // differs only in the mark byte (its fdatasync failed).
        let now = std::fs::read(&path).unwrap();
        assert_eq!(now.len(), original.len());
        let diffs: Vec<usize> = (0..now.len()).filter(|&k| now[k] != original[k]).collect();
        match op {
            FaultOp::Write => assert!(diffs.is_empty(), "bytes changed at {diffs:?}"),
            _ => assert!(diffs.len() <= 1, "bytes changed at {diffs:?}"),
        }
        t.add(
            &format!("update mark {op}"),
            injected.load(Ordering::SeqCst),
            &path,
            &want,
        );
    }
    t.print("EIO on the update mark of an in-place update");
}

#[test]
fn eio_on_reads_reaches_the_caller() {
    let dir = TmpDir::new("faults-read");
    let path = dir.join("read.img");
    let mem = memory();
    let want = expected(&mem);
    let img = create(&path, false);
    save_all(&img, &mem, 2).unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    let mut injected_total = 0;
    for (i, direct) in [false, true].into_iter().enumerate() {
        let flags = if direct {
            ImageFlags::DIRECT
        } else {
            ImageFlags::default()
        };
        let img = Image::open(&path, flags).unwrap();
        let pages_at = img.block_info(0).unwrap().pages_offset;
        let (f, injected) = fail_nth(
            FaultOp::Read,
            move |off, _| off >= pages_at,
            1 + i,
            true,
            EIO,
        );
        img.channel().set_fault_injector(Some(f));
        let r = read_ramblock_to_vec(&img, 0, 3);
        assert_errno(
            &r,
            EIO,
            &["ramblock 'mem'", "file offset 0x"],
            "read_ramblock",
        );
        let mut page = vec![0u8; PS as usize];
        let first_present = (0..MEM / PS)
            .find(|&p| img.page_present(0, p).unwrap())
            .unwrap();
        let r = img.read_page(0, first_present * PS, &mut page);
        assert_errno(&r, EIO, &["ramblock 'mem'"], "read_page");
        injected_total += injected.load(Ordering::SeqCst);
        img.channel().set_fault_injector(None);
        compare_image(&img, &want).unwrap();
        img.close().unwrap();
    }
    // A failing read while opening is an error too, not a panic.
    let ch = Arc::new(mappedram::Channel::open(&path, mappedram::OpenFlags::READ).unwrap());
    let (f, injected) = fail_nth(FaultOp::Read, |_, _| true, 2, true, EIO);
    ch.set_fault_injector(Some(f));
    let r = Image::open_on(ch, None, ImageFlags::default());
    assert_errno(&r, EIO, &["injected"], "open with failing reads");
    injected_total += injected.load(Ordering::SeqCst);
    println!("EIO on reads: faults injected {injected_total}, every one reported to the caller");
}

/// A tiny operation counter (no extra dependency).
mod parking_lot_free {
    use mappedram::channel::FaultOp;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    pub struct Ops {
        writes: AtomicUsize,
        syncs: AtomicUsize,
        truncates: AtomicUsize,
    }

    impl Ops {
        pub fn count(&self, op: FaultOp) {
            let c = match op {
                FaultOp::Write => &self.writes,
                FaultOp::Sync => &self.syncs,
                FaultOp::SetLen => &self.truncates,
                _ => return,
            };
            c.fetch_add(1, Ordering::SeqCst);
        }
        pub fn snapshot(&self) -> (usize, usize, usize) {
            (
                self.writes.load(Ordering::SeqCst),
                self.syncs.load(Ordering::SeqCst),
                self.truncates.load(Ordering::SeqCst),
            )
        }
    }
}

/// A model of the bitmap publication protocol (`src/image/bitmap.rs` +
/// `flush_bitmaps` in `src/image/state.rs`), checked over every
/// interleaving of two page writers (different bits of one bitmap word) and
/// a syncer that syncs twice. Sequentially consistent interleavings only:
/// weak-memory outcomes are checked with loom in tests/loom_bitmap.rs.
/// Invariants:
/// - safety: a bit in the durable bitmap always has durable page data;
/// - no lost bit: when everything is done, each written page's bit is in
///   the bitmap on disk, or the dirty flag is set for the next sync.
///
/// The same checker finds the lost-bit bug in a variant that snapshots the
/// words before clearing the dirty flag, so it is not vacuous.
mod protocol_model {
    #[derive(Clone, Default, Debug)]
    struct S {
        word: u64,
        dirty: bool,
        /// Page data written (per bit), and what the last fdatasync made durable.
        data: u64,
        durable_data: u64,
        disk_bitmap: u64,
        // Syncer locals.
        took: bool,
        snap: u64,
    }

    type Step = fn(&mut S, usize);

    fn writer_steps() -> Vec<Step> {
        vec![
            // pwritev of the page
            |s, bit| s.data |= 1 << bit,
            // fetch_or + dirty (update_range stores dirty after the RMW)
            |s, bit| s.word |= 1 << bit,
            |s, _| s.dirty = true,
        ]
    }

    fn syncer_steps(snapshot_first: bool) -> Vec<Step> {
        let take: Step = |s, _| s.took = std::mem::replace(&mut s.dirty, false);
        let snap: Step = |s, _| s.snap = s.word;
        let (a, b) = if snapshot_first {
            (snap, take)
        } else {
            (take, snap)
        };
        let round: Vec<Step> = vec![a, b, |s, _| s.durable_data = s.data, |s, _| {
            if s.took {
                s.disk_bitmap = s.snap;
            }
        }];
        round.iter().chain(round.iter()).copied().collect()
    }

    /// Explore every interleaving; returns the first violation.
    fn explore(snapshot_first: bool) -> Result<usize, String> {
        let threads: Vec<(Vec<Step>, usize)> = vec![
            (writer_steps(), 0),
            (writer_steps(), 1),
            (syncer_steps(snapshot_first), 0),
        ];
        let mut finals = 0;
        fn dfs(
            s: &S,
            pcs: &mut Vec<usize>,
            threads: &[(Vec<Step>, usize)],
            finals: &mut usize,
        ) -> Result<(), String> {
            if s.disk_bitmap & !s.durable_data != 0 {
                return Err(format!("a durable bit without durable data: {s:?}"));
            }
            let mut any = false;
            for t in 0..threads.len() {
                if pcs[t] < threads[t].0.len() {
                    any = true;
                    let mut n = s.clone();
                    (threads[t].0[pcs[t]])(&mut n, threads[t].1);
                    pcs[t] += 1;
                    let r = dfs(&n, pcs, threads, finals);
                    pcs[t] -= 1;
                    r?;
                }
            }
            if !any {
                *finals += 1;
                if s.word & !s.disk_bitmap != 0 && !s.dirty {
                    return Err(format!("a set bit is neither on disk nor dirty: {s:?}"));
                }
            }
            Ok(())
        }
        let mut pcs = vec![0; threads.len()];
        dfs(&S::default(), &mut pcs, &threads, &mut finals)?;
        Ok(finals)
    }

    #[test]
    fn bitmap_dirty_snapshot_protocol_holds_in_every_interleaving() {
        let n = explore(false).unwrap();
        println!("protocol model: {n} complete interleavings, invariants hold");
        assert!(n > 1000);
        let bad = explore(true);
        assert!(
            bad.is_err(),
            "the model must catch snapshot-before-take_dirty"
        );
        println!("snapshot-before-clear variant: {}", bad.unwrap_err());
    }
}

/// A page write that failed during an in-place update leaves its slot torn:
/// the image must not be declared complete again (by sync/close/finish)
/// until that page was rewritten successfully.
#[test]
fn failed_in_place_write_blocks_completion_until_rewritten() {
    let dir = TmpDir::new("latch");
    let path = dir.join("img");
    let img = create(&path, false);
    let old = vec![0x11u8; PS as usize];
    for p in 0..8 {
        img.write_page(0, p * PS, &old).unwrap();
    }
    img.finish().unwrap();
    img.close().unwrap();

    for rewrite in [false, true] {
        let img = Image::open(&path, ImageFlags::READ_WRITE).unwrap();
        let new = vec![0x22u8; PS as usize];
        img.write_page(0, 0, &new).unwrap();
        let (f, injected) = fail_nth(FaultOp::Write, |_, len| len == PS, 1, false, EIO);
        img.channel().set_fault_injector(Some(f));
        let r = img.write_page(0, 3 * PS, &new);
        img.channel().set_fault_injector(None);
        assert_eq!(injected.load(Ordering::SeqCst), 1);
        assert_errno(&r, EIO, &["'mem'"], "the failed page write");
        // sync writes what is good but does not declare the image complete.
        let r = img.sync();
        assert_errno(
            &r,
            EIO,
            &["'mem'", "page 3", "not rewritten"],
            "sync after a failed write",
        );
        assert!(!img.is_complete());
        // What the disk says while the writer still holds the image.
        assert!(matches!(
            Image::open(&path, ImageFlags::NO_LOCK),
            Err(Error::Incomplete(_))
        ));
        if rewrite {
            img.write_page(0, 3 * PS, &new).unwrap();
            img.close().unwrap();
            let img = Image::open(&path, ImageFlags::default()).unwrap();
            let mut got = vec![0u8; PS as usize];
            assert!(img.read_page(0, 3 * PS, &mut got).unwrap());
            assert_eq!(got, new);
        } else {
            let r = img.close();
            assert_errno(&r, EIO, &["not rewritten"], "close after a failed write");
            assert!(matches!(
                Image::open(&path, ImageFlags::default()),
                Err(Error::Incomplete(_))
            ));
            // Recover explicitly and restore the page; the caller's finish
            // (not a sync or close) declares the image whole again.
            let img = Image::open(&path, ImageFlags::READ_WRITE | ImageFlags::RECOVER).unwrap();
            img.write_page(0, 3 * PS, &old).unwrap();
            img.sync().unwrap();
            assert!(!img.is_complete(), "sync cleared a mark found on open");
            img.finish().unwrap();
            assert!(img.is_complete());
            img.close().unwrap();
            assert!(Image::open(&path, ImageFlags::default())
                .unwrap()
                .is_complete());
        }
    }
}
