//! Freshness: the fast path that decides which targets are stale, in the
//! manner of cargo's `fingerprint` module.
//!
//! **What is compared.** For every target the state keeps the
//! [`TargetRecord`] of its last build: a digest of its configuration (the
//! template path, the resolved input paths and names, the `foreach` item, and
//! separately the model's hashed parameters), the BLAKE3 digest of every
//! file the compilation read (template, partials, verbatim files, inputs,
//! item), and the output digest of every upstream target it consumed. A
//! target is fresh when all of these are equal now and its output file still
//! has the recorded digest. Rendering is deterministic, so equal ingredients
//! give an equal compiled prompt and an equal InputBundleHash: a fresh target
//! needs neither rendering nor a store lookup. Upstream *output digests*
//! (not run ids) are compared, which gives early cutoff.
//!
//! **Stat cache.** File digests come from a cache of (size, mtime, ctime,
//! inode) → digest, like git's index, so a no-op build costs one `lstat` per
//! file. An entry is "racy" when the file's mtime was within [`RACY_FINE_NS`]
//! ([`RACY_NS`] on file systems with whole-second timestamps) of the moment
//! it was hashed (a second write within the same timestamp tick
//! would be invisible); racy entries are re-hashed every time until they
//! age out.
//!
//! **Never trusted blindly.** The state is only an accelerator: the store's
//! action cache holds the truth. A missing, truncated or corrupt state file
//! (checked by length and BLAKE3) is ignored, which costs a re-hash and a
//! render per target but never a wrong result.
//!
//! **Staleness reasons** are data ([`DirtyReason`]), produced only by
//! [`dirty_reason`] and rendered alike by `build --dry-run`, status and
//! explain.
//!
//! # File format of `.mkt/state`
//!
//! A snapshot, extended by the journal `.mkt/state.log` (see [`StateFiles`]
//! for its format): a build appends only what it changed.
//!
//! ```text
//! "MKTSTATE" | u32 version (=2; 1 is read too) | u64 body length | body | 32-byte BLAKE3 of body
//! body := u32 count, FILE*   | u32 count, ANALYSIS* | u32 count, TARGET*
//! FILE := str path | u64 size | i64 mtime_ns | i64 ctime_ns | u64 ino | u8 racy | digest
//! ANALYSIS := digest (of the template text) | refs(inputs) | u8 all_inputs
//!             | refs(targets) | refs(partials) | refs(verbatim) | u8 uses_item
//! refs := u32 count, (str name | u32 line)*
//! TARGET := str key | digest config | digest model | u32 n, (u8 kind | str path | digest)*
//!           | u32 n, (str key | digest)* | digest ibh | str output | digest output
//!           | str run_id | u8 failed | str answered_by
//! str := u32 length | UTF-8 bytes; integers little-endian; digest := 32 bytes
//! ```
//!
//! Version 1 had no `answered_by` (the model snapshot that answered, see
//! [`TargetRecord::answered_by`]): its records read with it empty, and the
//! next snapshot written is version 2.

pub use crate::fingerprint::{Dep, DepKind, DirtyReason, Fingerprint, TargetRecord, dirty_reason};
use crate::hash::Digest;
use crate::store::MappedFile;
use crate::template::{Ref, TemplateRefs};
use rustc_hash::FxHashMap as HashMap;

/// The hash the state's tables find a path or a target key by.
pub(crate) fn key_hash(key: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(key)
}

mod records;
mod stat_table;
use records::{IndexedRecords, Put, Records};
pub use records::{NewRecords, TargetRecords};
pub use stat_table::StatTable;

pub const STATE_MAGIC: &[u8; 8] = b"MKTSTATE";
pub const STATE_VERSION: u32 = 2;
/// Two seconds covers file systems with one- and two-second timestamps
/// (a file whose mtime has no sub-second part is assumed to be on one).
pub const RACY_NS: i64 = 2_000_000_000;
/// On file systems with nanosecond timestamps the kernel still stamps files
/// from a clock that ticks every 1-10 ms; 50 ms is a safe margin.
pub const RACY_FINE_NS: i64 = 50_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

