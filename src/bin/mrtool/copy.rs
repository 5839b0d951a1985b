//! `mrtool copy`: a sparse-aware, parallel, `O_DIRECT` file copy. Data
//! extents (SEEK_DATA / SEEK_HOLE) are cut into 4 MiB pieces that worker
//! threads copy with positional I/O; holes stay holes.

use super::progress::Bar;
use super::Fail;
use mappedram::{Channel, OpenFlags};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const PIECE: u64 = 4 << 20;

/// Read exactly `buf.len()` bytes at `off` (`O_DIRECT`: `buf` is aligned).
fn pread(ch: &Channel, buf: &mut [u8], off: u64) -> mappedram::Result<()> {
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    }];
    // SAFETY: `buf` is valid for writes of its length for the call.
    let n = unsafe { ch.preadv_raw(&iov, off)? };
    if n != buf.len() as u64 {
        return Err(mappedram::Error::Corrupt(format!(
            "{}: shrank while copying: {n} of {} bytes at offset {off}",
            ch.name(),
            buf.len()
        )));
    }
    Ok(())
}

/// Write all of `buf` at `off` (`O_DIRECT` when aligned).
fn pwrite(ch: &Channel, buf: &[u8], off: u64) -> mappedram::Result<()> {
    let iov = [libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    }];
    // SAFETY: `buf` is valid for reads of its length for the call.
    unsafe { ch.pwritev_raw(&iov, off)? };
    Ok(())
}

pub fn run(inp: &str, out: &str, threads: u32) -> Result<(), Fail> {
    let a = Channel::open(Path::new(inp), OpenFlags::READ | OpenFlags::DIRECT)?;
    let b = Channel::open(
        Path::new(out),
        OpenFlags::READ
            | OpenFlags::WRITE
            | OpenFlags::CREATE
            | OpenFlags::TRUNC
            | OpenFlags::DIRECT,
    )?;
    let size = a.size()?;
    let mut pieces = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Some(d) = a.next_data(pos)? else { break };
        let h = a.next_hole(d)?.min(size);
        let mut p = d;
        while p < h {
            pieces.push((p, PIECE.min(h - p)));
            p += PIECE;
        }
        pos = h;
    }
    b.set_len(size)?;
    let total: u64 = pieces.iter().map(|p| p.1).sum();
    let bar = Bar::new("copy");
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let err = Mutex::new(None);
    let n = if threads == 0 { 4 } else { threads as usize };
    std::thread::scope(|s| {
        for _ in 0..n.min(pieces.len().max(1)) {
            s.spawn(|| {
                let mut v = vec![0u8; PIECE as usize + 4096];
                let o = v.as_ptr().align_offset(4096);
                let buf = &mut v[o..o + PIECE as usize];
                loop {
                    let k = next.fetch_add(1, Ordering::AcqRel) as usize;
                    if k >= pieces.len() || err.lock().unwrap().is_some() {
                        break;
                    }
                    let (off, len) = pieces[k];
                    let r = pread(&a, &mut buf[..len as usize], off)
                        .and_then(|_| pwrite(&b, &buf[..len as usize], off));
                    if let Err(e) = r {
                        err.lock().unwrap().get_or_insert(e);
                        break;
                    }
                    bar.update(done.fetch_add(len, Ordering::AcqRel) + len, total);
                }
            });
        }
    });
    bar.finish();
    if let Some(e) = err.into_inner().unwrap() {
        return Err(e.into());
    }
    b.sync()?;
    b.close()?;
    println!("{inp} -> {out}: {size} bytes, {total} bytes of data copied");
    Ok(())
}
