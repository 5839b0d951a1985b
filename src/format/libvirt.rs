//! libvirt's save-image container header (92 bytes before the QEMU stream).

use super::ReadAt;
use crate::error::Result;

/// `LibvirtQemudSave`: a finished save.
pub const MAGIC_COMPLETE: &[u8; 16] = b"LibvirtQemudSave";
/// `LibvirtQemudPart`: a save that never finished.
pub const MAGIC_PARTIAL: &[u8; 16] = b"LibvirtQemudPart";
/// Header size: magic + 5 host-endian u32 + 14 unused u32.
pub const HEADER_LEN: u64 = 92;
/// `format` value for mapped-ram ("sparse").
pub const FORMAT_SPARSE: u32 = 6;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibvirtHeader {
    pub complete: bool,
    pub version: u32,
    pub data_len: u32,
    pub was_running: u32,
    pub format: u32,
    pub cookie_offset: u32,
}

impl LibvirtHeader {
    /// Where the QEMU stream starts: 92 + data_len.
    pub fn stream_offset(&self) -> u64 {
        HEADER_LEN + self.data_len as u64
    }
}

/// `Ok(None)` when the input does not start with either magic.
pub fn parse(src: &dyn ReadAt) -> Result<Option<LibvirtHeader>> {
    let _ = src;
    todo!()
}

/// Encode a header (for tests and for callers building containers).
pub fn encode(h: &LibvirtHeader) -> Vec<u8> {
    let _ = h;
    todo!()
}
