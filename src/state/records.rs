//! Target records: those of the state as loaded ([`TargetRecords`], read
//! from the snapshot's bytes as they are asked for) and those a build makes
//! ([`NewRecords`], kept encoded as the state writes them).

use super::*;
use std::borrow::Cow;

/// The target records of a state, by key: either all decoded, or read
/// from the snapshot's bytes one at a time as they are asked for.
pub struct TargetRecords(pub(super) Records);

pub(super) enum Records {
    Decoded(HashMap<String, TargetRecord>),
    Indexed(Box<IndexedRecords>),
}

/// A snapshot's target records, found through an index of their offsets
/// and decoded on first use. An incremental build of one target in
/// 10,000 asks for a few of them; decoding all took 7 ms.
pub(super) struct IndexedRecords {
    /// The whole snapshot file (the records point into it).
    pub(super) bytes: MappedFile,
    /// Where each record starts in `bytes`.
    offsets: Vec<u32>,
    /// Positions in `offsets`, hashed by the record's key, each with the
    /// top half of its key's hash: a probe compares that first, so that
    /// indexing a million records does not read the keys of random earlier
    /// ones (which paged 290 MB of the snapshot back in for an edit).
    index: hashbrown::HashTable<(u32, u32)>,
    /// (boxed: an empty slot is 16 bytes, not a record's 250; at a million
    /// targets, most never decoded, that was 240 MB)
    decoded: Vec<std::sync::OnceLock<Option<Box<TargetRecord>>>>,
    /// Records from the log, newer than the snapshot's.
    pub(super) newer: HashMap<String, TargetRecord>,
    layout: Layout,
}

/// The key of the target record at `at` in `bytes` (already checked).
fn record_key(bytes: &[u8], at: usize) -> &[u8] {
    let mut r = Reader {
        buf: bytes,
        pos: at,
    };
    let len = r.u32().unwrap_or(0) as usize;
    r.take(len).unwrap_or_default()
}

/// What [`IndexedRecords`] keeps of a key's hash beside its position.
fn hash_check(hash: u64) -> u32 {
    (hash >> 32) as u32
}

impl IndexedRecords {
    /// Indexes the records of an intact snapshot (`None` otherwise). The
    /// other sections are stepped over, every record's shape checked.
    pub(super) fn new(bytes: MappedFile) -> Option<IndexedRecords> {
        // The file's pages are let go as the checksum and the index pass
        // them: at a million targets they were 513 MB of an edit's
        // memory, and the build reads a few records again.
        let (body, layout) = State::body_with(&bytes, |body| {
            let start = body.as_ptr() as usize - bytes.as_ptr() as usize;
            bytes.digest_releasing(start..start + body.len())
        })?;
        u32::try_from(bytes.len()).ok()?;
        let start = body.as_ptr() as usize - bytes.as_ptr() as usize;
        let mut released = 0;
        let mut r = Reader { buf: body, pos: 0 };
        for _ in 0..r.count(FILE_MIN)? {
            skip_file(&mut r)?;
        }
        for _ in 0..r.count(ANALYSIS_MIN)? {
            skip_analysis(&mut r)?;
        }
        let n = r.count(TARGET_MIN)?;
        let mut offsets = Vec::with_capacity(n);
        let mut index = hashbrown::HashTable::with_capacity(n);
        for _ in 0..n {
            let at = (start + r.pos) as u32;
            let key = std::str::from_utf8(skip_target(&mut r, layout)?.0).ok()?;
            let hash = key_hash(key);
            let same = |&(i, check): &(u32, u32)| {
                check == hash_check(hash)
                    && record_key(&bytes, offsets[i as usize] as usize) == key.as_bytes()
            };
            if index.find(hash, same).is_some() {
                return None; // a key twice: not a file we wrote
            }
            // (the table has room for all: no rehash reads a key back)
            index.insert_unique(hash, (offsets.len() as u32, hash_check(hash)), |&(i, _)| {
                key_hash(
                    std::str::from_utf8(record_key(&bytes, offsets[i as usize] as usize))
                        .unwrap_or(""),
                )
            });
            offsets.push(at);
            if start + r.pos - released >= crate::store::RELEASE_EVERY {
                bytes.release(released..start + r.pos);
                released = start + r.pos;
            }
        }
        if r.pos != body.len() {
            return None;
        }
        bytes.release(released..start + r.pos);
        let decoded = (0..n).map(|_| std::sync::OnceLock::new()).collect();
        Some(IndexedRecords {
            bytes,
            offsets,
            index,
            decoded,
            newer: HashMap::default(),
            layout,
        })
    }

