//! `mkt gc`: removes from `.mkt/` what nothing needs any more.
//!
//! **What is kept.** Two kinds of runs, and for each its manifest and the
//! objects that manifest names (compiled prompt, outputs):
//!
//! - *pinned*: the runs that produced the current outputs, i.e. every
//!   target record in the state that did not fail (its action-cache entry
//!   `ac/<ibh>.json`, the prompt and output objects that entry names, and
//!   the record's output object, which is what a restore reads). A failed
//!   record needs nothing. Pinned runs are never evicted: a build with
//!   nothing changed stays a no-op and every current output can still be
//!   restored.
//! - *recent*: the last K runs of each target (`--keep-runs`): distinct run
//!   ids in `history.jsonl` for that node key, newest first. A run's
//!   manifest is its ac entry when that entry still names the run (a later
//!   `--force` run of the same bundle replaces it), or `runs/<id>.json`
//!   for a failed run.
//!
//! **Packed records** (`pack.rs`) are listed beside loose files by what
//! they are (an object's digest, an entry's bundle hash: how runs name what
//! they need, so a loose file and a record of one key are the same need),
//! with their pack's times; only the newest copy of a key that verifies
//! is listed, older copies count as the pack's own bytes. Each action-cache
//! entry is read once, as its pack is verified on every core. Removing one
//! means rewriting its pack without it, which gc does a pack at a time,
//! under the pack's own name (so the newest-first order stays and the
//! extra space needed is one pack's).
//!
//! Every other object, entry and `runs/` file goes, as do stray
//! `.mkt-tmp-*` files older than an hour (left by a crashed write; a
//! younger one may belong to a write in progress elsewhere, e.g. a
//! read-only command never takes the lock). The history is rewritten to
//! the lines of kept runs, copied byte for byte; a line that does not
//! parse (an append cut short by a crash) is dropped, as its reader
//! already skips it.
//!
//! **Size limit.** With `--max-size`, recent (never pinned) runs are then
//! evicted least recently used first until the store's apparent size (the
//! sum of its files' lengths) fits. A run's last use is the newest
//! `max(atime, mtime)` of its files: a cache hit reads the manifest and
//! the output object, which updates atime under Linux's default
//! `relatime` at most once a day, so eviction order has a granularity of
//! about a day; on a `noatime` mount it degrades to the order in which
//! runs were written. An object shared with a run that stays is kept.
//!
//! **Safety.** gc holds the project lock, so no build writes while it
//! decides (`--dry-run` takes none and changes nothing). Readers never take
//! the lock; a `mkt show` of a run gc removes reports it gone, as it does
//! for a run replaced by a later one. `--all` deletes every file of the
//! store but the lock file and writes the store's marker files again; it
//! reads neither the state nor VERSION, so it works on a store of a format
//! this mkt does not know. It deletes only in a directory mkt created as
//! its store (not a symlink, and marked by mkt's `CACHEDIR.TAG`), and
//! there only files named as mkt names them: a file it did not write is
//! left, and reported.

use crate::error::{Error, Result};
use crate::hash::InputBundleHash;
use crate::history::HISTORY_FILE;
use crate::layout;
use crate::manifest::RunManifest;
use crate::pack::RecordKind;
use crate::state::{StateFiles, TargetRecords};
use crate::store::{AcRead, ObjectStore, STORE_DIR};
use camino::{Utf8Path, Utf8PathBuf};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::fs;

pub const DEFAULT_KEEP_RUNS: usize = 5;

/// A `.mkt-tmp-*` file older than this is taken for a crashed write.
pub const STRAY_TEMP_AGE_S: u64 = 3600;

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub keep_runs: usize,
    /// Evict recent runs until the store is at most this many bytes.
    pub max_size: Option<u64>,
    pub dry_run: bool,
    /// Delete the whole store (see module docs).
    pub all: bool,
    pub wait_for_lock: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            keep_runs: DEFAULT_KEEP_RUNS,
            max_size: None,
            dry_run: false,
            all: false,
            wait_for_lock: true,
        }
    }
}

/// What a file in the store is, for `--stats` and the gc report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Object,
    AcEntry,
    /// A pack's own bytes: its header and index, and older copies of
    /// records written again since.
    PackIndex,
    FailedRun,
    History,
    State,
    Temp,
    Other,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Object,
        Kind::AcEntry,
        Kind::PackIndex,
        Kind::FailedRun,
        Kind::History,
        Kind::State,
        Kind::Temp,
        Kind::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Object => "objects",
            Kind::AcEntry => "run manifests (ac/)",
            Kind::PackIndex => "pack indexes",
            Kind::FailedRun => "failed runs (runs/)",
            Kind::History => "history",
            Kind::State => "state",
            Kind::Temp => "temp files",
            Kind::Other => "other",
        }
    }

    /// `rel` is the path inside `.mkt/`.
    fn of(rel: &str) -> Kind {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        if name.starts_with(layout::TEMP_PREFIX) {
            return Kind::Temp;
        }
        match rel.split('/').next().unwrap_or("") {
            layout::OBJECTS_DIR => Kind::Object,
            layout::AC_DIR => Kind::AcEntry,
            layout::PACKS_DIR => Kind::PackIndex,
            layout::RUNS_DIR => Kind::FailedRun,
            HISTORY_FILE => Kind::History,
            layout::STATE | layout::STATE_LOG => Kind::State,
            _ => Kind::Other,
        }
    }
}

/// Why gc removes a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Not needed by a current output nor one of the last K runs.
    Unreferenced,
    /// A recent run's, evicted to fit `--max-size`.
    Evicted,
    /// A temp file left by a crashed write.
    StrayTemp,
    /// `--all`.
    All,
}

#[derive(Debug, Clone)]
pub struct Removal {
    /// Relative to the project root (`.mkt/objects/ab/ab12…`); for a
    /// record in a pack, the pack and the record's loose name
    /// (`.mkt/packs/0000000000000001.pack:objects/ab/ab12…`).
    pub path: Utf8PathBuf,
    /// A record in a pack: it goes when gc rewrites the packs.
    pub packed: Option<(RecordKind, [u8; 32])>,
    pub kind: Kind,
    pub bytes: u64,
    pub why: Why,
}

