//! Torn chunks: a process rewriting the chunks of a complete compressed
//! image in place is SIGKILLed before each of its channel operations in
//! turn. Afterwards the image must open as incomplete or as complete in
//! the state of its last `sync` (old chunks after new ones, no error), and with `MR_IMAGE_RECOVER` every chunk must read as
//! its old or its new contents or fail with `EBADMSG` naming the chunk —
//! never other bytes. At least one kill must leave a torn chunk that the
//! checksums (or the bitmap cross-check) catch.
//!
//! Re-exec pattern: the test binary runs itself with `MR_CCRASH_PATH` set,
//! running the ignored `child_entry` test, which kills itself (SIGKILL)
//! just before its N-th channel operation (`MR_CCRASH_AT`) through the
//! channel's fault injector. SIGKILL keeps the page cache, so this checks
//! the order of the library's writes against process death, not power loss.

mod common;

use common::fill::pattern;
use common::TmpDir;
use mappedram::channel::{FaultFn, FaultOp};
use mappedram::compress::ImageOptions;
use mappedram::engine::save_ramblock;
use mappedram::memory::GuestSlice;
use mappedram::{BlockSpec, Error, Image, ImageFlags};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const MEM: usize = 8 << 20;
const CHUNK: usize = 1 << 20;

fn old() -> Vec<u8> {
    pattern(21, MEM)
}

fn new() -> Vec<u8> {
    pattern(22, MEM)
}

#[test]
#[ignore = "helper: run as a child process by torn_chunks_are_detected"]
fn child_entry() {
    let path = std::env::var("MR_CCRASH_PATH").expect("child of torn_chunks_are_detected only");
    let at: u64 = std::env::var("MR_CCRASH_AT").unwrap().parse().unwrap();
    let img = Image::open(Path::new(&path), ImageFlags::READ_WRITE).unwrap();
    static OPS: AtomicU64 = AtomicU64::new(0);
    let f: FaultFn = Arc::new(move |_op: FaultOp, _off, _len| {
        if OPS.fetch_add(1, Ordering::SeqCst) == at {
            // SAFETY: kill(2) of our own pid has no memory-safety concerns.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        None
    });
    img.channel().set_fault_injector(Some(f));
    let v2 = new();
    for j in 0..MEM / CHUNK {
        img.write_pages(0, (j * CHUNK) as u64, &v2[j * CHUNK..(j + 1) * CHUNK])
            .unwrap();
        if j % 3 == 2 {
            img.sync().unwrap();
        }
    }
    img.close().unwrap();
    println!("@@done ops={}", OPS.load(Ordering::SeqCst));
}

#[test]
fn torn_chunks_are_detected() {
    let d = TmpDir::new("cmp-crash");
    let base = d.join("base.img");
    let specs = [BlockSpec {
        idstr: "mem".into(),
        used_length: MEM as u64,
        page_size: 4096,
    }];
    let img = Image::create_with(
        &base,
        "pc",
        &specs,
        ImageFlags::default(),
        &ImageOptions::zstd(1),
    )
    .unwrap();
    let (v1, v2) = (old(), new());
    save_ramblock(&img, 0, GuestSlice::from_slice(&v1), None, 2).unwrap();
    img.finish().unwrap();
    img.close().unwrap();

    let (mut torn, mut ran_out, mut complete_runs) = (0, false, 0);
    for at in 0..200u64 {
        let p = d.join("t.img");
        std::fs::copy(&base, &p).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_entry", "--ignored", "--nocapture"])
            .env("MR_CCRASH_PATH", &p)
            .env("MR_CCRASH_AT", at.to_string())
            .output()
            .unwrap();
        let killed = out.status.signal() == Some(libc::SIGKILL);
        if !killed {
            assert!(
                out.status.success(),
                "child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            ran_out = true;
        }
        match Image::open(&p, ImageFlags::default()) {
            Ok(img) => {
                // Complete: the state of the last sync (which ends the
                // update): chunks before it new, the rest old, no error.
                let mut buf = vec![0u8; MEM];
                img.read_range(0, 0, &mut buf).unwrap();
                let news = (0..MEM / CHUNK)
                    .take_while(|j| {
                        buf[j * CHUNK..(j + 1) * CHUNK] == v2[j * CHUNK..(j + 1) * CHUNK]
                    })
                    .count();
                assert!(
                    buf[news * CHUNK..] == v1[news * CHUNK..] && (news % 3 == 0 || news == MEM / CHUNK),
                    "kill at op {at}: complete image that is not a synced state ({news} new chunks)"
                );
                complete_runs += (news == MEM / CHUNK) as usize;
            }
            Err(Error::Incomplete(_)) => {}
            Err(e) => panic!("kill at op {at}: {e}"),
        }
        let img = Image::open(&p, ImageFlags::RECOVER).unwrap();
        let mut buf = vec![0u8; CHUNK];
        for j in 0..MEM / CHUNK {
            let r = j * CHUNK..(j + 1) * CHUNK;
            match img.read_range(0, r.start as u64, &mut buf) {
                Ok(()) => assert!(
                    buf == v1[r.clone()] || buf == v2[r.clone()],
                    "kill at op {at}: chunk {j} reads as neither old nor new contents"
                ),
                Err(e) => {
                    assert_eq!(e.errno(), libc::EBADMSG, "kill at op {at}: {e}");
                    assert!(e.to_string().contains(&format!("chunk {j} ")), "{e}");
                    torn += 1;
                }
            }
        }
        if ran_out {
            break;
        }
    }
    assert!(
        ran_out,
        "the child never got to its end: raise the op range"
    );
    assert!(complete_runs >= 1);
    assert!(
        torn > 0,
        "no kill left a torn chunk: the test proves nothing"
    );
    eprintln!("torn chunks detected: {torn}");
}