    fn key(&self, i: usize) -> &[u8] {
        record_key(&self.bytes, self.offsets[i] as usize)
    }

    fn record(&self, i: usize) -> Option<&TargetRecord> {
        self.decoded[i]
            .get_or_init(|| {
                let mut r = Reader {
                    buf: &self.bytes,
                    pos: self.offsets[i] as usize,
                };
                get_target(&mut r, self.layout).map(|(_, rec)| Box::new(rec))
            })
            .as_deref()
    }

    fn position(&self, key: &str) -> Option<usize> {
        let hash = key_hash(key);
        let same = |&(i, check): &(u32, u32)| {
            check == hash_check(hash) && self.key(i as usize) == key.as_bytes()
        };
        self.index.find(hash, same).map(|&(i, _)| i as usize)
    }

    pub(super) fn get(&self, key: &str) -> Option<&TargetRecord> {
        match self.newer.get(key) {
            Some(rec) => Some(rec),
            None => self.record(self.position(key)?),
        }
    }

    fn output(&self, key: &str) -> Option<(Digest, bool)> {
        if let Some(rec) = self.newer.get(key) {
            return Some((rec.output_digest, rec.failed));
        }
        let i = self.position(key)?;
        if let Some(rec) = self.decoded[i].get() {
            return rec.as_ref().map(|r| (r.output_digest, r.failed));
        }
        let mut r = Reader {
            buf: &self.bytes,
            pos: self.offsets[i] as usize,
        };
        skip_target(&mut r, self.layout).map(|(_, digest, failed)| (digest, failed))
    }
}

impl TargetRecords {
    pub fn get(&self, key: &str) -> Option<&TargetRecord> {
        match &self.0 {
            Records::Decoded(m) => m.get(key),
            Records::Indexed(ix) => ix.get(key),
        }
    }

    /// The recorded output digest of `key` and whether its run failed,
    /// without decoding the rest of the record: all a build asks of a
    /// target that nothing changed.
    pub fn output(&self, key: &str) -> Option<(Digest, bool)> {
        match &self.0 {
            Records::Decoded(m) => m.get(key).map(|r| (r.output_digest, r.failed)),
            Records::Indexed(ix) => ix.output(key),
        }
    }

    /// Every record with its key (decoding those not decoded yet).
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&str, &TargetRecord)> + '_> {
        match &self.0 {
            Records::Decoded(m) => Box::new(m.iter().map(|(k, r)| (k.as_str(), r))),
            Records::Indexed(ix) => Box::new(
                (0..ix.offsets.len())
                    .filter_map(|i| Some((std::str::from_utf8(ix.key(i)).ok()?, ix.record(i)?)))
                    .filter(|(k, _)| !ix.newer.contains_key(*k))
                    .chain(ix.newer.iter().map(|(k, r)| (k.as_str(), r))),
            ),
        }
    }

    /// Every record, decoded.
    pub fn into_map(self) -> HashMap<String, TargetRecord> {
        match self.0 {
            Records::Decoded(m) => m,
            Records::Indexed(_) => self
                .iter()
                .map(|(k, r)| (k.to_string(), r.clone()))
                .collect(),
        }
    }
}

/// A target record as a snapshot is written with it: the bytes of one
/// already encoded, or one decoded.
pub(super) enum Put<'a> {
    Encoded(&'a [u8]),
    Decoded(&'a str, &'a TargetRecord),
}

