//! Deterministic guest-memory patterns: seeded mixes of random, zero and
//! text regions, page-granular and sub-page.

use super::rng::Rng;

pub const PAGE: usize = 4096;

const TEXT: &[u8] =
    b"mapped-ram interop test: the quick brown fox jumps over the lazy dog 0123456789\n";

fn fill_text(buf: &mut [u8], rng: &mut Rng) {
    let start = rng.below(TEXT.len() as u64) as usize;
    for (i, b) in buf.iter_mut().enumerate() {
        *b = TEXT[(start + i) % TEXT.len()];
    }
}

/// A guest memory image of `size` bytes (a multiple of [`PAGE`]),
/// deterministic per `seed`. Contains, in seeded order: runs of zero pages
/// (some long, so whole bitmap words and 1 MiB chunks are empty), runs of
/// random pages (some long, crossing 1 MiB boundaries), text pages, and
/// pages that are non-zero in only a few bytes (first byte, last byte, one
/// byte in the middle, a short text line, half a page).
pub fn pattern(seed: u64, size: usize) -> Vec<u8> {
    assert_eq!(size % PAGE, 0);
    let mut mem = vec![0u8; size];
    let mut rng = Rng::new(seed);
    let pages = size / PAGE;
    let mut p = 0;
    while p < pages {
        let kind = rng.below(100);
        let run = match kind {
            0..=24 => 1 + rng.below(40) as usize,     // zero run
            25..=27 => 256 + rng.below(512) as usize, // long zero run (1-3 MiB)
            28..=47 => 1 + rng.below(24) as usize,    // random run
            48..=49 => 256 + rng.below(300) as usize, // long random run
            50..=59 => 1 + rng.below(6) as usize,     // text run
            _ => 1,                                   // one sub-page page
        };
        let run = run.min(pages - p);
        for q in p..p + run {
            let pg = &mut mem[q * PAGE..(q + 1) * PAGE];
            match kind {
                0..=27 => {}
                28..=49 => rng.fill(pg),
                50..=59 => fill_text(pg, &mut rng),
                _ => match rng.below(6) {
                    0 => pg[0] = 1 + rng.below(255) as u8,
                    1 => pg[PAGE - 1] = 1 + rng.below(255) as u8,
                    2 => pg[1 + rng.below(PAGE as u64 - 2) as usize] = 0x80,
                    3 => {
                        let off = rng.below((PAGE - 200) as u64) as usize;
                        fill_text(&mut pg[off..off + 100], &mut rng);
                    }
                    4 => rng.fill(&mut pg[..PAGE / 2]),
                    _ => rng.fill(&mut pg[PAGE / 2..]),
                },
            }
        }
        p += run;
    }
    mem
}

/// Fill `buf` (a multiple of [`PAGE`]) with runs of 1-40 pages, each run
/// random, zero or text with equal odds: about two thirds of the pages hold
/// data. Deterministic per `seed`.
pub fn mix(buf: &mut [u8], seed: u64) {
    let mut r = Rng::raw(seed | 1);
    let pages = buf.len() / PAGE;
    let mut p = 0;
    while p < pages {
        let run = (1 + r.next() % 40) as usize;
        let kind = r.next() % 3;
        for q in p..(p + run).min(pages) {
            let page = &mut buf[q * PAGE..(q + 1) * PAGE];
            match kind {
                0 => r.fill(page),
                1 => page.fill(0),
                _ => {
                    let text = format!("page {q} of a guest; the quick brown fox. ");
                    for (i, b) in page.iter_mut().enumerate() {
                        *b = text.as_bytes()[i % text.len()];
                    }
                }
            }
        }
        p += run;
    }
}

/// Whether a page is all zero.
pub fn is_zero(page: &[u8]) -> bool {
    page.iter().all(|&b| b == 0)
}

/// Count (zero pages, data pages).
pub fn census(mem: &[u8]) -> (usize, usize) {
    let z = mem.chunks(PAGE).filter(|p| is_zero(p)).count();
    (z, mem.len() / PAGE - z)
}

/// Panic with the first differing offset (and a count of differing pages)
/// when `got` != `want`.
#[track_caller]
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    if got.len() != want.len() {
        panic!("{what}: length {} != expected {}", got.len(), want.len());
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
    let bad_pages = got
        .chunks(PAGE)
        .zip(want.chunks(PAGE))
        .filter(|(a, b)| a != b)
        .count();
    panic!(
        "{what}: first difference at offset {first:#x} (got {:#04x}, expected {:#04x}); {bad_pages} page(s) differ",
        got[first], want[first]
    );
}
