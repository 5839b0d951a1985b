//! `mrtool info` and `mrtool extract`.

use super::{open_lenient, Fail};
use mappedram::compress::Codec;
use mappedram::Image;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

type Blocks = Vec<(mappedram::BlockInfo, mappedram::compress::BlockStats)>;

pub fn run(path: &str, json: bool) -> Result<(), Fail> {
    let img = open_lenient(path)?;
    let size = img.file_size()?;
    let alloc = img.allocated_bytes()?;
    let mut blocks = Vec::new();
    for i in 0..img.block_count() {
        blocks.push((img.block_info(i)?, img.block_stats(i)?));
    }
    // Named blobs (a VMM's own state): name and length; unreadable blobs
    // (an interrupted update) are reported as such.
    let blobs: Result<Vec<(String, u64)>, String> = img
        .blob_names()
        .map_err(|e| e.to_string())
        .and_then(|names| {
            names
                .into_iter()
                .map(|n| img.blob_len(&n).map(|l| (n, l)).map_err(|e| e.to_string()))
                .collect()
        });
    if json {
        print_json(path, &img, &blocks, &blobs, size, alloc);
        return Ok(());
    }
    print_header(path, &img, &blocks);
    print_storage(&blocks);
    match &blobs {
        Ok(b) if b.is_empty() => println!("blobs:        none"),
        Ok(b) => {
            println!("blobs:        {}", b.len());
            for (n, l) in b {
                println!("  {n:<40} {l:>12} bytes");
            }
        }
        Err(e) => println!("blobs:        UNREADABLE: {e}"),
    }
    println!(
        "file size:    {size} bytes (logical), {alloc} bytes allocated ({:.1}%)",
        if size > 0 {
            100.0 * alloc as f64 / size as f64
        } else {
            0.0
        }
    );
    Ok(())
}

fn print_json(
    path: &str,
    img: &Image,
    blocks: &Blocks,
    blobs: &Result<Vec<(String, u64)>, String>,
    size: u64,
    alloc: u64,
) {
    let bj: Vec<String> = blocks
        .iter()
        .map(|(b, s)| {
            format!(
                "{{\"idstr\":{},\"used_length\":{},\"page_size\":{},\"bitmap_offset\":{},\"pages_offset\":{},\"pages\":{},\"pages_present\":{},\"codec\":{},\"chunk_size\":{},\"chunks\":{},\"checksum\":{},\"stored_bytes\":{},\"allocated_bytes\":{}}}",
                js(&b.idstr), b.used_length, b.page_size, b.bitmap_offset, b.pages_offset,
                b.used_length / b.page_size, b.pages_present, js(s.codec.name()),
                s.chunk_bytes, s.chunks, js(s.checksum.name()), s.stored_bytes, s.allocated_bytes
            )
        })
        .collect();
    let caps: Vec<String> = img.capabilities().iter().map(|c| js(c)).collect();
    let blobs = match blobs {
        Ok(b) => {
            let v: Vec<String> = b
                .iter()
                .map(|(n, l)| format!("{{\"name\":{},\"length\":{l}}}", js(n)))
                .collect();
            format!("[{}]", v.join(","))
        }
        Err(e) => format!("{{\"unreadable\":{}}}", js(e)),
    };
    println!(
        "{{\"image\":{},\"machine_type\":{},\"capabilities\":[{}],\"stream_offset\":{},\"libvirt\":{},\"complete\":{},\"file_size\":{},\"allocated_bytes\":{},\"ramblocks\":[{}],\"blobs\":{}}}",
        js(path),
        js(img.machine_type()),
        caps.join(","),
        img.stream_offset(),
        img.libvirt_header().is_some(),
        img.is_complete(),
        size,
        alloc,
        bj.join(","),
        blobs
    );
}

fn print_header(path: &str, img: &Image, blocks: &Blocks) {
    println!("image:        {path}");
    println!("machine type: {}", img.machine_type());
    println!("capabilities: {}", img.capabilities().join(" "));
    println!(
        "stream at:    {}{}",
        img.stream_offset(),
        if img.libvirt_header().is_some() {
            " (inside a libvirt save image)"
        } else {
            ""
        }
    );
    println!(
        "complete:     {}",
        if img.is_complete() {
            "yes"
        } else {
            "NO (unfinished or interrupted)"
        }
    );
    println!("ramblocks:    {}", blocks.len());
    println!(
        "  {:<28} {:>14} {:>6} {:>12} {:>12} {:>10} {:>10}",
        "idstr", "used_length", "page", "bitmap_off", "pages_off", "pages", "present"
    );
    for (b, _) in blocks {
        println!(
            "  {:<28} {:>#14x} {:>6} {:>#12x} {:>#12x} {:>10} {:>10}",
            b.idstr,
            b.used_length,
            b.page_size,
            b.bitmap_offset,
            b.pages_offset,
            b.used_length / b.page_size,
            b.pages_present
        );
    }
}

fn print_storage(blocks: &Blocks) {
    if blocks.iter().any(|(_, s)| s.chunks > 0) {
        println!("storage:");
        println!(
            "  {:<28} {:>6} {:>8} {:>8} {:>9} {:>14} {:>14}",
            "idstr", "codec", "chunk", "chunks", "checksum", "stored", "allocated"
        );
        for (b, s) in blocks {
            println!(
                "  {:<28} {:>6} {:>8} {:>8} {:>9} {:>14} {:>14}",
                b.idstr,
                s.codec.name(),
                s.chunk_bytes,
                s.chunks,
                s.checksum.name(),
                s.stored_bytes,
                s.allocated_bytes
            );
        }
    } else {
        println!("storage:      plain (codec none, no checksums)");
    }
    let present: u64 = blocks
        .iter()
        .map(|(b, _)| b.pages_present * b.page_size)
        .sum();
    let stored: u64 = blocks.iter().map(|(_, s)| s.stored_bytes).sum();
    if blocks.iter().any(|(_, s)| s.codec == Codec::Zstd) && present > 0 {
        println!(
            "compression:  {present} bytes of present pages stored in {stored} ({:.1}%)",
            100.0 * stored as f64 / present as f64
        );
    }
}

/// Ramblock `idstr` as raw memory into `out` (0600, absent pages holes).
pub fn extract(path: &str, idstr: &str, out: &str) -> Result<(), Fail> {
    let img: Image = open_lenient(path)?;
    let b = img.find_block(idstr)?;
    let info = img.block_info(b)?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| Fail(1, format!("{out}: {e}")))?;
    f.set_len(info.used_length)
        .map_err(|e| Fail(1, format!("{out}: {e}")))?;
    let unit = (1u64 << 20).min(info.used_length);
    let mut buf = vec![0u8; unit as usize];
    let mut off = 0;
    while off < info.used_length {
        let n = unit.min(info.used_length - off) as usize;
        img.read_range(b, off, &mut buf[..n])?;
        if buf[..n].iter().any(|&x| x != 0) {
            f.write_all_at(&buf[..n], off)
                .map_err(|e| Fail(1, format!("{out}: writing at offset {off}: {e}")))?;
        }
        off += n as u64;
    }
    f.sync_all().map_err(|e| Fail(1, format!("{out}: {e}")))?;
    println!(
        "{}: {} bytes ({} present pages) -> {out}",
        info.idstr, info.used_length, info.pages_present
    );
    Ok(())
}