impl FileStat {
    pub fn from_metadata(m: &std::fs::Metadata) -> FileStat {
        use std::os::unix::fs::MetadataExt;
        FileStat {
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatEntry {
    pub stat: FileStat,
    pub racy: bool,
    pub digest: Digest,
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Whether a file seen at `seen_at_ns` could still change without its
/// stat changing (module docs).
pub fn is_racy(stat: &FileStat, seen_at_ns: i64) -> bool {
    let window = if stat.mtime_ns % 1_000_000_000 == 0 {
        RACY_NS
    } else {
        RACY_FINE_NS
    };
    seen_at_ns - stat.mtime_ns < window
}

impl StatEntry {
    pub fn new(stat: FileStat, digest: Digest, hashed_at_ns: i64) -> StatEntry {
        StatEntry {
            stat,
            racy: is_racy(&stat, hashed_at_ns),
            digest,
        }
    }
}

/// The whole state file in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub files: HashMap<String, StatEntry>,
    pub analysis: HashMap<Digest, TemplateRefs>,
    pub targets: HashMap<String, TargetRecord>,
}

pub(crate) use crate::codec::{Reader, Writer};

/// What the state and the stamp add to the codec: a stat, template refs.
impl Writer {
    /// Size, mtime, ctime, inode: as the state and the stamp store a stat.
    pub(crate) fn file_stat(&mut self, st: &FileStat) {
        for v in [st.size, st.mtime_ns as u64, st.ctime_ns as u64, st.ino] {
            self.u64(v);
        }
    }
    pub(crate) fn refs(&mut self, refs: &[Ref]) {
        self.u32(refs.len() as u32);
        for r in refs {
            self.str(&r.name);
            self.u32(r.line);
        }
    }
}

impl Reader<'_> {
    fn skip_refs(&mut self) -> Option<()> {
        for _ in 0..self.count(8)? {
            self.skip_str()?;
            self.u32()?;
        }
        Some(())
    }
    pub(crate) fn file_stat(&mut self) -> Option<FileStat> {
        Some(FileStat {
            size: self.u64()?,
            mtime_ns: self.u64()? as i64,
            ctime_ns: self.u64()? as i64,
            ino: self.u64()?,
        })
    }
    pub(crate) fn refs(&mut self) -> Option<Vec<Ref>> {
        let n = self.count(8)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(Ref {
                name: self.str()?,
                line: self.u32()?,
            });
        }
        Some(v)
    }
}

fn put_file(w: &mut Writer, path: &str, e: &StatEntry) {
    w.str(path);
    w.file_stat(&e.stat);
    w.u8(e.racy as u8);
    w.digest(&e.digest);
}

fn get_file(r: &mut Reader<'_>) -> Option<(String, StatEntry)> {
    let path = r.str()?;
    let stat = r.file_stat()?;
    let racy = r.bool()?;
    let digest = r.digest()?;
    Some((path, StatEntry { stat, racy, digest }))
}

fn skip_file(r: &mut Reader<'_>) -> Option<()> {
    r.skip_str()?;
    r.take(8 * 4 + 1 + 32).map(drop)
}

fn put_analysis(w: &mut Writer, d: &Digest, r: &TemplateRefs) {
    w.digest(d);
    w.refs(&r.inputs);
    w.u8(r.all_inputs as u8);
    w.refs(&r.targets);
    w.refs(&r.partials);
    w.refs(&r.verbatim);
    w.u8(r.uses_item as u8);
}

fn get_analysis(r: &mut Reader<'_>) -> Option<(Digest, TemplateRefs)> {
    let d = r.digest()?;
    let refs = TemplateRefs {
        inputs: r.refs()?,
        all_inputs: r.bool()?,
        targets: r.refs()?,
        partials: r.refs()?,
        verbatim: r.refs()?,
        uses_item: r.bool()?,
    };
    Some((d, refs))
}

fn skip_analysis(r: &mut Reader<'_>) -> Option<()> {
    r.digest()?;
    r.skip_refs()?;
    r.bool()?;
    r.skip_refs()?;
    r.skip_refs()?;
    r.skip_refs()?;
    r.bool().map(drop)
}

/// The layout of a target record: version 1's lacks `answered_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    V1,
    V2,
}

impl Layout {
    fn of(version: u32) -> Option<Layout> {
        match version {
            1 => Some(Layout::V1),
            STATE_VERSION => Some(Layout::V2),
            _ => None,
        }
    }
}

/// Steps over a target record, checking its shape; returns its key, its
/// output digest and whether it failed.
fn skip_target<'a>(r: &mut Reader<'a>, layout: Layout) -> Option<(&'a [u8], Digest, bool)> {
    let n = r.u32()? as usize;
    let key = r.take(n)?;
    r.take(64)?;
    for _ in 0..r.count(1 + 4 + 32)? {
        DepKind::from_code(r.u8()?)?;
        r.skip_str()?;
        r.digest()?;
    }
    for _ in 0..r.count(4 + 32)? {
        r.skip_str()?;
        r.digest()?;
    }
    r.digest()?;
    r.skip_str()?;
    let output_digest = r.digest()?;
    r.skip_str()?;
    let failed = r.bool()?;
    if layout == Layout::V2 {
        r.skip_str()?;
    }
    Some((key, output_digest, failed))
}

fn put_target(w: &mut Writer, key: &str, t: &TargetRecord) {
    w.str(key);
    w.digest(&t.fingerprint.config);
    w.digest(&t.fingerprint.model);
    w.u32(t.fingerprint.deps.len() as u32);
    for d in &t.fingerprint.deps {
        w.u8(d.kind.code());
        w.str(&d.path);
        w.digest(&d.digest);
    }
    w.u32(t.fingerprint.upstream.len() as u32);
    for (k, d) in &t.fingerprint.upstream {
        w.str(k);
        w.digest(d);
    }
    w.digest(&t.ibh);
    w.str(&t.output);
    w.digest(&t.output_digest);
    w.str(&t.run_id);
    w.u8(t.failed as u8);
    w.str(&t.answered_by);
}

fn get_target(r: &mut Reader<'_>, layout: Layout) -> Option<(String, TargetRecord)> {
    let key = r.str()?;
    let config = r.digest()?;
    let model = r.digest()?;
    let nd = r.count(1 + 4 + 32)?;
    let mut deps = Vec::with_capacity(nd);
    for _ in 0..nd {
        deps.push(Dep {
            kind: DepKind::from_code(r.u8()?)?,
            path: r.str()?,
            digest: r.digest()?,
        });
    }
    let nu = r.count(4 + 32)?;
    let mut upstream = Vec::with_capacity(nu);
    for _ in 0..nu {
        upstream.push((r.str()?, r.digest()?));
    }
    let rec = TargetRecord {
        fingerprint: Fingerprint {
            config,
            model,
            deps,
            upstream,
        },
        ibh: r.digest()?,
        output: r.str()?,
        output_digest: r.digest()?,
        run_id: r.str()?,
        failed: r.bool()?,
        answered_by: match layout {
            Layout::V1 => String::new(),
            Layout::V2 => r.str()?,
        },
    };
    Some((key, rec))
}

const FILE_MIN: usize = 4 + 8 * 4 + 1 + 32;
const ANALYSIS_MIN: usize = 32 + 4 * 4 + 2;
const TARGET_MIN: usize = 4 + 64 + 8 + 32 + 4 + 32 + 4 + 1;

