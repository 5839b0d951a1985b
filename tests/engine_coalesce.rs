//! The engine's coalesced paths: saves that write short zero gaps inside
//! one request (bits stay clear), saves through writer threads, restores
//! that read a span in one request with the gaps into scratch memory.
//! Every layout is saved with M threads and restored with N under several
//! rule settings (gaps off, default, large; writers off and on), gaps at
//! unit edges, data -> zero rewrites that must still punch.

use mappedram::engine::{read_ramblock, read_ramblock_to_vec, save_ramblock, tuning, UNIT_BYTES};
use mappedram::{BlockSpec, DirtyBitmap, GuestSlice, GuestSliceMut, Image, ImageFlags};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const PS: usize = 4096;
/// Tests that change the process-wide rules run one at a time.
static RULES: Mutex<()> = Mutex::new(());

fn tmp(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mr-engine-coalesce-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Page-aligned memory, like guest RAM.
struct Aligned {
    ptr: *mut u8,
    len: usize,
    layout: std::alloc::Layout,
}
impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, PS).unwrap();
        // SAFETY: non-zero size layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, len, layout }
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    fn guest(&self) -> GuestSlice<'_> {
        // SAFETY: `ptr` is valid for reads of `len` bytes while `self` lives.
        unsafe { GuestSlice::new(self.ptr, self.len) }.unwrap()
    }
    fn guest_mut(&mut self) -> GuestSliceMut<'_> {
        // SAFETY: `ptr` is valid for reads and writes of `len` bytes while
        // `self` is borrowed.
        unsafe { GuestSliceMut::new(self.ptr, self.len) }.unwrap()
    }
    fn page(&mut self, p: usize) -> &mut [u8] {
        &mut self.as_mut_slice()[p * PS..(p + 1) * PS]
    }
}
impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn fill_page(page: &mut [u8], seed: u64) {
    for (i, c) in page.chunks_mut(8).enumerate() {
        c.copy_from_slice(&mix(seed ^ i as u64).to_le_bytes());
    }
    // Some data pages start with zero bytes (the scan must look further).
    if seed % 5 == 0 {
        page[..PS / 2].fill(0);
    }
}

const UNIT_PAGES: usize = UNIT_BYTES as usize / PS;

/// Layouts: page-interleaved, fragmented runs, and runs placed around
/// unit edges (a gap ending/starting exactly at an edge, data on both
/// sides of an edge, a one-page run at each end of a unit).
fn layout(kind: u32, pages: usize) -> Vec<bool> {
    let mut v = vec![false; pages];
    match kind {
        0 => {
            for (p, b) in v.iter_mut().enumerate() {
                *b = mix(p as u64 ^ 0xabc) & 1 == 0;
            }
        }
        1 => {
            let (mut p, mut on, mut k) = (0, true, 0u64);
            while p < pages {
                let len = 1 + (mix(k) % 300) as usize;
                let end = (p + len).min(pages);
                v[p..end].fill(on);
                p = end;
                on = !on;
                k += 1;
            }
        }
        _ => {
            for u in (0..pages).step_by(UNIT_PAGES) {
                let e = (u + UNIT_PAGES).min(pages);
                v[u] = true; // first page of the unit
                v[e - 1] = true; // last page
                for (p, b) in v.iter_mut().enumerate().take((u + 20).min(e)).skip(u + 3) {
                    *b = p % 3 != 0;
                }
                // Data straddling the next edge.
                v[e.saturating_sub(5)..(e + 5).min(pages)].fill(true);
                // A gap that ends 5 pages before the edge.
                v[e.saturating_sub(40)..e.saturating_sub(5)].fill(false);
                // A gap that ends exactly at the edge (the next unit's
                // first page is data again).
                if e < pages {
                    v[e - 12..e].fill(false);
                    v[e - 14..e - 12].fill(true);
                }
            }
        }
    }
    v
}

fn guest(present: &[bool], seed: u64) -> Aligned {
    let mut m = Aligned::new(present.len() * PS);
    for (p, &on) in present.iter().enumerate() {
        if on {
            fill_page(m.page(p), seed ^ (p as u64) << 20);
        }
    }
    m
}

