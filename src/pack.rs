//! Pack files: the objects and action-cache entries one build wrote,
//! appended to a single file (`.mkt/packs/<seq>.pack`).
//!
//! **Why.** A loose store creates a file per object and per entry, three
//! a target, each in one of 256 shard directories. On the test machine
//! (ext4 on a virtual disk whose page cache is paged out after a minute
//! untouched) a create in a cold shard took 3-5 ms at the median and
//! 45-180 ms at the 90th percentile, against 0.02 ms for an append to a
//! file already open: an edit's build spent more time creating its three
//! store files than doing anything else, and a 10,000-target full build
//! created 30,000 inodes for them.
//!
//! **Format** (all integers little-endian):
//!
//! ```text
//! header   "MKTPACK1"
//! record   kind u8 (1 object, 2 action-cache entry)
//!          len u32            payload length
//!          key [32]           object: BLAKE3 of the payload; entry: its InputBundleHash
//!          sum [32]           BLAKE3 of the payload
//!          payload [len]      the object's bytes; the entry's RunManifest JSON
//!          ... more records
//! seal     index              one entry a record, sorted by (key, kind):
//!                             key [32], kind u8, offset u64 (of the record), len u32
//!          footer             index offset u64, count u32, "MKTSEAL1"
//! ```
//!
//! A build appends records as it goes and seals its pack at the end, when
//! it flushes ([`crate::store::ObjectStore::sync`]). **Reading trusts
//! nothing**: a record is served only when its header matches the index
//! entry that led to it and its payload hashes to `sum` (and, for an
//! object, to `key`). A pack without a valid seal (a build that was killed,
//! or one still writing) is read by scanning its records from the start,
//! up to the first that does not verify; the next build to flush seals
//! it. A corrupt index can only hide records, never serve wrong ones.
//!
//! **Order.** Pack numbers only grow; a lookup searches the newest pack
//! first, so a record written again (an entry replaced by a `--force` run,
//! an object stored again after its copy was found corrupt) shadows the
//! older copy. Merging (see `store.rs`) replaces a run of consecutive
//! packs by one that takes the newest one's number, which keeps that order.

use crate::hash::Digest;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

pub const HEADER: &[u8; 8] = b"MKTPACK1";
const SEAL_MAGIC: &[u8; 8] = b"MKTSEAL1";
/// kind, len, key, sum
pub const RECORD_HEADER: usize = 1 + 4 + 32 + 32;
const INDEX_ENTRY: usize = 32 + 1 + 8 + 4;
const FOOTER: usize = 8 + 4 + 8;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RecordKind {
    Object = 1,
    AcEntry = 2,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Object),
            2 => Some(RecordKind::AcEntry),
            _ => None,
        }
    }
}

/// Where a record is in its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: [u8; 32],
    pub kind: RecordKind,
    /// Of the record's header.
    pub offset: u64,
    /// Of the payload.
    pub len: u32,
}

impl Entry {
    /// The record's size in the pack, header included.
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER as u64 + self.len as u64
    }
}

/// What a lookup in a pack found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    Payload(Vec<u8>),
    Missing,
    /// The index names it but the record does not verify.
    Corrupt,
}

/// The bytes of a sealed pack of `records` records that are not records:
/// its header and seal (none when it has no records: it is not written).
pub fn own_bytes(records: usize) -> u64 {
    match records {
        0 => 0,
        n => (HEADER.len() + n * INDEX_ENTRY + FOOTER) as u64,
    }
}

/// The bytes of one record.
pub fn encode_record(kind: RecordKind, key: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let sum = if kind == RecordKind::Object {
        *key
    } else {
        Digest::of(payload).0
    };
    let mut r = Vec::with_capacity(RECORD_HEADER + payload.len());
    r.push(kind as u8);
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    r.extend_from_slice(key);
    r.extend_from_slice(&sum);
    r.extend_from_slice(payload);
    r
}

