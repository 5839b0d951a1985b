//! Integration tests of the channel layer: O_DIRECT alignment handling,
//! concurrency, error paths, descriptors, holes.
//!
//! Files live under `std::env::temp_dir()` (set `TMPDIR` to move them),
//! which must be a file system that enforces O_DIRECT alignment (ext4, xfs):
//! on one that does not (tmpfs), the alignment tests would prove nothing, so
//! every test here fails with a message instead.

mod common;

use common::{Aligned, Rng, TmpDir};
use mappedram::channel::{Channel, OpenFlags};
use mappedram::Error;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

fn rw() -> OpenFlags {
    OpenFlags::READ | OpenFlags::WRITE
}
fn rwc() -> OpenFlags {
    rw() | OpenFlags::CREATE
}
fn direct() -> OpenFlags {
    rwc() | OpenFlags::DIRECT
}

/// A scratch directory on a file system that enforces O_DIRECT alignment.
fn scratch(tag: &str) -> TmpDir {
    TmpDir::dio_enforcing(&format!("channel-{tag}"))
}

/// An aligned buffer with a page of room for misaligned windows of `len`.
fn buffer(len: usize) -> Aligned {
    Aligned::new(len + 4096)
}

/// An iovec the channel may write through.
fn iov_mut(b: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_mut_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

fn iov(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

/// Split `len` bytes at `p` into `parts` iovecs of uneven sizes, with a
/// zero-length one in the middle.
fn split_raw(p: *mut u8, len: usize, parts: usize) -> Vec<libc::iovec> {
    let mk = |start: usize, end: usize| libc::iovec {
        iov_base: p.wrapping_add(start) as *mut libc::c_void,
        iov_len: end - start,
    };
    if parts <= 1 || len < parts {
        return vec![mk(0, len)];
    }
    let mut v = Vec::new();
    let mut start = 0;
    for i in 0..parts {
        let end = if i + 1 == parts {
            len
        } else {
            (start + len / parts + i * 3).min(len)
        };
        v.push(mk(start, end));
        if i == 0 {
            v.push(mk(end, end));
        }
        start = end;
    }
    v
}

/// Iovecs over `b` for writing it to a channel.
fn split_iov(b: &[u8], parts: usize) -> Vec<libc::iovec> {
    split_raw(b.as_ptr() as *mut u8, b.len(), parts)
}

/// Iovecs over `b` for reading into it.
fn split_iov_mut(b: &mut [u8], parts: usize) -> Vec<libc::iovec> {
    split_raw(b.as_mut_ptr(), b.len(), parts)
}

fn write(ch: &Channel, data: &[u8], off: u64) {
    // SAFETY: the iovecs point into `data`, alive for the call.
    let n = unsafe { ch.pwritev_raw(&[iov(data)], off) }.unwrap();
    assert_eq!(n, data.len() as u64);
}

fn read_ref(f: &File, len: usize, off: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read_at(&mut v[got..], off + got as u64).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    v.truncate(got);
    v
}

fn assert_same_file(a: &Path, b: &Path, what: &str) {
    let x = std::fs::read(a).unwrap();
    let y = std::fs::read(b).unwrap();
    assert_eq!(
        x.len(),
        y.len(),
        "{what}: size of channel file vs reference"
    );
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!(
            "{what}: first difference at byte {i}: {} vs reference {}",
            x[i], y[i]
        );
    }
}

#[test]
fn reports_dio_alignment_and_creates_0600() {
    let s = scratch("align");
    let p = s.join("f");
    let ch = Channel::open(&p, direct()).unwrap();
    let a = ch.dio_align().expect("a DIRECT channel has an alignment");
    println!("dio alignment on {}: {a:?}", s.path().display());
    assert!(a.offset.is_power_of_two() && a.offset >= 512, "{a:?}");
    assert!(a.mem.is_power_of_two(), "{a:?}");
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(ch.name(), p.display().to_string());
    ch.close().unwrap();
    let ch = Channel::open(&p, rw()).unwrap();
    assert!(ch.dio_align().is_none());
}

/// Every combination of aligned/unaligned buffer, offset and length, with
/// one or several iovecs, writes then reads, checked against a reference
/// file written with std::fs.
#[test]
fn alignment_matrix_matches_buffered_reference() {
    alignment_matrix(direct());
}

/// The same matrix without O_DIRECT (plain vectored I/O loops).
#[test]
fn alignment_matrix_without_direct() {
    alignment_matrix(rwc());
}

fn alignment_matrix(flags: OpenFlags) {
    let s = scratch("matrix");
    let p = s.join("chan");
    let rp = s.join("ref");
    let ch = Channel::open(&p, flags).unwrap();
    let is_direct = flags.contains(OpenFlags::DIRECT);
    // Without O_DIRECT, test around the alignment O_DIRECT would have.
    let a = ch.dio_align().unwrap_or(mappedram::channel::DioAlign {
        mem: 512,
        offset: 512,
    });
    assert!(
        a.mem > 1,
        "memory alignment {a:?} cannot test unaligned buffers"
    );
    let refw = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&rp)
        .unwrap();
    let mut rng = Rng::raw(0x1234_5678_9abc_def1);
    // Start with an unaligned size so writes near EOF extend it.
    let mut init = vec![0u8; 10_000];
    rng.fill(&mut init);
    write(&ch, &init, 0);
    refw.write_all_at(&init, 0).unwrap();

    let ao = a.offset as u64;
    let mut buf = buffer(3 << 20);
    let mut rbuf = buffer(3 << 20);
    let mut case = 0;
    let bounced_before = ch.bounced_bytes();
    for &mis_buf in &[0usize, 1] {
        for &off_aligned in &[true, false] {
            for &len_aligned in &[true, false] {
                for &parts in &[1usize, 3] {
                    for &big in &[false, true] {
                        case += 1;
                        let size = std::fs::metadata(&rp).unwrap().len();
                        // Offsets: inside, straddling EOF, past EOF.
                        let base = match case % 3 {
                            0 => 4 * ao,
                            1 => size.saturating_sub(2 * ao),
                            _ => size + 3 * ao,
                        };
                        let off = if off_aligned {
                            base / ao * ao
                        } else {
                            base / ao * ao + 1 + rng.below(ao - 1)
                        };
                        let len = if big { (1 << 20) + 5 * ao } else { 3 * ao };
                        let len = if len_aligned {
                            len
                        } else {
                            len + 1 + rng.below(ao - 1)
                        } as usize;
                        let data = buf.window_mut(mis_buf, len);
                        rng.fill(data);
                        let what = format!(
                            "write case {case}: buf+{mis_buf} off {off} len {len} iovecs {parts}"
                        );
                        let v = split_iov(data, parts);
                        // SAFETY: iovecs point into `buf`, alive for the call.
                        let n = unsafe { ch.pwritev_raw(&v, off) }.unwrap();
                        assert_eq!(n, len as u64, "{what}");
                        refw.write_all_at(data, off).unwrap();
                        assert_eq!(
                            ch.size().unwrap(),
                            std::fs::metadata(&rp).unwrap().len(),
                            "{what}"
                        );
                        assert_same_file(&p, &rp, &what);

                        // Read back an unrelated range, crossing EOF at times.
                        let size = ch.size().unwrap();
                        let roff = match case % 4 {
                            0 => 0,
                            1 => size.saturating_sub(len as u64 / 2),
                            2 => size + 100,
                            _ => off.saturating_sub(ao / 2 + 3),
                        };
                        let roff = if off_aligned {
                            roff / ao * ao
                        } else {
                            roff | 1
                        };
                        let rdata = rbuf.window_mut(1 - mis_buf, len);
                        rdata.fill(0xee);
                        let rv = split_iov_mut(rdata, parts);
                        // SAFETY: iovecs point into `rbuf`, alive for the call.
                        let got = unsafe { ch.preadv_raw(&rv, roff) }.unwrap() as usize;
                        let want = read_ref(&refw, len, roff);
                        assert_eq!(got, want.len(), "read after {what} at {roff}");
                        let rdata = rbuf.window_mut(1 - mis_buf, len);
                        assert!(
                            rdata[..got] == want[..],
                            "read after {what} at {roff}: content"
                        );
                        assert!(
                            rdata[got..].iter().all(|&x| x == 0xee),
                            "read after {what}: bytes past EOF were written"
                        );
                    }
                }
            }
        }
    }
    if is_direct {
        assert!(
            ch.bounced_bytes() > bounced_before,
            "unaligned cases must bounce"
        );
    } else {
        assert_eq!(ch.bounced_bytes(), 0);
    }

    // Buffered metadata path on the same DIRECT channel.
    let mut small = vec![0u8; 777];
    rng.fill(&mut small);
    ch.write_all_at(&small, 4097).unwrap();
    refw.write_all_at(&small, 4097).unwrap();
    let end = ch.size().unwrap();
    ch.write_all_at(&small, end + 3).unwrap();
    refw.write_all_at(&small, end + 3).unwrap();
    assert_same_file(&p, &rp, "write_all_at on a DIRECT channel");
    let mut back = vec![0u8; 1000];
    let n = ch.read_at(&mut back, end).unwrap();
    assert_eq!(n, 780);
    assert_eq!(&back[3..780], &small[..]);
    ch.close().unwrap();
}