#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// What was removed (or, with `--dry-run`, would be).
    pub removed: Vec<Removal>,
    pub size_before: u64,
    pub size_after: u64,
    /// Runs kept because they produced a current output.
    pub pinned_runs: usize,
    /// Further runs kept as one of their target's last K.
    pub recent_runs: usize,
    /// Recent runs evicted to fit `--max-size`.
    pub evicted_runs: usize,
    /// History lines before and after.
    pub history_lines: (usize, usize),
    /// `--all`: files in the store that mkt does not name so, left alone.
    pub left_alone: Vec<Utf8PathBuf>,
    /// `--all`: the records of batches not yet collected, kept (the
    /// provider bills them; only a build can collect them).
    pub pending_batches: Vec<Utf8PathBuf>,
    /// With `--max-size`: whether the store fits now (it may not when the
    /// pinned runs alone are larger).
    pub fits: Option<bool>,
}

impl GcReport {
    pub fn freed(&self) -> u64 {
        self.removed.iter().map(|r| r.bytes).sum()
    }
}

/// What a run needs, by what it is rather than where it is: an object or
/// an action-cache entry by its digest, a failed run's manifest by its
/// run id. (Sets of these are what gc decides with; at 100,000 targets
/// their paths as text cost it a third of its time and most of its
/// memory.)
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Need {
    Object([u8; 32]),
    Ac([u8; 32]),
    Run(String),
}

impl Need {
    /// Of a loose file, by its path in `.mkt/`: only a name mkt gives.
    fn of_loose(rel: &str) -> Option<Need> {
        // (a digest in another shard or in capitals is not the file a run
        // names)
        let digest = |xx: &str, hex: &str| {
            crate::hash::Digest::from_hex(hex)
                .filter(|d| d.to_hex() == hex && hex.starts_with(xx))
                .map(|d| d.0)
        };
        let parts: Vec<&str> = rel.split('/').collect();
        match parts.as_slice() {
            [layout::OBJECTS_DIR, xx, d] => digest(xx, d).map(Need::Object),
            [layout::AC_DIR, xx, e] => e
                .strip_suffix(".json")
                .and_then(|h| digest(xx, h))
                .map(Need::Ac),
            [layout::RUNS_DIR, r] => r.strip_suffix(".json").map(|id| Need::Run(id.into())),
            _ => None,
        }
    }

    /// A packed record's.
    fn of_record(kind: RecordKind, key: [u8; 32]) -> Need {
        match kind {
            RecordKind::Object => Need::Object(key),
            RecordKind::AcEntry => Need::Ac(key),
        }
    }

    /// The name it has (or, in a pack, would have) as a loose file.
    fn loose_name(&self, store: &ObjectStore) -> Utf8PathBuf {
        let abs = match self {
            Need::Object(d) => store.object_path(&crate::hash::Digest(*d)),
            Need::Ac(d) => store.ac_path(&InputBundleHash(crate::hash::Digest(*d))),
            Need::Run(id) => store.run_path(id),
        };
        abs.strip_prefix(store.dir())
            .expect("inside the store")
            .to_owned()
    }
}

/// Where a file of the store is.
#[derive(Debug)]
enum Place {
    /// A file of its own, by its path in `.mkt/`.
    Loose(Utf8PathBuf),
    /// A record in a pack: the index of the pack in
    /// [`PackedRecords::packs`].
    Packed(RecordKind, usize),
}

/// One file of the store as gc sees it, or one record in a pack.
struct StoreFile {
    /// What runs name it by; none for a file no run needs (the state, the
    /// history, a temp file) or a name mkt does not give.
    need: Option<Need>,
    place: Place,
    kind: Kind,
    bytes: u64,
    /// Seconds since the epoch: `max(atime, mtime)` (module docs).
    used: i64,
    /// Seconds since the last modification.
    age_s: u64,
}

impl StoreFile {
    fn loose_rel(&self) -> Option<&Utf8Path> {
        match &self.place {
            Place::Loose(rel) => Some(rel),
            Place::Packed(..) => None,
        }
    }

    /// A packed record's kind and key.
    fn record(&self) -> Option<(RecordKind, [u8; 32])> {
        match (&self.place, &self.need) {
            (Place::Packed(kind, _), Some(Need::Object(k) | Need::Ac(k))) => Some((*kind, *k)),
            _ => None,
        }
    }
}

/// Every file under `dir` (recursively, symlinks not followed), with paths
/// relative to `dir`. A missing `dir` has none.
fn walk(dir: &Utf8Path) -> Result<Vec<StoreFile>> {
    use std::os::unix::fs::MetadataExt;
    let now = std::time::SystemTime::now();
    let mut out = Vec::new();
    let mut stack = vec![Utf8PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let abs = dir.join(&rel_dir);
        let entries = match fs::read_dir(&abs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read", abs, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read", &abs, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                // not a name mkt writes; classify it by its directory
                continue;
            };
            let rel = rel_dir.join(&name);
            let Ok(meta) = entry.metadata() else {
                continue; // removed meanwhile
            };
            if meta.is_dir() {
                stack.push(rel);
                continue;
            }
            let age_s = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .map_or(0, |d| d.as_secs());
            out.push(StoreFile {
                need: Need::of_loose(rel.as_str()),
                kind: Kind::of(rel.as_str()),
                bytes: meta.len(),
                used: meta.atime().max(meta.mtime()),
                age_s,
                place: Place::Loose(rel),
            });
        }
    }
    Ok(out)
}

/// What gc keeps of a run's manifest: the run and what it names.
#[derive(Debug, Clone)]
struct ManifestRefs {
    run_id: String,
    prompt: [u8; 32],
    outputs: Vec<[u8; 32]>,
}

impl ManifestRefs {
    fn of(m: &RunManifest) -> ManifestRefs {
        ManifestRefs {
            run_id: m.run_id.clone(),
            prompt: m.prompt_digest.0,
            outputs: m.outputs.iter().map(|o| o.digest.0).collect(),
        }
    }