impl TargetRecords {
    /// Hands `put` every record but those `skip` names, each as cheaply as
    /// it comes: those of a snapshot of this version as their bytes (a
    /// snapshot of a million records is written without decoding one).
    /// Returns how many it handed.
    pub(super) fn put_each(
        &self,
        skip: &dyn Fn(&str) -> bool,
        put: &mut dyn FnMut(Put<'_>) -> std::io::Result<()>,
    ) -> std::io::Result<usize> {
        let mut n = 0;
        let (newer, ix) = match &self.0 {
            Records::Decoded(m) => (m, None),
            Records::Indexed(ix) => (&ix.newer, Some(ix)),
        };
        for (k, rec) in newer.iter().filter(|(k, _)| !skip(k)) {
            put(Put::Decoded(k, rec))?;
            n += 1;
        }
        let Some(ix) = ix else { return Ok(n) };
        for i in 0..ix.offsets.len() {
            let key = std::str::from_utf8(ix.key(i)).unwrap_or("");
            if skip(key) || ix.newer.contains_key(key) {
                continue;
            }
            let mut r = Reader {
                buf: &ix.bytes,
                pos: ix.offsets[i] as usize,
            };
            match ix.layout {
                Layout::V2 => {
                    skip_target(&mut r, Layout::V2);
                    put(Put::Encoded(&ix.bytes[ix.offsets[i] as usize..r.pos]))?;
                }
                Layout::V1 => {
                    if let Some((k, rec)) = get_target(&mut r, Layout::V1) {
                        put(Put::Decoded(&k, &rec))?;
                    }
                }
            }
            n += 1;
        }
        Ok(n)
    }
}

impl From<HashMap<String, TargetRecord>> for TargetRecords {
    fn from(m: HashMap<String, TargetRecord>) -> TargetRecords {
        TargetRecords(Records::Decoded(m))
    }
}

/// The records a build makes, each kept as the state encodes it (`TARGET`
/// in the module docs of `state`), found by key. At a million targets a
/// map of decoded records was 840 MB of a full build's peak, the same
/// records encoded 350 MB; past [`SPILL_AT`] bytes they go to an unlinked
/// temporary file in the store's directory (gone with the process, however
/// it ends), and memory keeps only where each one is. The save copies the
/// bytes into the log or the snapshot as they are.
#[derive(Default)]
pub struct NewRecords {
    /// The records not spilled: all of them while they stay small.
    tail: Vec<u8>,
    spill: Option<Spill>,
    /// Where a spill file may be made; none: never (or making one failed).
    spill_dir: Option<camino::Utf8PathBuf>,
    /// How many bytes of records memory holds before it spills them.
    spill_at: usize,
    /// Where each record starts (offsets run through the spill file, then
    /// `tail`) and its length, in the order added; `None` for one a later
    /// record of the same key replaced.
    starts: Vec<Option<(u64, u32)>>,
    /// Positions in `starts`, hashed by the record's key, each with the
    /// top half of the hash, compared before a key is read.
    index: hashbrown::HashTable<(u32, u32)>,
}

/// How many bytes of records are kept in memory before they are spilled.
pub const SPILL_AT: usize = 4 << 20;

struct Spill {
    file: std::fs::File,
    len: u64,
    /// The file, mapped once its records are read in bulk.
    mapped: std::sync::OnceLock<Option<MappedFile>>,
}

impl std::fmt::Debug for NewRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRecords")
            .field("len", &self.len())
            .field("spilled", &self.spilled())
            .finish()
    }
}

impl NewRecords {
    /// Records that spill to a temporary file in `dir` once they are many,
    /// with room for `expected` of them (the table then never grows, which
    /// would read every spilled key back).
    pub fn spilling_in(dir: &camino::Utf8Path, expected: usize) -> NewRecords {
        NewRecords {
            spill_dir: Some(dir.to_owned()),
            spill_at: SPILL_AT,
            index: hashbrown::HashTable::with_capacity(expected),
            ..NewRecords::default()
        }
    }

    fn spilled(&self) -> u64 {
        self.spill.as_ref().map_or(0, |s| s.len)
    }