impl State {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_to(&mut v)
            .expect("writing to a Vec cannot fail");
        v
    }

    /// Writes the encoding to `out` in chunks (see [`encode_parts_to`]).
    pub fn encode_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<(u64, Digest)> {
        let targets = |put: &mut dyn FnMut(Put<'_>) -> std::io::Result<()>| {
            for (k, t) in &self.targets {
                put(Put::Decoded(k, t))?;
            }
            Ok(())
        };
        encode_parts_to(
            &|| self.files.iter().map(|(p, e)| (p.as_str(), e)),
            &self.analysis,
            &targets,
            out,
        )
    }

    /// Decodes a state file; `None` for anything but a complete, intact file
    /// of this version.
    pub fn decode(bytes: &[u8]) -> Option<State> {
        let (body, layout) = State::body(bytes)?;
        let mut r = Reader { buf: body, pos: 0 };
        let mut st = State::default();
        let n = r.count(FILE_MIN)?;
        st.files.reserve(n);
        for _ in 0..n {
            let (path, e) = get_file(&mut r)?;
            st.files.insert(path, e);
        }
        let n = r.count(ANALYSIS_MIN)?;
        for _ in 0..n {
            let (d, refs) = get_analysis(&mut r)?;
            st.analysis.insert(d, refs);
        }
        let n = r.count(TARGET_MIN)?;
        st.targets.reserve(n);
        for _ in 0..n {
            let (key, rec) = get_target(&mut r, layout)?;
            st.targets.insert(key, rec);
        }
        (r.pos == body.len()).then_some(st)
    }

    /// The body of an intact state file of a version this reads, and the
    /// layout of its target records.
    fn body(bytes: &[u8]) -> Option<(&[u8], Layout)> {
        State::body_with(bytes, Digest::of)
    }

    /// [`State::body`], hashing the body with `digest`.
    fn body_with(bytes: &[u8], digest: impl Fn(&[u8]) -> Digest) -> Option<(&[u8], Layout)> {
        let mut r = Reader { buf: bytes, pos: 0 };
        if r.take(8)? != STATE_MAGIC {
            return None;
        }
        let layout = Layout::of(r.u32()?)?;
        let len = usize::try_from(r.u64()?).ok()?;
        let body = r.take(len)?;
        let sum = r.digest()?;
        (r.pos == bytes.len() && digest(body) == sum).then_some((body, layout))
    }
}

/// Writes a state file, returning its length and checksum.
type EncodeState<'a> = dyn Fn(&mut dyn std::io::Write) -> std::io::Result<(u64, Digest)> + 'a;

/// Hands each target record a snapshot holds to the function it is given.
type PutTargets<'a> =
    dyn Fn(&mut dyn FnMut(Put<'_>) -> std::io::Result<()>) -> std::io::Result<()> + 'a;

/// Writes a state file of `files`, `analysis` and the records `targets`
/// puts to `out` in chunks, never holding it whole (at 10,000 targets of
/// a layered pipeline it is 13 MB, a fifth of the build's peak memory when
/// it was one buffer). The body is encoded twice: once to learn its length
/// and its count of records, which come before them, once to write it.
/// Returns the bytes written and the checksum.
fn encode_parts_to<'f, F: Iterator<Item = (&'f str, &'f StatEntry)>>(
    files: &dyn Fn() -> F,
    analysis: &HashMap<Digest, TemplateRefs>,
    targets: &PutTargets<'_>,
    out: &mut dyn std::io::Write,
) -> std::io::Result<(u64, Digest)> {
    const CHUNK: usize = 64 * 1024;
    let mut count = 0u32;
    targets(&mut |_| {
        count += 1;
        Ok(())
    })?;
    let body = |emit: &mut dyn FnMut(&[u8]) -> std::io::Result<()>| {
        let mut w = Writer(Vec::with_capacity(CHUNK + 4096));
        let mut flush = |w: &mut Writer, force: bool| {
            if force || w.0.len() >= CHUNK {
                let r = emit(&w.0);
                w.0.clear();
                return r;
            }
            Ok(())
        };
        w.u32(files().count() as u32);
        for (path, e) in files() {
            put_file(&mut w, path, e);
            flush(&mut w, false)?;
        }
        w.u32(analysis.len() as u32);
        for (d, r) in analysis {
            put_analysis(&mut w, d, r);
            flush(&mut w, false)?;
        }
        w.u32(count);
        targets(&mut |t| {
            match t {
                Put::Encoded(bytes) => w.0.extend_from_slice(bytes),
                Put::Decoded(key, rec) => put_target(&mut w, key, rec),
            }
            flush(&mut w, false)
        })?;
        flush(&mut w, true)
    };
    let mut len = 0u64;
    body(&mut |c| {
        len += c.len() as u64;
        Ok(())
    })?;
    let mut head = Writer(Vec::with_capacity(20));
    head.0.extend_from_slice(STATE_MAGIC);
    head.u32(STATE_VERSION);
    head.u64(len);
    out.write_all(&head.0)?;
    let mut h = blake3::Hasher::new();
    body(&mut |c| {
        h.update(c);
        out.write_all(c)
    })?;
    let sum = Digest(*h.finalize().as_bytes());
    out.write_all(&sum.0)?;
    Ok((head.0.len() as u64 + len + 32, sum))
}

/// Which parts of the state a reader wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sections {
    All,
    /// Only the target records (see [`StateFiles::load_records`]).
    TargetsOnly,
}

/// What one build learnt, to be added to the state: new or changed stat
/// cache entries, analyses and target records.
/// It borrows: a build's delta can be most of the state.
#[derive(Debug, Default)]
pub struct StateDelta<'a> {
    pub files: Vec<(&'a str, &'a StatEntry)>,
    pub analysis: Vec<(&'a Digest, &'a TemplateRefs)>,
    pub targets: Option<&'a NewRecords>,
}

/// The tag of a target record in the log; 3 was version 1's.
const TARGET_V2: u8 = 4;

