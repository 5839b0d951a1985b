//! Save the guest memory of a Rust VMM to a mapped-ram image and restore it.
//!
//! The guest memory is rust-vmm's `vm-memory` `GuestMemoryMmap`, as
//! Firecracker, Cloud Hypervisor and crosvm hold it: here two regions, one
//! below and one above a 4 GiB PCI hole. Each region becomes one ramblock;
//! its mapping is handed to the library as a `GuestSlice` (raw pointer and
//! length: the guest may write it, so it is never a Rust slice).
//! `save_ramblock` reads straight from the mapping (zero pages are skipped
//! and stay holes), `read_ramblock` writes straight into a fresh guest's
//! mapping, with any number of threads on either side.
//!
//!     cargo run --release --example vm_memory_roundtrip [-- IMAGE]
//!
//! Prints what was saved and restored and exits non-zero if the restored
//! guest differs from the saved one.

use mappedram::engine::{read_ramblock, save_ramblock};
use mappedram::{BlockSpec, GuestSlice, GuestSliceMut, Image, ImageFlags};
use std::path::{Path, PathBuf};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress,
};

const PAGE: u64 = 4096;
/// (guest address, size): 48 MiB low memory, 16 MiB above 4 GiB.
const LAYOUT: [(u64, usize); 2] = [(0, 48 << 20), (4 << 30, 16 << 20)];

/// A new guest with the layout above, all zero (fresh anonymous mappings).
fn new_guest() -> GuestMemoryMmap {
    let ranges: Vec<_> = LAYOUT.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    GuestMemoryMmap::from_ranges(&ranges).expect("mapping guest memory")
}

/// The ramblock name of a region, after its guest address.
fn idstr(start: GuestAddress) -> String {
    format!("ram@{:#x}", start.0)
}

/// Fill two pages in three of every region with data; the third stays zero.
fn fill(mem: &GuestMemoryMmap) {
    for region in mem.iter() {
        let mut page = vec![0u8; PAGE as usize];
        for (i, off) in (0..region.len()).step_by(PAGE as usize).enumerate() {
            if i % 3 == 2 {
                continue;
            }
            let addr = region.start_addr().0 + off;
            page.iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (addr >> 12) as u8 ^ j as u8);
            page[0] = 1; // never an all-zero page
            mem.write_slice(&page, GuestAddress(addr))
                .expect("guest write");
        }
    }
}

/// Where a region's memory is mapped in this process, and its length.
fn mapping(region: &GuestRegionMmap) -> (*mut u8, usize) {
    let host = region
        .get_host_address(MemoryRegionAddress(0))
        .expect("an mmap region has a host address");
    let len = usize::try_from(region.len()).expect("a mapped region fits in usize");
    (host, len)
}

fn save(mem: &GuestMemoryMmap, path: &Path) -> mappedram::Result<()> {
    let blocks: Vec<BlockSpec> = mem
        .iter()
        .map(|r| BlockSpec {
            idstr: idstr(r.start_addr()),
            used_length: r.len(),
            page_size: PAGE,
        })
        .collect();
    let img = Image::create(path, "pc-i440fx-10.0", &blocks, ImageFlags::DIRECT)?;
    for (block, region) in mem.iter().enumerate() {
        let (host, len) = mapping(region);
        // SAFETY: `host` is the start of the region's mapping, `len` bytes
        // long, and `mem` (borrowed for this whole function) keeps it mapped.
        // The guest may write it meanwhile: the library reads it only
        // through raw pointers.
        let guest = unsafe { GuestSlice::new(host, len)? };
        let st = save_ramblock(&img, block, guest, None, 4)?;
        println!(
            "saved    {:<16} {} pages with data, {} zero pages left as holes",
            idstr(region.start_addr()),
            st.pages_data,
            st.pages_zero
        );
    }
    img.finish()?; // end of stream + completion record, durable
    img.close()
}

fn restore(mem: &GuestMemoryMmap, path: &Path) -> mappedram::Result<()> {
    let img = Image::open(path, ImageFlags::DIRECT)?;
    for region in mem.iter() {
        let block = img.find_block(&idstr(region.start_addr()))?;
        let info = img.block_info(block)?;
        assert_eq!(
            info.used_length,
            region.len(),
            "image and guest layouts differ"
        );
        let (host, len) = mapping(region);
        // SAFETY: as in `save`, for writes: nothing else touches the fresh
        // guest's memory while it is restored.
        let guest = unsafe { GuestSliceMut::new(host, len)? };
        // The fresh guest's memory is zero: absent pages need no zeroing.
        let st = read_ramblock(&img, block, guest, false, 3)?;
        println!(
            "restored {:<16} {} pages read, {} absent (zero)",
            info.idstr, st.pages_data, st.pages_zero
        );
    }
    img.close()
}

/// Compare two guests region by region through the `Bytes` interface.
fn same(a: &GuestMemoryMmap, b: &GuestMemoryMmap) -> bool {
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    a.iter().all(|region| {
        (0..region.len()).step_by(x.len()).all(|off| {
            let addr = GuestAddress(region.start_addr().0 + off);
            a.read_slice(&mut x, addr).expect("guest read");
            b.read_slice(&mut y, addr).expect("guest read");
            x == y
        })
    })
}

fn main() -> std::process::ExitCode {
    let path = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("vm-memory-roundtrip-{}.img", std::process::id()))
        });
    let guest = new_guest();
    fill(&guest);
    let restored = new_guest();
    let result = save(&guest, &path).and_then(|()| restore(&restored, &path));
    let _ = std::fs::remove_file(&path);
    if let Err(e) = result {
        eprintln!("vm_memory_roundtrip: {e}");
        return std::process::ExitCode::FAILURE;
    }
    if !same(&guest, &restored) {
        eprintln!("vm_memory_roundtrip: the restored guest differs from the saved one");
        return std::process::ExitCode::FAILURE;
    }
    println!("vm_memory_roundtrip: restored guest memory equals the saved guest memory");
    std::process::ExitCode::SUCCESS
}