    /// The bytes of the record at `at`, `len` long.
    fn bytes_at(&self, at: u64, len: u32) -> Cow<'_, [u8]> {
        let spilled = self.spilled();
        if at >= spilled {
            let from = (at - spilled) as usize;
            return Cow::Borrowed(&self.tail[from..from + len as usize]);
        }
        let spill = self
            .spill
            .as_ref()
            .expect("offsets below `spilled` are spilled");
        if let Some(Some(m)) = spill.mapped.get()
            && (at + len as u64) as usize <= m.len()
        {
            return Cow::Borrowed(&m[at as usize..(at + len as u64) as usize]);
        }
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; len as usize];
        // (written by `spill_tail`, which only counts what it wrote)
        match spill.file.read_exact_at(&mut buf, at) {
            Ok(()) => Cow::Owned(buf),
            Err(_) => Cow::Owned(Vec::new()),
        }
    }

    fn key_is(&self, i: u32, check: u32, key: &str, hash: u64) -> bool {
        check == hash_check(hash)
            && self.starts[i as usize]
                .is_some_and(|(at, len)| record_key(&self.bytes_at(at, len), 0) == key.as_bytes())
    }

    /// Adds the record of `key`, replacing any it had.
    pub fn insert(&mut self, key: &str, rec: &TargetRecord) {
        let before = self.tail.len();
        let at = self.spilled() + before as u64;
        let mut w = Writer(std::mem::take(&mut self.tail));
        put_target(&mut w, key, rec);
        self.tail = w.0;
        let len = (self.tail.len() - before) as u32;
        let hash = key_hash(key);
        let pos = self.starts.len() as u32;
        let found = (self
            .index
            .find(hash, |&(i, c)| self.key_is(i, c, key, hash)))
        .map(|&(i, _)| i);
        match found {
            Some(old) => {
                self.starts[old as usize] = None;
                let slot = self.index.find_mut(hash, |&(i, _)| i == old);
                *slot.expect("found above") = (pos, hash_check(hash));
            }
            None => {
                let mut index = std::mem::take(&mut self.index);
                let this = &*self;
                let rehash = |&(i, _): &(u32, u32)| {
                    let (at, len) = this.starts[i as usize].expect("indexed records are live");
                    let bytes = this.bytes_at(at, len);
                    key_hash(std::str::from_utf8(record_key(&bytes, 0)).unwrap_or(""))
                };
                index.insert_unique(hash, (pos, hash_check(hash)), rehash);
                self.index = index;
            }
        }
        self.starts.push(Some((at, len)));
        if self.spill_dir.is_some() && self.tail.len() >= self.spill_at {
            self.spill_tail();
        }
    }

    /// Moves the records in memory to the spill file (made first); any
    /// failure leaves them in memory and spills no more.
    fn spill_tail(&mut self) {
        use std::os::unix::fs::FileExt;
        let Some(dir) = &self.spill_dir else { return };
        if self.spill.is_none() {
            match tempfile::tempfile_in(dir) {
                Ok(file) => {
                    self.spill = Some(Spill {
                        file,
                        len: 0,
                        mapped: std::sync::OnceLock::new(),
                    })
                }
                Err(_) => {
                    self.spill_dir = None;
                    return;
                }
            }
        }
        let spill = self.spill.as_mut().expect("made above");
        if spill.file.write_all_at(&self.tail, spill.len).is_err() {
            self.spill_dir = None;
            return;
        }
        spill.len += self.tail.len() as u64;
        self.tail.clear();
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn start_of(&self, key: &str) -> Option<(u64, u32)> {
        let hash = key_hash(key);
        let &(i, _) = self
            .index
            .find(hash, |&(i, c)| self.key_is(i, c, key, hash))?;
        self.starts[i as usize]
    }

    pub fn contains(&self, key: &str) -> bool {
        self.start_of(key).is_some()
    }

    /// The record of `key`, decoded.
    pub fn get(&self, key: &str) -> Option<TargetRecord> {
        let (at, len) = self.start_of(key)?;
        let bytes = self.bytes_at(at, len);
        get_target(
            &mut Reader {
                buf: &bytes,
                pos: 0,
            },
            Layout::V2,
        )
        .map(|(_, rec)| rec)
    }

    /// Each live record as encoded, in the order added. The spill file's
    /// pages are let go behind the walk, as the snapshot's are when it
    /// is read.
    pub fn encoded(&self) -> impl Iterator<Item = Cow<'_, [u8]>> + '_ {
        let map = self.spill.as_ref().and_then(|s| {
            let mapped = s.mapped.get_or_init(|| {
                // SAFETY: the file is this process's own, unlinked: no one
                // else can change it, and it is only ever appended to.
                let m = unsafe { memmap2::Mmap::map(&s.file) };
                m.ok().map(MappedFile::Mapped)
            });
            mapped.as_ref()
        });
        let mut released = 0usize;
        self.starts.iter().flatten().map(move |&(at, len)| {
            if let Some(m) = map
                && at as usize >= released + crate::store::RELEASE_EVERY
                && (at as usize) <= m.len()
            {
                m.release(released..at as usize);
                released = at as usize;
            }
            self.bytes_at(at, len)
        })
    }

    /// Every record, decoded (for a session that keeps the state).
    pub fn into_map(self) -> HashMap<String, TargetRecord> {
        let mut map = HashMap::default();
        map.reserve(self.len());
        for bytes in self.encoded() {
            let mut r = Reader {
                buf: &bytes,
                pos: 0,
            };
            if let Some((k, rec)) = get_target(&mut r, Layout::V2) {
                map.insert(k, rec);
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(run_id: &str) -> TargetRecord {
        crate::state::tests::target_record(Digest::of(run_id.as_bytes()), run_id)
    }

    #[test]
    fn new_records_are_found_by_key_and_the_last_of_a_key_wins() {
        let mut new = NewRecords::default();
        assert!(new.is_empty());
        for k in ["a", "b", "c"] {
            new.insert(k, &record(&format!("{k}-1")));
        }
        new.insert("b", &record("b-2"));
        assert_eq!(new.len(), 3);
        assert_eq!(new.get("b"), Some(record("b-2")));
        assert_eq!(new.get("a"), Some(record("a-1")));
        assert_eq!(new.get("nope"), None);
        assert!(new.contains("c") && !new.contains("d"));
        // each live record once, in the order added, as the state encodes it
        let keys: Vec<String> = (new.encoded())
            .map(|b| {
                get_target(&mut Reader { buf: &b, pos: 0 }, Layout::V2)
                    .unwrap()
                    .0
            })
            .collect();
        assert_eq!(keys, ["a", "c", "b"]);
        for b in new.encoded() {
            let mut w = Writer(Vec::new());
            let (k, rec) = get_target(&mut Reader { buf: &b, pos: 0 }, Layout::V2).unwrap();
            put_target(&mut w, &k, &rec);
            assert_eq!(w.0, &*b);
        }
        let map = new.into_map();
        assert_eq!(map.len(), 3);
        assert_eq!(map["b"], record("b-2"));
    }

    /// Spilled to a file, records read back as they were put, replaced
    /// ones too, whether found one by one or walked in bulk.
    #[test]
    fn spilled_records_are_the_records_kept_in_memory() {
        let t = tempfile::tempdir().unwrap();
        let dir = camino::Utf8Path::from_path(t.path()).unwrap();
        let mut kept = NewRecords::default();
        let mut spilled = NewRecords::spilling_in(dir, 10);
        spilled.spill_at = 1000; // a few records at a time
        for i in 0..200 {
            let (k, run) = (format!("t{}", i % 150), format!("run-{i}"));
            kept.insert(&k, &record(&run));
            spilled.insert(&k, &record(&run));
        }
        assert!(spilled.spilled() > 0 && spilled.tail.len() < 1000);
        assert_eq!(kept.spilled(), 0);
        assert_eq!(spilled.len(), 150);
        for i in 0..150 {
            let k = format!("t{i}");
            assert_eq!(spilled.get(&k), kept.get(&k), "{k}");
        }
        assert_eq!(spilled.get("t151"), None);
        let walk = |r: &NewRecords| r.encoded().map(|b| b.into_owned()).collect::<Vec<_>>();
        assert_eq!(walk(&spilled), walk(&kept));
        // (a record added after the walk mapped the file reads too)
        spilled.insert("late", &record("late"));
        assert_eq!(spilled.get("late"), Some(record("late")));
        assert_eq!(spilled.into_map().len(), 151);
    }
}