    /// The files of the run: its manifest (`filed`) and the objects it
    /// names.
    fn files(&self, filed: Need) -> Vec<Need> {
        let mut files = vec![filed, Need::Object(self.prompt)];
        files.extend(self.outputs.iter().map(|d| Need::Object(*d)));
        files
    }
}

/// The store's files and packed records, and the believed manifests of
/// the packed action-cache entries (read once, as every record is).
struct Listing {
    files: Vec<StoreFile>,
    /// Every pack, by its absolute path.
    packs: Vec<Utf8PathBuf>,
    /// Where each pack is in `files` (none for one written after the
    /// walk).
    pack_files: Vec<Option<usize>>,
    manifests: HashMap<[u8; 32], Box<ManifestRefs>>,
}

/// `files` with each pack's records listed too (what is left of a pack's
/// size is its own bytes); with `manifests`, the packed manifests read.
fn with_packed_records(
    store: &ObjectStore,
    mut files: Vec<StoreFile>,
    manifests: bool,
) -> Result<Listing> {
    let read = |key: &[u8; 32], payload: &[u8]| {
        let ibh = InputBundleHash(crate::hash::Digest(*key));
        manifests
            .then(|| crate::store::believed_ac_entry(&ibh, payload))
            .flatten()
            .map(|m| ManifestRefs::of(&m))
    };
    let packed = store.packed_records(read)?;
    let in_store = |p: &Utf8PathBuf| p.strip_prefix(store.dir()).ok().map(Utf8Path::to_owned);
    let by_rel: HashMap<Utf8PathBuf, usize> = files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.kind == Kind::PackIndex)
        .filter_map(|(i, f)| Some((f.loose_rel()?.to_owned(), i)))
        .collect();
    // each pack's place in `files`: none for one written after the walk
    let file_of: Vec<Option<usize>> = (packed.packs.iter())
        .map(|p| in_store(p).and_then(|rel| by_rel.get(&rel).copied()))
        .collect();
    let mut listing = Listing {
        files: Vec::with_capacity(files.len() + packed.records.len()),
        packs: packed.packs,
        pack_files: file_of,
        manifests: HashMap::default(),
    };
    let mut records = Vec::with_capacity(packed.records.len());
    for r in packed.records {
        let Some(i) = listing.pack_files[r.pack] else {
            continue;
        };
        let pack = &mut files[i];
        pack.bytes = pack.bytes.saturating_sub(r.bytes);
        if let Some(m) = r.read {
            listing.manifests.insert(r.key, m);
        }
        records.push(StoreFile {
            need: Some(Need::of_record(r.kind, r.key)),
            place: Place::Packed(r.kind, r.pack),
            kind: match r.kind {
                RecordKind::Object => Kind::Object,
                RecordKind::AcEntry => Kind::AcEntry,
            },
            bytes: r.bytes,
            used: pack.used,
            age_s: pack.age_s,
        });
    }
    listing.files.extend(files);
    listing.files.extend(records);
    Ok(listing)
}

/// The removal of `f`, with its path relative to the project root.
fn removal(store: &ObjectStore, listing: &Listing, f: &StoreFile, why: Why) -> Removal {
    let in_store = match (&f.place, &f.need) {
        (Place::Loose(rel), _) => rel.clone(),
        (Place::Packed(_, pack), Some(need)) => {
            let pack = &listing.packs[*pack];
            let pack = pack.strip_prefix(store.dir()).unwrap_or(pack);
            Utf8PathBuf::from(format!("{pack}:{}", need.loose_name(store)))
        }
        (Place::Packed(..), None) => unreachable!("a packed record is named by its key"),
    };
    Removal {
        path: Utf8Path::new(STORE_DIR).join(in_store),
        packed: f.record(),
        kind: f.kind,
        bytes: f.bytes,
        why,
    }
}

/// Counts and bytes of each kind of file in the store.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// (kind, files, bytes), in [`Kind::ALL`] order.
    pub kinds: Vec<(Kind, u64, u64)>,
    pub files: u64,
    pub bytes: u64,
}

/// `mkt gc --stats`: reads only.
pub fn stats(root: &Utf8Path) -> Result<StoreStats> {
    // a store of an unknown version is refused here too (with the help
    // line that says how to start over), not counted as if it were ours
    let store = ObjectStore::open_read_only(root)?;
    let files = with_packed_records(&store, walk(store.dir())?, false)?.files;
    let mut st = StoreStats::default();
    for k in Kind::ALL {
        let of_kind = files.iter().filter(|f| f.kind == k);
        let (n, b) = of_kind.fold((0, 0), |(n, b), f| (n + 1, b + f.bytes));
        st.kinds.push((k, n, b));
        st.files += n;
        st.bytes += b;
    }
    Ok(st)
}

/// The manifest filed under `ibh`, believed only when it is valid
/// (`None` otherwise: gc then keeps nothing on its account, and the entry
/// itself goes): the packed one read with the listing, else a loose one.
fn read_manifest<'a>(
    store: &ObjectStore,
    listing: &'a Listing,
    ibh: &[u8; 32],
) -> Option<std::borrow::Cow<'a, ManifestRefs>> {
    if let Some(m) = listing.manifests.get(ibh) {
        return Some(std::borrow::Cow::Borrowed(m));
    }
    match store.ac_get(&InputBundleHash(crate::hash::Digest(*ibh))) {
        AcRead::Found(m) => Some(std::borrow::Cow::Owned(ManifestRefs::of(&m))),
        _ => None,
    }
}

/// A run gc keeps: its manifest and the objects it names.
struct Run<'a> {
    id: &'a str,
    files: Vec<Need>,
}

/// What gc reads of a line of `history.jsonl`: the run it names. (The
/// fields every line has are required, so a line the history's reader
/// skips is dropped here too.)
#[derive(serde::Deserialize)]
struct HistoryRun<'a> {
    #[serde(borrow)]
    time: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    target: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    run_id: std::borrow::Cow<'a, str>,
    input_bundle_hash: Option<crate::hash::Digest>,
    #[serde(rename = "status")]
    _status: crate::history::RunKind,
    #[serde(rename = "reason")]
    _reason: serde::de::IgnoredAny,
    #[serde(rename = "duration_ms")]
    _duration_ms: f64,
}

