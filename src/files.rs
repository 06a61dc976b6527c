//! Reading project files: every access goes through [`ProjectFiles`], which
//! refuses paths that leave the project (through a symlink, since `..` and
//! absolute paths are refused when `prompts.toml` is loaded) and answers
//! digests from the stat cache (see `state/mod.rs`).

use crate::hash::Digest;
use crate::stamp::NoopStamp;
use crate::state::FileStat;
use crate::state::{StatEntry, StatTable, now_ns};
use camino::{Utf8Path, Utf8PathBuf};
use rayon::prelude::*;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("`{0}` leads outside the project through a symlink")]
    Escapes(String),
    #[error("`{0}` is not a regular file")]
    NotAFile(String),
    #[error("cannot read `{0}`: {1}")]
    Io(String, std::io::Error),
}

impl FileError {
    /// The message without the path, for callers that name the file
    /// themselves ("template `x` is a symlink ...").
    pub fn reason(&self) -> String {
        match self {
            FileError::Escapes(_) => "leads outside the project through a symlink".to_string(),
            FileError::NotAFile(_) => "is not a regular file".to_string(),
            FileError::Io(_, e) => format!("cannot be read: {e}"),
        }
    }

    /// What to do about it.
    pub fn help(&self) -> &'static str {
        match self {
            FileError::Escapes(_) => "keep every file a target uses inside the project",
            FileError::NotAFile(_) => "point the path at a regular file",
            FileError::Io(..) => "check the file's permissions",
        }
    }
}

pub use crate::at::{lstat_at, open_at, stat_at};

impl FileStat {
    pub fn from_libc(st: &libc::stat) -> FileStat {
        FileStat {
            size: st.st_size as u64,
            mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
            ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
            ino: st.st_ino,
        }
    }
}

pub struct ProjectFiles {
    root: Utf8PathBuf,
    /// The root directory, open, so stats resolve paths relative to it
    /// (`fstatat`) instead of walking the absolute path every time.
    root_dir: Option<std::fs::File>,
    root_canon: PathBuf,
    /// Stat cache from the previous build.
    old: HashMap<String, StatEntry>,
    /// Entries looked at in this build (what the next state keeps).
    seen: Mutex<StatTable>,
    /// Directories already checked to be inside the project.
    dirs_ok: std::sync::RwLock<HashMap<Utf8PathBuf, bool>>,
    /// Set when the no-op stamp has just verified every file but the ones
    /// it saw change: its entries for the others are then taken as they are.
    vouched: Option<Vouched>,
    /// Directories listed by globs: path, stat before listing, when.
    walked: Mutex<Vec<WalkedDir>>,
    /// What resolving a path depended on (`stamp::resolution`), taken
    /// before the path was checked to stay inside: each directory checked,
    /// each symlink followed.
    resolved: Mutex<HashMap<String, Resolution>>,
}

pub use crate::stamp::Resolution;
use crate::stamp::is_symlink;

/// The entries of a no-op stamp just verified against the disk, found by
/// path through an index of positions (not a map of copied paths: at
/// 10,000 targets that copy was a tenth of an incremental build).
struct Vouched {
    stamp: Arc<NoopStamp>,
    /// Positions in the stamp of the files' entries, hashed by path.
    index: hashbrown::HashTable<u32>,
    /// What the stamp saw change: not vouched for.
    except: HashSet<String>,
    verified_at: i64,
    /// Positions of the stamp's `Resolve` entries, hashed by path.
    resolve_index: hashbrown::HashTable<u32>,
}

/// The hash of a path's bytes (as a stamp holds them: no decode to hash).
fn path_hash(path: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(path);
    h.finish()
}

impl Vouched {
    fn get(&self, rel: &str) -> Option<StatEntry> {
        self.get_at(rel, |v| v.position(rel))
    }

