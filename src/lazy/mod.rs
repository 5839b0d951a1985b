//! On-demand restore: serve a ramblock into host memory through
//! userfaultfd, so a guest runs before its memory has been read.
//!
//! Threads and the one hand-off between them:
//! - the **fault thread** (`fault.rs`) reads userfaultfd events. A page
//!   fault is served at once by that thread itself: it reads the page from
//!   the image into its own staging buffer and places it with
//!   `UFFDIO_COPY` (`UFFDIO_ZEROPAGE` for an absent page). It never waits
//!   for prefetch I/O and takes no lock to serve a fault; the unit holding
//!   the fault is also pushed to the front of the prefetch queue.
//! - **prefetch workers** (`prefetch.rs`) claim units (hot units first,
//!   then the rest in order) and read the unsettled pages of a unit in
//!   large positional reads into one of two staging buffers; each worker's
//!   **placer** thread places them, so the next unit's reads overlap the
//!   copies of the last.
//! - `settled` (one bit per granule, the host page) says "resident or
//!   discarded": a placer sets it after its ioctl succeeded (or failed with
//!   `EEXIST`, which means someone else placed it). Placing twice is
//!   harmless (`EEXIST`), so `settled` is only an optimisation, except for
//!   discarded granules: after `MADV_DONTNEED` (`UFFD_EVENT_REMOVE`) or
//!   `munmap` a granule is `gone` and must never be filled again.
//!   Protocol: the fault thread holds `layout` exclusively while it *reads*
//!   events and marks `gone`; a prefetch worker holds it shared from its
//!   re-check of `settled` to the end of its ioctl. So a worker's copy
//!   either finishes before the event is read (the kernel zaps the range
//!   after the read: the copy is discarded with it) or starts after `gone`
//!   is marked (and skips the granule). Until the event is read, the kernel
//!   refuses copies with `EAGAIN` (the worker drops the lock and retries).
//!   The fault thread is the only writer of `gone` and never takes `layout`
//!   to place pages.
//! - A **chunked** (compressed or checksummed) block is read a chunk at a
//!   time (`chunks.rs`): a fault decompresses and verifies the chunk
//!   holding it and places the whole chunk, its own granule first; prefetch
//!   units hold whole chunks. `settled` and `gone` stay per granule.
//! - Fork: the range is `MADV_DONTFORK` from the start on (and stays so
//!   after the stop): a child has no mapping there, so its touch is
//!   `SIGSEGV`, never a zero page where the image has data. The kernel's
//!   fork event is not used (it deadlocks with glibc's fork, see
//!   `register`).
//! - Errors never fill wrong data: a failed read places nothing, so the
//!   faulting thread stays blocked; the first error (block, offset, cause)
//!   is latched for [`Lazy::wait`]. [`Lazy::stop`] retries what is missing
//!   and poisons (`UFFDIO_POISON`: touching raises `SIGBUS`) what still
//!   cannot be read before it unregisters.

mod chunks;
pub mod cow_map;
mod fault;
mod fill;
mod prefetch;

use crate::error::{Error, Result};
use crate::image::{BlockInfo, Image};
use crate::uffd::host::{dont_fork, mapping_of, HostRange, ImageRef, Staging};
use crate::uffd::pages::PageSet;
use crate::uffd::{sys::*, Uffd, Waker};
use parking_lot::{Condvar, Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// `MR_LAZY_NO_PREFETCH`: serve faults only; no background fill.
pub const NO_PREFETCH: u32 = 1;

/// Options of an on-demand restore.
#[derive(Clone, Debug, Default)]
pub struct LazyOptions {
    /// [`NO_PREFETCH`] or 0.
    pub flags: u32,
    /// Prefetch threads (0 = a default).
    pub threads: u32,
    /// Prefetch rate limit in bytes per second (0 = unlimited). Faults are
    /// never limited.
    pub rate_limit: u64,
    /// Pages to prefetch first: one bit per image page (u64 words, LSB
    /// first); the units holding a set bit go before the others.
    pub hot: Option<Vec<u64>>,
}

/// Counters of one on-demand restore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LazyStats {
    /// Faults served by the fault thread.
    pub faults: u64,
    /// Granules in the units prefetch went through (placed by it, or
    /// already resident when it got there).
    pub prefetched: u64,
    /// Bytes read from the image (of a chunked block: the guest bytes of
    /// the chunks decoded).
    pub bytes_read: u64,
    /// Granules discarded (MADV_DONTNEED / munmap) while served.
    pub discarded: u64,
}