/// An aligned request goes through O_DIRECT without a copy.
#[test]
fn aligned_requests_are_not_bounced() {
    let s = scratch("zerocopy");
    let ch = Channel::open(&s.join("f"), direct()).unwrap();
    let mut b = buffer(1 << 20);
    let data = b.window_mut(0, 1 << 20);
    Rng::raw(5).fill(data);
    let v = split_iov(&data[..], 1);
    // SAFETY: iovecs point into `b`.
    unsafe { ch.pwritev_raw(&v, 1 << 20) }.unwrap();
    let mut r = buffer(1 << 20);
    let rd = r.window_mut(0, 1 << 20);
    // SAFETY: iovec points into `r`.
    let n = unsafe { ch.preadv_raw(&[iov_mut(rd)], 1 << 20) }.unwrap();
    assert_eq!(n, 1 << 20);
    assert_eq!(ch.bounced_bytes(), 0);
    assert!(r.window_mut(0, 1 << 20) == b.window_mut(0, 1 << 20));
}

/// Thread `t` of `threads` owns segment `i` when `i % threads == t`.
fn segments(rng: &mut Rng, total: u64, maxseg: u64) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    let mut pos = 0;
    while pos < total {
        let len = (1 + rng.below(maxseg)).min(total - pos);
        v.push((pos, len));
        pos += len;
    }
    v
}

