//! A bounds-checked, forward-moving reader over a [`ReadAt`] source.
//!
//! Every read is checked against the input size first, so a truncated input
//! gives `Error::Corrupt("truncated at offset X while reading Y ...")` and
//! never an allocation sized by an untrusted length.

use super::ReadAt;
use crate::error::{Error, Result};

/// Reads at most this much per call when filling a buffer.
const CHUNK: usize = 64 * 1024;

pub(crate) struct Cursor<'a> {
    src: &'a dyn ReadAt,
    size: u64,
    pos: u64,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(src: &'a dyn ReadAt, pos: u64) -> Result<Self> {
        let size = src.size()?;
        Ok(Cursor { src, size, pos })
    }

    /// Current absolute offset.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Input size, as reported when the cursor was made.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Bytes left between the cursor and the end of input.
    pub(crate) fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }

    pub(crate) fn seek(&mut self, pos: u64) {
        self.pos = pos;
    }

    fn truncated(&self, len: u64, what: &str) -> Error {
        Error::Corrupt(format!(
            "truncated at offset {} while reading {what} ({len} bytes needed, input ends at {})",
            self.pos, self.size
        ))
    }

    /// Fill `buf` from the cursor and advance.
    pub(crate) fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let len = buf.len() as u64;
        if len > self.remaining() {
            return Err(self.truncated(len, what));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let end = buf.len().min(done + CHUNK);
            let n = self
                .src
                .read_at(&mut buf[done..end], self.pos + done as u64)?;
            if n == 0 {
                // The input shrank under us: still a truncation.
                return Err(self.truncated(len, what));
            }
            done += n;
        }
        self.pos += len;
        Ok(())
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn be16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn be32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn be64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// Read `len` bytes into a new vector. `len` is checked against both the
    /// remaining input and `max` before anything is allocated.
    pub(crate) fn vec(&mut self, len: u64, max: u64, what: &str) -> Result<Vec<u8>> {
        if len > max {
            return Err(Error::Corrupt(format!(
                "{what} at offset {} is {len} bytes long, more than the limit of {max}",
                self.pos
            )));
        }
        if len > self.remaining() {
            return Err(self.truncated(len, what));
        }
        // len <= max, and every max used in this module is small.
        let mut v = vec![0u8; len as usize];
        self.fill(&mut v, what)?;
        Ok(v)
    }

    /// Skip `len` bytes (they must exist).
    pub(crate) fn skip(&mut self, len: u64, what: &str) -> Result<()> {
        if len > self.remaining() {
            return Err(self.truncated(len, what));
        }
        self.pos += len;
        Ok(())
    }

    /// A u8-length-prefixed string (idstr, subsection or capability name).
    pub(crate) fn short_str(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u8(&format!("the length of {what}"))?;
        let bytes = self.vec(len as u64, 255, what)?;
        String::from_utf8(bytes)
            .map_err(|_| Error::Corrupt(format!("{what} at offset {at} is not valid UTF-8")))
    }
}