impl StateDelta<'_> {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
            && self.analysis.is_empty()
            && self.targets.is_none_or(|t| t.is_empty())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        for (p, e) in &self.files {
            w.u8(1);
            put_file(&mut w, p, e);
        }
        for (d, r) in &self.analysis {
            w.u8(2);
            put_analysis(&mut w, d, r);
        }
        for t in self.targets.iter().flat_map(|t| t.encoded()) {
            w.u8(TARGET_V2);
            w.0.extend_from_slice(&t);
        }
        w.0
    }

    /// Applies an encoded delta; `None` if it is not one.
    fn apply(st: &mut State, body: &[u8], sections: Sections) -> Option<()> {
        let mut r = Reader { buf: body, pos: 0 };
        let mut out = State::default();
        let all = sections == Sections::All;
        while r.pos < body.len() {
            match r.u8()? {
                1 if all => {
                    let (p, e) = get_file(&mut r)?;
                    out.files.insert(p, e);
                }
                1 => skip_file(&mut r)?,
                2 if all => {
                    let (d, a) = get_analysis(&mut r)?;
                    out.analysis.insert(d, a);
                }
                2 => skip_analysis(&mut r)?,
                // (a version 1 record, appended by an older mkt)
                3 => {
                    let (k, t) = get_target(&mut r, Layout::V1)?;
                    out.targets.insert(k, t);
                }
                TARGET_V2 => {
                    let (k, t) = get_target(&mut r, Layout::V2)?;
                    out.targets.insert(k, t);
                }
                _ => return None,
            }
        }
        // all or nothing: a record is applied only once it decoded whole
        st.files.extend(out.files);
        st.analysis.extend(out.analysis);
        st.targets.extend(out.targets);
        Some(())
    }
}

/// The state on disk: a snapshot (`state`) plus a journal of deltas
/// (`state.log`) appended by later builds, so that a build which changed
/// one target writes a few hundred bytes, not the whole snapshot.
///
/// `state.log` := `"MKTSLOG1"` | 32-byte checksum of the snapshot it extends
/// | RECORD* ; RECORD := u64 length | delta | 32-byte BLAKE3 of the delta.
/// Reading stops at the first record that is cut short or fails its
/// checksum; the next append first truncates the log there. A log whose
/// header names another snapshot is ignored. When the log grows past half
/// the snapshot's size, the next save writes a new snapshot and drops it.
///
/// Which records were read is named by [`StateFiles::tip`]: the snapshot's
/// checksum, the length of the log that replayed and its last record's
/// checksum. A no-op stamp records the tip its build saved, and vouches for
/// no record unless the state read is that one (`stamp.rs`): a log cut
/// short or removed reverts records to older ones, each consistent alone.
pub struct StateFiles {
    dir: camino::Utf8PathBuf,
    /// Checksum of the snapshot read (zero when there was none).
    base_id: Digest,
    base_len: u64,
    /// Bytes of the log that decoded cleanly (0: no usable log).
    log_len: u64,
    /// Checksum of the log's last record that decoded (zero: none).
    last_record: Digest,
}

const LOG_MAGIC: &[u8; 8] = b"MKTSLOG1";

impl StateFiles {
    /// Reads the snapshot and its log from `dir` (`.mkt/`). Anything
    /// unreadable yields an empty state, never an error.
    pub fn load(dir: &camino::Utf8Path) -> (StateFiles, State) {
        let mut files = StateFiles::none(dir);
        let base = crate::store::map_replaced(&dir.join(crate::layout::STATE));
        let Some(mut st) = base.as_deref().ok().and_then(State::decode) else {
            return (files, State::default());
        };
        files.found_base(&base.unwrap_or(MappedFile::Owned(Vec::new())));
        if let Ok(log) = std::fs::read(dir.join(crate::layout::STATE_LOG)) {
            (files.log_len, files.last_record) =
                replay_log(&log, &files.base_id, &mut st, Sections::All);
        }
        (files, st)
    }

    /// Reads only the target records, each decoded when first asked for:
    /// for an incremental build whose no-op stamp vouches for every file
    /// and whose graph comes from its cache, which needs neither the stat
    /// cache nor the analyses (a third and a tenth of the file), and only
    /// the records of the nodes it visits.
    pub fn load_records(dir: &camino::Utf8Path) -> (StateFiles, TargetRecords) {
        let mut files = StateFiles::none(dir);
        let base = crate::store::map_replaced_lazily(&dir.join(crate::layout::STATE));
        let Some(mut ix) = base.ok().and_then(IndexedRecords::new) else {
            return (files, HashMap::default().into());
        };
        files.found_base(&ix.bytes);
        if let Ok(log) = std::fs::read(dir.join(crate::layout::STATE_LOG)) {
            let mut st = State::default();
            (files.log_len, files.last_record) =
                replay_log(&log, &files.base_id, &mut st, Sections::TargetsOnly);
            ix.newer = st.targets;
        }
        (files, TargetRecords(Records::Indexed(Box::new(ix))))
    }

    fn none(dir: &camino::Utf8Path) -> StateFiles {
        StateFiles {
            dir: dir.to_owned(),
            base_id: Digest::default(),
            base_len: 0,
            log_len: 0,
            last_record: Digest::default(),
        }
    }

    /// Names the records read, or last saved, through this handle: equal
    /// tips, equal records (see the type's note).
    pub fn tip(&self) -> Digest {
        let mut b = Vec::with_capacity(8 + 32 + 8 + 32);
        b.extend_from_slice(b"mkt.tip1");
        b.extend_from_slice(&self.base_id.0);
        b.extend_from_slice(&self.log_len.to_le_bytes());
        b.extend_from_slice(&self.last_record.0);
        Digest::of(&b)
    }

    /// Notes the intact snapshot `base` as the one the log extends.
    fn found_base(&mut self, base: &[u8]) {
        self.base_len = base.len() as u64;
        self.base_id = Digest(
            base[base.len() - 32..]
                .try_into()
                .expect("an intact state ends in a checksum"),
        );
    }

    /// Whether the next save must be a snapshot (there is none to extend).
    pub fn needs_snapshot(&self) -> bool {
        self.base_len == 0
    }