fn spec(len: usize) -> Vec<BlockSpec> {
    vec![BlockSpec {
        idstr: "mem".into(),
        used_length: len as u64,
        page_size: PS as u64,
    }]
}

/// Save `mem` with `m` threads, check the bits, restore with `n` threads
/// (fresh memory; garbage memory with and without zeroing absent pages).
fn round_trip(mem: &Aligned, present: &[bool], m: u32, n: u32, what: &str) {
    let path = tmp("img");
    let img = Image::create(&path, "pc-i440fx-10.0", &spec(mem.len), ImageFlags::DIRECT).unwrap();
    let st = save_ramblock(&img, 0, mem.guest(), None, m).unwrap();
    let npresent = present.iter().filter(|&&b| b).count() as u64;
    assert_eq!(st.pages_data, npresent, "{what}");
    img.finish().unwrap();
    img.close().unwrap();
    let img = Image::open(&path, ImageFlags::DIRECT).unwrap();
    assert_eq!(img.block_info(0).unwrap().pages_present, npresent, "{what}");
    for (p, &on) in present.iter().enumerate() {
        assert_eq!(
            img.page_present(0, p as u64).unwrap(),
            on,
            "{what}: bit of page {p}"
        );
    }
    assert_eq!(
        read_ramblock_to_vec(&img, 0, n).unwrap(),
        mem.as_slice(),
        "{what}: fresh"
    );
    // Garbage memory, absent pages left alone: present pages equal the
    // guest, absent ones still hold the garbage.
    let mut g = Aligned::new(mem.len);
    g.as_mut_slice().fill(0xa5);
    read_ramblock(&img, 0, g.guest_mut(), false, n).unwrap();
    for (p, &on) in present.iter().enumerate() {
        let got = &g.as_slice()[p * PS..(p + 1) * PS];
        if on {
            assert_eq!(
                got,
                &mem.as_slice()[p * PS..(p + 1) * PS],
                "{what}: page {p}"
            );
        } else {
            assert!(
                got.iter().all(|&b| b == 0xa5),
                "{what}: absent page {p} was written"
            );
        }
    }
    read_ramblock(&img, 0, g.guest_mut(), true, n).unwrap();
    assert_eq!(g.as_slice(), mem.as_slice(), "{what}: zero_absent");
    img.close().unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn layouts_round_trip_under_every_rule() {
    let _g = RULES.lock().unwrap_or_else(|e| e.into_inner());
    let keep = tuning::get();
    let pages = 3 * UNIT_PAGES + 77; // a short last unit
    let rules = [
        (0, 0, 0),                // no coalescing, writes on the worker
        (keep.0, keep.1, keep.2), // defaults
        (1 << 20, 1 << 20, 1),    // large gaps, one writer (fewer than workers)
        (16 << 10, 64 << 10, 4),
    ];
    for kind in 0..3 {
        let present = layout(kind, pages);
        let mem = guest(&present, kind as u64 + 1);
        for (i, &(sg, rg, w)) in rules.iter().enumerate() {
            tuning::set(sg, rg, w);
            for (m, n) in [(1, 1), (2, 3), (3, 1), (4, 2)] {
                round_trip(
                    &mem,
                    &present,
                    m,
                    n,
                    &format!("layout {kind} rules {i} save {m}T restore {n}T"),
                );
            }
        }
    }
    tuning::set(keep.0, keep.1, keep.2);
}

#[test]
fn gaps_cost_allocation_but_only_up_to_the_threshold() {
    let _g = RULES.lock().unwrap_or_else(|e| e.into_inner());
    let keep = tuning::get();
    // Runs of 4 data pages separated by gaps of 4 (16 KiB) and 64 (256 KiB).
    let pages = 2 * UNIT_PAGES;
    let mut present = vec![false; pages];
    let mut p = 0;
    let mut k = 0;
    while p + 4 <= pages {
        present[p..p + 4].fill(true);
        p += 4 + if k % 2 == 0 { 4 } else { 64 };
        k += 1;
    }
    let mem = guest(&present, 9);
    let data = present.iter().filter(|&&b| b).count() as u64 * PS as u64;
    let mut alloc = Vec::new();
    for gap in [0u64, 16 << 10, 256 << 10] {
        tuning::set(gap, keep.1, keep.2);
        let path = tmp("img");
        let img =
            Image::create(&path, "pc-i440fx-10.0", &spec(mem.len), ImageFlags::DIRECT).unwrap();
        save_ramblock(&img, 0, mem.guest(), None, 2).unwrap();
        img.finish().unwrap();
        let a = img.allocated_bytes().unwrap();
        assert_eq!(read_ramblock_to_vec(&img, 0, 2).unwrap(), mem.as_slice());
        img.close().unwrap();
        alloc.push(a);
        std::fs::remove_file(&path).unwrap();
    }
    tuning::set(keep.0, keep.1, keep.2);
    let meta = 2 << 20; // headers, bitmap, stream end
                        // No coalescing: only the data is allocated.
    assert!(alloc[0] <= data + meta, "{alloc:?} data {data}");
    // 16 KiB gaps joined: data + those gaps (half the gaps) allocated.
    let short_gaps = data / 2; // one 16 KiB gap per two 16 KiB runs
    assert!(
        alloc[1] >= data + short_gaps * 9 / 10 && alloc[1] <= data + short_gaps + meta,
        "{alloc:?}"
    );
    // Everything joined: the whole span of each unit.
    assert!(alloc[2] > alloc[1] + (data * 4), "{alloc:?}");
}

#[test]
fn data_to_zero_rewrite_still_punches_when_gaps_are_joined() {
    let _g = RULES.lock().unwrap_or_else(|e| e.into_inner());
    let keep = tuning::get();
    tuning::set(1 << 20, keep.1, 2);
    let pages = 2 * UNIT_PAGES;
    let present = vec![true; pages];
    let mut mem = guest(&present, 3);
    let path = tmp("img");
    let img = Image::create(&path, "pc-i440fx-10.0", &spec(mem.len), ImageFlags::DIRECT).unwrap();
    save_ramblock(&img, 0, mem.guest(), None, 2).unwrap();
    img.sync().unwrap();
    let full = img.allocated_bytes().unwrap();
    // Every other page turns zero: short gaps, but their bits are set, so
    // they must be discarded (bit cleared, slot punched), not rewritten.
    let mut now = vec![true; pages];
    for p in (0..pages).step_by(2) {
        mem.page(p).fill(0);
        now[p] = false;
    }
    let st = save_ramblock(&img, 0, mem.guest(), None, 3).unwrap();
    assert_eq!(st.pages_zero, pages as u64 / 2);
    img.sync().unwrap();
    let half = img.allocated_bytes().unwrap();
    assert!(
        half + (pages * PS / 2) as u64 * 9 / 10 <= full,
        "not punched: {full} -> {half}"
    );
    for (p, &on) in now.iter().enumerate() {
        assert_eq!(img.page_present(0, p as u64).unwrap(), on, "page {p}");
    }
    assert_eq!(read_ramblock_to_vec(&img, 0, 2).unwrap(), mem.as_slice());
    // And back: zero -> data in those pages, the gaps now all data.
    for p in (0..pages).step_by(2) {
        fill_page(mem.page(p), 77 + p as u64);
    }
    save_ramblock(&img, 0, mem.guest(), None, 1).unwrap();
    img.finish().unwrap();
    assert_eq!(img.block_info(0).unwrap().pages_present, pages as u64);
    assert_eq!(read_ramblock_to_vec(&img, 0, 3).unwrap(), mem.as_slice());
    img.close().unwrap();
    tuning::set(keep.0, keep.1, keep.2);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn dirty_skipped_pages_are_never_part_of_a_joined_write() {
    let _g = RULES.lock().unwrap_or_else(|e| e.into_inner());
    let keep = tuning::get();
    tuning::set(1 << 20, keep.1, 2);
    let pages = UNIT_PAGES;
    let present: Vec<bool> = (0..pages).map(|p| p % 4 != 1).collect();
    let mem = guest(&present, 5);
    let path = tmp("img");
    let img = Image::create(&path, "pc-i440fx-10.0", &spec(mem.len), ImageFlags::DIRECT).unwrap();
    // Round 1: all of it.
    save_ramblock(&img, 0, mem.guest(), None, 1).unwrap();
    // Round 2: the guest changed pages p % 4 == 1 (were zero), but only
    // every other of them is dirty: the others must keep reading as zero
    // (their slots between dirty data pages must not be rewritten with
    // the new bytes and marked present).
    let mut m2 = guest(&present, 5);
    let mut dirty = vec![0u64; pages.div_ceil(64)];
    for p in (1..pages).step_by(4) {
        fill_page(m2.page(p), 1000 + p as u64);
        if p % 8 == 1 {
            dirty[p / 64] |= 1 << (p % 64);
        }
    }
    for p in (0..pages).filter(|p| p % 4 == 0) {
        dirty[p / 64] |= 1 << (p % 64);
    }
    // Pages p % 4 == 2 hold data saved in round 1 and changed since, but
    // are not dirty: they keep their round-1 bytes.
    for p in (2..pages).step_by(4) {
        fill_page(m2.page(p), 5000 + p as u64);
    }
    save_ramblock(
        &img,
        0,
        m2.guest(),
        Some(DirtyBitmap::from_slice(&dirty)),
        2,
    )
    .unwrap();
    let back = read_ramblock_to_vec(&img, 0, 2).unwrap();
    for p in 0..pages {
        let want: &[u8] = if p % 4 == 1 && p % 8 != 1 {
            &[0u8; PS]
        } else if p % 4 == 2 {
            &mem.as_slice()[p * PS..(p + 1) * PS]
        } else {
            &m2.as_slice()[p * PS..(p + 1) * PS]
        };
        assert_eq!(&back[p * PS..(p + 1) * PS], want, "page {p}");
    }
    img.close().unwrap();
    tuning::set(keep.0, keep.1, keep.2);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_failed_joined_write_reaches_the_caller_and_claims_nothing() {
    use mappedram::channel::{FaultFn, FaultOp};
    use std::sync::Arc;
    let _g = RULES.lock().unwrap_or_else(|e| e.into_inner());
    let keep = tuning::get();
    tuning::set(1 << 20, keep.1, 2);
    let pages = 4 * UNIT_PAGES;
    let present = layout(0, pages); // interleaved: every unit one joined write
    let mem = guest(&present, 11);
    let path = tmp("img");
    let img = Image::create(&path, "pc-i440fx-10.0", &spec(mem.len), ImageFlags::DIRECT).unwrap();
    let pages_at = img.block_info(0).unwrap().pages_offset;
    let unit = UNIT_BYTES;
    // Fail every write into the third unit's slots.
    let bad = pages_at + 2 * unit..pages_at + 3 * unit;
    let f: FaultFn = Arc::new(move |op, off, _| {
        (op == FaultOp::Write && bad.contains(&off)).then_some(libc::EIO)
    });
    img.channel().set_fault_injector(Some(f));
    let e = save_ramblock(&img, 0, mem.guest(), None, 2).unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    let m = e.to_string();
    assert!(
        m.contains("ramblock 'mem'") && m.contains("file offset 0x"),
        "{m}"
    );
    img.channel().set_fault_injector(None);
    // The failed unit's pages are not claimed; the image cannot be finished
    // until they are rewritten.
    for p in 2 * UNIT_PAGES..3 * UNIT_PAGES {
        assert!(!img.page_present(0, p as u64).unwrap(), "page {p} claimed");
    }
    assert!(
        img.finish().is_err(),
        "finish must refuse after a failed write"
    );
    // Rewriting succeeds and everything reads back.
    save_ramblock(&img, 0, mem.guest(), None, 1).unwrap();
    img.finish().unwrap();
    assert_eq!(read_ramblock_to_vec(&img, 0, 2).unwrap(), mem.as_slice());
    img.close().unwrap();
    tuning::set(keep.0, keep.1, keep.2);
    std::fs::remove_file(&path).unwrap();
}
