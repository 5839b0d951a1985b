//! An independent, minimal reader of QEMU mapped-ram files, written from
//! the format description only. It lets the harness check QEMU's own
//! behaviour without the library, and gives the library tests a second
//! opinion. Trusts its input (files come from QEMU in these tests).

use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawBlock {
    pub idstr: String,
    pub used_length: u64,
    pub page_size: u64,
    pub header_version: u32,
    pub bitmap_offset: u64,
    pub pages_offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawImage {
    pub machine_type: String,
    pub capabilities: Vec<String>,
    pub ram_section_id: u32,
    pub blocks: Vec<RawBlock>,
    /// Absolute offset of the be64 EOS ending the RAM setup payload.
    pub eos_offset: u64,
}

struct Cur<'a> {
    d: &'a [u8],
    i: usize,
}

impl Cur<'_> {
    fn u8(&mut self) -> u8 {
        self.i += 1;
        self.d[self.i - 1]
    }
    fn be32(&mut self) -> u32 {
        self.i += 4;
        u32::from_be_bytes(self.d[self.i - 4..self.i].try_into().unwrap())
    }
    fn be64(&mut self) -> u64 {
        self.i += 8;
        u64::from_be_bytes(self.d[self.i - 8..self.i].try_into().unwrap())
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        self.i += n;
        &self.d[self.i - n..self.i]
    }
    fn str8(&mut self) -> String {
        let n = self.u8() as usize;
        String::from_utf8(self.bytes(n).to_vec()).unwrap()
    }
}

/// Parse the stream at `base` through the RAM setup payload's EOS.
pub fn parse(d: &[u8], base: u64) -> RawImage {
    let mut c = Cur {
        d,
        i: base as usize,
    };
    assert_eq!(c.bytes(4), b"QEVM", "no QEVM magic at {base}");
    assert_eq!(c.be32(), 3, "stream version");
    assert_eq!(c.u8(), 0x07, "configuration section");
    let n = c.be32() as usize;
    let machine_type = String::from_utf8(c.bytes(n).to_vec()).unwrap();
    let mut capabilities = Vec::new();
    while d[c.i] == 0x05 {
        c.i += 1;
        let name = c.str8();
        let _version = c.be32();
        match name.as_str() {
            "configuration/capabilities" => {
                for _ in 0..c.be32() {
                    capabilities.push(c.str8());
                }
            }
            "configuration/target-page-bits" => {
                c.be32();
            }
            other => panic!("unknown configuration subsection {other}"),
        }
    }
    assert_eq!(c.u8(), 0x01, "RAM START section at {:#x}", c.i - 1);
    let ram_section_id = c.be32();
    assert_eq!(c.str8(), "ram");
    assert_eq!(c.be32(), 0, "ram instance");
    assert_eq!(c.be32(), 4, "ram version");
    let total = c.be64();
    assert_eq!(total & 0xfff, 4, "MEM_SIZE flag");
    let total = total & !0xfff;
    let ignore_shared = capabilities.iter().any(|s| s == "x-ignore-shared");
    let mut sum = 0;
    let mut blocks = Vec::new();
    while sum < total {
        let idstr = c.str8();
        let used_length = c.be64();
        if ignore_shared {
            c.be64();
        }
        let header_version = c.be32();
        let page_size = c.be64();
        let bitmap_offset = c.be64();
        let pages_offset = c.be64();
        blocks.push(RawBlock {
            idstr,
            used_length,
            page_size,
            header_version,
            bitmap_offset,
            pages_offset,
        });
        sum += used_length;
        c.i = (pages_offset + used_length) as usize;
    }
    assert_eq!(sum, total, "block lengths add up to the total");
    let eos_offset = c.i as u64;
    assert_eq!(c.be64(), 0x10, "EOS at {eos_offset:#x}");
    RawImage {
        machine_type,
        capabilities,
        ram_section_id,
        blocks,
        eos_offset,
    }
}

impl RawBlock {
    pub fn pages(&self) -> u64 {
        self.used_length / self.page_size
    }
    pub fn bitmap_len(&self) -> u64 {
        self.pages().div_ceil(64) * 8
    }
    /// Page indexes whose bit is set.
    pub fn present(&self, d: &[u8]) -> BTreeSet<u64> {
        let bm = &d[self.bitmap_offset as usize..(self.bitmap_offset + self.bitmap_len()) as usize];
        (0..self.pages())
            .filter(|&i| bm[(i / 8) as usize] & (1 << (i % 8)) != 0)
            .collect()
    }
    /// The block's memory: present pages from the file, the rest zero.
    pub fn contents(&self, d: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; self.used_length as usize];
        let ps = self.page_size as usize;
        for i in self.present(d) {
            let i = i as usize;
            let src = self.pages_offset as usize + i * ps;
            out[i * ps..(i + 1) * ps].copy_from_slice(&d[src..src + ps]);
        }
        out
    }
}