/// A run as the history knows it: its target, and its run id or, for a
/// run that failed before it got one, its line's time (each such line is
/// a run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RunKey<'a> {
    target: &'a str,
    id: &'a str,
    by_time: bool,
}

impl<'a> HistoryRun<'a> {
    fn key(&'a self) -> RunKey<'a> {
        RunKey {
            target: &self.target,
            id: if self.run_id.is_empty() {
                &self.time
            } else {
                &self.run_id
            },
            by_time: self.run_id.is_empty(),
        }
    }
}

/// Runs `mkt gc` on the project at `root` (module docs). `on_wait` is
/// called once if the lock is held by another mkt.
pub fn gc(root: &Utf8Path, opts: &GcOptions, on_wait: &dyn Fn()) -> Result<GcReport> {
    if opts.all {
        return gc_all(root, opts, on_wait);
    }
    if !root.join(STORE_DIR).is_dir() {
        return Ok(GcReport::default());
    }
    let (store, _lock) = ObjectStore::open_for(root, opts.dry_run, opts.wait_for_lock, on_wait)?;
    let dir = store.dir().to_owned();
    // (the records only: gc needs neither the stat cache nor the analyses,
    // a third of the state and more at a million targets)
    let (_, records) = StateFiles::load_records(&dir);
    let history_path = dir.join(HISTORY_FILE);
    let history_bytes = match fs::read(&history_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("read", history_path, e)),
    };
    let listing = with_packed_records(&store, walk(&dir)?, true)?;
    let pinned = pinned_runs(&store, &listing, &records);
    let lines: Vec<HistoryLine> = history_bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| (l, serde_json::from_slice::<HistoryRun>(l).ok()))
        .collect();
    let recent = recent_runs(&store, &listing, &lines, &pinned.ids, opts.keep_runs);

    let mut rep = GcReport {
        pinned_runs: pinned.ids.len(),
        recent_runs: recent.runs.len(),
        ..Default::default()
    };
    let files = &listing.files;
    rep.size_before = files.iter().map(|f| f.bytes).sum();
    let mut refs: HashMap<&Need, usize> = HashMap::default();
    for r in &recent.runs {
        for f in &r.files {
            *refs.entry(f).or_default() += 1;
        }
    }
    let mut plan = unneeded_files(files, &pinned.files, &refs, rep.size_before);
    let mut evicted: HashSet<&str> = HashSet::default();
    if let Some(max) = opts.max_size {
        evicted = evict_to_fit(
            &mut plan,
            files,
            &recent.runs,
            &mut refs,
            &pinned.files,
            max,
        );
        rep.fits = Some(plan.size <= max);
    }
    rep.removed = (plan.removed.iter())
        .map(|&(i, why)| removal(&store, &listing, &files[i], why))
        .collect();
    rep.evicted_runs = evicted.len();
    rep.recent_runs -= evicted.len();
    // Records leave a pack when gc rewrites it (`ObjectStore::repack`):
    // its old own bytes go, the rewritten pack's come.
    let dropped: HashSet<(RecordKind, [u8; 32])> =
        rep.removed.iter().filter_map(|r| r.packed).collect();
    let mut size = size_after_repack(&listing, &dropped, plan.size);

    let (new_history, kept_lines) =
        kept_history(&lines, &recent.kept, &evicted, history_bytes.len());
    rep.history_lines = (lines.len(), kept_lines);
    let history_changed = new_history.len() != history_bytes.len();
    size = size + new_history.len() as u64 - history_bytes.len() as u64;
    rep.size_after = size;
    if opts.dry_run {
        return Ok(rep);
    }

    // History first: a line whose manifest is gone would be reported as a
    // gone run; a manifest without a line is merely unreachable.
    if history_changed {
        store.write_atomic(&history_path, &new_history)?;
    }
    remove_unneeded(root, &store, &listing, &rep.removed, &dropped)?;
    Ok(rep)
}

/// A line of `history.jsonl`, and the run it names if it parses.
type HistoryLine<'a> = (&'a [u8], Option<HistoryRun<'a>>);

/// The runs that produced the current outputs.
struct Pinned<'s> {
    /// Their manifests and objects, and the prompts of requests waiting
    /// in batches.
    files: HashSet<Need>,
    /// (node key, run id) of each.
    ids: HashSet<RunKey<'s>>,
}

/// Pinned: what the current outputs need (every record in the state that
/// did not fail), and the prompts of requests waiting in batches.
fn pinned_runs<'s>(
    store: &ObjectStore,
    listing: &Listing,
    records: &'s TargetRecords,
) -> Pinned<'s> {
    let mut pinned = Pinned {
        files: HashSet::default(),
        ids: HashSet::default(),
    };
    for (key, rec) in records.iter() {
        if rec.failed {
            continue;
        }
        pinned.files.insert(Need::Object(rec.output_digest.0));
        if let Some(m) = read_manifest(store, listing, &rec.ibh.0) {
            pinned.files.extend(m.files(Need::Ac(rec.ibh.0)));
        }
        pinned.ids.insert(RunKey {
            target: key,
            id: &rec.run_id,
            by_time: false,
        });
    }
    // the prompts of requests waiting in batches, which their answers'
    // runs will name
    let batches = crate::batch::record::read_all(&crate::batch::records_dir(store.dir()));
    for m in batches.records.iter().flat_map(|r| &r.requests) {
        pinned.files.insert(Need::Object(m.prompt_digest.0));
    }
    pinned
}

/// The runs the history keeps beyond the pinned ones.
struct Recent<'a> {
    /// Each kept run that is not pinned and has a manifest, once.
    runs: Vec<Run<'a>>,
    /// Every run whose history lines stay, the pinned ones included.
    kept: HashSet<RunKey<'a>>,
}

