//! `Image::create` over an existing image, killed with SIGKILL at random
//! instants: the path must always hold either a complete image (the old one
//! or a finished new one) or a new image that opens as incomplete — never a
//! corrupt or empty file (the image is written unnamed and renamed into
//! place; an unnamed `O_TMPFILE` vanishes with the process).
//!
//! Like `tests/crash.rs` this checks the order of the library's steps
//! against process death (SIGKILL keeps the page cache), not power loss.
//! The child (this binary re-executed with `MR_CREATE_CRASH_PATH` set, as
//! the ignored `create_crash_child_entry` test) re-creates, writes a page
//! and finishes the image in a loop until it is killed. The files live in
//! `/tmp` (ext4 here, so the renames and syncs are real). A kill between
//! naming the unnamed file and renaming it over the old one leaves a hidden
//! temporary, which the next create removes: at most one at a time.

mod common;

use common::*;
use mappedram::{BlockSpec, Error, Image, ImageFlags};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const ENV_PATH: &str = "MR_CREATE_CRASH_PATH";
const KILLS: u64 = 40;

fn blocks(round: u64) -> Vec<BlockSpec> {
    // The block list changes from round to round, so an image of one
    // round is told from another's by its layout.
    vec![BlockSpec {
        idstr: format!("mem{}", round % 3),
        used_length: (8 + round % 3) << 20,
        page_size: PS,
    }]
}

fn page(round: u64) -> Vec<u8> {
    vec![(round % 251) as u8 + 1; PS as usize]
}

/// One create-write-finish-close; `@@N` as round N starts.
fn one_round(path: &Path, round: u64) {
    println!("@@{round}");
    let img = Image::create(
        path,
        "pc-i440fx-10.0",
        &blocks(round),
        ImageFlags::default(),
    )
    .expect("create");
    img.write_page(0, PS, &page(round)).expect("write_page");
    img.finish().expect("finish");
    img.close().expect("close");
}

#[test]
#[ignore = "helper: run as a child process by create_killed_at_random_leaves_old_or_new"]
fn create_crash_child_entry() {
    let Ok(path) = std::env::var(ENV_PATH) else {
        panic!("{ENV_PATH} is not set: this is a child process of create_killed_at_random_leaves_old_or_new");
    };
    let path = PathBuf::from(path);
    for round in 1.. {
        one_round(&path, round);
    }
}

/// What the path holds after a kill: Ok(true) complete, Ok(false)
/// incomplete (a new image the child had not finished).
fn state(path: &Path) -> Result<bool, String> {
    match Image::open(path, ImageFlags::default()) {
        Ok(img) => {
            let info = img.block_info(0).map_err(|e| e.to_string())?;
            let round = (1..4)
                .find(|r| blocks(*r)[0].idstr == info.idstr)
                .ok_or_else(|| format!("unknown block {}", info.idstr))?;
            let mut got = vec![0u8; PS as usize];
            if !img.read_page(0, PS, &mut got).map_err(|e| e.to_string())? {
                return Err(format!("complete image ({}) lacks its page", info.idstr));
            }
            if got[0] == 0 || blocks(got[0] as u64 - 1)[0].idstr != blocks(round)[0].idstr {
                return Err(format!(
                    "complete image ({}) holds another round's page",
                    info.idstr
                ));
            }
            Ok(true)
        }
        Err(Error::Incomplete(_)) => Ok(false),
        Err(e) => Err(format!("neither complete nor incomplete: {e}")),
    }
}

/// Entries of `dir` other than the image.
fn strays(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "img")
        .collect()
}

#[test]
fn create_killed_at_random_leaves_old_or_new() {
    let dir = TmpDir::new("create-crash");
    let path = dir.join("img");
    one_round(&path, 0);
    let mut rng = Rng::new(0x5eed_c0de);
    let (mut complete, mut incomplete, mut temporaries) = (0, 0, 0);
    // How long a create takes here (the kill window).
    let t = std::time::Instant::now();
    one_round(&path, 1);
    let window = (t.elapsed().as_micros() as u64 / 3).clamp(500, 20_000);
    for kill in 0..KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "create_crash_child_entry",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV_PATH, &path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("re-executing the test binary");
        // Wait for the second round to start (the first one finished:
        // the path holds a complete image), then kill within the next
        // `window`: mostly during create (a few ms here), sometimes later.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let mut starts = 0;
        while starts < 2 {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("kill {kill}: the child ended early");
            }
            if line.starts_with("@@") {
                starts += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(rng.next() % window));
        child.kill().unwrap();
        child.wait().unwrap();
        match state(&path) {
            Ok(true) => complete += 1,
            Ok(false) => incomplete += 1,
            Err(e) => panic!("kill {kill}: {e}"),
        }
        // A kill between naming the new image and renaming it over the
        // old one leaves one hidden temporary; the next create removes it.
        let stray = strays(dir.path());
        assert!(
            stray.len() <= 1,
            "kill {kill}: files left beside the image: {stray:?}"
        );
        temporaries += stray.len();
    }
    one_round(&path, 1);
    assert_eq!(
        strays(dir.path()),
        Vec::<String>::new(),
        "a stale temporary survived a create"
    );
    println!("{KILLS} kills within {window} us of a create starting: {complete} complete, {incomplete} incomplete, 0 corrupt; {temporaries} left a hidden temporary (removed by the next create)");
}