pub(crate) struct Shared {
    img: ImageRef,
    block: usize,
    idstr: String,
    host: HostRange,
    ps: u64,
    /// Unit of placement: the larger of the image and the host page size.
    granule: u64,
    /// Guest bytes per chunk of a chunked block (0: a plain block).
    chunk: u64,
    /// Unit of reading: the granule, or for a chunked block the larger of
    /// the chunk and the granule (whole chunks and whole granules).
    read_unit: u64,
    zeropage_ok: bool,
    poison_ok: bool,
    uffd: Uffd,
    waker: Waker,
    settled: PageSet,
    gone: PageSet,
    layout: RwLock<()>,
    /// First error; with `cv`, what `wait` sleeps on.
    error: Mutex<Option<Error>>,
    cv: Condvar,
    /// A latched error that filling cannot repair (mremap, fork).
    fatal: AtomicBool,
    zeros: OnceLock<Staging>,
    stop_fault: AtomicBool,
    /// Set by `stop`: workers fill everything, no rate limit.
    fill_all: AtomicBool,
    faults: AtomicU64,
    prefetched: AtomicU64,
    bytes_read: AtomicU64,
    queue: prefetch::Queue,
    limiter: prefetch::Limiter,
    /// Start time, and when (ns after it) the last fault was served: the
    /// prefetch read size shrinks while the guest faults.
    epoch: std::time::Instant,
    last_fault_ns: AtomicU64,
    /// The fault thread's time per fault (from its wake-up to the
    /// placement's return) and the part of it spent reading the image, in
    /// ns, for the first `SERVICE_SAMPLES` faults.
    service_ns: Mutex<Vec<(u32, u32)>>,
}

/// Fault service times kept (for benchmarks: [`Lazy::fault_service_ns`]).
const SERVICE_SAMPLES: usize = 1 << 16;

/// A running on-demand restore of one ramblock.
pub struct Lazy {
    sh: Arc<Shared>,
    fault: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    threads: u32,
}

impl Lazy {
    /// Start serving `block` of `img` into `host` (page aligned, the
    /// block's `used_length` bytes, private anonymous or shared
    /// memfd/hugetlbfs memory, not touched yet). Returns at once. The
    /// range is marked `MADV_DONTFORK` and stays so (see the module docs).
    ///
    /// # Safety
    /// `host` must be a mapping of `used_length` bytes that stays mapped
    /// until the returned value is stopped or dropped, whose contents the
    /// caller gives up (every page is replaced by the image's).
    pub unsafe fn start(
        img: Arc<Image>,
        block: usize,
        host: *mut u8,
        opts: &LazyOptions,
    ) -> Result<Lazy> {
        // SAFETY: forwarded contract.
        unsafe { Lazy::start_ref(ImageRef::Shared(img), block, host, opts) }
    }

    /// As [`start`](Self::start) with an image the caller keeps open.
    ///
    /// # Safety
    /// As `start`, and `img` must stay valid until the restore is stopped
    /// or dropped (see [`ImageRef::borrowed`]).
    pub unsafe fn start_ref(
        img: ImageRef,
        block: usize,
        host: *mut u8,
        opts: &LazyOptions,
    ) -> Result<Lazy> {
        if opts.flags & !NO_PREFETCH != 0 {
            return Err(Error::Invalid(format!(
                "lazy restore: unknown flags 0x{:x}",
                opts.flags & !NO_PREFETCH
            )));
        }
        let info = img.block_info(block)?;
        img.block_in_file(block)?;
        let what = format!("lazy restore of ramblock '{}'", info.idstr);
        // SAFETY: forwarded contract: `host` stays mapped until the stop.
        let (range, granule) = unsafe { host_range(&info, host, &what) }?;
        let granules = info.used_length / granule;
        let chunk = img.chunk_bytes(block)?.unwrap_or(0);
        let read_unit = granule.max(chunk);
        let hot = opts.hot.as_deref();
        // Every argument is checked before the range is touched (marked
        // MADV_DONTFORK, registered).
        // Prefetch units hold whole read units (whole chunks).
        let queue = prefetch::Queue::new(info.used_length, read_unit, hot, info.page_size)?;
        let (uffd, ioctls) = register(&range, &what)?;
        let sh = Arc::new(Shared {
            queue,
            limiter: prefetch::Limiter::new(opts.rate_limit),
            img,
            block,
            idstr: info.idstr,
            host: range,
            ps: info.page_size,
            granule,
            chunk,
            read_unit,
            zeropage_ok: ioctls & IOCTL_ZEROPAGE_BIT != 0,
            poison_ok: ioctls & IOCTL_POISON_BIT != 0,
            uffd,
            waker: Waker::new()?,
            settled: PageSet::new(granules),
            gone: PageSet::new(granules),
            layout: RwLock::new(()),
            error: Mutex::new(None),
            cv: Condvar::new(),
            fatal: AtomicBool::new(false),
            zeros: OnceLock::new(),
            stop_fault: AtomicBool::new(false),
            fill_all: AtomicBool::new(false),
            faults: AtomicU64::new(0),
            prefetched: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            // Start as if a fault just happened: the guest is about to run.
            last_fault_ns: AtomicU64::new(0),
            service_ns: Mutex::new(Vec::new()),
        });
        let staging = Staging::new(read_unit as usize)?;
        let f = sh.clone();
        let fault = std::thread::Builder::new()
            .name("mr-lazy-fault".into())
            .spawn(move || fault::run(f, staging))
            .map_err(|e| Error::io("lazy restore: starting the fault thread", e))?;
        let mut lz = Lazy {
            sh,
            fault: Some(fault),
            workers: Vec::new(),
            threads: opts.threads,
        };
        if opts.flags & NO_PREFETCH == 0 {
            lz.spawn_workers()?;
        }
        Ok(lz)
    }