    /// [`Vouched::get`], finding `rel`'s entry with `position` (unless the
    /// stamp saw it change).
    fn get_at(
        &self,
        rel: &str,
        position: impl FnOnce(&Self) -> Option<usize>,
    ) -> Option<StatEntry> {
        if self.except.contains(rel) {
            return None;
        }
        let e = self.stamp.entry(position(self)?);
        Some(StatEntry::new(e.stat?, e.digest, self.verified_at))
    }

    /// Where the stamp holds `rel`'s entry (files only).
    fn position(&self, rel: &str) -> Option<usize> {
        find(&self.stamp, &self.index, rel)
    }

    /// [`Vouched::position`], looking first a few entries either side of
    /// `near`, which is left past the entry found.
    fn position_near(&self, rel: &str, near: &mut usize) -> Option<usize> {
        let stamp = &self.stamp;
        let i = (near.saturating_sub(4)..stamp.len().min(*near + 4))
            .find(|&i| stamp.path_is(i, rel) && stamp.is_present_file(i))
            .or_else(|| self.position(rel))?;
        *near = i + 1;
        Some(i)
    }

    /// The stamp's `Resolve` entry for `rel`, unless it saw it change.
    fn resolution(&self, rel: &str) -> Option<Resolution> {
        if self.except.contains(rel) {
            return None;
        }
        let i = find(&self.stamp, &self.resolve_index, rel)?;
        Some(self.stamp.entry(i).stat)
    }
}

/// The position, in `index` over `stamp`'s entries, of `rel`'s.
fn find(stamp: &NoopStamp, index: &hashbrown::HashTable<u32>, rel: &str) -> Option<usize> {
    index
        .find(path_hash(rel.as_bytes()), |&i| {
            stamp.path_is(i as usize, rel)
        })
        .map(|&i| i as usize)
}

impl ProjectFiles {
    pub fn new(root: &Utf8Path, old: HashMap<String, StatEntry>) -> ProjectFiles {
        let root_canon =
            std::fs::canonicalize(root).unwrap_or_else(|_| root.as_std_path().to_owned());
        ProjectFiles {
            root_dir: std::fs::File::open(root).ok(),
            root: root.to_owned(),
            root_canon,
            old,
            seen: Mutex::new(StatTable::default()),
            dirs_ok: Default::default(),
            walked: Default::default(),
            resolved: Default::default(),
            vouched: None,
        }
    }

    /// Notes what resolving `rel` depends on, unless already noted: call
    /// before checking where it leads.
    fn note_resolution(&self, rel: &str) {
        if self.resolved.lock().unwrap().contains_key(rel) {
            return;
        }
        let Some(dir) = &self.root_dir else { return };
        if let Some(r) = crate::stamp::resolution(dir, &self.root, rel) {
            self.resolved.lock().unwrap().insert(rel.to_string(), r);
        }
    }

    /// [`ProjectFiles::note_resolution`] of `rel` and each directory above.
    fn note_path_resolution(&self, rel: &str) {
        for (i, _) in rel.match_indices('/') {
            self.note_resolution(&rel[..i]);
        }
        self.note_resolution(rel);
    }

    /// What resolving `rel` depended on when this build checked it, or
    /// when the stamp that vouches for it did; `None` if neither did.
    pub fn resolution(&self, rel: &str) -> Option<Resolution> {
        if let Some(r) = self.resolved.lock().unwrap().get(rel) {
            return Some(*r);
        }
        self.vouched.as_ref()?.resolution(rel)
    }

    /// The symlinks whose resolution this build or the vouching stamp noted.
    pub fn noted_symlinks(&self) -> Vec<String> {
        let mut out: Vec<String> = (self.resolved.lock().unwrap().iter())
            .filter(|(_, r)| is_symlink(r))
            .map(|(p, _)| p.clone())
            .collect();
        if let Some(v) = &self.vouched {
            for &i in v.resolve_index.iter() {
                let e = v.stamp.entry(i as usize);
                if is_symlink(&e.stat) && !v.except.contains(e.path) {
                    out.push(e.path.to_string());
                }
            }
        }
        out
    }

