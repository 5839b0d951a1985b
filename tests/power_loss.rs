//! Power loss, not only SIGKILL: the channel's trace recorder captures every
//! file-changing operation (write with its bytes, `fdatasync`, truncate,
//! punch hole) of a save, of a finish after a recover-open, and of an
//! in-place update; `common::crash_states` then builds the files a power
//! cut could leave (everything before the last completed `fdatasync`, a
//! bounded subset of what came after it, the last kept operation torn at a
//! 512-byte or 4 KiB boundary). Every such file must open either as
//! incomplete (`Error::Incomplete`, `-MR_EINCOMPLETE`) or as complete with
//! exactly the guest memory of a completion the run could have reached —
//! never complete-and-wrong.
//!
//! Before the first `fdatasync` of a new image nothing of it is durable, so
//! a state may also be a file that is not an image yet (empty, or headers
//! cut short): that is reported as "not an image" and allowed only there.
//!
//! The model is the channel's operations, as the library issues them. It
//! does not split one O_DIRECT request into its read-modify-write steps.
//! Each test prints the number of states it explored (also to stderr
//! directly, so a plain `cargo test` shows it).

mod common;

use common::crash_states::{self, State};
use common::*;
use mappedram::channel::{Channel, OpenFlags, Trace, TraceOp};
use mappedram::engine::save_ramblock;
use mappedram::{DirtyBitmap, Error, GuestSlice, Image, ImageFlags};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Size of the main block (small: every state is opened and compared).
const MEM: u64 = 32 * PS;
const ZERO_EVERY: u64 = 5;
const MACHINE: &str = "pc-i440fx-10.0";

/// The guest memory an image must hold once the call that ends at trace
/// position `end_op` returned.
struct Version {
    /// First trace operation of that call; `None` for the starting image.
    first_op: Option<usize>,
    end_op: usize,
    mem: Vec<Aligned>,
    /// The named blobs, sorted by name.
    blobs: Vec<(String, Vec<u8>)>,
}

/// A recorded run: the file before it, its operations, and the memory
/// versions its calls completed.
struct Recording {
    start: Vec<u8>,
    ops: Vec<TraceOp>,
    versions: Vec<Version>,
}

/// Memory of every block at `version` (block 0 rewritten on every third
/// run of 4 pages for versions above 1).
fn memory(version: u64) -> Vec<Aligned> {
    specs(MEM)
        .iter()
        .enumerate()
        .map(|(b, s)| {
            let mut m = block_memory(1, b, s.used_length, ZERO_EVERY);
            if version > 1 && b == 0 {
                for (p, page) in m.as_mut_slice().chunks_mut(PS as usize).enumerate() {
                    if dirty(p as u64) {
                        page_content(version, b, p as u64, ZERO_EVERY, page);
                    }
                }
            }
            m
        })
        .collect()
}

fn dirty(p: u64) -> bool {
    (p / 4) % 3 == 0
}

fn dirty_bitmap() -> Vec<u64> {
    let pages = MEM / PS;
    let mut d = vec![0u64; pages.div_ceil(64) as usize];
    for p in (0..pages).filter(|&p| dirty(p)) {
        d[(p / 64) as usize] |= 1 << (p % 64);
    }
    d
}

fn traced(path: &Path, flags: OpenFlags) -> (Arc<Channel>, Arc<Trace>) {
    let ch = Arc::new(Channel::open(path, flags).unwrap());
    let trace = Trace::new();
    ch.set_trace_recorder(Some(trace.clone()));
    (ch, trace)
}

fn save_all(img: &Image, mem: &[Aligned]) {
    for (b, m) in mem.iter().enumerate() {
        save_ramblock(img, b, GuestSlice::from_slice(m.as_slice()), None, 1).unwrap();
    }
}

fn save_round2(img: &Image, mem: &[Aligned]) {
    let dirty = dirty_bitmap();
    let guest = GuestSlice::from_slice(mem[0].as_slice());
    save_ramblock(img, 0, guest, Some(DirtyBitmap::from_slice(&dirty)), 1).unwrap();
}