    fn spawn_workers(&mut self) -> Result<()> {
        let units = self.sh.queue.units();
        let n = crate::engine::effective_threads(self.threads, units);
        for i in 0..n {
            let sh = self.sh.clone();
            let h = std::thread::Builder::new()
                .name(format!("mr-lazy-fill{i}"))
                .spawn(move || prefetch::worker(sh, i))
                .map_err(|e| Error::io("lazy restore: starting a prefetch thread", e))?;
            self.workers.push(h);
        }
        Ok(())
    }

    /// Block until every page is resident (or discarded), or return the
    /// first error. With [`NO_PREFETCH`] this waits for the guest to touch
    /// every page.
    pub fn wait(&self) -> Result<()> {
        wait_until(&self.sh.error, &self.sh.cv, || self.sh.settled.full())
    }

    /// Whether every page is resident (or discarded).
    pub fn is_complete(&self) -> bool {
        self.sh.settled.full()
    }

    /// Counters so far.
    pub fn stats(&self) -> LazyStats {
        let sh = &self.sh;
        LazyStats {
            faults: sh.faults.load(Ordering::Relaxed),
            prefetched: sh.prefetched.load(Ordering::Relaxed),
            bytes_read: sh.bytes_read.load(Ordering::Relaxed),
            discarded: sh.gone.count(),
        }
    }

    /// The fault thread's own time per fault served so far (the first
    /// 65536), in ns: from its wake-up (or the end of its previous fault)
    /// to the return of the placement, and the part of it spent reading
    /// the image. The rest of what a faulting thread waits is the kernel's
    /// fault path and scheduling.
    #[doc(hidden)]
    pub fn fault_service_ns(&self) -> Vec<(u32, u32)> {
        self.sh.service_ns.lock().clone()
    }

    /// Make every page resident (prefetching whatever is left, unthrottled),
    /// stop the threads, unregister. Pages that still cannot be read are
    /// poisoned (touching them raises `SIGBUS`) and the error is returned.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let sh = self.sh.clone();
        sh.fill_all.store(true, Ordering::Release);
        if self.workers.is_empty() && self.fault.is_some() {
            // No prefetch was running: fill now.
            if let Err(e) = self.spawn_workers() {
                sh.latch(e);
            }
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let filled = fill::finish_missing(&sh);
        sh.stop_fault.store(true, Ordering::Release);
        sh.waker.wake();
        if let Some(f) = self.fault.take() {
            let _ = f.join();
        }
        // Faults may still wait on discarded granules: unregistering wakes
        // them and they refault as ordinary (zero) memory, which is what
        // MADV_DONTNEED promises. A range partly unmapped may refuse; the
        // fd's release (drop) unregisters whatever is left.
        let unreg = sh.uffd.unregister(sh.host.start, sh.host.len);
        // An I/O error that the retry repaired was reported by `wait`; what
        // is returned here is what is still wrong after the stop.
        filled?;
        if sh.fatal.load(Ordering::Acquire) {
            if let Some(e) = sh.error.lock().take() {
                return Err(e);
            }
        }
        if sh.gone.count() == 0 {
            unreg?;
        }
        Ok(())
    }
}

