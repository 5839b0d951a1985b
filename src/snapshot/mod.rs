//! Live copy-on-write snapshot: save a ramblock while the guest keeps
//! running, with the image receiving every page as it was at the start.
//!
//! At start the whole range is write-protected (`UFFDIO_REGISTER_MODE_WP` +
//! `UFFDIO_WRITEPROTECT`); that is the pause. Then:
//! - **saver threads** (`save.rs`) take 4 MiB units and, per 64-page word,
//!   *claim* the pages nobody claimed yet (`claimed`, one atomic
//!   `fetch_or`), take the fault thread's copies of the other pages of
//!   those words, write both to the image in runs (one request per run:
//!   guest memory, still protected, so it holds the start-instant bytes,
//!   and the copies, gathered with `pwritev`; zero pages stay holes), then
//!   lift the protection of the claimed pages (which wakes a writer held
//!   on them) and mark all of them `saved`;
//! - the **fault thread** (`fault.rs`) gets the guest's first write to a
//!   protected page. If it wins the page's claim it copies the page out (a
//!   4 KiB `memcpy` into a slot of `copies`; claim and copy under that
//!   lock), lifts the protection at once (the writer goes on), and the
//!   copy waits for the saver of its words. If a saver holds the claim,
//!   the saver's own un-protect releases the writer. When the slots run
//!   short, savers take the unit holding most copies next.
//!
//! On hugetlbfs a "page" here is the huge page: protection is lifted per
//! huge page, so a fault copies out (or a saver writes) the whole huge page.
//! The range is `MADV_DONTFORK` from the start on and stays so (see
//! [`crate::uffd::host::dont_fork`]): a child forked during the snapshot
//! has no mapping there, never memory without its handler.
//!
//! The claim is the whole hand-off: whoever wins a page's bit reads its
//! start-instant content while it is still protected and is the only one
//! to un-protect it. A page is never un-protected before its content is in
//! the image or in a queued copy.

mod copies;
mod fault;
mod save;

use crate::error::{Error, Result};
use crate::image::{BlockInfo, Image};
use crate::lazy::wait_until;
use crate::uffd::host::{dont_fork, mapping_of, system_page_size, HostRange, ImageRef};
use crate::uffd::pages::PageSet;
use crate::uffd::{sys::*, Uffd, Waker};
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// `MADV_POPULATE_READ` (Linux 5.14): map every page (zero pages shared)
/// so it can be write-protected on kernels without WP_UNPOPULATED.
const MADV_POPULATE_READ: i32 = 22;

/// Bytes of copy slots (4096 pages of 4 KiB, 8 huge pages of 2 MiB): what
/// the guest may write ahead of the savers before a write waits for its
/// page's save.
const COPY_BYTES: u64 = 16 << 20;

/// Counters of one live snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Guest writes that hit a protected page (each was held once).
    pub wp_faults: u64,
    /// Pages copied out by the fault thread before their first write.
    pub copied_out: u64,
    /// Pages saved (including the copied-out ones once written).
    pub saved: u64,
}

pub(crate) struct Shared {
    img: ImageRef,
    block: usize,
    idstr: String,
    host: HostRange,
    /// The unit of protection, claims and copies ("page" in this module):
    /// the larger of the image and host page sizes (a huge page on
    /// hugetlbfs).
    ps: u64,
    uffd: Uffd,
    waker: Waker,
    claimed: PageSet,
    saved: PageSet,
    /// Pages copied out by the fault thread, waiting for the saver of
    /// their unit. The fault thread claims a page and stores its copy
    /// under this lock (see `save::save_words`).
    copies: Mutex<copies::Copies>,
    /// Pages the fault thread claimed but did not copy (no slot free): a
    /// saver writes them from guest memory, then un-protects them.
    urgent: Mutex<Vec<u64>>,
    /// Units a saver took (in order, or the one with most copies first).
    units_taken: PageSet,
    next_unit: AtomicU64,
    /// The block's slots hold pages (not compressed chunks) of the
    /// snapshot's page size: savers write spans straight to them.
    spans: bool,
    error: Mutex<Option<Error>>,
    cv: Condvar,
    stop: AtomicBool,
    wp_faults: AtomicU64,
    copied_out: AtomicU64,
}

/// A running live snapshot of one ramblock.
pub struct Snapshot {
    sh: Arc<Shared>,
    fault: Option<JoinHandle<()>>,
    savers: Vec<JoinHandle<()>>,
}

impl Snapshot {
    /// Write-protect `host` (the block's `used_length` bytes) and start
    /// saving it into `block` of `img` with `threads` threads. The caller
    /// pauses its vCPUs around the start calls of all blocks. The range is
    /// marked `MADV_DONTFORK` and stays so (see the module docs).
    ///
    /// # Safety
    /// `host` must be a mapping of `used_length` bytes (private anonymous,
    /// shared memfd/shmem or hugetlbfs) that stays mapped until the
    /// snapshot is stopped or dropped.
    pub unsafe fn start(
        img: Arc<Image>,
        block: usize,
        host: *mut u8,
        threads: u32,
    ) -> Result<Snapshot> {
        // SAFETY: forwarded contract.
        unsafe { Snapshot::start_ref(ImageRef::Shared(img), block, host, threads) }
    }