fn pattern(round: u64, off: u64) -> u8 {
    (off.wrapping_mul(131).wrapping_add(round * 7919) >> 3) as u8 ^ (off as u8)
}

/// Many threads write interleaved unaligned ranges that share blocks; no
/// byte may be lost to another thread's read-modify-write. Several rounds,
/// with different segment sizes, starting from an empty file (writes that
/// extend it race each other) or a full one, some threads on the buffered
/// path.
#[test]
fn concurrent_unaligned_writers_never_lose_bytes() {
    let s = scratch("conc");
    const THREADS: usize = 8;
    let total: u64 = 192 * 1024 + 37;
    for round in 0..8u64 {
        let p = s.join(&format!("r{round}"));
        let ch = Arc::new(Channel::open(&p, direct() | OpenFlags::TRUNC).unwrap());
        if round % 2 == 1 {
            ch.write_all_at(&vec![0xffu8; total as usize], 0).unwrap();
        }
        let maxseg = [700u64, 100, 5000, 9][round as usize % 4];
        let segs = Arc::new(segments(&mut Rng::raw(round + 1), total, maxseg));
        let barrier = Arc::new(Barrier::new(THREADS));
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (ch, segs, barrier) = (ch.clone(), segs.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // Each thread goes through its segments in its own order.
                    let mut mine: Vec<(u64, u64)> =
                        segs.iter().copied().skip(t).step_by(THREADS).collect();
                    if t % 2 == 1 {
                        mine.reverse();
                    }
                    let mut buf = buffer(8192);
                    barrier.wait();
                    for (i, (off, len)) in mine.into_iter().enumerate() {
                        let b = buf.window_mut((i + t) % 3, len as usize);
                        for (k, x) in b.iter_mut().enumerate() {
                            *x = pattern(round, off + k as u64);
                        }
                        if round >= 4 && t == 0 {
                            ch.write_all_at(b, off).unwrap();
                        } else {
                            let v = split_iov(b, 1 + i % 2);
                            // SAFETY: iovecs point into `buf`.
                            unsafe { ch.pwritev_raw(&v, off) }.unwrap();
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(ch.size().unwrap(), total, "round {round}: file size");
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len() as u64, total);
        for (i, &x) in got.iter().enumerate() {
            assert_eq!(
                x,
                pattern(round, i as u64),
                "round {round} (max segment {maxseg}): byte {i}"
            );
        }
    }
}

/// Readers of fixed ranges always see their bytes while writers rewrite
/// the disjoint bytes around them (sharing blocks).
#[test]
fn concurrent_readers_and_writers_on_disjoint_ranges() {
    let s = scratch("rw");
    let p = s.join("f");
    let ch = Arc::new(Channel::open(&p, direct()).unwrap());
    // Stripes of 300 bytes: even stripes are read, odd stripes rewritten.
    const STRIPE: u64 = 300;
    const N: u64 = 400;
    let init: Vec<u8> = (0..STRIPE * N).map(|i| pattern(99, i)).collect();
    write(&ch, &init, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = Vec::new();
    for t in 0..4u64 {
        let (ch, stop) = (ch.clone(), stop.clone());
        hs.push(std::thread::spawn(move || {
            let mut rng = Rng::raw(t + 11);
            let mut buf = buffer(8192);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) || n < 200 {
                let k = 2 * rng.below(N / 2) + 1;
                let b = buf.window_mut(1, STRIPE as usize);
                rng.fill(b);
                // SAFETY: iovec points into `buf`.
                unsafe { ch.pwritev_raw(&[iov(b)], k * STRIPE) }.unwrap();
                n += 1;
            }
        }));
    }
    for t in 0..4u64 {
        let ch = ch.clone();
        hs.push(std::thread::spawn(move || {
            let mut rng = Rng::raw(t + 101);
            let mut buf = buffer(8192);
            for _ in 0..2000 {
                let k = 2 * rng.below(N / 2);
                let b = buf.window_mut(0, STRIPE as usize);
                // SAFETY: iovec points into `buf`.
                let n = unsafe { ch.preadv_raw(&[iov_mut(b)], k * STRIPE) }.unwrap();
                assert_eq!(n, STRIPE);
                for (i, &x) in b.iter().enumerate() {
                    assert_eq!(x, pattern(99, k * STRIPE + i as u64), "stripe {k} byte {i}");
                }
            }
        }));
    }
    // Readers finish on their own; then stop the writers.
    let readers: Vec<_> = hs.split_off(4);
    for h in readers {
        h.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    let got = std::fs::read(&p).unwrap();
    for k in (0..N).step_by(2) {
        for i in 0..STRIPE {
            let o = (k * STRIPE + i) as usize;
            assert_eq!(
                got[o],
                pattern(99, o as u64),
                "stripe {k} byte {i} after the run"
            );
        }
    }
}

#[test]
fn huge_iovec_counts_are_split() {
    let s = scratch("iovmax");
    for flags in [rwc(), direct()] {
        let p = s.join(&format!("f{}", flags.bits()));
        let ch = Channel::open(&p, flags).unwrap();
        // 5000 unaligned 7-byte iovecs, then 3000 aligned 512-byte ones.
        let mut small = vec![0u8; 5000 * 7];
        Rng::raw(3).fill(&mut small);
        let v: Vec<libc::iovec> = small.chunks(7).map(iov).collect();
        // SAFETY: iovecs point into `small`.
        let n = unsafe { ch.pwritev_raw(&v, 3) }.unwrap();
        assert_eq!(n, small.len() as u64);
        let mut big = buffer(3000 * 512);
        let bd = big.window_mut(0, 3000 * 512);
        Rng::raw(4).fill(bd);
        let v: Vec<libc::iovec> = bd.chunks(512).map(iov).collect();
        // SAFETY: iovecs point into `big`.
        let n = unsafe { ch.pwritev_raw(&v, 1 << 20) }.unwrap();
        assert_eq!(n, 3000 * 512);
        let file = std::fs::read(&p).unwrap();
        assert_eq!(&file[3..3 + small.len()], &small[..]);
        assert!(file[1 << 20..] == *big.window_mut(0, 3000 * 512));
        // Read back through 5000 iovecs.
        let mut back = vec![0u8; 5000 * 7];
        let v: Vec<libc::iovec> = back.chunks_mut(7).map(iov_mut).collect();
        // SAFETY: iovecs point into `back`, which is not otherwise used here.
        let n = unsafe { ch.preadv_raw(&v, 3) }.unwrap();
        assert_eq!(n, back.len() as u64);
        assert_eq!(back, small);
        ch.close().unwrap();
    }
}

#[test]
fn empty_requests_return_zero() {
    let s = scratch("empty");
    let ch = Channel::open(&s.join("f"), direct()).unwrap();
    // SAFETY: no iovecs / only empty ones.
    unsafe {
        assert_eq!(ch.pwritev_raw(&[], 5).unwrap(), 0);
        assert_eq!(ch.preadv_raw(&[], 5).unwrap(), 0);
        assert_eq!(ch.pwritev_raw(&[iov(&[]), iov(&[])], 12345).unwrap(), 0);
    }
    assert_eq!(
        ch.size().unwrap(),
        0,
        "an empty write must not extend the file"
    );
    let mut b = [0u8; 10];
    assert_eq!(ch.read_at(&mut b, 0).unwrap(), 0);
}

fn errno(r: Result<impl std::fmt::Debug, Error>) -> (i32, String) {
    let e = r.expect_err("expected an error");
    (e.errno(), e.to_string())
}

#[test]
fn open_errors_are_specific() {
    let s = scratch("errs");
    let missing = s.join("missing");
    let (e, msg) = errno(Channel::open(&missing, rw()));
    assert_eq!(e, libc::ENOENT, "{msg}");
    assert!(msg.contains(&missing.display().to_string()), "{msg}");

    let (e, msg) = errno(Channel::open(s.path(), OpenFlags::READ));
    assert_eq!(e, libc::EISDIR, "{msg}");
    let (e, msg) = errno(Channel::open(s.path(), rw()));
    assert_eq!(e, libc::EISDIR, "{msg}");

    assert_eq!(
        OpenFlags::from_bits(0x100).unwrap_err().errno(),
        libc::EINVAL
    );
    assert_eq!(OpenFlags::from_bits(0).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(
        OpenFlags::from_bits(0x1 | 0x4).unwrap_err().errno(),
        libc::EINVAL
    );

    // A write-open that really fails even for root: the running test binary
    // (ETXTBSY).
    let exe = std::env::current_exe().unwrap();
    let (e, msg) = errno(Channel::open(&exe, OpenFlags::WRITE));
    assert_eq!(e, libc::ETXTBSY, "{msg}");
    assert!(msg.contains(&exe.display().to_string()), "{msg}");

    // Permission bits: EACCES for ordinary users; root overrides them.
    let ro = s.join("ro");
    std::fs::write(&ro, b"x").unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o400)).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert_eq!(errno(Channel::open(&ro, rw())).0, libc::EACCES);
    } else {
        Channel::open(&ro, rw()).expect("root may open a 0400 file for writing");
    }

    // A character device is not a file for a channel.
    let (_, msg) = errno(Channel::open(Path::new("/dev/null"), rw()));
    assert!(msg.contains("/dev/null"), "{msg}");
}

/// Run `f` on another thread; fail (instead of hanging the suite) when it
/// does not return within 10 s.
fn within_10s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} blocked for 10 s"))
}