/// Create, save, sync, save a dirty round, finish, close.
fn record_save(dir: &TmpDir) -> Recording {
    let path = dir.join("save.img");
    let rwc = OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNC;
    let (ch, trace) = traced(&path, rwc);
    let img = Image::create_on(ch, 0, MACHINE, &specs(MEM), ImageFlags::default()).unwrap();
    save_all(&img, &memory(1));
    img.sync().unwrap();
    let m2 = memory(2);
    save_round2(&img, &m2);
    img.put_blob("vmm", &blob(1, 3000)).unwrap();
    let first = trace.len();
    img.finish().unwrap();
    let end = trace.len();
    img.close().unwrap();
    Recording {
        start: Vec::new(),
        ops: trace.ops(),
        versions: vec![Version {
            first_op: Some(first),
            end_op: end,
            mem: m2,
            blobs: vec![("vmm".into(), blob(1, 3000))],
        }],
    }
}

/// A save that was synced and closed but never finished, recover-opened,
/// a few pages rewritten, finished.
fn record_finish(dir: &TmpDir) -> Recording {
    let path = dir.join("finish.img");
    let img = Image::create(&path, MACHINE, &specs(MEM), ImageFlags::default()).unwrap();
    save_all(&img, &memory(1));
    img.close().unwrap();
    let start = std::fs::read(&path).unwrap();

    let (ch, trace) = traced(&path, OpenFlags::READ | OpenFlags::WRITE);
    let img = Image::open_on(ch, None, ImageFlags::RECOVER | ImageFlags::READ_WRITE).unwrap();
    let mut mem = memory(1);
    for p in 0..3u64 {
        let page = &mut mem[0].as_mut_slice()[(p * PS) as usize..((p + 1) * PS) as usize];
        page_content(3, 0, p, 0, page);
        img.write_page(0, p * PS, page).unwrap();
    }
    let first = trace.len();
    img.finish().unwrap();
    let end = trace.len();
    img.close().unwrap();
    Recording {
        start,
        ops: trace.ops(),
        versions: vec![Version {
            first_op: Some(first),
            end_op: end,
            mem,
            blobs: Vec::new(),
        }],
    }
}

/// Write `content` (or zeros) to page `p` of block `b`, in the image and in
/// the expected memory.
fn put_page(img: &Image, mem: &mut [Aligned], b: usize, p: u64, content: Option<u64>) {
    let page = &mut mem[b].as_mut_slice()[(p * PS) as usize..((p + 1) * PS) as usize];
    match content {
        Some(v) => page_content(v, b, p, 0, page),
        None => page.fill(0),
    }
    img.write_page(b, p * PS, page).unwrap();
}

/// A complete image updated in place: pages rewritten, zeroed (hole
/// punched) and filled, sync; then a dirty-round save, close.
fn record_update(dir: &TmpDir) -> Recording {
    let path = dir.join("update.img");
    let img = Image::create(&path, MACHINE, &specs(MEM), ImageFlags::default()).unwrap();
    let v0 = memory(1);
    save_all(&img, &v0);
    img.finish().unwrap();
    img.close().unwrap();
    let start = std::fs::read(&path).unwrap();

    let (ch, trace) = traced(&path, OpenFlags::READ | OpenFlags::WRITE);
    let img = Image::open_on(ch, None, ImageFlags::READ_WRITE).unwrap();
    let mut mem = memory(1);
    let zero_page = (0..MEM / PS)
        .find(|&p| mem[0].as_slice()[(p * PS) as usize..][..PS as usize] == [0u8; PS as usize])
        .expect("a zero page in block 0");
    put_page(&img, &mut mem, 0, 1, Some(4)); // data -> other data
    put_page(&img, &mut mem, 0, 2, None); // data (or zero) -> zero
    put_page(&img, &mut mem, 0, zero_page, Some(4)); // zero -> data
    put_page(&img, &mut mem, 1, 7, Some(4));
    let first1 = trace.len();
    img.sync().unwrap();
    let end1 = trace.len();
    let v1: Vec<Aligned> = mem
        .iter()
        .map(|m| Aligned::from_slice(m.as_slice()))
        .collect();

    let mut v2 = memory(2);
    for (b, m) in v2.iter_mut().enumerate().skip(1) {
        m.as_mut_slice().copy_from_slice(v1[b].as_slice());
    }
    for p in (0..MEM / PS).filter(|&p| !dirty(p)) {
        let r = (p * PS) as usize..((p + 1) * PS) as usize;
        v2[0].as_mut_slice()[r.clone()].copy_from_slice(&v1[0].as_slice()[r]);
    }
    save_round2(&img, &v2);
    let first2 = trace.len();
    img.close().unwrap();
    let end2 = trace.len();
    Recording {
        start,
        ops: trace.ops(),
        versions: vec![
            Version {
                first_op: None,
                end_op: 0,
                mem: v0,
                blobs: Vec::new(),
            },
            Version {
                first_op: Some(first1),
                end_op: end1,
                mem: v1,
                blobs: Vec::new(),
            },
            Version {
                first_op: Some(first2),
                end_op: end2,
                mem: v2,
                blobs: Vec::new(),
            },
        ],
    }
}

