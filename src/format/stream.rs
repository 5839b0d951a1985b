//! The QEVM stream pieces: header, configuration section (with its
//! capabilities and target-page-bits subsections), section headers and
//! footers, and the stream's end (EOF + VMDESCRIPTION JSON).

use super::cursor::Cursor;
use super::{
    section, ReadAt, CAP_CHUNKS, CAP_MAPPED_RAM, CAP_X_IGNORE_SHARED, DEFAULT_PAGE_SIZE,
    MAX_MACHINE_TYPE_LEN, MAX_TARGET_PAGE_BITS, MIN_TARGET_PAGE_BITS, QEVM_MAGIC, QEVM_VERSION,
};
use crate::error::{Error, Result};

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

impl Configuration {
    /// The target page size: `1 << target_page_bits`, or 4096 without that
    /// subsection.
    pub fn page_size(&self) -> u64 {
        match self.target_page_bits {
            Some(bits) if bits < 64 => 1u64 << bits,
            Some(_) => 0,
            None => DEFAULT_PAGE_SIZE,
        }
    }

    /// Whether a capability is recorded.
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| c == name)
    }
}

/// Configuration subsection holding the be32 target-page-bits.
pub const SUBSECTION_TARGET_PAGE_BITS: &str = "configuration/target-page-bits";
/// Configuration subsection listing the migration capabilities.
pub const SUBSECTION_CAPABILITIES: &str = "configuration/capabilities";
/// Configuration subsection holding the 16-byte VM uuid.
pub const SUBSECTION_UUID: &str = "configuration/uuid";
/// The uuid subsection's payload: 16 bytes.
const UUID_LEN: u64 = 16;
/// Most capabilities a configuration may record (QEMU records at most 2).
const MAX_CAPABILITIES: u32 = 64;
/// Key of this library's completion record in the VMDESCRIPTION JSON.
pub const COMPLETION_KEY: &str = "libmappedram";
/// Version of this library's completion record.
pub const COMPLETION_VERSION: u32 = 1;
/// `completion` looks for the VMDESCRIPTION record at most this far back.
pub const MAX_VMDESC_SCAN: u64 = 64 << 20;

/// Whether a stream visibly ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// EOF `0x00`, `0x06`, be32 length, JSON whose last byte is the file's
    /// last byte.
    Complete {
        /// Absolute file offset of the EOF byte `0x00`.
        vmdesc_offset: u64,
        /// Bytes of JSON (the be32 length field).
        json_len: u32,
        /// The JSON carries this library's completion record.
        ours: bool,
    },
    /// The same shape with [`UPDATING_MARK`] instead of `0x06`: an in-place
    /// update began and was not finished.
    Updating {
        /// Absolute file offset of the EOF byte `0x00`.
        vmdesc_offset: u64,
        /// Bytes of JSON (the be32 length field).
        json_len: u32,
        /// The JSON carries this library's completion record.
        ours: bool,
    },
    /// No visible end; the string says what was found.
    Incomplete(String),
}

/// Replaces the `0x06` VMDESCRIPTION byte while an in-place update is open.
pub const UPDATING_MARK: u8 = 0xee;

/// Encode stream header + configuration section.
///
/// Byte for byte what QEMU's `qemu_savevm_state_header` writes: magic,
/// version, `0x07`, be32 length + machine name, then the subsections in
/// QEMU's order (target-page-bits only when set, capabilities only when
/// non-empty). Nothing terminates the configuration; the next byte is the
/// first section.
pub fn encode_header(config: &Configuration) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + config.machine_type.len());
    v.extend_from_slice(&QEVM_MAGIC.to_be_bytes());
    v.extend_from_slice(&QEVM_VERSION.to_be_bytes());
    v.push(section::CONFIGURATION);
    v.extend_from_slice(&(config.machine_type.len() as u32).to_be_bytes());
    v.extend_from_slice(config.machine_type.as_bytes());
    if let Some(bits) = config.target_page_bits {
        push_subsection_header(&mut v, SUBSECTION_TARGET_PAGE_BITS, 1);
        v.extend_from_slice(&bits.to_be_bytes());
    }
    if !config.capabilities.is_empty() {
        push_subsection_header(&mut v, SUBSECTION_CAPABILITIES, 1);
        v.extend_from_slice(&(config.capabilities.len() as u32).to_be_bytes());
        for cap in &config.capabilities {
            v.push(cap.len() as u8);
            v.extend_from_slice(cap.as_bytes());
        }
    }
    v
}