/// Issue: opening a FIFO blocked forever in open(2), before the file-type
/// check ran. Every open mode is now refused at once with the error
/// /dev/null gets (EINVAL, "not a regular file or block device").
#[test]
fn a_fifo_is_refused_without_blocking() {
    let s = scratch("fifo");
    let fifo = s.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (null_errno, _) = errno(Channel::open(Path::new("/dev/null"), OpenFlags::READ));
    for flags in [
        OpenFlags::READ,
        OpenFlags::WRITE,
        rw(),
        rwc(),
        OpenFlags::READ | OpenFlags::DIRECT,
        direct(),
        rw() | OpenFlags::TRUNC,
    ] {
        let p = fifo.clone();
        let (e, msg) = within_10s(&format!("opening a FIFO with {flags:?}"), move || {
            errno(Channel::open(&p, flags))
        });
        assert_eq!(e, null_errno, "{flags:?}: {msg}");
        assert_eq!(e, libc::EINVAL, "{flags:?}: {msg}");
        assert!(msg.contains("not a regular file or block device"), "{msg}");
        assert!(msg.contains(&fifo.display().to_string()), "{msg}");
    }
    // The FIFO is still there (CREATE did not replace it, nothing removed it).
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // A descriptor of a FIFO (opened non-blocking by the caller) is refused
    // the same way.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let (e, msg) = errno(Channel::from_fd(f.as_raw_fd(), OpenFlags::READ));
    assert_eq!(e, libc::EINVAL, "{msg}");
}

