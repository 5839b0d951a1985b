//! Guest memory the image tests save: the standard ramblock set, one
//! distinct deterministic content per (version, block, page), and a
//! comparison of a whole image with the memory it should hold.

use super::mem::Aligned;
use super::rng::Rng;
use mappedram::engine::read_ramblock_to_vec;
use mappedram::{BlockSpec, Image};

/// The target page size of every test image.
pub const PS: u64 = 4096;

/// The ramblocks most image tests use: a main block plus two
/// small ROM-like ones (one of them a single page).
pub fn specs(mem: u64) -> Vec<BlockSpec> {
    vec![
        BlockSpec {
            idstr: "mem".into(),
            used_length: mem,
            page_size: PS,
        },
        BlockSpec {
            idstr: "pc.bios".into(),
            used_length: 0x40000,
            page_size: PS,
        },
        BlockSpec {
            idstr: "/rom@etc/acpi/rsdp".into(),
            used_length: PS,
            page_size: PS,
        },
    ]
}

/// The content of page `page` of block `block` in `version` of the guest
/// memory: every page distinct (its first 24 bytes say what it is), about
/// one in `zero_every` pages all zero.
pub fn page_content(version: u64, block: usize, page: u64, zero_every: u64, out: &mut [u8]) {
    let h = (version.wrapping_mul(0x1000_0000_01b3) ^ (block as u64) << 40 ^ page)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    if zero_every > 0 && (h >> 32) % zero_every == 0 {
        out.fill(0);
        return;
    }
    let mut r = Rng::new(h);
    r.fill(out);
    out[..8].copy_from_slice(&version.to_le_bytes());
    out[8..16].copy_from_slice(&(block as u64).to_le_bytes());
    out[16..24].copy_from_slice(&page.to_le_bytes());
}

/// Whole-block memory for `version`.
pub fn block_memory(version: u64, block: usize, len: u64, zero_every: u64) -> Aligned {
    let mut a = Aligned::new(len as usize);
    for (p, page) in a.as_mut_slice().chunks_mut(PS as usize).enumerate() {
        page_content(version, block, p as u64, zero_every, page);
    }
    a
}

/// Read every block of `img` and compare with `expected[block]`; on a
/// mismatch returns which block and page differ.
pub fn compare_image(img: &Image, expected: &[&[u8]]) -> Result<(), String> {
    if img.block_count() != expected.len() {
        return Err(format!(
            "image has {} blocks, expected {}",
            img.block_count(),
            expected.len()
        ));
    }
    for (b, want) in expected.iter().enumerate() {
        let got = read_ramblock_to_vec(img, b, 2).map_err(|e| format!("reading block {b}: {e}"))?;
        if got.len() != want.len() {
            return Err(format!(
                "block {b}: {} bytes, expected {}",
                got.len(),
                want.len()
            ));
        }
        if let Some(p) = (0..got.len() / PS as usize).find(|&p| {
            let r = p * PS as usize..(p + 1) * PS as usize;
            got[r.clone()] != want[r]
        }) {
            return Err(format!("block {b}: page {p} differs"));
        }
        let nonzero = want
            .chunks(PS as usize)
            .filter(|p| p.iter().any(|&x| x != 0))
            .count() as u64;
        let present = img.block_info(b).unwrap().pages_present;
        if present != nonzero {
            return Err(format!(
                "block {b}: bitmap has {present} pages present, the memory has {nonzero} non-zero pages"
            ));
        }
    }
    Ok(())
}