/// A record's header, parsed; `None` when it cannot be one.
fn parse_header(h: &[u8]) -> Option<(RecordKind, u32, [u8; 32], [u8; 32])> {
    let kind = RecordKind::from_u8(*h.first()?)?;
    let len = u32::from_le_bytes(h.get(1..5)?.try_into().ok()?);
    let key: [u8; 32] = h.get(5..37)?.try_into().ok()?;
    let sum: [u8; 32] = h.get(37..69)?.try_into().ok()?;
    Some((kind, len, key, sum))
}

/// Whether `payload` is what a record of that header holds.
fn verifies(kind: RecordKind, key: &[u8; 32], sum: &[u8; 32], payload: &[u8]) -> bool {
    let d = Digest::of(payload).0;
    d == *sum && (kind != RecordKind::Object || d == *key)
}

/// Writes the seal of `entries` (sorted here) into `file` after its
/// records, which end at `index_offset`, 64 KB at a time: a 10,000-target
/// build's index is 1.4 MB, which would otherwise sit in memory whole at
/// the end of the build, when its memory peaks. Returns the file's new
/// length.
fn write_seal(file: &File, entries: &mut Vec<Entry>, index_offset: u64) -> io::Result<u64> {
    let mut pos = index_offset;
    let mut out = |b: &[u8]| -> io::Result<()> {
        file.write_all_at(b, pos)?;
        pos += b.len() as u64;
        Ok(())
    };
    index_order(entries);
    let mut buf = Vec::with_capacity(64 * 1024);
    for e in entries.iter() {
        buf.extend_from_slice(&e.key);
        buf.push(e.kind as u8);
        buf.extend_from_slice(&e.offset.to_le_bytes());
        buf.extend_from_slice(&e.len.to_le_bytes());
        if buf.len() + INDEX_ENTRY > buf.capacity() {
            out(&buf)?;
            buf.clear();
        }
    }
    buf.extend_from_slice(&index_offset.to_le_bytes());
    buf.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    buf.extend_from_slice(SEAL_MAGIC);
    out(&buf)?;
    Ok(pos)
}

/// Reads the record `e` names from `file` (of `file_len` bytes) and
/// verifies it; `None` when it does not verify or is not the record `e`
/// says.
fn read_record(file: &File, file_len: u64, e: &Entry) -> Option<Vec<u8>> {
    // (an index entry is not trusted with a length to allocate)
    let end = e.offset.checked_add(e.record_bytes())?;
    if end > file_len {
        return None;
    }
    let mut buf = vec![0u8; RECORD_HEADER + e.len as usize];
    file.read_exact_at(&mut buf, e.offset).ok()?;
    let (kind, len, key, sum) = parse_header(&buf)?;
    let payload = &buf[RECORD_HEADER..];
    if !(kind == e.kind && len == e.len && key == e.key && verifies(kind, &key, &sum, payload)) {
        return None;
    }
    buf.drain(..RECORD_HEADER);
    Some(buf)
}

/// Sorts `entries` by (key, kind), keeping of each only the one written
/// last (an action-cache entry written twice in one build: the newer run).
fn index_order(entries: &mut Vec<Entry>) {
    // in place: newest first, a stable sort keeps it so among equal keys,
    // and dedup keeps the first of each run
    entries.reverse();
    entries.sort_by_key(|e| (e.key, e.kind));
    entries.dedup_by_key(|e| (e.key, e.kind));
}

/// The index of a sealed pack of `len` bytes whose last bytes are
/// `footer`: (index offset, entry count), when the seal is whole.
fn parse_footer(footer: &[u8], len: u64) -> Option<(u64, usize)> {
    if footer.len() != FOOTER || &footer[12..] != SEAL_MAGIC {
        return None;
    }
    let at = u64::from_le_bytes(footer[..8].try_into().ok()?);
    let n = u32::from_le_bytes(footer[8..12].try_into().ok()?) as u64;
    let end = at.checked_add(n.checked_mul(INDEX_ENTRY as u64)?)?;
    (at >= HEADER.len() as u64 && end.checked_add(FOOTER as u64)? == len)
        .then_some((at, n as usize))
}

