//! The QEVM stream pieces: header, configuration section (with its
//! capabilities and target-page-bits subsections), section headers and
//! footers, and the stream's end (EOF + VMDESCRIPTION JSON).

use super::ReadAt;
use crate::error::Result;

/// The configuration section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Configuration {
    /// Resolved machine type name, e.g. `pc-i440fx-10.0`.
    pub machine_type: String,
    /// Recorded capabilities (`x-ignore-shared`, `mapped-ram`), in file order.
    pub capabilities: Vec<String>,
    /// `configuration/target-page-bits`, when present.
    pub target_page_bits: Option<u32>,
}

/// Whether a stream visibly ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// EOF `0x00`, `0x06`, be32 length, JSON whose last byte is the file's
    /// last byte. `vmdesc_offset` is the absolute offset of the `0x00`;
    /// `ours` is true when the JSON carries this library's completion record.
    Complete {
        vmdesc_offset: u64,
        json_len: u32,
        ours: bool,
    },
    /// The same shape with [`UPDATING_MARK`] instead of `0x06`: an in-place
    /// update began and was not finished.
    Updating {
        vmdesc_offset: u64,
        json_len: u32,
        ours: bool,
    },
    /// No visible end; the string says what was found.
    Incomplete(String),
}

/// Replaces the `0x06` VMDESCRIPTION byte while an in-place update is open.
pub const UPDATING_MARK: u8 = 0xee;

/// Encode stream header + configuration section.
pub fn encode_header(config: &Configuration) -> Vec<u8> {
    let _ = config;
    todo!()
}

/// Encode a START/FULL section header.
pub fn encode_section_start(
    kind: u8,
    section_id: u32,
    idstr: &str,
    instance: u32,
    version: u32,
) -> Vec<u8> {
    let _ = (kind, section_id, idstr, instance, version);
    todo!()
}

/// Encode a section footer (`0x7e`, be32 id).
pub fn encode_footer(section_id: u32) -> Vec<u8> {
    let _ = section_id;
    todo!()
}

/// The bytes after the RAM setup payload's EOS, ending the stream the way
/// QEMU's grammar allows: setup footer, RAM END section (EOS + footer), EOF,
/// VMDESCRIPTION with `json`.
pub fn encode_tail(ram_section_id: u32, json: &str) -> Vec<u8> {
    let _ = (ram_section_id, json);
    todo!()
}

/// The JSON completion record this library writes (`ours` = true on parse).
pub fn completion_json(page_size: u64, machine_type: &str, nblocks: usize) -> String {
    let _ = (page_size, machine_type, nblocks);
    todo!()
}

/// Parse the stream header and configuration at `base`; returns the
/// configuration and the absolute offset just past it.
pub fn parse_header(src: &dyn ReadAt, base: u64) -> Result<(Configuration, u64)> {
    let _ = (src, base);
    todo!()
}

/// Examine the bytes after `after` (the end of the RAM setup section) for a
/// visible end of stream.
pub fn completion(src: &dyn ReadAt, after: u64) -> Result<Completion> {
    let _ = (src, after);
    todo!()
}