/// Regular files still work, and the channel's descriptor is blocking
/// again after the non-blocking open.
#[test]
fn regular_files_open_blocking() {
    let s = scratch("nonblock");
    let p = s.join("f");
    for flags in [rwc(), direct()] {
        let ch = Channel::open(&p, flags).unwrap();
        let mut seen = 0;
        for e in std::fs::read_dir("/proc/self/fd").unwrap() {
            let e = e.unwrap();
            if std::fs::read_link(e.path()).ok().as_deref() != Some(p.as_path()) {
                continue;
            }
            let info = std::fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                e.file_name().to_str().unwrap()
            ))
            .unwrap_or_default();
            let Some(fl) = info.lines().find_map(|l| l.strip_prefix("flags:")) else {
                continue;
            };
            let fl = i32::from_str_radix(fl.trim(), 8).unwrap();
            assert_eq!(fl & libc::O_NONBLOCK, 0, "{flags:?}: flags 0{fl:o}");
            seen += 1;
        }
        assert!(seen >= 1, "no descriptor of {} found", p.display());
        ch.write_all_at(b"hello", 0).unwrap();
        let mut b = [0u8; 5];
        assert_eq!(ch.read_at(&mut b, 0).unwrap(), 5);
        assert_eq!(&b, b"hello");
        ch.close().unwrap();
    }
}