    /// As [`start`](Self::start) with an image the caller keeps open.
    ///
    /// # Safety
    /// As `start`, and `img` must stay valid until the snapshot is stopped
    /// or dropped.
    pub unsafe fn start_ref(
        img: ImageRef,
        block: usize,
        host: *mut u8,
        threads: u32,
    ) -> Result<Snapshot> {
        let info = img.block_info(block)?;
        let what = format!("live snapshot of ramblock '{}'", info.idstr);
        if !img.is_writable() {
            return Err(Error::ReadOnly(format!(
                "{what}: {} is open read-only",
                img.channel().name()
            )));
        }
        img.block_in_file(block)?;
        // SAFETY: forwarded contract: `host` stays mapped until the stop.
        let (range, uffd, unit) = unsafe { protect(&info, host, &what) }?;
        let pages = info.used_length / unit;
        let unit_pages = save::unit_pages(unit);
        let units = pages.div_ceil(unit_pages);
        let slots = (COPY_BYTES / unit).max(1) as u32;
        let copies = copies::Copies::new(unit, slots, units, unit_pages)?;
        let spans = img.chunked(block)?.is_none() && unit == info.page_size;
        let sh = Arc::new(Shared {
            img,
            block,
            idstr: info.idstr,
            host: range,
            ps: unit,
            uffd,
            waker: Waker::new()?,
            claimed: PageSet::new(pages),
            saved: PageSet::new(pages),
            copies: Mutex::new(copies),
            urgent: Mutex::new(Vec::new()),
            units_taken: PageSet::new(units),
            next_unit: AtomicU64::new(0),
            spans,
            error: Mutex::new(None),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            wp_faults: AtomicU64::new(0),
            copied_out: AtomicU64::new(0),
        });
        let mut s = Snapshot {
            sh: sh.clone(),
            fault: None,
            savers: Vec::new(),
        };
        let f = sh.clone();
        s.fault = Some(
            std::thread::Builder::new()
                .name("mr-snap-fault".into())
                .spawn(move || fault::run(f))
                .map_err(|e| Error::io("live snapshot: starting the fault thread", e))?,
        );
        // As many requests in flight as a paused save keeps (its writer
        // threads): each saver writes synchronously.
        let units = save::units(&sh);
        let writers = crate::engine::tuning::get().2.min(units) as usize;
        let n = crate::engine::effective_threads(threads, units).max(writers);
        for i in 0..n {
            let w = sh.clone();
            let h = std::thread::Builder::new()
                .name(format!("mr-snap-save{i}"))
                .spawn(move || save::saver(w))
                .map_err(|e| Error::io("live snapshot: starting a saver thread", e))?;
            s.savers.push(h);
        }
        Ok(s)
    }

    /// Block until every page is saved as of the start instant, or return
    /// the first error.
    pub fn wait(&self) -> Result<()> {
        wait_until(&self.sh.error, &self.sh.cv, || self.sh.saved.full())
    }

    /// Whether every page is saved.
    pub fn is_complete(&self) -> bool {
        self.sh.saved.full()
    }

    /// Counters so far.
    pub fn stats(&self) -> SnapshotStats {
        SnapshotStats {
            wp_faults: self.sh.wp_faults.load(Ordering::Relaxed),
            copied_out: self.sh.copied_out.load(Ordering::Relaxed),
            saved: self.sh.saved.count(),
        }
    }

    /// Stop the threads, remove the protection, unregister. Stopping before
    /// every page was saved returns `ECANCELED` (the image does not hold a
    /// consistent snapshot then); otherwise the first error, if any.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let sh = self.sh.clone();
        sh.stop.store(true, Ordering::Release);
        for s in self.savers.drain(..) {
            let _ = s.join();
        }
        sh.waker.wake();
        if let Some(f) = self.fault.take() {
            let _ = f.join();
        }
        // Lifting the protection wakes every writer still held. The fault
        // thread is gone: read pending events here so `EAGAIN` clears.
        let mut unprotect = sh.uffd.writeprotect(sh.host.start, sh.host.len, false);
        let mut msgs = [crate::uffd::sys::uffd_msg::default(); 16];
        for _ in 0..1000 {
            if unprotect.as_ref().err().and_then(|e| e.raw_os_error()) != Some(libc::EAGAIN) {
                break;
            }
            let _ = sh.uffd.read_events(&mut msgs, &mut Vec::new());
            unprotect = sh.uffd.writeprotect(sh.host.start, sh.host.len, false);
        }
        let unreg = sh.uffd.unregister(sh.host.start, sh.host.len);
        if let Some(e) = sh.error.lock().take() {
            return Err(e);
        }
        if !sh.saved.full() {
            return Err(Error::Cancelled(format!(
                "live snapshot of ramblock '{}' stopped after {} of {} pages were saved: the image does not hold a consistent snapshot",
                sh.idstr,
                sh.saved.count(),
                sh.saved.len()
            )));
        }
        unprotect.map_err(|e| Error::io("live snapshot: lifting write protection", e))?;
        unreg
    }
}