    /// Appends an encoded [`StateDelta`] to the log. `Ok(false)` means a
    /// snapshot is due instead (there is none yet, or the log would pass
    /// half the snapshot's size): call [`StateFiles::snapshot`].
    pub fn append(&mut self, body: &[u8]) -> crate::error::Result<bool> {
        use std::io::{Seek, Write};
        if self.base_len == 0
            || (self.log_len + body.len() as u64) * 2 > self.base_len.max(64 * 1024)
        {
            return Ok(false);
        }
        let log_path = self.dir.join(crate::layout::STATE_LOG);
        let io = |e| crate::error::Error::io("write", &log_path, e);
        let mut opts = std::fs::OpenOptions::new();
        let mut f = crate::store::open_in_place(
            opts.create(true).truncate(false).write(true),
            &log_path,
            "write",
        )?;
        let mut rec = Vec::with_capacity(body.len() + 48 + 40);
        if self.log_len == 0 {
            f.set_len(0).map_err(io)?;
            rec.extend_from_slice(LOG_MAGIC);
            rec.extend_from_slice(&self.base_id.0);
        } else {
            // drop a torn tail left by an interrupted append
            f.set_len(self.log_len).map_err(io)?;
        }
        f.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        rec.extend_from_slice(&(body.len() as u64).to_le_bytes());
        rec.extend_from_slice(body);
        let sum = Digest::of(body);
        rec.extend_from_slice(&sum.0);
        f.write_all(&rec).map_err(io)?;
        self.log_len += rec.len() as u64;
        self.last_record = sum;
        Ok(true)
    }

    /// Writes `st` as the new snapshot (streamed to a temp file beside it,
    /// renamed into place) and drops the log.
    pub fn snapshot(&mut self, st: &State) -> crate::error::Result<()> {
        self.snapshot_with(&|w| st.encode_to(w))
    }

    /// Writes a new snapshot of `files`, `analysis`, and the records of
    /// `new` over those of `old`, without decoding either, and drops the
    /// log.
    pub fn snapshot_over(
        &mut self,
        files: &StatTable,
        analysis: &HashMap<Digest, TemplateRefs>,
        new: &NewRecords,
        old: &TargetRecords,
    ) -> crate::error::Result<()> {
        let targets = |put: &mut dyn FnMut(Put<'_>) -> std::io::Result<()>| {
            old.put_each(&|k| new.contains(k), put)?;
            new.encoded().try_for_each(|b| put(Put::Encoded(&b)))
        };
        self.snapshot_with(&|w| encode_parts_to(&|| files.iter(), analysis, &targets, w))
    }

    fn snapshot_with(&mut self, encode: &EncodeState<'_>) -> crate::error::Result<()> {
        use std::io::Write;
        let path = self.dir.join(crate::layout::STATE);
        let io = |e| crate::error::Error::io("write", &path, e);
        // (readable as any file mkt writes: another user sharing the
        // project would otherwise read no state, and hash every file again)
        let tmp = crate::store::temp_in(&self.dir).map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(256 * 1024, tmp);
        let (len, sum) = encode(&mut w).map_err(io)?;
        w.flush().map_err(io)?;
        let tmp = w.into_inner().map_err(|e| io(e.into_error()))?;
        // renamed over the old one (not unlinked first, as the caches are):
        // the state holds the only copy of the target records
        tmp.persist(&path).map_err(|e| io(e.error))?;
        let _ = std::fs::remove_file(self.dir.join(crate::layout::STATE_LOG));
        // the next append extends this snapshot
        self.base_id = sum;
        self.base_len = len;
        self.log_len = 0;
        self.last_record = Digest::default();
        Ok(())
    }
}