#[test]
fn access_mode_is_enforced() {
    let s = scratch("ro");
    let p = s.join("f");
    std::fs::write(&p, vec![1u8; 5000]).unwrap();
    for extra in [OpenFlags::READ, OpenFlags::READ | OpenFlags::DIRECT] {
        let ch = Channel::open(&p, extra).unwrap();
        let data = [9u8; 100];
        // SAFETY: iovec points into `data`.
        let e = unsafe { ch.pwritev_raw(&[iov(&data)], 10) }.unwrap_err();
        assert!(matches!(e, Error::ReadOnly(_)), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        assert!(matches!(ch.write_all_at(&data, 0), Err(Error::ReadOnly(_))));
        assert!(matches!(ch.set_len(0), Err(Error::ReadOnly(_))));
        assert!(matches!(ch.punch_hole(0, 4096), Err(Error::ReadOnly(_))));
        // SAFETY: no iovecs.
        assert!(unsafe { ch.pwritev_raw(&[], 0) }.is_err());
        ch.close().unwrap();
    }
    assert_eq!(
        std::fs::read(&p).unwrap(),
        vec![1u8; 5000],
        "file unchanged"
    );

    let ch = Channel::open(&p, OpenFlags::WRITE | OpenFlags::DIRECT).unwrap();
    let mut b = [0u8; 10];
    let (e, msg) = errno(ch.read_at(&mut b, 0));
    assert_eq!(e, libc::EBADF, "{msg}");
    // Write-only + DIRECT still does unaligned writes (read-modify-write).
    write(&ch, &[5u8; 3], 4999);
    ch.close().unwrap();
    let f = std::fs::read(&p).unwrap();
    assert_eq!(f.len(), 5002);
    assert_eq!(&f[4998..], &[1, 5, 5, 5]);
}

#[test]
fn from_fd_leaves_callers_descriptor_usable() {
    let s = scratch("fromfd");
    let p = s.join("f");
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all_at(b"hello", 0).unwrap();
    let fd = f.as_raw_fd();
    // Unlinked file: the O_DIRECT reopen must work through /proc.
    std::fs::remove_file(&p).unwrap();
    let ch = Channel::from_fd(fd, rw() | OpenFlags::DIRECT).unwrap();
    assert_eq!(ch.name(), format!("fd {fd}"));
    assert!(ch.dio_align().is_some());
    write(&ch, b" world", 5);
    let mut a = buffer(4096);
    let d = a.window_mut(0, 4096);
    d.fill(b'z');
    // SAFETY: iovec points into `a`.
    unsafe { ch.pwritev_raw(&[iov(d)], 4096) }.unwrap();
    ch.close().unwrap();
    // The caller's fd is still open and sees the data.
    let mut back = [0u8; 11];
    f.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(&back, b"hello world");
    assert_eq!(f.metadata().unwrap().len(), 8192);
    f.write_all_at(b"!", 11).unwrap();
    // Dropping without close also leaves it open.
    drop(Channel::from_fd(fd, rw()).unwrap());
    f.write_all_at(b"?", 12).unwrap();

    // Invalid uses.
    assert_eq!(errno(Channel::from_fd(fd, rwc())).0, libc::EINVAL);
    assert_eq!(errno(Channel::from_fd(-1, rw())).0, libc::EBADF);
    let ro = File::open("/proc/self/exe").unwrap();
    let (e, msg) = errno(Channel::from_fd(ro.as_raw_fd(), rw()));
    assert_eq!(e, libc::EBADF, "{msg}");
    assert!(msg.contains(&format!("fd {}", ro.as_raw_fd())), "{msg}");
    let p2 = s.join("append");
    let app = File::options().append(true).create(true).open(&p2).unwrap();
    assert_eq!(
        errno(Channel::from_fd(app.as_raw_fd(), OpenFlags::WRITE)).0,
        libc::EINVAL
    );
    // A closed descriptor number.
    // SAFETY: a fresh descriptor we own; dup'd then closed.
    let closed = unsafe { libc::dup(ro.as_raw_fd()) };
    // SAFETY: `closed` is ours.
    drop(unsafe { OwnedFd::from_raw_fd(closed) });
    assert_eq!(
        errno(Channel::from_fd(closed, OpenFlags::READ)).0,
        libc::EBADF
    );
}

#[test]
fn holes_and_allocation() {
    let s = scratch("holes");
    let p = s.join("f");
    let ch = Channel::open(&p, direct()).unwrap();
    const MIB: u64 = 1 << 20;
    let mut a = buffer(4 << 20);
    let d = a.window_mut(0, 4 << 20);
    d.fill(0xab);
    // SAFETY: iovec points into `a`.
    unsafe { ch.pwritev_raw(&[iov(d)], 0) }.unwrap();
    ch.sync().unwrap();
    let before = ch.allocated_bytes().unwrap();
    assert!(before >= 4 * MIB, "allocated {before}");
    assert_eq!(ch.next_data(0).unwrap(), Some(0));
    match ch.punch_hole(MIB, 2 * MIB) {
        Err(Error::Unsupported(m)) => panic!("ext4 supports hole punching: {m}"),
        r => r.unwrap(),
    }
    let after = ch.allocated_bytes().unwrap();
    assert!(
        after + 2 * MIB <= before,
        "allocated {before} -> {after} after a 2 MiB punch"
    );
    assert_eq!(ch.size().unwrap(), 4 * MIB, "punch_hole keeps the size");
    assert_eq!(ch.next_hole(0).unwrap(), MIB);
    assert_eq!(ch.next_data(MIB).unwrap(), Some(3 * MIB));
    assert_eq!(ch.next_data(4 * MIB + 10).unwrap(), None);
    assert_eq!(ch.next_hole(3 * MIB).unwrap(), 4 * MIB);
    let mut back = vec![1u8; 5000];
    assert_eq!(ch.read_at(&mut back, MIB + 7).unwrap(), 5000);
    assert!(back.iter().all(|&x| x == 0));
    ch.punch_hole(0, 0).unwrap();
    ch.set_len(100).unwrap();
    assert_eq!(ch.size().unwrap(), 100);
    ch.close().unwrap();
}

#[test]
fn trunc_and_create_semantics() {
    let s = scratch("trunc");
    let p = s.join("f");
    std::fs::write(&p, b"old contents").unwrap();
    let ch = Channel::open(&p, rwc()).unwrap();
    assert_eq!(ch.size().unwrap(), 12, "CREATE keeps an existing file");
    drop(ch);
    let ch = Channel::open(&p, rwc() | OpenFlags::TRUNC | OpenFlags::DIRECT).unwrap();
    assert_eq!(ch.size().unwrap(), 0);
    // Overflowing ranges are rejected, not wrapped.
    let b = [0u8; 8];
    // SAFETY: iovec points into `b`.
    let e = unsafe { ch.pwritev_raw(&[iov(&b)], u64::MAX - 3) }.unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    let nul = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 4,
    };
    // SAFETY: the NULL iovec must be rejected before any access.
    let e = unsafe { ch.pwritev_raw(&[nul], 0) }.unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    ch.close().unwrap();
}

