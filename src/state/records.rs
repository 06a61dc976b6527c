//! Target records: those of the state as loaded ([`TargetRecords`], read
//! from the snapshot's bytes as they are asked for) and those a build makes
//! ([`NewRecords`], kept encoded as the state writes them).

use super::*;

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

fn key_hash(key: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(key)
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
/// in the module docs of `state`) in one buffer and found by key. At a
/// million targets a map of decoded records was 840 MB of a full build's
/// peak, the same records encoded 350 MB; and the save copies the bytes
/// into the log or the snapshot as they are.
#[derive(Debug, Default)]
pub struct NewRecords {
    bytes: Vec<u8>,
    /// Where each record starts in `bytes`, in the order added; `None`
    /// for one a later record of the same key replaced.
    starts: Vec<Option<usize>>,
    /// Positions in `starts`, hashed by the record's key.
    index: hashbrown::HashTable<u32>,
}

impl NewRecords {
    /// Adds the record of `key`, replacing any it had.
    pub fn insert(&mut self, key: &str, rec: &TargetRecord) {
        let at = self.bytes.len();
        let mut w = Writer(std::mem::take(&mut self.bytes));
        put_target(&mut w, key, rec);
        self.bytes = w.0;
        let hash = key_hash(key);
        let (bytes, starts) = (&self.bytes, &mut self.starts);
        let same =
            |&i: &u32| starts[i as usize].is_some_and(|s| record_key(bytes, s) == key.as_bytes());
        match self.index.find_mut(hash, same) {
            Some(i) => {
                starts[*i as usize] = None;
                *i = starts.len() as u32;
            }
            None => {
                let rehash = |&i: &u32| {
                    let s = starts[i as usize].expect("indexed records are live");
                    key_hash(std::str::from_utf8(record_key(bytes, s)).unwrap_or(""))
                };
                self.index.insert_unique(hash, starts.len() as u32, rehash);
            }
        }
        self.starts.push(Some(at));
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn start_of(&self, key: &str) -> Option<usize> {
        let same = |&i: &u32| {
            self.starts[i as usize].is_some_and(|s| record_key(&self.bytes, s) == key.as_bytes())
        };
        let i = *self.index.find(key_hash(key), same)?;
        self.starts[i as usize]
    }

    pub fn contains(&self, key: &str) -> bool {
        self.start_of(key).is_some()
    }

    /// The record of `key`, decoded.
    pub fn get(&self, key: &str) -> Option<TargetRecord> {
        let mut r = Reader {
            buf: &self.bytes,
            pos: self.start_of(key)?,
        };
        get_target(&mut r, Layout::V2).map(|(_, rec)| rec)
    }

    /// Each live record as encoded, in the order added.
    pub fn encoded(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.starts.iter().flatten().map(|&s| {
            let mut r = Reader {
                buf: &self.bytes,
                pos: s,
            };
            skip_target(&mut r, Layout::V2).expect("encoded by insert");
            &self.bytes[s..r.pos]
        })
    }

    /// Every record, decoded (for a session that keeps the state).
    pub fn into_map(self) -> HashMap<String, TargetRecord> {
        let mut map = HashMap::default();
        map.reserve(self.len());
        for bytes in self.encoded() {
            let mut r = Reader { buf: bytes, pos: 0 };
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
                get_target(&mut Reader { buf: b, pos: 0 }, Layout::V2)
                    .unwrap()
                    .0
            })
            .collect();
        assert_eq!(keys, ["a", "c", "b"]);
        for b in new.encoded() {
            let mut w = Writer(Vec::new());
            let (k, rec) = get_target(&mut Reader { buf: b, pos: 0 }, Layout::V2).unwrap();
            put_target(&mut w, &k, &rec);
            assert_eq!(w.0, b);
        }
        let map = new.into_map();
        assert_eq!(map.len(), 3);
        assert_eq!(map["b"], record("b-2"));
    }
}