/// Deterministic blob contents.
fn blob(version: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    Rng::new(version ^ 0xb10b).fill(&mut b);
    b
}

fn compare_blobs(img: &Image, want: &[(String, Vec<u8>)]) -> Result<(), String> {
    let mut names = img.blob_names();
    names.sort();
    let want_names: Vec<&String> = want.iter().map(|(n, _)| n).collect();
    if names.iter().collect::<Vec<_>>() != want_names {
        return Err(format!("blobs {names:?}, expected {want_names:?}"));
    }
    for (n, data) in want {
        let got = img.get_blob(n).map_err(|e| format!("blob {n}: {e}"))?;
        if &got != data {
            return Err(format!(
                "blob {n}: {} bytes differ from the expected {}",
                got.len(),
                data.len()
            ));
        }
    }
    Ok(())
}

/// A complete image with two blobs; in place: one replaced by a longer one,
/// the other removed, close.
fn record_blob_update(dir: &TmpDir) -> Recording {
    let path = dir.join("blobs.img");
    let img = Image::create(&path, MACHINE, &specs(MEM), ImageFlags::default()).unwrap();
    let mem = memory(1);
    save_all(&img, &mem);
    img.put_blob("cpu", &blob(2, 700)).unwrap();
    img.put_blob("vmm", &blob(1, 3000)).unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    let start = std::fs::read(&path).unwrap();

    let (ch, trace) = traced(&path, OpenFlags::READ | OpenFlags::WRITE);
    let img = Image::open_on(ch, None, ImageFlags::READ_WRITE).unwrap();
    let first = trace.len();
    img.put_blob("vmm", &blob(3, 9000)).unwrap();
    img.remove_blob("cpu").unwrap();
    img.close().unwrap();
    let end = trace.len();
    let again = |m: &[Aligned]| {
        m.iter()
            .map(|a| Aligned::from_slice(a.as_slice()))
            .collect()
    };
    Recording {
        start,
        ops: trace.ops(),
        versions: vec![
            Version {
                first_op: None,
                end_op: 0,
                mem: again(&mem),
                blobs: vec![("cpu".into(), blob(2, 700)), ("vmm".into(), blob(1, 3000))],
            },
            Version {
                first_op: Some(first),
                end_op: end,
                mem,
                blobs: vec![("vmm".into(), blob(3, 9000))],
            },
        ],
    }
}

#[derive(Default, Debug)]
struct Tally {
    states: u64,
    complete: u64,
    incomplete: u64,
    not_an_image: u64,
}

/// The versions a state may legitimately show when complete: not older
/// than the newest whose call is wholly durable, and only those whose call
/// had started by the state's last operation.
fn allowed<'a>(rec: &'a Recording, st: &State) -> Vec<(usize, &'a Version)> {
    let durable_end = st.durable_sync.map_or(0, |s| s + 1);
    let newest_durable = rec.versions.iter().rposition(|v| v.end_op <= durable_end);
    rec.versions
        .iter()
        .enumerate()
        .filter(|(i, _)| newest_durable.is_none_or(|n| *i >= n))
        .filter(|(_, v)| match (v.first_op, st.last_op) {
            (None, _) => true,
            (Some(f), Some(l)) => f <= l,
            (Some(_), None) => false,
        })
        .collect()
}