/// One index entry of a seal; `None` for an unknown kind.
fn parse_index_entry(c: &[u8]) -> Option<Entry> {
    Some(Entry {
        key: c.get(..32)?.try_into().ok()?,
        kind: RecordKind::from_u8(*c.get(32)?)?,
        offset: u64::from_le_bytes(c.get(33..41)?.try_into().ok()?),
        len: u32::from_le_bytes(c.get(41..45)?.try_into().ok()?),
    })
}

/// The records of an unsealed pack: every record from the start that
/// verifies, up to the first that does not, and where that one begins
/// (the length of the pack's good part).
pub fn scan(bytes: &[u8]) -> (Vec<Entry>, usize) {
    let mut entries = Vec::new();
    // (a damaged header hides nothing: each record verifies on its own)
    if bytes.len() < HEADER.len() {
        return (entries, 0);
    }
    let mut at = HEADER.len();
    while let Some((kind, len, key, sum)) = bytes.get(at..).and_then(parse_header) {
        let start = at + RECORD_HEADER;
        let Some(payload) = bytes.get(start..start + len as usize) else {
            break;
        };
        if !verifies(kind, &key, &sum, payload) {
            break;
        }
        entries.push(Entry {
            key,
            kind,
            offset: at as u64,
            len,
        });
        at = start + len as usize;
    }
    (entries, at)
}

/// Whether `file` ends in a whole seal (its index is not read), and its
/// length.
pub fn is_sealed(file: &File) -> io::Result<(bool, u64)> {
    let len = file.metadata()?.len();
    if len < (HEADER.len() + FOOTER) as u64 {
        return Ok((false, len));
    }
    let mut footer = [0u8; FOOTER];
    file.read_exact_at(&mut footer, len - FOOTER as u64)?;
    Ok((parse_footer(&footer, len).is_some(), len))
}

/// One pack file, opened for reading.
pub struct Pack {
    file: File,
    index: Index,
    /// Whether its seal was whole (else its records were scanned).
    pub sealed: bool,
    /// For an unsealed pack: where its good part ends.
    pub good_len: u64,
    pub file_len: u64,
}

/// A pack's index, sorted by (key, kind).
enum Index {
    /// A seal's, searched where it is on disk: an edit's build looks up a
    /// few records, where reading and decoding the 30,000 entries of a
    /// 10,000-target build's pack would cost it 1-2 ms.
    Sealed {
        map: memmap2::Mmap,
        at: usize,
        n: usize,
    },
    /// An unsealed pack's, from scanning its records.
    Scanned(Vec<Entry>),
}

impl Index {
    fn len(&self) -> usize {
        match self {
            Index::Sealed { n, .. } => *n,
            Index::Scanned(v) => v.len(),
        }
    }

    /// The raw bytes of entry `i` of a seal's index, or its decoded copy.
    fn get(&self, i: usize) -> Option<Entry> {
        match self {
            Index::Sealed { map, at, .. } => {
                parse_index_entry(map.get(at + i * INDEX_ENTRY..at + (i + 1) * INDEX_ENTRY)?)
            }
            Index::Scanned(v) => v.get(i).copied(),
        }
    }

    /// The key and kind of entry `i`, compared without decoding the rest.
    fn key_at(&self, i: usize) -> Option<([u8; 32], u8)> {
        match self {
            Index::Sealed { map, at, .. } => {
                let c = map.get(at + i * INDEX_ENTRY..at + i * INDEX_ENTRY + 33)?;
                Some((c[..32].try_into().ok()?, c[32]))
            }
            Index::Scanned(v) => v.get(i).map(|e| (e.key, e.kind as u8)),
        }
    }
}