/// Not a timed assertion: prints an aligned 64 MiB O_DIRECT write through
/// `pwritev_raw` next to raw `pwrite`s of the same buffer on an O_DIRECT fd.
#[test]
fn measure_aligned_direct_write_vs_raw() {
    let s = scratch("perf");
    const LEN: usize = 64 << 20;
    const CHUNK: usize = 4 << 20;
    let mut a = buffer(LEN);
    Rng::raw(77).fill(a.window_mut(0, LEN));
    let data = a.window_mut(0, LEN);

    let raw_path = s.join("raw");
    let raw = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&raw_path)
        .unwrap();
    let chp = s.join("chan");
    let ch = Channel::open(&chp, direct()).unwrap();
    let mut raw_t = f64::MAX;
    let mut ch_t = f64::MAX;
    for _ in 0..2 {
        let t = std::time::Instant::now();
        for (i, c) in data.chunks(CHUNK).enumerate() {
            raw.write_all_at(c, (i * CHUNK) as u64).unwrap();
        }
        raw.sync_data().unwrap();
        raw_t = raw_t.min(t.elapsed().as_secs_f64());

        let t = std::time::Instant::now();
        for (i, c) in data.chunks(CHUNK).enumerate() {
            // SAFETY: iovec points into `a`.
            unsafe { ch.pwritev_raw(&[iov(c)], (i * CHUNK) as u64) }.unwrap();
        }
        ch.sync().unwrap();
        ch_t = ch_t.min(t.elapsed().as_secs_f64());
    }
    let mb = LEN as f64 / 1e6;
    println!(
        "64 MiB aligned O_DIRECT write: raw pwrite {:.0} MB/s, Channel::pwritev_raw {:.0} MB/s (ratio {:.2})",
        mb / raw_t,
        mb / ch_t,
        raw_t / ch_t
    );
    assert_eq!(ch.bounced_bytes(), 0, "the aligned path must not copy");
    assert_eq!(
        std::fs::read(&chp).unwrap(),
        std::fs::read(&raw_path).unwrap()
    );
}