fn push_subsection_header(v: &mut Vec<u8>, name: &str, version: u32) {
    v.push(section::SUBSECTION);
    v.push(name.len() as u8);
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&version.to_be_bytes());
}

/// Encode a START/FULL section header.
pub fn encode_section_start(
    kind: u8,
    section_id: u32,
    idstr: &str,
    instance: u32,
    version: u32,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(14 + idstr.len());
    v.push(kind);
    v.extend_from_slice(&section_id.to_be_bytes());
    v.push(idstr.len() as u8);
    v.extend_from_slice(idstr.as_bytes());
    v.extend_from_slice(&instance.to_be_bytes());
    v.extend_from_slice(&version.to_be_bytes());
    v
}

/// Encode a section footer (`0x7e`, be32 id).
pub fn encode_footer(section_id: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(5);
    v.push(section::FOOTER);
    v.extend_from_slice(&section_id.to_be_bytes());
    v
}

/// The bytes after the RAM setup payload's EOS, ending the stream the way
/// QEMU's grammar allows: setup footer, RAM END section (EOS + footer), EOF,
/// VMDESCRIPTION with `json`.
///
/// Write it at [`StreamLayout::tail_offset`](super::ramblock::StreamLayout::tail_offset)
/// (right after the EOS): it starts with the setup footer, which
/// [`encode_pieces`](super::ramblock::encode_pieces) also writes, so both
/// write the same 5 bytes there.
pub fn encode_tail(ram_section_id: u32, json: &str) -> Vec<u8> {
    encode_tail_with_blobs(ram_section_id, &[], json)
}

/// Bytes of the setup footer plus the RAM `END` section at the start of the
/// tail: a blob section, when there is one, starts this far into the tail.
pub const TAIL_BLOBS_AT: u64 =
    super::SECTION_FOOTER_LEN + 1 + 4 + super::RAM_EOS_LEN + super::SECTION_FOOTER_LEN;

/// [`encode_tail`] with an encoded blob section
/// ([`blobs::encode_section`](super::blobs::encode_section), empty for
/// none) between the RAM `END` section and the `EOF` byte.
pub fn encode_tail_with_blobs(ram_section_id: u32, blobs: &[u8], json: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + blobs.len() + json.len());
    v.extend_from_slice(&encode_footer(ram_section_id));
    v.push(section::END);
    v.extend_from_slice(&ram_section_id.to_be_bytes());
    v.extend_from_slice(&super::RAM_SAVE_FLAG_EOS.to_be_bytes());
    v.extend_from_slice(&encode_footer(ram_section_id));
    debug_assert_eq!(v.len() as u64, TAIL_BLOBS_AT);
    v.extend_from_slice(blobs);
    v.push(section::EOF);
    v.push(section::VMDESCRIPTION);
    v.extend_from_slice(&(json.len() as u32).to_be_bytes());
    v.extend_from_slice(json.as_bytes());
    v
}

/// Quote `s` as a JSON string.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The JSON completion record this library writes (`ours` = true on parse).
///
/// Shaped like QEMU's description (`page_size`, `devices`) plus this
/// library's own key; valid JSON, no raw control bytes (so no `0x00`).
pub fn completion_json(page_size: u64, machine_type: &str, nblocks: usize) -> String {
    format!(
        "{{\"page_size\":{page_size},\"devices\":[],\"{COMPLETION_KEY}\":{{\"version\":{COMPLETION_VERSION},\"machine-type\":{},\"ramblocks\":{nblocks}}}}}",
        json_string(machine_type)
    )
}