/// The caller's range and the granule (the larger of the host page, a
/// huge page on hugetlbfs, and the image page).
///
/// # Safety
/// `host` must stay mapped (`info.used_length` bytes) until the restore
/// built on it has stopped.
unsafe fn host_range(info: &BlockInfo, host: *mut u8, what: &str) -> Result<(HostRange, u64)> {
    // SAFETY: the caller keeps `host` mapped until the restore stops.
    let range = unsafe { HostRange::new(host, info.used_length, what) }?;
    let (host_page, _shared) = mapping_of(range.start);
    let granule = host_page.max(info.page_size);
    if info.used_length % granule != 0 {
        return Err(Error::Invalid(format!(
            "{what}: used_length 0x{:x} is not a multiple of the host page size {granule}",
            info.used_length
        )));
    }
    Ok((range, granule))
}

/// Mark `range` MADV_DONTFORK and register it for missing-page faults;
/// returns the userfaultfd and the ioctls the range supports.
fn register(range: &HostRange, what: &str) -> Result<(Uffd, u64)> {
    let want = UFFD_FEATURE_EVENT_REMOVE
        | UFFD_FEATURE_EVENT_UNMAP
        | UFFD_FEATURE_EVENT_REMAP
        | UFFD_FEATURE_MISSING_SHMEM
        | UFFD_FEATURE_MISSING_HUGETLBFS
        | UFFD_FEATURE_POISON;
    // Not UFFD_FEATURE_EVENT_FORK: with it the kernel holds fork() until
    // the fault thread reads the event, while glibc's fork holds the
    // allocator locks that thread may need: a deadlock. Without it a child
    // would get the range unregistered, reading zeros where pages are not
    // yet filled; so the range is MADV_DONTFORK instead (a child has no
    // mapping there: a touch is SIGSEGV).
    let uffd = Uffd::open(want, 0, "")?;
    dont_fork(range, what)?;
    let ioctls = uffd.register(range.start, range.len, UFFDIO_REGISTER_MODE_MISSING)?;
    Ok((uffd, ioctls))
}

impl Drop for Lazy {
    fn drop(&mut self) {
        if self.fault.is_some() {
            let _ = self.shutdown();
        }
    }
}

impl Shared {
    /// Record the first error and wake `wait`.
    fn latch(&self, e: Error) {
        let mut slot = self.error.lock();
        if slot.is_none() {
            *slot = Some(e);
        }
        self.cv.notify_all();
    }

    /// Record an error that no retry repairs.
    fn latch_fatal(&self, e: Error) {
        self.fatal.store(true, Ordering::Release);
        self.latch(e);
    }

    /// Record one fault's service time.
    fn note_service(&self, total: Duration, read: Duration) {
        let ns = |d: Duration| d.as_nanos().min(u32::MAX as u128) as u32;
        let mut v = self.service_ns.lock();
        if v.len() < SERVICE_SAMPLES {
            v.push((ns(total), ns(read)));
        }
    }

    /// Mark `[g, g+n)` settled; wake `wait` when everything is.
    fn settle(&self, g: u64, n: u64) {
        if self.settled.set_range(g, n) > 0 && self.settled.full() {
            let _l = self.error.lock();
            self.cv.notify_all();
        }
    }
}

/// Block until `done()` holds or an error is recorded in `error` (the first
/// error wins); `cv` is notified under `error`'s lock by whoever records an
/// error or completes the work. Shared by on-demand restore and snapshots.
pub(crate) fn wait_until(
    error: &Mutex<Option<Error>>,
    cv: &Condvar,
    done: impl Fn() -> bool,
) -> Result<()> {
    let mut err = error.lock();
    loop {
        if let Some(e) = err.as_ref() {
            return Err(dup(e));
        }
        if done() {
            return Ok(());
        }
        cv.wait_for(&mut err, Duration::from_millis(20));
    }
}

/// A copy of an error for a second reader (`wait` may be called often).
pub(crate) fn dup(e: &Error) -> Error {
    match e {
        Error::Io { msg, source } => Error::Io {
            msg: msg.clone(),
            source: match source.raw_os_error() {
                Some(n) => std::io::Error::from_raw_os_error(n),
                None => std::io::Error::new(source.kind(), source.to_string()),
            },
        },
        Error::Corrupt(s) => Error::Corrupt(s.clone()),
        Error::Unsupported(s) => Error::Unsupported(s.clone()),
        Error::NotFound(s) => Error::NotFound(s.clone()),
        Error::OutOfRange(s) => Error::OutOfRange(s.clone()),
        Error::Invalid(s) => Error::Invalid(s.clone()),
        Error::Incomplete(s) => Error::Incomplete(s.clone()),
        Error::Cancelled(s) => Error::Cancelled(s.clone()),
        Error::ReadOnly(s) => Error::ReadOnly(s.clone()),
    }
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("ramblock", &self.sh.idstr)
            .field("host", &self.sh.host)
            .field("stats", &self.stats())
            .finish()
    }
}