    /// Whether this build followed a symlink that the vouching stamp has
    /// no `Resolve` entry for (a file replaced by a link since): a stamp
    /// patched in place would then not check where it leads.
    pub fn followed_unstamped_symlinks(&self) -> bool {
        let resolved = self.resolved.lock().unwrap();
        let Some(v) = &self.vouched else {
            return resolved.values().any(is_symlink);
        };
        (resolved.iter())
            .any(|(p, r)| is_symlink(r) && find(&v.stamp, &v.resolve_index, p).is_none())
    }

    /// [`ProjectFiles::resolution`] of `rel` as it is now (for a
    /// directory mkt created: nothing was there when it was checked).
    pub fn resolution_now(&self, rel: &str) -> Option<Resolution> {
        crate::stamp::resolution(self.root_dir.as_ref()?, &self.root, rel)
    }

    pub fn root(&self) -> &Utf8Path {
        &self.root
    }

    pub fn abs(&self, rel: &str) -> Utf8PathBuf {
        self.root.join(rel)
    }

    fn dir_inside(&self, rel_dir: &Utf8Path) -> bool {
        if rel_dir.as_str().is_empty() {
            return true;
        }
        if let Some(ok) = self.dirs_ok.read().unwrap().get(rel_dir) {
            return *ok;
        }
        // (each directory on the path, before it is resolved: see `stamp.rs`)
        self.note_path_resolution(rel_dir.as_str());
        // A directory that does not exist yet is judged by its nearest
        // existing ancestor (a missing `out/x` under a symlinked `out`).
        let mut probe = Some(rel_dir);
        let ok = loop {
            let Some(dir) = probe.filter(|d| !d.as_str().is_empty()) else {
                break true;
            };
            if dir != rel_dir
                && let Some(ok) = self.dirs_ok.read().unwrap().get(dir)
            {
                break *ok;
            }
            // (a missing directory costs an `fstatat`, where `realpath`
            // read every component of its absolute path: a first build
            // checks each output's directory before it is made)
            if let Some(Err(e)) = self.fast_lstat(dir.as_str())
                && e.kind() == std::io::ErrorKind::NotFound
            {
                probe = dir.parent();
                continue;
            }
            match std::fs::canonicalize(self.root.join(dir)) {
                Ok(c) => {
                    break c.starts_with(&self.root_canon)
                        && !c.starts_with(self.root_canon.join(crate::store::STORE_DIR));
                }
                Err(_) => probe = dir.parent(),
            }
        };
        // The directory that answered is kept, `rel_dir` itself or the
        // nearest ancestor there. (An answer for a directory not there yet
        // holds only until it is made, by mkt or by anyone: it is not kept.)
        if let Some(found) = probe.filter(|d| !d.as_str().is_empty()) {
            self.dirs_ok.write().unwrap().insert(found.to_owned(), ok);
        }
        ok
    }

    /// Checks that writing `rel` stays in the project: its directory, or
    /// the nearest one that exists, resolves inside the root and outside
    /// `.mkt/`.
    pub fn check_writable(&self, rel: &str) -> Result<(), FileError> {
        let dir = Utf8Path::new(rel).parent().unwrap_or(Utf8Path::new(""));
        if self.dir_inside(dir) {
            Ok(())
        } else {
            Err(FileError::Escapes(rel.to_string()))
        }
    }