/// Recent: each target's last `keep_runs` distinct runs in the history,
/// newest first, with the manifest each is filed under.
fn recent_runs<'a>(
    store: &ObjectStore,
    listing: &Listing,
    lines: &'a [HistoryLine<'a>],
    pinned_ids: &HashSet<RunKey<'a>>,
    keep_runs: usize,
) -> Recent<'a> {
    let mut per_target: HashMap<&str, Vec<&str>> = HashMap::default();
    let mut recent = Recent {
        runs: Vec::new(),
        kept: pinned_ids.clone(),
    };
    let mut seen_runs: HashSet<&str> = HashSet::default();
    for (_, e) in lines.iter().rev() {
        let Some(e) = e else { continue };
        let key = e.key();
        let ids = per_target.entry(key.target).or_default();
        if ids.contains(&key.id) || ids.len() >= keep_runs {
            continue;
        }
        ids.push(key.id);
        recent.kept.insert(key);
        if key.by_time
            || pinned_ids.contains(&RunKey {
                by_time: false,
                ..key
            })
            || !seen_runs.insert(key.id)
        {
            continue;
        }
        let run_id = key.id;
        let mut files = Vec::new();
        if let Some(ibh) = e.input_bundle_hash
            && let Some(m) = read_manifest(store, listing, &ibh.0).filter(|m| m.run_id == run_id)
        {
            files = m.files(Need::Ac(ibh.0));
        }
        if files.is_empty()
            && let Some(m) = store.run_get(run_id)
        {
            files = ManifestRefs::of(&m).files(Need::Run(run_id.into()));
        }
        if !files.is_empty() {
            recent.runs.push(Run { id: run_id, files });
        }
    }
    recent
}

/// What gc removes, as decided so far.
struct Plan {
    /// Indexes into the listing's files, and why each goes.
    removed: Vec<(usize, Why)>,
    /// The store's size without the removed files.
    size: u64,
}

/// Stray temps, and the objects, ac entries and failed runs that neither
/// a pinned nor a recent run (`refs`) needs.
fn unneeded_files(
    files: &[StoreFile],
    pinned: &HashSet<Need>,
    refs: &HashMap<&Need, usize>,
    size_before: u64,
) -> Plan {
    let mut plan = Plan {
        removed: Vec::new(),
        size: size_before,
    };
    let needed = |f: &StoreFile| {
        f.need
            .as_ref()
            .is_some_and(|n| pinned.contains(n) || refs.contains_key(n))
    };
    for (i, f) in files.iter().enumerate() {
        let why = match f.kind {
            Kind::Temp if f.age_s >= STRAY_TEMP_AGE_S => Why::StrayTemp,
            Kind::Object | Kind::AcEntry | Kind::FailedRun if !needed(f) => Why::Unreferenced,
            _ => continue,
        };
        plan.size -= f.bytes;
        plan.removed.push((i, why));
    }
    plan
}

/// The size limit: evicts recent runs, least recently used first, until
/// the store is at most `max` bytes; a file another recent run or a
/// pinned one still needs stays. Returns the evicted runs' ids.
fn evict_to_fit<'a>(
    plan: &mut Plan,
    files: &[StoreFile],
    recent: &[Run<'a>],
    refs: &mut HashMap<&Need, usize>,
    pinned: &HashSet<Need>,
    max: u64,
) -> HashSet<&'a str> {
    // the copies of each needed file that stay so far (a key can be both
    // a loose file and a packed record: every copy goes with it), by
    // index, last use and bytes
    let gone: HashSet<usize> = plan.removed.iter().map(|r| r.0).collect();
    let mut staying: HashMap<&Need, Vec<(usize, i64, u64)>> = HashMap::default();
    for (i, f) in files.iter().enumerate() {
        if let Some(n) = &f.need
            && !gone.contains(&i)
        {
            staying.entry(n).or_default().push((i, f.used, f.bytes));
        }
    }
    let last_use = |r: &Run| {
        (r.files.iter().filter_map(|n| staying.get(n)))
            .flat_map(|copies| copies.iter().map(|c| c.1))
            .max()
            .unwrap_or(0)
    };
    let mut order: Vec<(i64, &Run)> = recent.iter().map(|r| (last_use(r), r)).collect();
    // run ids begin with their time, so they break ties oldest first
    order.sort_by(|a, b| (a.0, a.1.id).cmp(&(b.0, b.1.id)));
    let mut evicted: HashSet<&str> = HashSet::default();
    for (_, run) in order {
        if plan.size <= max {
            break;
        }
        evicted.insert(run.id);
        for n in &run.files {
            let left = refs.get_mut(n).expect("counted above");
            *left -= 1;
            if *left > 0 || pinned.contains(n) {
                continue;
            }
            for (i, _, bytes) in staying.remove(n).unwrap_or_default() {
                plan.size -= bytes;
                plan.removed.push((i, Why::Evicted));
            }
        }
    }
    evicted
}

/// `size` once the packs that lose a record (or hold older copies) are
/// rewritten: each such pack's own bytes become those of its kept records.
fn size_after_repack(
    listing: &Listing,
    dropped: &HashSet<(RecordKind, [u8; 32])>,
    mut size: u64,
) -> u64 {
    if dropped.is_empty() {
        return size;
    }
    // (records listed, records kept) of each pack, by its index
    let mut counts = vec![(0usize, 0usize); listing.packs.len()];
    for f in &listing.files {
        if let (Place::Packed(_, pack), Some(record)) = (&f.place, f.record()) {
            counts[*pack].0 += 1;
            counts[*pack].1 += usize::from(!dropped.contains(&record));
        }
    }
    let pack_of_file: HashMap<usize, usize> = (listing.pack_files.iter().enumerate())
        .filter_map(|(pack, file)| Some(((*file)?, pack)))
        .collect();
    for (i, f) in listing.files.iter().enumerate() {
        if f.kind != Kind::PackIndex {
            continue;
        }
        let (listed, kept) = pack_of_file.get(&i).map_or((0, 0), |p| counts[*p]);
        // rewritten when it loses a record or holds older copies
        if kept < listed || f.bytes > crate::pack::own_bytes(listed) {
            size = size - f.bytes + crate::pack::own_bytes(kept);
        }
    }
    size
}

