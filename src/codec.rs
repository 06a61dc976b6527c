//! The little-endian, length-prefixed binary codec of mkt's own files
//! (the state and its journal, the no-op stamp, the graph and project
//! caches): [`Writer`], and [`Reader`], whose every read is `None` past
//! the end, never a panic. What a format adds (a stat, template refs) is
//! in the module that owns the format.

use crate::hash::Digest;

/// Little-endian, length-prefixed encoder shared by mkt's binary caches.
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    pub(crate) fn digest(&mut self, d: &Digest) {
        self.0.extend_from_slice(&d.0);
    }
}

/// The bounds-checked decoder matching [`Writer`]: every read is `None`
/// past the end, never a panic.
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(crate) fn str(&mut self) -> Option<String> {
        self.str_ref().map(str::to_string)
    }
    /// [`Reader::str`] borrowed from the bytes, for a caller that may not
    /// need a copy.
    pub(crate) fn str_ref(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
    pub(crate) fn digest(&mut self) -> Option<Digest> {
        Some(Digest(self.take(32)?.try_into().ok()?))
    }
    /// Steps over a string without copying it (the file's checksum has
    /// already vouched for its bytes).
    pub(crate) fn skip_str(&mut self) -> Option<()> {
        let n = self.u32()? as usize;
        self.take(n).map(drop)
    }
    pub(crate) fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    /// A count, bounded by what the remaining bytes could hold, so a
    /// corrupt count cannot make us reserve gigabytes.
    pub(crate) fn count(&mut self, min_item: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.checked_mul(min_item)? <= self.buf.len() - self.pos).then_some(n)
    }
}