impl Pack {
    /// Opens a pack: its seal's index is read, or without one its records
    /// are scanned. A file too damaged to hold any record has none.
    pub fn open(file: File) -> io::Result<Pack> {
        let file_len = file.metadata()?.len();
        if file_len >= (HEADER.len() + FOOTER) as u64 {
            let mut footer = [0u8; FOOTER];
            file.read_exact_at(&mut footer, file_len - FOOTER as u64)?;
            // (the header is not checked: a damaged one must not hide a
            // pack's records, which verify on their own)
            if let Some((at, n)) = parse_footer(&footer, file_len) {
                // SAFETY: a mapping is undefined behaviour if the file
                // changes under it. mkt never writes a sealed pack again:
                // merging and gc write a new file and rename it over the
                // old name (see `store.rs`), which leaves the mapped inode
                // as it was. The mapping's bytes are still not trusted: an
                // entry leads only to a record that verifies.
                let map = unsafe { memmap2::Mmap::map(&file)? };
                if map.len() as u64 == file_len {
                    return Ok(Pack {
                        file,
                        index: Index::Sealed {
                            map,
                            at: at as usize,
                            n,
                        },
                        sealed: true,
                        good_len: at,
                        file_len,
                    });
                }
            }
        }
        let mut bytes = vec![0u8; file_len as usize];
        file.read_exact_at(&mut bytes, 0)?;
        let (mut entries, good) = scan(&bytes);
        index_order(&mut entries);
        Ok(Pack {
            file,
            index: Index::Scanned(entries),
            sealed: false,
            good_len: good as u64,
            file_len,
        })
    }

    fn find_entry(&self, kind: RecordKind, key: &[u8; 32]) -> Option<Entry> {
        let want = (*key, kind as u8);
        let (mut lo, mut hi) = (0, self.index.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.index.key_at(mid)?.cmp(&want) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                // (an entry of an unknown kind reads as none: not found)
                std::cmp::Ordering::Equal => return self.index.get(mid),
            }
        }
        None
    }

    /// Whether the index names a record of `kind` under `key` (not read).
    pub fn contains(&self, kind: RecordKind, key: &[u8; 32]) -> bool {
        self.find_entry(kind, key).is_some()
    }

    /// The payload of the record of `kind` under `key`, verified.
    pub fn get(&self, kind: RecordKind, key: &[u8; 32]) -> Found {
        match self.find_entry(kind, key) {
            None => Found::Missing,
            Some(e) => match self.read(&e) {
                Some(p) => Found::Payload(p),
                None => Found::Corrupt,
            },
        }
    }

    /// Reads and verifies the record `e` names; `None` when it does not
    /// verify or is not the record `e` says.
    pub fn read(&self, e: &Entry) -> Option<Vec<u8>> {
        read_record(&self.file, self.file_len, e)
    }

    /// Every record the pack indexes, in index order (an entry of an
    /// unknown kind left out).
    pub fn entries(&self) -> Vec<Entry> {
        (0..self.index.len())
            .filter_map(|i| self.index.get(i))
            .collect()
    }

    /// Seals an unsealed pack in place: its torn tail (if any) cut off,
    /// the seal of the records that verified appended. Only for the holder
    /// of the project lock, as only a dead build leaves a pack unsealed.
    pub fn seal_in_place(&mut self) -> io::Result<()> {
        if self.sealed {
            return Ok(());
        }
        let mut entries = self.entries();
        let mut at = self.good_len;
        if at < HEADER.len() as u64 {
            at = HEADER.len() as u64;
            entries.clear();
        }
        // Records after the first that does not verify are cut off with
        // it: a killed build tears only its last record, and a pack
        // damaged in the middle loses what follows the damage (cache
        // entries: their targets run again).
        self.file.set_len(at)?;
        self.file.write_all_at(HEADER, 0)?;
        self.file_len = write_seal(&self.file, &mut entries, at)?;
        self.index = Index::Scanned(entries);
        self.sealed = true;
        self.good_len = at;
        Ok(())
    }
}