/// Register `host` for write protection and protect all of it: the start
/// instant. Populates first when unpopulated pages cannot be protected.
///
/// # Safety
/// `host` must stay mapped (`info.used_length` bytes) until the snapshot
/// built on it has stopped.
unsafe fn protect(info: &BlockInfo, host: *mut u8, what: &str) -> Result<(HostRange, Uffd, u64)> {
    // SAFETY: the caller keeps `host` mapped until the snapshot stops.
    let range = unsafe { HostRange::new(host, info.used_length, what) }?;
    let (host_page, shared) = mapping_of(range.start);
    // Protection, claims and copies go by the larger page: a 2 MiB huge
    // page holding 512 image pages of 4 KiB is saved as one unit.
    let unit = host_page.max(info.page_size);
    if unit % host_page != 0 || unit % info.page_size != 0 || info.used_length % unit != 0 {
        return Err(Error::Unsupported(format!(
            "{what}: host page size {host_page} and image page size {} do not tile used_length 0x{:x}",
            info.page_size, info.used_length
        )));
    }
    let hugetlb = host_page > system_page_size();
    let want = UFFD_FEATURE_WP_UNPOPULATED
        | UFFD_FEATURE_EVENT_REMOVE
        | UFFD_FEATURE_EVENT_UNMAP
        | UFFD_FEATURE_EVENT_REMAP;
    let mut need = UFFD_FEATURE_PAGEFAULT_FLAG_WP;
    let mut need_what = "write-protect faults (UFFD_FEATURE_PAGEFAULT_FLAG_WP)";
    if shared || hugetlb {
        need |= UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
        need_what =
            "write protection of shared or hugetlbfs memory (UFFD_FEATURE_WP_HUGETLBFS_SHMEM)";
    }
    let uffd = Uffd::open(want, need, need_what)?;
    // A child forked during the snapshot would inherit the memory without
    // a handler; it gets no mapping there instead (see `dont_fork`).
    dont_fork(&range, what)?;
    if !uffd.has(UFFD_FEATURE_WP_UNPOPULATED) || shared || hugetlb {
        // Protection applies to mapped pages only: map them all first.
        // SAFETY: the range is the caller's mapping; populating reads
        // does not change its contents.
        let r = unsafe {
            libc::madvise(
                range.start as *mut libc::c_void,
                range.len as usize,
                MADV_POPULATE_READ,
            )
        };
        if r != 0 {
            return Err(Error::last_os(format!("{what}: MADV_POPULATE_READ")));
        }
    }
    uffd.register(range.start, range.len, UFFDIO_REGISTER_MODE_WP)?;
    uffd.writeprotect(range.start, range.len, true)
        .map_err(|e| {
            Error::io(
                format!(
                    "{what}: UFFDIO_WRITEPROTECT of 0x{:x}+0x{:x}",
                    range.start, range.len
                ),
                e,
            )
        })?;
    Ok((range, uffd, unit))
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if self.fault.is_some() {
            let _ = self.shutdown();
        }
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("ramblock", &self.sh.idstr)
            .field("host", &self.sh.host)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Shared {
    fn latch(&self, e: Error) {
        let mut slot = self.error.lock();
        if slot.is_none() {
            *slot = Some(e);
        }
        self.cv.notify_all();
    }

    fn mark_saved(&self, first: u64, n: u64) {
        if self.saved.set_range(first, n) > 0 && self.saved.full() {
            let _l = self.error.lock();
            self.cv.notify_all();
        }
    }

    /// Lift the protection of pages `[first, first+n)` (wakes writers).
    /// For savers: `EAGAIN` (an event is pending; the fault thread reads
    /// it) is retried.
    fn unprotect(&self, first: u64, n: u64) {
        loop {
            match self.try_unprotect(first, n) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    std::thread::sleep(Duration::from_micros(50));
                }
                r => return self.unprotect_result(first, r),
            }
        }
    }

    /// One attempt; the fault thread handles `EAGAIN` itself (it must read
    /// the pending event before a retry can succeed).
    fn try_unprotect(&self, first: u64, n: u64) -> std::io::Result<()> {
        let start = self.host.start + first * self.ps;
        self.uffd.writeprotect(start, n * self.ps, false)
    }

    fn unprotect_result(&self, first: u64, r: std::io::Result<()>) {
        if let Err(e) = r {
            self.latch(Error::io(
                format!(
                    "live snapshot of ramblock '{}': lifting protection at offset 0x{:x}",
                    self.idstr,
                    first * self.ps
                ),
                e,
            ));
        }
    }
}