    /// `lstat`s a project file; `Ok(None)` when it does not exist. Follows a
    /// symlink only when it stays inside the project.
    pub fn stat(&self, rel: &str) -> Result<Option<FileStat>, FileError> {
        let rel_path = Utf8Path::new(rel);
        if !self.dir_inside(rel_path.parent().unwrap_or(Utf8Path::new(""))) {
            return Err(FileError::Escapes(rel.to_string()));
        }
        if let Some(st) = self.fast_lstat(rel) {
            match st {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                    return Ok(Some(FileStat::from_libc(&st)));
                }
                Ok(_) => {} // a symlink or not a file: the slow path decides
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(FileError::Io(rel.to_string(), e)),
            }
        }
        let abs = self.abs(rel);
        let meta = match std::fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FileError::Io(rel.to_string(), e)),
        };
        let meta = if meta.file_type().is_symlink() {
            self.note_resolution(rel);
            match std::fs::canonicalize(&abs) {
                Ok(c) if c.starts_with(&self.root_canon) => {}
                Ok(_) => return Err(FileError::Escapes(rel.to_string())),
                Err(_) => return Ok(None), // dangling
            }
            std::fs::metadata(&abs).map_err(|e| FileError::Io(rel.to_string(), e))?
        } else {
            meta
        };
        if !meta.is_file() {
            return Err(FileError::NotAFile(rel.to_string()));
        }
        Ok(Some(FileStat::from_metadata(&meta)))
    }

    fn fast_lstat(&self, rel: &str) -> Option<std::io::Result<libc::stat>> {
        lstat_at(self.root_dir.as_ref()?, rel)
    }

    /// Lists the files matching a glob (see [`glob_walk`]), remembering the
    /// directories looked at and their stat from before they were read.
    pub fn glob(&self, pattern: &str) -> Result<Vec<String>, globset::Error> {
        let (files, dirs) = glob_walk(&self.root, pattern)?;
        // (how each directory listed resolved, and the ones above it)
        for d in &dirs {
            if !d.path.is_empty() {
                self.note_path_resolution(&d.path);
            }
        }
        self.walked.lock().unwrap().extend(dirs);
        Ok(files)
    }

    /// The directories globs listed, with their stat (`None`: absent) and
    /// when it was taken.
    pub fn walked_dirs(&self) -> Vec<WalkedDir> {
        self.walked.lock().unwrap().clone()
    }

    /// The digest of a project file, from the stat cache when the file's
    /// stat is unchanged and the entry is not racy.
    pub fn digest(&self, rel: &str) -> Result<Option<Digest>, FileError> {
        if let Some(e) = self.known(rel) {
            return Ok(Some(e.digest));
        }
        let entry = self.lookup(rel)?;
        if let Some(e) = entry {
            self.record(rel, e);
        }
        Ok(entry.map(|e| e.digest))
    }

    /// What this build already knows of a file without looking at it: an
    /// entry it saw, or one the stamp vouched for.
    fn known(&self, rel: &str) -> Option<StatEntry> {
        if let Some(e) = self.seen.lock().unwrap().get(rel) {
            return Some(*e);
        }
        self.vouched.as_ref()?.get(rel)
    }

    /// Stats (and, when the cache cannot answer, hashes) a file without
    /// touching shared state, so many can run in parallel.
    fn lookup(&self, rel: &str) -> Result<Option<StatEntry>, FileError> {
        // the racy rule compares the mtime with when we looked, taken
        // before the stat and the read
        let seen_at = now_ns();
        let Some(stat) = self.stat(rel)? else {
            return Ok(None);
        };
        if let Some(old) = self.old.get(rel)
            && old.stat == stat
            && !old.racy
        {
            return Ok(Some(*old));
        }
        let bytes = std::fs::read(self.abs(rel)).map_err(|e| FileError::Io(rel.to_string(), e))?;
        Ok(Some(StatEntry::new(stat, Digest::of(&bytes), seen_at)))
    }

    fn record(&self, rel: &str, entry: StatEntry) {
        self.seen.lock().unwrap().insert(rel, entry);
    }

    /// Digests many files in parallel (the no-op build's main cost).
    /// Errors are not reported here: the later `digest` of the same path
    /// meets them again where there is context to report them.
    pub fn digest_all(&self, paths: &[&str]) {
        let todo: Vec<&str> = paths
            .iter()
            .copied()
            .filter(|p| self.known(p).is_none())
            .collect();
        let found: Vec<(&str, StatEntry)> = todo
            .par_iter()
            .filter_map(|p| self.lookup(p).ok().flatten().map(|e| (*p, e)))
            .collect();
        let mut seen = self.seen.lock().unwrap();
        for (p, e) in found {
            seen.insert(p, e);
        }
    }

    /// Reads a project file (checked to stay inside the project).
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, FileError> {
        match self.stat(rel)? {
            Some(_) => std::fs::read(self.abs(rel)).map_err(|e| FileError::Io(rel.to_string(), e)),
            None => Err(FileError::Io(
                rel.to_string(),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            )),
        }
    }

    /// Notes a file mkt itself just wrote, whose digest it knows.
    pub fn wrote(&self, rel: &str, digest: Digest) {
        let seen_at = now_ns();
        if let Ok(Some(stat)) = self.stat(rel) {
            self.record(rel, StatEntry::new(stat, digest, seen_at));
        }
    }

    /// Verifies by content, in parallel, the racy entries this build saw
    /// whose mtime has aged past the racy window: those that still hold
    /// are no longer racy. A build's own outputs are all racy when written
    /// (their stat is taken at once); without this, the next build reads
    /// every one of them again (at a million targets, 19 s of a no-op).
    /// Entries still inside the window stay racy: nothing waits for them.
    pub fn settle_racy(&self) {
        // (before any stat or read: the racy rule)
        let checked_at = now_ns();
        let mut seen = self.seen.lock().unwrap();
        // (settled in place: a copy of the paths was a fifth of the peak
        // memory of a full build)
        let due: Vec<(&str, &mut StatEntry)> = (seen.iter_mut())
            .filter(|(_, e)| e.racy && !crate::state::is_racy(&e.stat, checked_at))
            .collect();
        due.into_par_iter().for_each(|(p, e)| {
            if let Some(now) = self.still(p, e, checked_at) {
                *e = now;
            }
        });
        drop(seen);
        for d in self.walked.lock().unwrap().iter_mut() {
            let racy = d
                .stat
                .is_some_and(|st| crate::state::is_racy(&st, d.seen_at));
            if racy
                && d.stat
                    .is_some_and(|st| !crate::state::is_racy(&st, checked_at))
            {
                let stat = std::fs::metadata(self.abs(&d.path)).ok();
                let stat = stat
                    .filter(|m| m.is_dir())
                    .map(|m| FileStat::from_metadata(&m));
                if stat == d.stat && listing_digest(&self.abs(&d.path)) == d.listing {
                    d.seen_at = checked_at;
                }
            }
        }
    }

    /// `e` as verified at `checked_at`, if the file still has its stat and
    /// its content.
    fn still(&self, rel: &str, e: &StatEntry, checked_at: i64) -> Option<StatEntry> {
        if self.stat(rel).ok()?? != e.stat {
            return None;
        }
        let bytes = std::fs::read(self.abs(rel)).ok()?;
        (Digest::of(&bytes) == e.digest).then(|| StatEntry::new(e.stat, e.digest, checked_at))
    }

    /// Forgets what is known of a file (it is about to change).
    pub fn forget(&self, rel: &str) {
        self.seen.lock().unwrap().remove(rel);
    }

    /// Takes the word of `stamp`, verified at `verified_at`, for every file
    /// but `changed`: their digests are then known without a stat. (The
    /// stat cache may hold older entries for some; it is only a cache, and
    /// the stamp's, just checked, win.)
    pub fn vouch(&mut self, stamp: Arc<NoopStamp>, changed: HashSet<String>, verified_at: i64) {
        let mut index = hashbrown::HashTable::with_capacity(stamp.len());
        let mut resolve_index = hashbrown::HashTable::new();
        // (from each entry's path bytes and kind alone: decoding two
        // million whole entries was a tenth of an edit's build)
        let hash = |&i: &u32| path_hash(stamp.path_bytes(i as usize));
        for i in 0..stamp.len() {
            let at = path_hash(stamp.path_bytes(i));
            if stamp.is_resolve(i) {
                resolve_index.insert_unique(at, i as u32, hash);
            } else if stamp.is_present_file(i) {
                index.insert_unique(at, i as u32, hash);
            }
        }
        self.vouched = Some(Vouched {
            index,
            stamp,
            except: changed,
            verified_at,
            resolve_index,
        });
    }

    /// Where the vouching stamp holds `rel`'s entry (files only), whether or
    /// not the stamp saw it change: for patching that entry.
    pub fn stamp_position(&self, rel: &str) -> Option<usize> {
        self.vouched.as_ref()?.position(rel)
    }

    /// Lets go of the vouching stamp: from here on only what this build
    /// saw is known.
    pub fn unvouch(&mut self) {
        self.vouched = None;
    }

    /// Runs `f` over everything this build knows of its files.
    pub fn with_seen<T>(&self, f: impl FnOnce(&StatTable) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }

    /// The digest the vouching stamp records for `rel`, unless it saw it
    /// change. `near` is where to look first (the stamp lists files in the
    /// order the graph's nodes name them, so a walk over the nodes, either
    /// way, finds each a few entries from the last); it is left past the
    /// entry found. (Hashing into the stamp for each of a million outputs, a
    /// cache miss each, was most of an edit's scheduling.)
    pub fn vouched_digest(&self, rel: &str, near: &mut usize) -> Option<Digest> {
        let v = self.vouched.as_ref()?;
        Some(v.get_at(rel, |v| v.position_near(rel, near))?.digest)
    }

    /// What this build knows of a file: its stat when it was hashed.
    pub fn seen_entry(&self, rel: &str) -> Option<StatEntry> {
        self.known(rel)
    }

    /// The previous stat cache and the entries this build looked at.
    pub fn into_parts(self) -> (HashMap<String, StatEntry>, StatTable) {
        (self.old, self.seen.into_inner().unwrap())
    }
}