/// The history: the lines of kept runs, byte for byte, and how many.
fn kept_history(
    lines: &[HistoryLine],
    kept: &HashSet<RunKey>,
    evicted: &HashSet<&str>,
    capacity: usize,
) -> (Vec<u8>, usize) {
    let mut new_history = Vec::with_capacity(capacity);
    let mut kept_lines = 0;
    for (line, e) in lines {
        let Some(e) = e else { continue };
        let key = e.key();
        if (!key.by_time && evicted.contains(key.id)) || !kept.contains(&key) {
            continue;
        }
        new_history.extend_from_slice(line);
        new_history.push(b'\n');
        kept_lines += 1;
    }
    (new_history, kept_lines)
}

/// Removes the loose files of `removed`, rewrites the packs that lose a
/// record of `dropped` or hold older copies, and removes the shard
/// directories emptied.
fn remove_unneeded(
    root: &Utf8Path,
    store: &ObjectStore,
    listing: &Listing,
    removed: &[Removal],
    dropped: &HashSet<(RecordKind, [u8; 32])>,
) -> Result<()> {
    remove_all(root, removed)?;
    if !dropped.is_empty() {
        // what goes: the dropped records, and older copies of the others
        // (a copy that does not verify goes with any pack rewritten)
        let newest: HashMap<(RecordKind, [u8; 32]), &Utf8Path> = (listing.files.iter())
            .filter_map(|f| match (&f.place, f.record()) {
                (Place::Packed(_, pack), Some(r)) => Some((r, listing.packs[*pack].as_path())),
                _ => None,
            })
            .collect();
        store.repack(&|pack, kind, key| {
            !dropped.contains(&(kind, *key)) && newest.get(&(kind, *key)).is_none_or(|p| *p == pack)
        })?;
    }
    let mut dirs: HashSet<Utf8PathBuf> = HashSet::default();
    for r in removed.iter().filter(|r| r.packed.is_none()) {
        if let Some(parent) = r.path.parent()
            && matches!(r.kind, Kind::Object | Kind::AcEntry)
        {
            dirs.insert(root.join(parent));
        }
    }
    // empty shard directories (objects/xx, ac/xx) go too; a non-empty one
    // refuses, which is what we want
    for d in dirs {
        let _ = fs::remove_dir(d);
    }
    Ok(())
}

/// Unlinks the files of `removed` from a pool of threads: an unlink waits
/// on the file system's journal, not the CPU, and on this project's test
/// machine (ext4 on a virtual disk) 3,000 unlinks took 6-9 s one after
/// another and 0.5 s eight at a time.
fn remove_all(root: &Utf8Path, removed: &[Removal]) -> Result<()> {
    use rayon::prelude::*;
    let remove = |r: &Removal| {
        if r.packed.is_some() {
            return Ok(()); // gone with the repack
        }
        crate::store::remove_if_there(&root.join(&r.path))
    };
    match rayon::ThreadPoolBuilder::new().num_threads(16).build() {
        Ok(pool) => pool.install(|| removed.par_iter().try_for_each(remove)),
        Err(_) => removed.iter().try_for_each(remove),
    }
}

/// `mkt gc --all`: every file of the store but the lock goes; the store
/// is then marked again, so it is a valid empty store of this version. It
/// deletes only in a directory mkt created as its store (a real
/// directory, with mkt's `CACHEDIR.TAG`), and there only the files whose
/// names mkt gives ([`is_store_file`]): anything else is left and listed.
fn gc_all(root: &Utf8Path, opts: &GcOptions, on_wait: &dyn Fn()) -> Result<GcReport> {
    crate::store::check_store_dir(root)?;
    let store = ObjectStore::open_unchecked(root);
    let dir = store.dir().to_owned();
    if !dir.is_dir() {
        return Ok(GcReport::default());
    }
    if !crate::store::is_marked_store(&dir) {
        return Err(Error::NotAStore { path: dir });
    }
    let _lock = if opts.dry_run {
        None
    } else {
        Some(store.lock(opts.wait_for_lock, on_wait)?)
    };
    let files = walk(&dir)?;
    let mut rep = GcReport {
        size_before: files.iter().map(|f| f.bytes).sum(),
        ..Default::default()
    };
    // (the walk lists loose files only)
    let loose = files.iter().filter_map(|f| Some((f, f.loose_rel()?)));
    for (f, rel) in loose.filter(|(_, rel)| *rel != layout::LOCK) {
        if rel.starts_with(layout::BATCHES_DIR) && f.kind != Kind::Temp {
            rep.pending_batches.push(Utf8Path::new(STORE_DIR).join(rel));
            continue;
        }
        if !layout::is_store_file(rel.as_str()) {
            rep.left_alone.push(Utf8Path::new(STORE_DIR).join(rel));
            continue;
        }
        rep.removed.push(Removal {
            packed: None,
            path: Utf8Path::new(STORE_DIR).join(rel),
            kind: f.kind,
            bytes: f.bytes,
            why: Why::All,
        });
    }
    rep.left_alone.sort();
    rep.size_after = rep.size_before - rep.freed();
    if opts.dry_run {
        return Ok(rep);
    }
    // the files in parallel (see `remove_all`), then the directories they
    // emptied (one that still holds something is left)
    remove_all(root, &rep.removed)?;
    remove_emptied_dirs(&dir);
    store.init()?;
    rep.size_after = walk(&dir)?.iter().map(|f| f.bytes).sum();
    Ok(rep)
}

/// Removes the store's directories that are empty now, deepest first
/// (`remove_dir`: never one that still holds a file mkt did not write).
fn remove_emptied_dirs(dir: &Utf8Path) {
    for sub in [
        layout::OBJECTS_DIR,
        layout::AC_DIR,
        layout::PACKS_DIR,
        layout::RUNS_DIR,
    ] {
        let top = dir.join(sub);
        let Ok(entries) = fs::read_dir(&top) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = fs::remove_dir(e.path()); // (not empty: kept)
            }
        }
        let _ = fs::remove_dir(&top);
    }
}

/// Parses a size such as `500M`, `2G`, `1.5GiB` or `4096` (bytes). Units
/// are binary (K = 1024), as `du -h` and `ls -h` print them.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then_some((n * mult as f64) as u64)
}

