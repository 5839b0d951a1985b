//! `mrtool verify`: open (every structure), then read every present page
//! of every block (every chunk's checksum), in parallel.

use super::progress::Bar;
use super::Fail;
use mappedram::{Error, Image, ImageFlags};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Verification unit: 1 MiB of guest memory (a chunk at the default size).
const UNIT: u64 = 1 << 20;

pub fn run(path: &str, threads: u32) -> Result<(), Fail> {
    let (img, complete) = open_checked(path)?;
    let mut bad = read_everything(&img, threads)?;
    // Every named blob, its checksum verified.
    match img.blob_names() {
        Ok(names) => {
            for n in names {
                if let Err(e) = img.get_blob(&n) {
                    bad.push(e.to_string());
                }
            }
        }
        Err(e) => bad.push(e.to_string()),
    }
    for m in &bad {
        println!("DAMAGED: {m}");
    }
    let pages: u64 = (0..img.block_count())
        .map(|b| img.block_info(b).map(|i| i.pages_present).unwrap_or(0))
        .sum();
    if !bad.is_empty() {
        return Err(Fail(5, format!("{path}: {} damaged range(s)", bad.len())));
    }
    if !complete {
        return Err(Fail(
            4,
            format!("{path}: readable ({pages} present pages) but not complete"),
        ));
    }
    println!(
        "{path}: ok: {} ramblocks, {pages} present pages, every checksum verified",
        img.block_count()
    );
    Ok(())
}

/// Open: structure errors are exit 3; an incomplete image is opened with
/// `RECOVER` (and reported as incomplete at the end).
fn open_checked(path: &str) -> Result<(Image, bool), Fail> {
    match Image::open(Path::new(path), ImageFlags::default()) {
        Ok(i) => Ok((i, true)),
        Err(Error::Incomplete(m)) => {
            eprintln!("mrtool: {m}");
            let i = Image::open(Path::new(path), ImageFlags::RECOVER)
                .map_err(|e| Fail(3, format!("structure: {e}")))?;
            Ok((i, false))
        }
        Err(e @ (Error::Corrupt(_) | Error::Unsupported(_))) => {
            Err(Fail(3, format!("structure: {e}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// Read every unit of every block on `threads` threads; the damaged ranges
/// (checksum or structure errors), or the first I/O error.
fn read_everything(img: &Image, threads: u32) -> Result<Vec<String>, Fail> {
    let mut units = Vec::new();
    for b in 0..img.block_count() {
        let info = img.block_info(b)?;
        let step = UNIT.max(img.block_stats(b)?.chunk_bytes);
        let mut off = 0;
        while off < info.used_length {
            units.push((b, off, step.min(info.used_length - off)));
            off += step;
        }
    }
    let total: u64 = units.iter().map(|u| u.2).sum();
    let bar = Bar::new("verify");
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let bad: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let io_err: Mutex<Option<Error>> = Mutex::new(None);
    let n = if threads == 0 {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(8)
    } else {
        threads as usize
    };
    std::thread::scope(|s| {
        for _ in 0..n {
            s.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::AcqRel) as usize;
                    if k >= units.len() {
                        break;
                    }
                    let (b, off, len) = units[k];
                    buf.resize(len as usize, 0);
                    match img.read_range(b, off, &mut buf) {
                        Ok(()) => {}
                        Err(e @ Error::Corrupt(_)) => bad.lock().unwrap().push(e.to_string()),
                        Err(e) => {
                            io_err.lock().unwrap().get_or_insert(e);
                        }
                    }
                    bar.update(done.fetch_add(len, Ordering::AcqRel) + len, total);
                }
            });
        }
    });
    bar.finish();
    if let Some(e) = io_err.into_inner().unwrap() {
        return Err(e.into());
    }
    Ok(bad.into_inner().unwrap())
}