/// The matcher `glob_files` uses, for checking paths that do not exist yet.
pub fn glob_matcher(pattern: &str) -> Result<globset::GlobMatcher, globset::Error> {
    Ok(globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()?
        .compile_matcher())
}

/// Files under the project root matching `pattern` (globset syntax, `*`
/// does not cross `/`), sorted, hidden directories (`.mkt`, `.git`, ...)
/// not searched; plus the directories whose listing decided the result
/// (relative; `""` is the root): a file added to or removed from any of
/// them changes its mtime, which is how a no-op build notices new matches
/// without walking again.
#[derive(Debug, Clone)]
pub struct WalkedDir {
    pub path: String,
    /// Its stat from before it was listed (`None`: absent).
    pub stat: Option<FileStat>,
    /// When that stat was taken.
    pub seen_at: i64,
    /// What the listing found ([`listing_digest`]): a racy directory is
    /// verified by listing it again.
    pub listing: Digest,
}

/// What a glob sees of a directory: its entries but hidden ones (names
/// that are not UTF-8 too), each with whether it is a directory; `None`
/// when it cannot be listed.
fn list_dir(abs: &Utf8Path) -> Option<Vec<(String, bool)>> {
    let listing = std::fs::read_dir(abs).ok()?;
    let mut out = Vec::new();
    for entry in listing.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        out.push((name, is_dir));
    }
    Some(out)
}