/// Parse the stream header and configuration at `base`; returns the
/// configuration and the absolute offset just past it.
///
/// Errors: wrong magic is `Corrupt`; another stream version or a stream
/// without a configuration section is `Unsupported`; unknown subsections,
/// subsection versions or capabilities are `Unsupported` (naming them);
/// truncation and malformed fields are `Corrupt`.
pub fn parse_header(src: &dyn ReadAt, base: u64) -> Result<(Configuration, u64)> {
    let mut c = Cursor::new(src, base)?;
    let magic = c.be32("the stream magic")?;
    if magic != QEVM_MAGIC {
        return Err(Error::Corrupt(format!(
            "not a QEMU migration stream: magic at offset {base} is 0x{magic:08x}, expected 0x{QEVM_MAGIC:08x} (\"QEVM\")"
        )));
    }
    let version = c.be32("the stream version")?;
    if version != QEVM_VERSION {
        return Err(Error::Unsupported(format!(
            "QEMU stream version {version} at offset {} is not supported (expected {QEVM_VERSION})",
            base + 4
        )));
    }
    let at = c.pos();
    let kind = c.u8("the configuration section type")?;
    if kind != section::CONFIGURATION {
        return Err(Error::Unsupported(format!(
            "stream has no configuration section: found section type 0x{kind:02x} at offset {at}, expected 0x{:02x}; without it a mapped-ram file cannot be recognised",
            section::CONFIGURATION
        )));
    }
    let mut config = Configuration {
        machine_type: machine_type(&mut c)?,
        capabilities: Vec::new(),
        target_page_bits: None,
    };
    configuration_subsections(&mut c, &mut config)?;
    Ok((config, c.pos()))
}

/// The configuration's be32-length-prefixed machine type.
fn machine_type(c: &mut Cursor<'_>) -> Result<String> {
    let at = c.pos();
    let len = c.be32("the machine type length")? as u64;
    if len == 0 {
        return Err(Error::Corrupt(format!(
            "configuration at offset {at} has an empty machine type"
        )));
    }
    let name = c.vec(len, MAX_MACHINE_TYPE_LEN, "the machine type")?;
    String::from_utf8(name).map_err(|_| {
        Error::Corrupt(format!(
            "machine type at offset {} is not valid UTF-8",
            at + 4
        ))
    })
}

/// The configuration's subsections (target-page-bits, capabilities, uuid),
/// each at most once, into `config`; stops before the first record that is
/// not a subsection.
fn configuration_subsections(c: &mut Cursor<'_>, config: &mut Configuration) -> Result<()> {
    let mut seen: Vec<String> = Vec::new();
    loop {
        // A stream never ends right after its configuration: a missing
        // byte here is a truncation.
        let at = c.pos();
        if c.u8("the section after the configuration")? != section::SUBSECTION {
            c.seek(at);
            return Ok(());
        }
        let name = c.short_str("a configuration subsection name")?;
        if seen.contains(&name) {
            return Err(Error::Corrupt(format!(
                "configuration subsection '{name}' at offset {at} appears twice"
            )));
        }
        let version = c.be32(&format!("the version of subsection '{name}'"))?;
        if !matches!(
            name.as_str(),
            SUBSECTION_TARGET_PAGE_BITS | SUBSECTION_CAPABILITIES | SUBSECTION_UUID
        ) {
            return Err(Error::Unsupported(format!(
                "unknown configuration subsection '{name}' (version {version}) at offset {at}"
            )));
        }
        if version != 1 {
            return Err(Error::Unsupported(format!(
                "configuration subsection '{name}' at offset {at} has version {version}, expected 1"
            )));
        }
        match name.as_str() {
            SUBSECTION_TARGET_PAGE_BITS => config.target_page_bits = Some(target_page_bits(c)?),
            SUBSECTION_CAPABILITIES => capabilities(c, config)?,
            // configuration/uuid (x-validate-uuid).
            _ => c.skip(UUID_LEN, "the configuration uuid")?,
        }
        seen.push(name);
    }
}

/// The target-page-bits subsection's be32 value.
fn target_page_bits(c: &mut Cursor<'_>) -> Result<u32> {
    let field_at = c.pos();
    let bits = c.be32("target-page-bits")?;
    if !(MIN_TARGET_PAGE_BITS..=MAX_TARGET_PAGE_BITS).contains(&bits) {
        return Err(Error::Unsupported(format!(
            "target-page-bits {bits} at offset {field_at} is not supported (expected {MIN_TARGET_PAGE_BITS}..={MAX_TARGET_PAGE_BITS})"
        )));
    }
    Ok(bits)
}