/// `1.5 MiB`-style, for reports.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Digest;
    use crate::history::HistoryEntry;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("500M"), Some(500 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_size("10 kb"), Some(10 << 10));
        assert_eq!(parse_size("2X"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 19), "1.5 MiB");
    }

    #[test]
    fn files_are_classified_by_where_they_are() {
        assert_eq!(Kind::of("objects/ab/ab12"), Kind::Object);
        assert_eq!(Kind::of("ac/ab/ab12.json"), Kind::AcEntry);
        assert_eq!(Kind::of("runs/2026-x.json"), Kind::FailedRun);
        assert_eq!(Kind::of("objects/ab/.mkt-tmp-x1"), Kind::Temp);
        assert_eq!(Kind::of("history.jsonl"), Kind::History);
        assert_eq!(Kind::of("state.log"), Kind::State);
        assert_eq!(Kind::of("noop"), Kind::Other);
        assert_eq!(Kind::of("packs/0000000000000001.pack"), Kind::PackIndex);
        assert_eq!(Kind::of("packs/.mkt-tmp-x1"), Kind::Temp);
    }

    /// Writes a manifest for `target` with a given output into the store
    /// and returns it.
    fn put_run(s: &ObjectStore, target: &str, n: u32, out: &[u8]) -> RunManifest {
        let mut m = crate::manifest::tests::sample();
        m.target = target.into();
        m.run_id = format!("2026112500000{n:04}-0000000{}", n % 10);
        m.input_bundle_hash = InputBundleHash(Digest::of(format!("{target}{n}").as_bytes()));
        m.prompt_digest = s.put(format!("prompt {target} {n}").as_bytes()).unwrap();
        m.outputs[0].digest = s.put(out).unwrap();
        s.ac_put(&m).unwrap();
        let e = HistoryEntry {
            time: format!("t{n:04}"),
            target: target.into(),
            status: crate::history::RunKind::Ran,
            run_id: m.run_id.clone(),
            input_bundle_hash: Some(m.input_bundle_hash.0),
            model: "default".into(),
            reason: "never built".into(),
            duration_ms: 1.0,
            usage: None,
            cost_usd: None,
            remote: false,
            host: None,
            batch: None,
        };
        s.append_history(&e.to_line()).unwrap();
        m
    }

    fn record(m: &RunManifest) -> crate::state::TargetRecord {
        crate::state::TargetRecord {
            fingerprint: Default::default(),
            ibh: m.input_bundle_hash.0,
            output: "out/a.md".into(),
            output_digest: m.outputs[0].digest,
            run_id: m.run_id.clone(),
            failed: false,
            answered_by: String::new(),
        }
    }

    fn save_state(s: &ObjectStore, st: &crate::state::State) {
        let (mut sf, _) = StateFiles::load(s.dir());
        sf.snapshot(st).unwrap();
    }

    fn dry_run(root: &Utf8Path, opts: &GcOptions) -> GcReport {
        let dry = GcOptions {
            dry_run: true,
            ..opts.clone()
        };
        gc(root, &dry, &|| {}).unwrap()
    }

    /// Whether the store holds the run's entry and objects (read afresh).
    fn exists(s: &ObjectStore, m: &RunManifest) -> [bool; 3] {
        let root = s.dir().parent().unwrap();
        let s = ObjectStore::open_read_only(root).unwrap();
        let entry = match s.ac_get(&m.input_bundle_hash) {
            AcRead::Found(e) => e.run_id == m.run_id,
            _ => false,
        };
        let has = |d| matches!(s.get(d), crate::store::ObjectRead::Found(_));
        [entry, has(&m.prompt_digest), has(&m.outputs[0].digest)]
    }

    #[test]
    fn keeps_the_current_run_and_the_last_k_and_evicts_to_fit() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let s = ObjectStore::open(root).unwrap();
        // six runs of `a`; the state says the second one is current (a
        // revert served it from the cache)
        let runs: Vec<RunManifest> = (1..=6)
            .map(|n| put_run(&s, "a", n, format!("output {n}").as_bytes()))
            .collect();
        let mut st = crate::state::State::default();
        st.targets.insert("a".into(), record(&runs[1]));
        save_state(&s, &st);
        s.sync().unwrap(); // as a build ends: its pack sealed
        let stray = s.dir().join("packs").join(".mkt-tmp-old");
        fs::write(&stray, b"half").unwrap();

        let opts = GcOptions {
            keep_runs: 2,
            ..Default::default()
        };
        let dry = dry_run(root, &opts);
        assert!(
            exists(&s, &runs[0]).iter().all(|e| *e),
            "a dry run removes nothing"
        );
        let rep = gc(root, &opts, &|| {}).unwrap();
        assert_eq!(rep.freed(), dry.freed());
        assert_eq!(rep.size_after, dry.size_after);
        assert_eq!((rep.pinned_runs, rep.recent_runs), (1, 2));
        for (i, m) in runs.iter().enumerate() {
            let keep = [1, 4, 5].contains(&i);
            assert_eq!(exists(&s, m), [keep; 3], "run {}", i + 1);
        }
        // the stray temp file is young: it may be a write in progress
        assert!(stray.exists());
        let hist = crate::history::read(s.dir()).unwrap();
        let ids: Vec<&str> = hist.iter().map(|e| e.run_id.as_str()).collect();
        assert_eq!(ids, [&runs[1].run_id, &runs[4].run_id, &runs[5].run_id]);

        // a limit below the pinned run's size evicts every recent run but
        // never the pinned one
        let rep = gc(
            root,
            &GcOptions {
                max_size: Some(1),
                ..opts.clone()
            },
            &|| {},
        )
        .unwrap();
        assert_eq!((rep.evicted_runs, rep.fits), (2, Some(false)));
        assert_eq!(exists(&s, &runs[1]), [true; 3]);
        assert_eq!(exists(&s, &runs[5]), [false; 3]);
        assert_eq!(crate::history::read(s.dir()).unwrap().len(), 1);
        assert_eq!(
            rep.size_after,
            walk(s.dir()).unwrap().iter().map(|f| f.bytes).sum::<u64>()
        );

        // an hour later the temp file is taken for a crashed write
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        fs::File::options()
            .write(true)
            .open(&stray)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        let rep = gc(root, &opts, &|| {}).unwrap();
        assert!(!stray.exists());
        assert_eq!(rep.removed.len(), 1);
        assert_eq!(rep.removed[0].why, Why::StrayTemp);
    }

    #[test]
    fn eviction_removes_every_copy_of_a_key() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let s = ObjectStore::open(root).unwrap();
        let old = put_run(&s, "a", 1, b"old output");
        let current = put_run(&s, "a", 2, b"current output");
        s.sync().unwrap();
        let mut st = crate::state::State::default();
        st.targets.insert("a".into(), record(&current));
        save_state(&s, &st);
        // the old run's output also lies loose, as a version 1 store left it
        let loose = s.object_path(&old.outputs[0].digest);
        fs::create_dir_all(loose.parent().unwrap()).unwrap();
        fs::write(&loose, b"old output").unwrap();

        let opts = GcOptions {
            max_size: Some(1),
            ..Default::default()
        };
        let rep = gc(root, &opts, &|| {}).unwrap();
        assert_eq!(rep.evicted_runs, 1);
        assert!(!loose.exists(), "the loose copy goes with the packed one");
        assert_eq!(exists(&s, &old), [false; 3]);
        assert_eq!(exists(&s, &current), [true; 3]);
    }

    #[test]
    fn an_object_shared_with_a_kept_run_stays() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let s = ObjectStore::open(root).unwrap();
        // `a`'s old run and `b`'s current run produced the same bytes
        let old = put_run(&s, "a", 1, b"same");
        let newer = put_run(&s, "a", 2, b"new");
        let b = put_run(&s, "b", 3, b"same");
        s.sync().unwrap();
        let mut st = crate::state::State::default();
        st.targets.insert("a".into(), record(&newer));
        st.targets.insert("b".into(), record(&b));
        save_state(&s, &st);
        let opts = GcOptions {
            keep_runs: 1,
            ..Default::default()
        };
        gc(root, &opts, &|| {}).unwrap();
        assert_eq!(exists(&s, &old), [false, false, true]);
        assert_eq!(exists(&s, &b), [true; 3]);
    }

    /// More packs than a build would leave (builds that failed before
    /// their flush never merge): gc keeps every pinned run however its
    /// records are spread, and drops only what nothing needs.
    #[test]
    fn gc_over_many_packs_keeps_every_pinned_run() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let mut runs = Vec::new();
        for n in 1..=crate::store::MAX_PACKS as u32 + 3 {
            let s = ObjectStore::open(root).unwrap(); // no lock: no merge
            runs.push(put_run(
                &s,
                &format!("t{n}"),
                n,
                format!("out {n}").as_bytes(),
            ));
            s.sync().unwrap();
        }
        let packs = || fs::read_dir(root.join(".mkt/packs")).unwrap().count();
        assert_eq!(packs(), runs.len());
        let mut st = crate::state::State::default();
        for (i, m) in runs.iter().enumerate() {
            if i != 3 {
                st.targets.insert(m.target.clone(), record(m));
            }
        }
        let s = ObjectStore::open(root).unwrap();
        save_state(&s, &st);
        let opts = GcOptions {
            keep_runs: 0,
            ..Default::default()
        };
        let dry = dry_run(root, &opts);
        let rep = gc(root, &opts, &|| {}).unwrap();
        assert_eq!(rep.removed.len(), 3, "{:?}", rep.removed);
        assert_eq!(rep.size_after, dry.size_after);
        for (i, m) in runs.iter().enumerate() {
            assert_eq!(exists(&s, m), [i != 3; 3], "run {i}");
        }
        assert_eq!(packs(), runs.len() - 1, "the emptied pack is gone");
        assert_eq!(
            rep.size_after,
            walk(s.dir()).unwrap().iter().map(|f| f.bytes).sum::<u64>()
        );
    }

    /// A newer copy of an object that does not verify: gc keeps the older
    /// good one, which lookups serve.
    #[test]
    fn gc_keeps_the_copy_that_verifies() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let s = ObjectStore::open(root).unwrap();
        let m = put_run(&s, "a", 1, b"the output");
        s.sync().unwrap();
        let mut st = crate::state::State::default();
        st.targets.insert("a".into(), record(&m));
        save_state(&s, &st);
        // a second pack holding the output again, then damaged
        let dir = root.join(".mkt/packs");
        let path = dir.join("0000000000000009.pack");
        let mut w = crate::pack::PackWriter::start(fs::File::create_new(&path).unwrap()).unwrap();
        w.append(RecordKind::Object, &m.outputs[0].digest.0, b"the output")
            .unwrap();
        w.seal().unwrap();
        let mut b = fs::read(&path).unwrap();
        let at = b.windows(10).position(|w| w == b"the output").unwrap();
        b[at] = b'T';
        fs::write(&path, &b).unwrap();
        gc(
            root,
            &GcOptions {
                keep_runs: 0,
                ..Default::default()
            },
            &|| {},
        )
        .unwrap();
        assert_eq!(exists(&s, &m), [true; 3]);
    }

    #[test]
    fn all_empties_even_a_store_of_an_unknown_version() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let s = ObjectStore::open(root).unwrap();
        let m = put_run(&s, "a", 1, b"x");
        s.sync().unwrap();
        fs::write(s.dir().join("VERSION"), "99\n").unwrap();
        assert!(ObjectStore::open(root).is_err());
        let opts = GcOptions {
            all: true,
            ..Default::default()
        };
        let rep = gc(root, &opts, &|| {}).unwrap();
        assert!(rep.removed.iter().any(|r| r.kind == Kind::PackIndex));
        assert_eq!(exists(&s, &m), [false; 3]);
        let s = ObjectStore::open(root).expect("a fresh store of this version");
        assert!(s.dir().join("CACHEDIR.TAG").is_file());
        assert!(!s.dir().join(HISTORY_FILE).exists());
    }
}