/// The digest of a listing: the names in order, each with its kind. A
/// directory that cannot be listed has the zero digest.
fn digest_listing(entries: Option<&[(String, bool)]>) -> Digest {
    let Some(entries) = entries else {
        return Digest::default();
    };
    let mut sorted: Vec<&(String, bool)> = entries.iter().collect();
    sorted.sort();
    let mut bytes = Vec::new();
    for (name, is_dir) in sorted {
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(if *is_dir { b"\0d\0" } else { b"\0f\0" });
    }
    Digest::of(&bytes)
}

/// The digest of what a glob sees of directory `abs` now (see
/// [`WalkedDir::listing`]).
pub fn listing_digest(abs: &Utf8Path) -> Digest {
    digest_listing(list_dir(abs).as_deref())
}

pub fn glob_walk(
    root: &Utf8Path,
    pattern: &str,
) -> Result<(Vec<String>, Vec<WalkedDir>), globset::Error> {
    let glob = glob_matcher(pattern)?;
    // walk only below the pattern's literal prefix
    let mut base = Vec::new();
    let mut deep = false;
    let parts: Vec<&str> = pattern.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if crate::config::is_glob(part) {
            deep = parts[i..].iter().any(|p| p.contains("**")) || parts.len() - i > 1;
            break;
        }
        if i + 1 < parts.len() {
            base.push(*part);
        }
    }
    let base = base.join("/");
    let mut out = Vec::new();
    let mut dirs = Vec::new();
    let mut stack = vec![base];
    while let Some(rel_dir) = stack.pop() {
        let abs = root.join(&rel_dir);
        // time, then stat, then list: a file added after the listing
        // changes the directory's mtime after this stat, and one added in
        // the same tick is caught by the racy rule
        let seen_at = now_ns();
        // (of the directory listed: through a symlink, the one it leads to)
        let stat = std::fs::metadata(&abs)
            .ok()
            .filter(|m| m.is_dir())
            .map(|m| FileStat::from_metadata(&m));
        let listing = list_dir(&abs);
        dirs.push(WalkedDir {
            path: rel_dir.clone(),
            stat,
            seen_at,
            listing: digest_listing(listing.as_deref()),
        });
        for (name, is_dir) in listing.into_iter().flatten() {
            let rel = if rel_dir.is_empty() {
                name
            } else {
                format!("{rel_dir}/{name}")
            };
            match is_dir {
                true if deep => stack.push(rel),
                true => {}
                false if glob.is_match(&rel) => out.push(rel),
                false => {}
            }
        }
    }
    out.sort();
    Ok((out, dirs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_below_its_prefix_only() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        for f in [
            "docs/a.md",
            "docs/b.txt",
            "docs/sub/c.md",
            "other/d.md",
            ".hidden/e.md",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        assert_eq!(glob_walk(root, "docs/*.md").unwrap().0, ["docs/a.md"]);
        assert_eq!(
            glob_walk(root, "docs/**/*.md").unwrap().0,
            ["docs/a.md", "docs/sub/c.md"]
        );
        assert_eq!(
            glob_walk(root, "**/*.md").unwrap().0,
            ["docs/a.md", "docs/sub/c.md", "other/d.md"]
        );
        assert_eq!(glob_walk(root, "*/d.md").unwrap().0, ["other/d.md"]);
    }

    #[test]
    fn a_vouched_digest_is_the_same_wherever_the_lookup_starts() {
        use crate::stamp::{EntryKind, NoopStamp, StampEntry};
        let st = FileStat {
            size: 1,
            mtime_ns: 1,
            ctime_ns: 1,
            ino: 1,
        };
        let e = |path: &str, kind, stat: Option<FileStat>, d: &[u8]| StampEntry {
            path: path.into(),
            kind,
            stat,
            racy: false,
            digest: Digest::of(d),
        };
        // a symlinked input has a `Resolve` entry of its own path, and a
        // directory entry can share a name with nothing found
        let entries = vec![
            e("docs", EntryKind::Dir, Some(st), b"listing"),
            e("docs/a.md", EntryKind::Resolve, Some(st), b"resolve"),
            e("docs/a.md", EntryKind::Content, Some(st), b"a"),
            e("out/a.md", EntryKind::Output, Some(st), b"out a"),
            e("docs/b.md", EntryKind::Content, Some(st), b"b"),
            e("out/b.md", EntryKind::Output, Some(st), b"out b"),
            e("out/gone.md", EntryKind::Output, None, b""),
        ];
        let t = tempfile::tempdir().unwrap();
        let mut files =
            ProjectFiles::new(Utf8Path::from_path(t.path()).unwrap(), HashMap::default());
        let changed: HashSet<String> = ["docs/b.md".to_string()].into_iter().collect();
        files.vouch(Arc::new(NoopStamp::new(2, &entries)), changed, 0);
        for near in 0..12 {
            let mut at = near;
            let got = |rel: &str, at: &mut usize| files.vouched_digest(rel, at);
            assert_eq!(
                got("docs/a.md", &mut at),
                Some(Digest::of(b"a")),
                "from {near}"
            );
            assert_eq!(at, 3);
            let mut at = near;
            assert_eq!(got("out/b.md", &mut at), Some(Digest::of(b"out b")));
            assert_eq!(at, 6);
            for rel in ["docs", "docs/b.md", "out/gone.md", "nowhere"] {
                let mut at = near;
                assert_eq!(got(rel, &mut at), None, "{rel} from {near}");
                assert_eq!(at, near);
            }
        }
    }

    /// Sleeps past the racy window of the file system's fine timestamps.
    fn past_the_racy_window() {
        std::thread::sleep(std::time::Duration::from_nanos(
            crate::state::RACY_FINE_NS as u64 + 20_000_000,
        ));
    }

    #[test]
    fn racy_entries_past_the_window_are_verified_and_settled_before_they_are_kept() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        std::fs::create_dir(root.join("docs")).unwrap();
        for (name, body) in [("docs/a.md", "aa"), ("docs/b.md", "bb")] {
            std::fs::write(root.join(name), body).unwrap();
        }
        let files = ProjectFiles::new(root, HashMap::default());
        assert_eq!(files.glob("docs/*.md").unwrap(), ["docs/a.md", "docs/b.md"]);
        // as a build records the outputs it writes: racy, seen at once
        files.wrote("docs/a.md", Digest::of(b"aa"));
        files.wrote("docs/b.md", Digest::of(b"bb"));
        let racy = |p: &str| files.seen_entry(p).unwrap().racy;
        assert!(racy("docs/a.md") && racy("docs/b.md"));
        let dir_racy = || {
            let d = files.walked_dirs().pop().unwrap();
            crate::state::is_racy(&d.stat.unwrap(), d.seen_at)
        };
        assert!(dir_racy());
        // still inside the window: nothing is read, nothing settles
        files.settle_racy();
        assert!(racy("docs/a.md") && dir_racy());
        past_the_racy_window();
        // `b.md` changed since (a new stat): it is not vouched for
        std::fs::write(root.join("docs/b.md"), "BB").unwrap();
        files.settle_racy();
        assert!(!racy("docs/a.md"), "verified by content");
        assert!(racy("docs/b.md"), "changed: stays racy");
        assert!(!dir_racy(), "verified by its listing");
    }

    #[test]
    fn a_racy_directory_whose_listing_changed_stays_racy() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        std::fs::create_dir(root.join("docs")).unwrap();
        std::fs::write(root.join("docs/a.md"), "a").unwrap();
        let files = ProjectFiles::new(root, HashMap::default());
        files.glob("docs/*.md").unwrap();
        let before = files.walked_dirs().pop().unwrap();
        // a file renamed within the directory: its stat may change only
        // within the tick, its listing does
        std::fs::rename(root.join("docs/a.md"), root.join("docs/c.md")).unwrap();
        assert_ne!(listing_digest(&root.join("docs")), before.listing);
        past_the_racy_window();
        files.settle_racy();
        let after = files.walked_dirs().pop().unwrap();
        assert_eq!(after.seen_at, before.seen_at, "not settled");
    }

    #[test]
    fn symlinks_out_of_the_project_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("dir")).unwrap();
        std::fs::write(root.join("real"), "r").unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("inside")).unwrap();
        let files = ProjectFiles::new(root, HashMap::default());
        assert!(matches!(files.digest("link"), Err(FileError::Escapes(_))));
        assert!(matches!(
            files.digest("dir/secret"),
            Err(FileError::Escapes(_))
        ));
        assert_eq!(files.digest("inside").unwrap(), Some(Digest::of(b"r")));
        assert_eq!(files.digest("missing").unwrap(), None);
    }
}
