//! The smallest Rust use of the crate: save a guest's RAM, restore it,
//! compare. README.md quotes this file; scripts/test-all.sh runs it.
//!
//!     cargo run --release --example save_restore

use mappedram::engine::{read_ramblock_to_vec, save_ramblock};
use mappedram::{BlockSpec, GuestSlice, Image, ImageFlags};

fn main() -> mappedram::Result<()> {
    // 16 MiB of guest RAM: one page in three holds data, the rest is zero.
    let mut ram = vec![0u8; 16 << 20];
    for (i, page) in ram.chunks_mut(4096).enumerate().filter(|(i, _)| i % 3 == 0) {
        page.fill(i as u8 | 1);
    }
    let path = std::env::temp_dir().join(format!("save-restore-{}.img", std::process::id()));

    let blocks = [BlockSpec {
        idstr: "mem".into(),
        used_length: ram.len() as u64,
        page_size: 4096,
    }];
    let img = Image::create(&path, "pc-i440fx-10.0", &blocks, ImageFlags::DIRECT)?;
    // All pages (no dirty bitmap), 2 threads; zero pages stay holes.
    let saved = save_ramblock(&img, 0, GuestSlice::from_slice(&ram), None, 2)?;
    img.finish()?; // end of stream + completion record, durable
    img.close()?;

    let img = Image::open(&path, ImageFlags::DIRECT)?;
    let back = read_ramblock_to_vec(&img, img.find_block("mem")?, 2)?;
    img.close()?;
    std::fs::remove_file(&path).ok();

    println!(
        "{} pages saved, {} zero pages skipped",
        saved.pages_data, saved.pages_zero
    );
    assert!(back == ram, "restored RAM differs");
    println!("restored RAM equals saved RAM");
    Ok(())
}