/// The capabilities subsection: a be32 count and that many names, each
/// known and recorded once, appended to `config.capabilities`.
fn capabilities(c: &mut Cursor<'_>, config: &mut Configuration) -> Result<()> {
    let count_at = c.pos();
    let count = c.be32("the capability count")?;
    // QEMU records at most 2; each takes at least 2 bytes.
    if count > MAX_CAPABILITIES {
        return Err(Error::Corrupt(format!(
            "capability count {count} at offset {count_at} is not plausible (at most {MAX_CAPABILITIES})"
        )));
    }
    if count as u64 * 2 > c.remaining() {
        return Err(Error::Corrupt(format!(
            "truncated at offset {} while reading {count} capability names (at least {} bytes needed, input ends at {})",
            c.pos(),
            count * 2,
            c.size()
        )));
    }
    for _ in 0..count {
        let cap_at = c.pos();
        let cap = c.short_str("a capability name")?;
        if cap != CAP_X_IGNORE_SHARED && cap != CAP_MAPPED_RAM && cap != CAP_CHUNKS {
            return Err(Error::Unsupported(format!(
                "capability '{cap}' recorded at offset {cap_at} is not supported (known: {CAP_X_IGNORE_SHARED}, {CAP_MAPPED_RAM}, {CAP_CHUNKS})"
            )));
        }
        if config.has_capability(&cap) {
            return Err(Error::Corrupt(format!(
                "capability '{cap}' at offset {cap_at} is recorded twice"
            )));
        }
        config.capabilities.push(cap);
    }
    Ok(())
}

/// Examine the bytes after `after` (the end of the RAM setup section) for a
/// visible end of stream.
///
/// Looks only at the end of the input (at most [`MAX_VMDESC_SCAN`] bytes of
/// JSON): the last byte must be `}`, and the JSON (which holds no `0x00`
/// byte) must be preceded by `0x06` (or [`UPDATING_MARK`]) + its be32 length
/// and by the EOF byte `0x00`, all at or after `after`.
pub fn completion(src: &dyn ReadAt, after: u64) -> Result<Completion> {
    let size = src.size()?;
    let incomplete = |why: &str| {
        Ok(Completion::Incomplete(format!(
            "stream ends at offset {size} without an end-of-stream record: {why}"
        )))
    };
    // EOF + marker + be32 + "{}" at least.
    if size < after.saturating_add(8) {
        return incomplete(&format!(
            "only {} bytes follow the RAM setup section (which ends at offset {after})",
            size.saturating_sub(after)
        ));
    }
    let mut last = [0u8; 1];
    read_full(src, &mut last, size - 1)?;
    if last[0] != b'}' {
        return incomplete(&format!("the last byte is 0x{:02x}, not '}}'", last[0]));
    }
    // Scan backward for the last 0x00 byte (JSON text never holds one).
    let floor = after.max(size.saturating_sub(MAX_VMDESC_SCAN + 6));
    let mut zero = None;
    let mut end = size;
    let mut buf = vec![0u8; 64 * 1024];
    while end > floor && zero.is_none() {
        let start = end.saturating_sub(buf.len() as u64).max(floor);
        let chunk = &mut buf[..(end - start) as usize];
        read_full(src, chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == 0) {
            zero = Some(start + i as u64);
        }
        end = start;
    }
    let Some(z) = zero else {
        return incomplete("no end-of-file record before the trailing JSON");
    };
    // The zero is either in the be32 length or the EOF byte itself: the
    // marker sits at z - 4 ..= z + 1.
    let lo = z.saturating_sub(4).max(after.saturating_add(1));
    let mut q = z + 1;
    while q >= lo {
        if let Some(found) = check_vmdesc(src, size, q)? {
            return Ok(found);
        }
        if q == 0 {
            break;
        }
        q -= 1;
    }
    incomplete("no end-of-file + description record before the trailing JSON")
}

/// Whether a VMDESCRIPTION (or updating) marker at `q` spans to the end.
fn check_vmdesc(src: &dyn ReadAt, size: u64, q: u64) -> Result<Option<Completion>> {
    if q == 0 || q.saturating_add(7) > size {
        return Ok(None);
    }
    let mut b = [0u8; 7];
    read_full(src, &mut b, q - 1)?;
    let json_len = u32::from_be_bytes([b[2], b[3], b[4], b[5]]);
    if b[0] != section::EOF
        || !(b[1] == section::VMDESCRIPTION || b[1] == UPDATING_MARK)
        || json_len as u64 != size - (q + 5)
        || b[6] != b'{'
    {
        return Ok(None);
    }
    let ours = contains(src, q + 5, size, COMPLETION_KEY.as_bytes())?;
    let vmdesc_offset = q - 1;
    Ok(Some(if b[1] == section::VMDESCRIPTION {
        Completion::Complete {
            vmdesc_offset,
            json_len,
            ours,
        }
    } else {
        Completion::Updating {
            vmdesc_offset,
            json_len,
            ours,
        }
    }))
}

