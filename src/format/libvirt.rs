//! libvirt's save-image container header (92 bytes before the QEMU stream).

use super::cursor::Cursor;
use super::ReadAt;
use crate::error::{Error, Result};

/// `LibvirtQemudSave`: a finished save.
pub const MAGIC_COMPLETE: &[u8; 16] = b"LibvirtQemudSave";
/// `LibvirtQemudPart`: a save that never finished.
pub const MAGIC_PARTIAL: &[u8; 16] = b"LibvirtQemudPart";
/// Header size: magic + 5 host-endian u32 + 14 unused u32.
pub const HEADER_LEN: u64 = 92;
/// `format` value for mapped-ram ("sparse").
pub const FORMAT_SPARSE: u32 = 6;
/// The newest header version libvirt writes (`QEMU_SAVE_VERSION`).
pub const VERSION: u32 = 2;

/// The decoded header: libvirt's five u32 fields and which magic it had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibvirtHeader {
    /// [`MAGIC_COMPLETE`] (true) or [`MAGIC_PARTIAL`] (false).
    pub complete: bool,
    /// Header version, 1 or 2 once parsed.
    pub version: u32,
    /// Bytes of libvirt data (domain XML, then the cookie) between the
    /// header and the QEMU stream.
    pub data_len: u32,
    /// Nonzero when the domain was running at save time.
    pub was_running: u32,
    /// How the QEMU stream is stored (libvirt's save format number;
    /// [`FORMAT_SPARSE`] for mapped-ram).
    pub format: u32,
    /// Where the cookie starts, in bytes from the start of the libvirt data
    /// (not of the file); 0 when there is none.
    pub cookie_offset: u32,
}

impl LibvirtHeader {
    /// Where the QEMU stream starts: 92 + data_len.
    pub fn stream_offset(&self) -> u64 {
        HEADER_LEN + self.data_len as u64
    }
}

/// `Ok(None)` when the input does not start with either magic.
///
/// The u32 fields are host-endian (libvirt writes its struct as is); like
/// libvirt, a header whose version only makes sense byte-swapped is read
/// swapped. Versions other than 1 and 2 are `Unsupported`; a header cut
/// short, or a `data_len` that puts the stream past the end of the input,
/// is `Corrupt`. `format` is reported, not judged: the caller decides which
/// formats it takes ([`FORMAT_SPARSE`] is libvirt's mapped-ram format).
pub fn parse(src: &dyn ReadAt) -> Result<Option<LibvirtHeader>> {
    let mut c = Cursor::new(src, 0)?;
    if c.size() < MAGIC_COMPLETE.len() as u64 {
        return Ok(None);
    }
    let magic: [u8; 16] = c.array("the libvirt magic")?;
    let complete = if &magic == MAGIC_COMPLETE {
        true
    } else if &magic == MAGIC_PARTIAL {
        false
    } else {
        return Ok(None);
    };
    let mut f = [0u32; 5];
    for (i, v) in f.iter_mut().enumerate() {
        *v = u32::from_ne_bytes(c.array(&format!("libvirt header field {i}"))?);
    }
    c.skip(14 * 4, "the libvirt header's unused words")?;
    if f[0] > VERSION && f[0].swap_bytes() <= VERSION {
        for v in f.iter_mut() {
            *v = v.swap_bytes();
        }
    }
    let h = LibvirtHeader {
        complete,
        version: f[0],
        data_len: f[1],
        was_running: f[2],
        format: f[3],
        cookie_offset: f[4],
    };
    if h.version == 0 || h.version > VERSION {
        return Err(Error::Unsupported(format!(
            "libvirt save image header version {} is not supported (expected 1..={VERSION})",
            h.version
        )));
    }
    if h.stream_offset() > c.size() {
        return Err(Error::Corrupt(format!(
            "libvirt header data_len {} puts the QEMU stream at offset {}, past the end of the file ({} bytes)",
            h.data_len,
            h.stream_offset(),
            c.size()
        )));
    }
    if h.cookie_offset != 0 && h.cookie_offset > h.data_len {
        return Err(Error::Corrupt(format!(
            "libvirt header cookie offset {} lies outside its data ({} bytes)",
            h.cookie_offset, h.data_len
        )));
    }
    Ok(Some(h))
}

/// Encode a header (for tests and for callers building containers).
pub fn encode(h: &LibvirtHeader) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN as usize);
    v.extend_from_slice(if h.complete {
        MAGIC_COMPLETE
    } else {
        MAGIC_PARTIAL
    });
    for x in [
        h.version,
        h.data_len,
        h.was_running,
        h.format,
        h.cookie_offset,
    ] {
        v.extend_from_slice(&x.to_ne_bytes());
    }
    v.resize(HEADER_LEN as usize, 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(complete: bool) -> LibvirtHeader {
        LibvirtHeader {
            complete,
            version: 2,
            data_len: 4004,
            was_running: 1,
            format: FORMAT_SPARSE,
            cookie_offset: 3000,
        }
    }

    #[test]
    fn round_trip() {
        for complete in [true, false] {
            let h = hdr(complete);
            let mut b = encode(&h);
            assert_eq!(b.len() as u64, HEADER_LEN);
            assert_eq!(
                &b[..16],
                if complete {
                    MAGIC_COMPLETE
                } else {
                    MAGIC_PARTIAL
                }
            );
            // Little-endian on x86.
            #[cfg(target_endian = "little")]
            assert_eq!(&b[16..24], &[2, 0, 0, 0, 0xa4, 0x0f, 0, 0]);
            b.resize(4096, 0);
            assert_eq!(parse(&b).unwrap(), Some(h.clone()));
            assert_eq!(h.stream_offset(), 4096);
        }
    }

    #[test]
    fn swapped_and_bad() {
        let mut b = encode(&hdr(true));
        b.resize(4096, 0);
        let mut sw = b.clone();
        for i in 0..5 {
            let o = 16 + 4 * i;
            sw[o..o + 4].reverse();
        }
        assert_eq!(parse(&sw).unwrap(), Some(hdr(true)));
        assert_eq!(parse(&b"QEVM\0\0\0\x03".to_vec()).unwrap(), None);
        assert_eq!(parse(&Vec::new()).unwrap(), None);
        let e = parse(&b[..50].to_vec()).unwrap_err();
        assert!(
            matches!(e, Error::Corrupt(ref m) if m.contains("truncated at offset")),
            "{e}"
        );
        let e = parse(&b[..4095].to_vec()).unwrap_err();
        assert!(
            matches!(e, Error::Corrupt(ref m) if m.contains("data_len 4004")),
            "{e}"
        );
        let mut v9 = b.clone();
        v9[16..20].copy_from_slice(&9u32.to_ne_bytes());
        let e = parse(&v9).unwrap_err();
        assert!(
            matches!(e, Error::Unsupported(ref m) if m.contains("version 9")),
            "{e}"
        );
    }
}