fn check(rec: &Recording, st: &State, path: &Path, t: &mut Tally) -> Result<(), String> {
    std::fs::write(path, &st.file).unwrap();
    t.states += 1;
    let img = match Image::open(path, ImageFlags::default()) {
        Ok(img) => img,
        Err(Error::Incomplete(_)) => {
            t.incomplete += 1;
            return Ok(());
        }
        Err(e) if st.durable_sync.is_none() && rec.start.is_empty() => {
            // Nothing of the new image was durable yet.
            t.not_an_image += 1;
            let _ = e;
            return Ok(());
        }
        Err(e) => return Err(format!("{}: opens with an unexpected error: {e}", st.how)),
    };
    let ok = allowed(rec, st);
    let mut why = Vec::new();
    for (i, v) in &ok {
        let want: Vec<&[u8]> = v.mem.iter().map(Aligned::as_slice).collect();
        match compare_image(&img, &want).and_then(|()| compare_blobs(&img, &v.blobs)) {
            Ok(()) => {
                t.complete += 1;
                return Ok(());
            }
            Err(e) => why.push(format!("version {i}: {e}")),
        }
    }
    Err(format!(
        "{}: opens COMPLETE but matches no allowed version ({} allowed): {}",
        st.how,
        ok.len(),
        why.join("; ")
    ))
}

/// Every crash state of `rec`, checked; the tally and the wrong states.
fn run(name: &str, rec: &Recording) -> (Tally, Vec<String>) {
    let dir = TmpDir::in_memory(&format!("power-{name}"));
    let path = dir.join("state.img");
    let mut t = Tally::default();
    let mut wrong = Vec::new();
    let n = crash_states::states(&rec.start, &rec.ops, |st| {
        if let Err(e) = check(rec, &st, &path, &mut t) {
            wrong.push(e);
        }
    });
    assert_eq!(n, t.states);
    let syncs = rec.ops.iter().filter(|o| **o == TraceOp::Sync).count();
    let line = format!(
        "power loss ({name}): {} operations ({syncs} fdatasync), {} crash states explored: {} complete and correct, {} incomplete, {} not an image yet, {} wrong\n",
        rec.ops.len(),
        t.states,
        t.complete,
        t.incomplete,
        t.not_an_image,
        wrong.len()
    );
    print!("{line}");
    let _ = std::io::stderr().write_all(line.as_bytes());
    (t, wrong)
}

fn explore(name: &str, rec: Recording) -> Tally {
    let (t, wrong) = run(name, &rec);
    assert!(
        wrong.is_empty(),
        "{} of {} states are wrong; first: {}",
        wrong.len(),
        t.states,
        wrong[0]
    );
    assert!(t.complete > 0 && t.incomplete > 0, "{t:?}");
    t
}

#[test]
fn power_loss_during_save_and_finish() {
    let dir = TmpDir::in_memory("power-rec-save");
    explore("save + finish", record_save(&dir));
}

#[test]
fn power_loss_during_finish_after_recover() {
    let dir = TmpDir::in_memory("power-rec-finish");
    explore("recover-open + finish", record_finish(&dir));
}

#[test]
fn power_loss_during_in_place_update() {
    let dir = TmpDir::in_memory("power-rec-update");
    explore("in-place update", record_update(&dir));
}

#[test]
fn power_loss_during_in_place_blob_update() {
    let dir = TmpDir::in_memory("power-rec-blobs");
    explore("in-place blob replace + remove", record_blob_update(&dir));
}

/// The check can fail: the same save trace with its `fdatasync`s removed
/// (what a writer that never syncs, like QEMU, gives a power cut) has
/// states that open complete with pages or bitmaps missing.
#[test]
fn power_loss_model_catches_a_save_without_fdatasync() {
    let dir = TmpDir::in_memory("power-rec-nosync");
    let mut rec = record_save(&dir);
    rec.ops.retain(|o| *o != TraceOp::Sync);
    let (t, wrong) = run("save + finish, fdatasync removed", &rec);
    assert!(
        !wrong.is_empty(),
        "without fdatasync some state must open complete and wrong: {t:?}"
    );
}