/// Whether `[start, end)` of `src` contains `"needle"` (quoted as a key).
fn contains(src: &dyn ReadAt, start: u64, end: u64, needle: &[u8]) -> Result<bool> {
    let mut pat = Vec::with_capacity(needle.len() + 2);
    pat.push(b'"');
    pat.extend_from_slice(needle);
    pat.push(b'"');
    let overlap = pat.len() - 1;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = start;
    while pos < end {
        let n = ((end - pos) as usize).min(buf.len());
        read_full(src, &mut buf[..n], pos)?;
        if buf[..n].windows(pat.len()).any(|w| w == pat.as_slice()) {
            return Ok(true);
        }
        if pos + n as u64 >= end {
            break;
        }
        pos += (n - overlap.min(n - 1)) as u64;
    }
    Ok(false)
}

/// Read exactly `buf.len()` bytes at `offset` (the caller checked the size).
fn read_full(src: &dyn ReadAt, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = src.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            return Err(Error::Corrupt(format!(
                "truncated at offset {} while reading the end of the stream",
                offset + done as u64
            )));
        }
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Configuration {
        Configuration {
            machine_type: "pc-i440fx-10.0".into(),
            capabilities: vec![CAP_MAPPED_RAM.into()],
            target_page_bits: None,
        }
    }

    #[test]
    fn header_bytes_match_qemu() {
        // The first 0x4a bytes of a QEMU 10.0.2 `-M pc` mapped-ram file.
        let mut want = b"QEVM\0\0\0\x03\x07\0\0\0\x0epc-i440fx-10.0".to_vec();
        want.extend_from_slice(
            b"\x05\x1aconfiguration/capabilities\0\0\0\x01\0\0\0\x01\x0amapped-ram",
        );
        assert_eq!(encode_header(&cfg()), want);
        let n = want.len() as u64;
        want.push(section::START);
        let (c, end) = parse_header(&want, 0).unwrap();
        assert_eq!(c, cfg());
        assert_eq!(end, n);
    }

    #[test]
    fn header_subsections_round_trip() {
        let c = Configuration {
            machine_type: "virt".into(),
            capabilities: vec![CAP_X_IGNORE_SHARED.into(), CAP_MAPPED_RAM.into()],
            target_page_bits: Some(14),
        };
        let mut b = encode_header(&c);
        // x-validate-uuid subsection after the capabilities.
        b.extend_from_slice(b"\x05\x12configuration/uuid\0\0\0\x01");
        b.extend_from_slice(&[0xab; 16]);
        let n = b.len() as u64;
        b.push(section::START);
        let (got, end) = parse_header(&b, 0).unwrap();
        assert_eq!(got, c);
        assert_eq!(got.page_size(), 16384);
        assert_eq!(end, n);
    }

    #[test]
    fn header_errors() {
        let good = encode_header(&cfg());
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        let e = parse_header(&bad_magic, 0).unwrap_err();
        assert!(
            matches!(e, Error::Corrupt(ref m) if m.contains("0x5845564d")),
            "{e}"
        );
        let mut v2 = good.clone();
        v2[7] = 2;
        let e = parse_header(&v2, 0).unwrap_err();
        assert!(
            matches!(e, Error::Unsupported(ref m) if m.contains("version 2")),
            "{e}"
        );
        let mut no_cfg = good[..8].to_vec();
        no_cfg.push(section::START);
        let e = parse_header(&no_cfg, 0).unwrap_err();
        assert!(
            matches!(e, Error::Unsupported(ref m) if m.contains("no configuration")),
            "{e}"
        );
        let mut unknown = good.clone();
        unknown.extend_from_slice(b"\x05\x11configuration/foo\0\0\0\x01");
        let e = parse_header(&unknown, 0).unwrap_err();
        assert!(
            matches!(e, Error::Unsupported(ref m) if m.contains("configuration/foo")),
            "{e}"
        );
        let mut unknown_cap = encode_header(&Configuration {
            capabilities: vec!["multifd".into()],
            ..cfg()
        });
        unknown_cap.push(section::START);
        let e = parse_header(&unknown_cap, 0).unwrap_err();
        assert!(
            matches!(e, Error::Unsupported(ref m) if m.contains("'multifd'")),
            "{e}"
        );
        let bits = encode_header(&Configuration {
            target_page_bits: Some(40),
            ..cfg()
        });
        let e = parse_header(&bits, 0).unwrap_err();
        assert!(
            matches!(e, Error::Unsupported(ref m) if m.contains("target-page-bits 40")),
            "{e}"
        );
        for n in 0..good.len() {
            let r = parse_header(&good[..n].to_vec(), 0);
            let e = r.unwrap_err();
            assert!(
                matches!(e, Error::Corrupt(ref m) if m.starts_with("truncated at offset")),
                "{n}: {e}"
            );
        }
    }

    #[test]
    fn completion_json_is_escaped_and_ours() {
        let j = completion_json(4096, "pc\"x\\y\n\u{1}", 3);
        assert_eq!(
            j,
            r#"{"page_size":4096,"devices":[],"libmappedram":{"version":1,"machine-type":"pc\"x\\y\n\u0001","ramblocks":3}}"#
        );
        assert!(!j.bytes().any(|b| b < 0x20));
    }

    fn stream_with_tail(prefix: usize, json: &str, mark: u8) -> Vec<u8> {
        let mut v = vec![0x55u8; prefix];
        let mut t = encode_tail(1, json);
        let p = t.len() - json.len() - 5;
        t[p] = mark;
        v.extend_from_slice(&t);
        v
    }

    #[test]
    fn completion_cases() {
        let ours = completion_json(4096, "pc", 1);
        let v = stream_with_tail(100, &ours, section::VMDESCRIPTION);
        assert_eq!(
            completion(&v, 100).unwrap(),
            Completion::Complete {
                vmdesc_offset: 100 + 23,
                json_len: ours.len() as u32,
                ours: true
            }
        );
        // A QEMU-like description (no key of ours), long enough that the
        // be32 length has no zero byte (0x01_01_01_01 would be too big;
        // use 0x0101 = 257 bytes: two zero bytes lead the length).
        let theirs = format!(
            "{{\"page_size\": 4096, \"devices\": [\"{}\"]}}",
            "d".repeat(257 - 36)
        );
        assert_eq!(theirs.len(), 257);
        let v = stream_with_tail(7, &theirs, section::VMDESCRIPTION);
        assert!(matches!(
            completion(&v, 7).unwrap(),
            Completion::Complete {
                ours: false,
                json_len: 257,
                ..
            }
        ));
        let v = stream_with_tail(7, &ours, UPDATING_MARK);
        assert!(matches!(
            completion(&v, 7).unwrap(),
            Completion::Updating { ours: true, .. }
        ));
        // Cut anywhere: never complete.
        let full = stream_with_tail(7, &ours, section::VMDESCRIPTION);
        for n in 0..full.len() {
            let r = completion(&full[..n].to_vec(), 7).unwrap();
            assert!(
                matches!(r, Completion::Incomplete(ref m) if m.contains(&format!("offset {n}"))),
                "{n}: {r:?}"
            );
        }
        // A wrong length, a missing EOF byte, a record before `after`.
        let mut bad_len = full.clone();
        let p = full.len() - ours.len() - 1;
        bad_len[p] ^= 1;
        assert!(matches!(
            completion(&bad_len, 7).unwrap(),
            Completion::Incomplete(_)
        ));
        let mut no_eof = full.clone();
        no_eof[full.len() - ours.len() - 6] = 0x7e;
        assert!(matches!(
            completion(&no_eof, 7).unwrap(),
            Completion::Incomplete(_)
        ));
        // The record must start at or after `after`.
        assert!(matches!(
            completion(&full, 30).unwrap(),
            Completion::Complete { .. }
        ));
        assert!(matches!(
            completion(&full, 31).unwrap(),
            Completion::Incomplete(_)
        ));
        // Trailing garbage after the JSON.
        let mut trailing = full.clone();
        trailing.extend_from_slice(b"}");
        assert!(matches!(
            completion(&trailing, 7).unwrap(),
            Completion::Incomplete(_)
        ));
    }
}