/// procfs refuses O_DIRECT (open gives EINVAL), like any file system
/// without direct I/O; the error names the path and the reason.
#[test]
fn o_direct_refused_is_a_clear_error() {
    let _s = scratch("refused");
    let p = Path::new("/proc/version");
    let e = Channel::open(p, OpenFlags::READ | OpenFlags::DIRECT).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    assert!(
        e.to_string()
            .contains("O_DIRECT not supported by the file system of /proc/version"),
        "{e}"
    );
    // Without DIRECT the same file opens.
    let ch = Channel::open(p, OpenFlags::READ).unwrap();
    let mut b = [0u8; 5];
    assert_eq!(ch.read_at(&mut b, 0).unwrap(), 5);
    assert_eq!(&b, b"Linux");
}

/// A caller's descriptor that already has O_DIRECT: unaligned metadata I/O
/// still works (a separate buffered open), and the caller's flags are
/// unchanged.
#[test]
fn from_fd_with_o_direct_descriptor() {
    let s = scratch("fromdirect");
    let p = s.join("f");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p)
        .unwrap();
    let ch = Channel::from_fd(f.as_raw_fd(), rw()).unwrap();
    ch.write_all_at(b"abc", 1).unwrap();
    let mut b = [0u8; 4];
    assert_eq!(ch.read_at(&mut b, 0).unwrap(), 4);
    assert_eq!(&b, b"\0abc");
    ch.close().unwrap();
    // SAFETY: F_GETFL on an open descriptor.
    let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    assert_ne!(fl & libc::O_DIRECT, 0, "the caller's O_DIRECT flag is kept");
}