/// A pack being written: records appended as they come, the seal written
/// at the end ([`PackWriter::seal`]).
pub struct PackWriter {
    file: File,
    len: u64,
    entries: Vec<Entry>,
    /// Positions in `entries`, found by key and kind: the newest record of
    /// each. A table of bare `u32`s (5 bytes a record with its control
    /// byte), where a map keyed by the 33 bytes cost a 10,000-target
    /// build 3 MB at its peak.
    by_key: hashbrown::HashTable<u32>,
}

/// A record's hash in [`PackWriter::by_key`]: its key is a BLAKE3 digest
/// already, so eight of its bytes serve (mixed with the kind).
fn table_hash(kind: RecordKind, key: &[u8; 32]) -> u64 {
    u64::from_le_bytes(key[..8].try_into().expect("8 bytes")) ^ kind as u64
}

impl PackWriter {
    /// Starts a pack in `file`, which must be new and empty.
    pub fn start(mut file: File) -> io::Result<PackWriter> {
        file.write_all(HEADER)?;
        Ok(PackWriter {
            file,
            len: HEADER.len() as u64,
            entries: Vec::new(),
            by_key: hashbrown::HashTable::new(),
        })
    }

    /// Appends a record (one write).
    pub fn append(&mut self, kind: RecordKind, key: &[u8; 32], payload: &[u8]) -> io::Result<()> {
        if u32::try_from(payload.len()).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a store record is limited to 4 GiB",
            ));
        }
        let rec = encode_record(kind, key, payload);
        if let Err(e) = self.file.write_all_at(&rec, self.len) {
            // a short write leaves a torn record, which no reader believes;
            // the next record is written over it
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        let len = (rec.len() - RECORD_HEADER) as u32;
        let i = self.entries.len() as u32;
        let entries = &self.entries;
        let hash = |&j: &u32| {
            let e = &entries[j as usize];
            table_hash(e.kind, &e.key)
        };
        match self.by_key.entry(
            table_hash(kind, key),
            |&j| entries[j as usize].key == *key && entries[j as usize].kind == kind,
            hash,
        ) {
            hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = i,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(i);
            }
        }
        self.entries.push(Entry {
            key: *key,
            kind,
            offset: self.len,
            len,
        });
        self.len += rec.len() as u64;
        Ok(())
    }

    fn position(&self, kind: RecordKind, key: &[u8; 32]) -> Option<usize> {
        let entries = &self.entries;
        self.by_key
            .find(table_hash(kind, key), |&j| {
                entries[j as usize].key == *key && entries[j as usize].kind == kind
            })
            .map(|&j| j as usize)
    }

    pub fn contains(&self, kind: RecordKind, key: &[u8; 32]) -> bool {
        self.position(kind, key).is_some()
    }

    /// A record this writer wrote, read back and verified.
    pub fn get(&self, kind: RecordKind, key: &[u8; 32]) -> Found {
        let Some(i) = self.position(kind, key) else {
            return Found::Missing;
        };
        match read_record(&self.file, self.len, &self.entries[i]) {
            Some(p) => Found::Payload(p),
            None => Found::Corrupt,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the seal; the pack is then complete (not yet flushed).
    pub fn seal(mut self) -> io::Result<File> {
        self.by_key = hashbrown::HashTable::new(); // freed before the seal
        write_seal(&self.file, &mut self.entries, self.len)?;
        Ok(self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: &[u8]) -> [u8; 32] {
        Digest::of(b).0
    }

    type Record = (RecordKind, [u8; 32], Vec<u8>);

    /// A sealed pack holding two objects and an entry, and its records.
    fn sample() -> (Vec<u8>, Vec<Record>) {
        let ibh = key(b"bundle");
        let recs = vec![
            (RecordKind::Object, key(b"first"), b"first".to_vec()),
            (RecordKind::AcEntry, ibh, b"{\"run\":1}".to_vec()),
            (RecordKind::Object, key(b"second\n"), b"second\n".to_vec()),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.pack");
        let mut w = PackWriter::start(File::create_new(&path).unwrap()).unwrap();
        for (k, key, p) in &recs {
            w.append(*k, key, p).unwrap();
        }
        w.seal().unwrap();
        (std::fs::read(&path).unwrap(), recs)
    }

    fn open_bytes(bytes: &[u8]) -> Pack {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        Pack::open(f).unwrap()
    }

    #[test]
    fn a_sealed_pack_serves_each_record_verified() {
        let (bytes, recs) = sample();
        let pack = open_bytes(&bytes);
        assert!(pack.sealed);
        for (k, key, p) in &recs {
            assert_eq!(pack.get(*k, key), Found::Payload(p.clone()));
        }
        // an object's key is its digest; the entry's kind is part of its name
        assert_eq!(pack.get(RecordKind::AcEntry, &recs[0].1), Found::Missing);
        assert_eq!(pack.get(RecordKind::Object, &key(b"other")), Found::Missing);
    }

    #[test]
    fn the_record_layout_is_pinned() {
        let rec = encode_record(RecordKind::Object, &key(b"ab"), b"ab");
        assert_eq!(rec.len(), RECORD_HEADER + 2);
        assert_eq!(rec[..5], [1, 2, 0, 0, 0]);
        assert_eq!(rec[5..37], key(b"ab"));
        assert_eq!(rec[37..69], key(b"ab"));
        assert_eq!(&rec[69..], b"ab");
        let (bytes, _) = sample();
        assert_eq!(&bytes[..8], b"MKTPACK1");
        assert_eq!(&bytes[bytes.len() - 8..], b"MKTSEAL1");
        assert_eq!(bytes.len(), 8 + 3 * RECORD_HEADER + 5 + 9 + 7 + 3 * 45 + 20);
    }

    /// Cut at every byte offset: whatever is left serves only records
    /// that verify, and every record wholly before the cut is found.
    #[test]
    fn every_cut_of_a_pack_serves_only_whole_records() {
        let (bytes, recs) = sample();
        let mut ends = Vec::new();
        let mut at = HEADER.len();
        for (_, _, p) in &recs {
            at += RECORD_HEADER + p.len();
            ends.push(at);
        }
        for cut in 0..bytes.len() {
            let pack = open_bytes(&bytes[..cut]);
            assert!(!pack.sealed, "cut at {cut} has no seal");
            for (i, (k, key, p)) in recs.iter().enumerate() {
                let want = if ends[i] <= cut {
                    Found::Payload(p.clone())
                } else {
                    Found::Missing
                };
                assert_eq!(pack.get(*k, key), want, "cut at {cut}, record {i}");
            }
        }
    }

    /// Any byte changed anywhere: never a wrong payload.
    #[test]
    fn every_flipped_byte_is_caught() {
        let (bytes, recs) = sample();
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x41;
            let pack = open_bytes(&b);
            for (k, key, p) in &recs {
                if let Found::Payload(got) = pack.get(*k, key) {
                    assert_eq!(&got, p, "byte {at} flipped");
                }
            }
        }
        for (i, bad) in crate::faults::corruptions(&bytes, 300, 7)
            .iter()
            .enumerate()
        {
            let pack = open_bytes(bad);
            for (k, key, p) in &recs {
                if let Found::Payload(got) = pack.get(*k, key) {
                    assert_eq!(&got, p, "corruption {i}");
                }
            }
        }
    }

    #[test]
    fn an_unsealed_pack_is_sealed_in_place_without_its_torn_tail() {
        let (bytes, recs) = sample();
        // the records and half of the next one, no seal
        let records_end = 8 + 3 * RECORD_HEADER + 5 + 9 + 7;
        let mut torn = bytes[..records_end].to_vec();
        torn.extend_from_slice(&encode_record(RecordKind::Object, &key(b"x"), b"x")[..30]);
        let mut pack = open_bytes(&torn);
        assert_eq!(pack.good_len, records_end as u64);
        pack.seal_in_place().unwrap();
        let sealed = Pack::open(pack.file.try_clone().unwrap()).unwrap();
        assert!(sealed.sealed);
        for (k, key, p) in &recs {
            assert_eq!(sealed.get(*k, key), Found::Payload(p.clone()));
        }
        assert_eq!(sealed.file_len, bytes.len() as u64);
    }

    /// An entry written twice in one pack: the index keeps the later.
    #[test]
    fn of_a_key_written_twice_the_later_record_is_served() {
        let ibh = key(b"bundle");
        let mut w = PackWriter::start(tempfile::tempfile().unwrap()).unwrap();
        w.append(RecordKind::AcEntry, &ibh, b"older").unwrap();
        w.append(RecordKind::AcEntry, &ibh, b"newer").unwrap();
        assert_eq!(
            w.get(RecordKind::AcEntry, &ibh),
            Found::Payload(b"newer".to_vec())
        );
        let file = w.seal().unwrap();
        let pack = Pack::open(file.try_clone().unwrap()).unwrap();
        assert_eq!(pack.entries().len(), 1);
        assert_eq!(
            pack.get(RecordKind::AcEntry, &ibh),
            Found::Payload(b"newer".to_vec())
        );
        // and the same when the pack is scanned, unsealed
        let mut bytes = vec![0u8; pack.file_len as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        let unsealed = open_bytes(&bytes[..pack.good_len as usize]);
        assert!(!unsealed.sealed);
        assert_eq!(
            unsealed.get(RecordKind::AcEntry, &ibh),
            Found::Payload(b"newer".to_vec())
        );
    }

    #[test]
    fn a_writer_reads_back_what_it_wrote() {
        let mut w = PackWriter::start(tempfile::tempfile().unwrap()).unwrap();
        assert!(w.is_empty());
        w.append(RecordKind::Object, &key(b"a"), b"a").unwrap();
        assert!(w.contains(RecordKind::Object, &key(b"a")));
        assert_eq!(
            w.get(RecordKind::Object, &key(b"a")),
            Found::Payload(b"a".to_vec())
        );
        assert_eq!(w.get(RecordKind::AcEntry, &key(b"a")), Found::Missing);
    }

    #[test]
    fn a_payload_over_4_gib_is_refused_and_the_pack_goes_on() {
        // 4 GiB and one byte, from a sparse file mapped but never touched:
        // the length is checked before a byte of it is read, so the test
        // costs no memory
        let big = tempfile::tempfile().unwrap();
        big.set_len(u64::from(u32::MAX) + 1).unwrap();
        let payload = unsafe { memmap2::Mmap::map(&big) }.unwrap();
        assert_eq!(payload.len() as u64, u64::from(u32::MAX) + 1);

        let file = tempfile::tempfile().unwrap();
        let mut w = PackWriter::start(file.try_clone().unwrap()).unwrap();
        w.append(RecordKind::Object, &key(b"a"), b"a").unwrap();
        let len = file.metadata().unwrap().len();
        let e = w
            .append(RecordKind::Object, &key(b"big"), &payload)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), "a store record is limited to 4 GiB");
        assert_eq!(file.metadata().unwrap().len(), len, "nothing written");
        assert!(!w.contains(RecordKind::Object, &key(b"big")));
        // the pack takes the next record and seals with both small ones
        w.append(RecordKind::Object, &key(b"b"), b"b").unwrap();
        w.seal().unwrap();
        let mut bytes = vec![0; file.metadata().unwrap().len() as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        let pack = open_bytes(&bytes);
        for k in [b"a", b"b"] {
            assert_eq!(
                pack.get(RecordKind::Object, &key(k)),
                Found::Payload(k.to_vec())
            );
        }
        assert_eq!(pack.get(RecordKind::Object, &key(b"big")), Found::Missing);
    }
}