/// Applies the log's intact records to `st`; returns how many bytes of it
/// are intact (0 if the header is wrong) and the last one's checksum.
fn replay_log(log: &[u8], base_id: &Digest, st: &mut State, sections: Sections) -> (u64, Digest) {
    let mut r = Reader { buf: log, pos: 0 };
    match (r.take(8), r.digest()) {
        (Some(m), Some(id)) if m == LOG_MAGIC && id == *base_id => {}
        _ => return (0, Digest::default()),
    }
    let mut good = r.pos;
    let mut last = Digest::default();
    while let Some(len) = r.u64().and_then(|l| usize::try_from(l).ok()) {
        let (Some(body), Some(sum)) = (r.take(len), r.digest()) else {
            break;
        };
        if Digest::of(body) != sum || StateDelta::apply(st, body, sections).is_none() {
            break;
        }
        good = r.pos;
        last = sum;
    }
    (good as u64, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose digests are all `d` (shared by the tests of the
    /// state's parts).
    pub(super) fn target_record(d: Digest, run_id: &str) -> TargetRecord {
        TargetRecord {
            fingerprint: Fingerprint {
                config: d,
                model: d,
                deps: vec![Dep {
                    kind: DepKind::Input,
                    path: "docs/a.md".into(),
                    digest: d,
                }],
                upstream: vec![("outline".into(), d)],
            },
            ibh: d,
            output: format!("out/{run_id}.md"),
            output_digest: d,
            run_id: run_id.into(),
            failed: false,
            answered_by: "gpt-4o-mini-2024-07-18".into(),
        }
    }

    fn sample() -> State {
        let mut st = State::default();
        let d = Digest::of(b"a");
        let stat = FileStat {
            size: 3,
            mtime_ns: 1_700_000_000_000_000_000,
            ctime_ns: 5,
            ino: 42,
        };
        st.files
            .insert("docs/a.md".into(), StatEntry::new(stat, d, now_ns()));
        st.analysis.insert(
            d,
            TemplateRefs {
                inputs: vec![Ref {
                    name: "doc".into(),
                    line: 3,
                }],
                targets: vec![Ref {
                    name: "outline".into(),
                    line: 1,
                }],
                uses_item: true,
                ..Default::default()
            },
        );
        let mut rec = target_record(d, "r1");
        rec.output = "out/s.md".into();
        st.targets.insert("summary".into(), rec);
        st
    }

    /// Saves one target record the way a build does: appended, or as a
    /// snapshot of `full()` when one is due.
    fn save(sf: &mut StateFiles, key: &str, full: impl FnOnce() -> State) {
        let mut rec = sample().targets["summary"].clone();
        rec.run_id = format!("run-{key}");
        let mut new = NewRecords::default();
        new.insert(key, &rec);
        let delta = StateDelta {
            targets: Some(&new),
            ..Default::default()
        };
        if !sf.append(&delta.encode()).unwrap() {
            sf.snapshot(&full()).unwrap();
        }
    }

    /// A long-running process (`mkt watch`) keeps one `StateFiles` across
    /// saves: each append and snapshot must leave it describing the files
    /// as they now are.
    #[test]
    fn one_state_files_serves_many_saves() {
        let t = tempfile::tempdir().unwrap();
        let dir = camino::Utf8Path::from_path(t.path()).unwrap();
        let (mut sf, _) = StateFiles::load(dir);
        save(&mut sf, "x", sample); // a snapshot
        for k in ["a", "b", "c"] {
            save(&mut sf, k, || unreachable!("no compaction"));
        }
        let (_, st) = StateFiles::load(dir);
        let mut keys: Vec<_> = st.targets.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["a", "b", "c", "summary"]);
        // a snapshot, then more appends on top of it
        sf.snapshot(&st).unwrap();
        save(&mut sf, "d", || unreachable!("no compaction"));
        assert_eq!(StateFiles::load(dir).1.targets.len(), 5);
    }

    /// The snapshot is created as any file a program creates (0666 less the
    /// umask), as the store's other files are, not tempfile's 0600.
    #[test]
    fn a_snapshot_is_as_readable_as_any_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let dir = camino::Utf8Path::from_path(t.path()).unwrap();
        let (mut sf, _) = StateFiles::load(dir);
        sf.snapshot(&sample()).unwrap();
        let mode = |p: &camino::Utf8Path| std::fs::metadata(p).unwrap().permissions().mode();
        std::fs::File::create(dir.join("plain")).unwrap();
        assert_eq!(
            format!("{:o}", mode(&dir.join("state")) & 0o777),
            format!("{:o}", mode(&dir.join("plain")) & 0o777)
        );
    }

    /// Reading only the target records, one by one, gives the records a
    /// whole read gives, from the snapshot and its log alike.
    #[test]
    fn records_read_one_by_one_are_the_records_of_a_whole_read() {
        let t = tempfile::tempdir().unwrap();
        let dir = camino::Utf8Path::from_path(t.path()).unwrap();
        let (mut sf, _) = StateFiles::load(dir);
        let mut st = sample();
        for k in ["b", "c", "d"] {
            let mut rec = st.targets["summary"].clone();
            rec.run_id = format!("old-{k}");
            st.targets.insert(k.to_string(), rec);
        }
        sf.snapshot(&st).unwrap();
        save(&mut sf, "a", || unreachable!("no compaction"));
        save(&mut sf, "c", || unreachable!("no compaction")); // replaces one
        let (_, all) = StateFiles::load(dir);
        assert_eq!(all.targets.len(), 5);
        assert_eq!(all.targets["c"].run_id, "run-c");
        let (_, records) = StateFiles::load_records(dir);
        for (k, rec) in &all.targets {
            assert_eq!(records.output(k), Some((rec.output_digest, rec.failed)));
            assert_eq!(records.get(k), Some(rec), "{k}");
            assert_eq!(records.output(k), Some((rec.output_digest, rec.failed)));
        }
        assert_eq!(records.get("nope"), None);
        assert_eq!(records.iter().count(), 5);
        assert_eq!(records.into_map(), all.targets);
    }

    /// A build's new records written over the old ones, without decoding
    /// either, make the snapshot the decoded maps make: whether the old
    /// records are decoded, read from a snapshot with a log, or from a
    /// version 1 snapshot.
    #[test]
    fn a_snapshot_over_old_records_is_the_snapshot_of_the_merged_maps() {
        let t = tempfile::tempdir().unwrap();
        let dir = camino::Utf8Path::from_path(t.path()).unwrap();
        let mut old = sample();
        for k in ["b", "c"] {
            let mut rec = old.targets["summary"].clone();
            rec.run_id = format!("old-{k}");
            rec.answered_by.clear(); // (as version 1 could hold it)
            old.targets.insert(k.to_string(), rec);
        }
        old.targets.get_mut("summary").unwrap().answered_by.clear();
        let mut new = NewRecords::default();
        let mut want = old.clone();
        for k in ["a", "c"] {
            let mut rec = old.targets["summary"].clone();
            rec.run_id = format!("new-{k}");
            new.insert(k, &rec);
            want.targets.insert(k.to_string(), rec);
        }
        let mut files = StatTable::default();
        for (p, e) in &old.files {
            files.insert(p, *e);
        }
        let read_back = |sf: &mut StateFiles, olds: &TargetRecords| {
            sf.snapshot_over(&files, &old.analysis, &new, olds).unwrap();
            let bytes = std::fs::read(dir.join("state")).unwrap();
            State::decode(&bytes).expect("an intact snapshot")
        };
        let (mut sf, _) = StateFiles::load(dir);
        let decoded = TargetRecords::from(old.targets.clone());
        assert_eq!(read_back(&mut sf, &decoded), want, "decoded");
        // from a snapshot and a log that replaces one of its records
        let mut older = old.clone();
        older.targets.get_mut("b").unwrap().run_id = "older-b".into();
        sf.snapshot(&older).unwrap();
        save(&mut sf, "b", || unreachable!("no compaction"));
        want.targets.get_mut("b").unwrap().run_id = "run-b".into();
        want.targets.get_mut("b").unwrap().answered_by = "gpt-4o-mini-2024-07-18".into();
        let (mut sf, indexed) = StateFiles::load_records(dir);
        assert_eq!(read_back(&mut sf, &indexed), want, "indexed");
        drop(indexed);
        std::fs::write(dir.join("state"), encode_v1(&old)).unwrap();
        let _ = std::fs::remove_file(dir.join("state.log"));
        want.targets.insert("b".into(), old.targets["b"].clone());
        let (mut sf, v1) = StateFiles::load_records(dir);
        assert_eq!(read_back(&mut sf, &v1), want, "version 1");
    }

    /// A damaged snapshot gives no records (never a panic, never a wrong
    /// one): the build then treats every target as never built.
    #[test]
    fn records_of_a_cut_or_corrupt_snapshot_are_none() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(
                IndexedRecords::new(MappedFile::Owned(bytes[..cut].to_vec())).is_none(),
                "cut at {cut}"
            );
        }
        for bad in crate::faults::corruptions(&bytes, 300, 7) {
            if let Some(ix) = IndexedRecords::new(MappedFile::Owned(bad)) {
                assert_eq!(ix.get("summary"), sample().targets.get("summary"));
            }
        }
    }

    #[test]
    fn the_tip_names_the_records_read_and_changes_with_every_save() {
        let t = tempfile::tempdir().unwrap();
        let dir = camino::Utf8Path::from_path(t.path()).unwrap();
        let (mut sf, _) = StateFiles::load(dir);
        let mut tips = vec![sf.tip()];
        save(&mut sf, "x", sample); // a snapshot
        tips.push(sf.tip());
        save(&mut sf, "a", || unreachable!());
        tips.push(sf.tip());
        save(&mut sf, "b", || unreachable!());
        tips.push(sf.tip());
        // what a save leaves is what a later load reads
        assert_eq!(StateFiles::load(dir).0.tip(), tips[3]);
        assert_eq!(StateFiles::load_records(dir).0.tip(), tips[3]);
        let mut distinct = tips.clone();
        distinct.sort_by_key(|d| d.0);
        distinct.dedup();
        assert_eq!(distinct.len(), tips.len(), "every save has its own tip");
        // a journal cut back to a record boundary, or removed, reads as
        // the older records it holds: never as the newest
        let log = std::fs::read(dir.join("state.log")).unwrap();
        let first_end = log.len() - (log.len() - 40) / 2;
        std::fs::write(dir.join("state.log"), &log[..first_end]).unwrap();
        assert_eq!(StateFiles::load(dir).0.tip(), tips[2]);
        std::fs::remove_file(dir.join("state.log")).unwrap();
        assert_eq!(StateFiles::load(dir).0.tip(), tips[1]);
        // the same length of another record is another tip
        let mut other = log.clone();
        let n = other.len();
        let at = (first_end..n)
            .find(|&i| other[i..].starts_with(b"run-b"))
            .expect("the last record's run id");
        other[at + 4] = b'z'; // another run id, and a checksum to match
        let sum = Digest::of(&other[first_end + 8..n - 32]);
        other[n - 32..].copy_from_slice(&sum.0);
        std::fs::write(dir.join("state.log"), &other).unwrap();
        let (files, st) = StateFiles::load(dir);
        assert_eq!(st.targets.len(), 3, "the altered record still decodes");
        assert_ne!(files.tip(), tips[3]);
    }

    #[test]
    fn journal_appends_and_replays_and_survives_every_truncation() {
        let t = tempfile::tempdir().unwrap();
        let dir = camino::Utf8Path::from_path(t.path()).unwrap();
        // no snapshot yet: the first save writes one
        let (mut sf, st) = StateFiles::load(dir);
        assert_eq!(st, State::default());
        save(&mut sf, "x", sample);
        assert!(dir.join("state").is_file() && !dir.join("state.log").exists());
        let (mut base_files, base) = StateFiles::load(dir);
        assert_eq!(base, sample());
        // small deltas go to the log
        save(&mut base_files, "a", || unreachable!("no compaction"));
        let (mut sf, st) = StateFiles::load(dir);
        save(&mut sf, "b", || unreachable!("no compaction"));
        let (_, st2) = StateFiles::load(dir);
        assert_eq!(st2.targets.len(), 3);
        assert_eq!(st2.targets["a"].run_id, "run-a");
        assert_eq!(st.targets.len(), 2);

        // every cut of the log gives the snapshot plus the whole records
        // before the cut, never a panic
        let log = std::fs::read(dir.join("state.log")).unwrap();
        let first_end = log.len() - (log.len() - 40) / 2; // two equal-size records
        for cut in 0..log.len() {
            std::fs::write(dir.join("state.log"), &log[..cut]).unwrap();
            let (_, st) = StateFiles::load(dir);
            let want = if cut == log.len() {
                3
            } else if cut >= first_end {
                2
            } else {
                1
            };
            assert_eq!(st.targets.len(), want, "cut at {cut}");
        }
        // an append after a torn tail drops the tail first
        std::fs::write(dir.join("state.log"), &log[..first_end + 7]).unwrap();
        let (mut sf, _) = StateFiles::load(dir);
        save(&mut sf, "c", || unreachable!());
        let (_, st) = StateFiles::load(dir);
        let mut keys: Vec<_> = st.targets.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["a", "c", "summary"]);
        // a log written for another snapshot is ignored
        let mut other = log.clone();
        other[8] ^= 1;
        std::fs::write(dir.join("state.log"), &other).unwrap();
        assert_eq!(StateFiles::load(dir).1, sample());
    }

    #[test]
    fn round_trip() {
        let st = sample();
        assert_eq!(State::decode(&st.encode()), Some(st));
    }

    /// A version 1 file: what [`State::encode`] wrote before records had
    /// `answered_by` (which must be empty in `st`).
    fn encode_v1(st: &State) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        w.u32(st.files.len() as u32);
        for (p, e) in &st.files {
            put_file(&mut w, p, e);
        }
        w.u32(st.analysis.len() as u32);
        for (d, r) in &st.analysis {
            put_analysis(&mut w, d, r);
        }
        w.u32(st.targets.len() as u32);
        for (k, t) in &st.targets {
            assert!(t.answered_by.is_empty());
            put_target(&mut w, k, t);
            w.0.truncate(w.0.len() - 4); // the empty `answered_by`
        }
        let mut out = STATE_MAGIC.to_vec();
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&(w.0.len() as u64).to_le_bytes());
        out.extend_from_slice(&w.0);
        out.extend_from_slice(&Digest::of(&w.0).0);
        out
    }

    /// A state written before records had `answered_by` (version 1, and
    /// version 1 records in the log) still reads, whole and one record at
    /// a time, with `answered_by` empty; the next records appended to its
    /// log are of version 2, and read back alongside.
    #[test]
    fn a_version_1_state_and_log_still_read() {
        let mut old = sample();
        for rec in old.targets.values_mut() {
            rec.answered_by.clear();
        }
        let v1 = encode_v1(&old);
        assert_eq!(State::decode(&v1), Some(old.clone()));
        let t = tempfile::tempdir().unwrap();
        let dir = camino::Utf8Path::from_path(t.path()).unwrap();
        std::fs::write(dir.join("state"), &v1).unwrap();
        // a version 1 log record (tag 3), as an older mkt appended it
        let mut rec = old.targets["summary"].clone();
        rec.run_id = "old-log".into();
        let mut w = Writer(Vec::new());
        w.u8(3);
        put_target(&mut w, "logged", &rec);
        w.0.truncate(w.0.len() - 4);
        let mut log = LOG_MAGIC.to_vec();
        log.extend_from_slice(&v1[v1.len() - 32..]);
        log.extend_from_slice(&(w.0.len() as u64).to_le_bytes());
        log.extend_from_slice(&w.0);
        log.extend_from_slice(&Digest::of(&w.0).0);
        std::fs::write(dir.join("state.log"), &log).unwrap();
        let (mut sf, st) = StateFiles::load(dir);
        assert_eq!(st.targets["logged"], rec);
        assert_eq!(st.targets["summary"], old.targets["summary"]);
        // this mkt appends a version 2 record to the old snapshot's log
        let mut new = sample().targets["summary"].clone();
        new.run_id = "new-log".into();
        let mut records = NewRecords::default();
        records.insert("fresh", &new);
        let delta = StateDelta {
            targets: Some(&records),
            ..Default::default()
        };
        assert!(sf.append(&delta.encode()).unwrap());
        let (_, records) = StateFiles::load_records(dir);
        assert_eq!(records.get("fresh"), Some(&new));
        assert_eq!(records.get("logged"), Some(&rec));
        assert_eq!(records.get("summary"), old.targets.get("summary"));
        assert_eq!(records.output("summary").map(|o| o.1), Some(false));
    }

    /// ninja-style: every truncation of a valid file is rejected, never a
    /// panic and never a partial state.
    #[test]
    fn every_truncation_and_bit_flip_is_rejected() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert_eq!(State::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert_eq!(State::decode(&b), None, "flip at {i}");
        }
    }

    #[test]
    fn racy_entries_are_marked() {
        let stat = FileStat {
            size: 1,
            mtime_ns: now_ns(),
            ctime_ns: 0,
            ino: 1,
        };
        assert!(StatEntry::new(stat, Digest::default(), now_ns()).racy);
        let old = FileStat {
            mtime_ns: now_ns() - 10 * RACY_NS,
            ..stat
        };
        assert!(!StatEntry::new(old, Digest::default(), now_ns()).racy);
    }

    #[test]
    fn reasons_name_what_changed() {
        let st = sample();
        let rec = st.targets.get("summary");
        let mut now = rec.unwrap().fingerprint.clone();
        let out = Some(Digest::of(b"a"));
        assert_eq!(dirty_reason(rec, &now, "out/s.md", out), None);
        assert_eq!(
            dirty_reason(None, &now, "out/s.md", out),
            Some(DirtyReason::NeverBuilt)
        );
        assert_eq!(
            dirty_reason(rec, &now, "out/s.md", None)
                .unwrap()
                .to_string(),
            "output `out/s.md` missing"
        );
        assert_eq!(
            dirty_reason(rec, &now, "out/s.md", Some(Digest::of(b"b")))
                .unwrap()
                .to_string(),
            "output `out/s.md` edited since it was built"
        );
        now.upstream[0].1 = Digest::of(b"new");
        assert_eq!(
            dirty_reason(rec, &now, "out/s.md", out)
                .unwrap()
                .to_string(),
            "upstream `outline` output changed"
        );
        now.deps[0].digest = Digest::of(b"new");
        assert_eq!(
            dirty_reason(rec, &now, "out/s.md", out)
                .unwrap()
                .to_string(),
            "input `docs/a.md` changed"
        );
        now.deps[0].digest = Digest::of(b"a");
        now.upstream[0].1 = Digest::of(b"a");
        now.upstream
            .push(("summary[b.md]".into(), Digest::default()));
        assert_eq!(
            dirty_reason(rec, &now, "out/s.md", out)
                .unwrap()
                .to_string(),
            "upstream `summary[b.md]` added"
        );
        now.upstream.clear();
        assert_eq!(
            dirty_reason(rec, &now, "out/s.md", out)
                .unwrap()
                .to_string(),
            "upstream `outline` removed"
        );
        now.upstream = rec.unwrap().fingerprint.upstream.clone();
        now.deps.push(Dep {
            kind: DepKind::Partial,
            path: "p.md".into(),
            digest: Digest::default(),
        });
        now.deps[0].digest = Digest::of(b"a");
        assert_eq!(
            dirty_reason(rec, &now, "out/s.md", out)
                .unwrap()
                .to_string(),
            "partial `p.md` added"
        );
        now.deps.remove(1);
        now.deps.remove(0);
        assert_eq!(
            dirty_reason(rec, &now, "out/s.md", out)
                .unwrap()
                .to_string(),
            "input `docs/a.md` removed"
        );
        now.model = Digest::of(b"m2");
        assert_eq!(
            dirty_reason(rec, &now, "out/s.md", out),
            Some(DirtyReason::ModelChanged)
        );
    }
}
