//! The content-addressed store under `.mkt/`.
//!
//! ```text
//! .mkt/
//!   CACHEDIR.TAG         marks the directory as a cache for backup tools
//!   .gitignore           "*": the store never gets committed
//!   lock                 held (flock) by the build that owns the store
//!   VERSION              store format version ("2"; "1" is read too)
//!   packs/<seq>.pack     objects (outputs and compiled prompts, named by
//!                        BLAKE3) and action-cache entries (InputBundleHash
//!                        -> RunManifest), one pack per build that wrote
//!                        any (format: `pack.rs`)
//!   objects/xx/<digest>  loose objects, from a version 1 store (read only)
//!   ac/xx/<ibh>.json     loose action-cache entries, likewise
//!   runs/<run id>.json   manifests of failed runs (a successful run's is its ac entry)
//!   history.jsonl        one line per target per build: ran/cached/failed
//!   state, state.log     the fast-path state and its journal (see `state/mod.rs`)
//!   sync-pending         there while a build's writes may not be on disk yet
//! ```
//!
//! **Packs.** Objects and action-cache entries are appended to the pack
//! of the build that made them, which seals it when it flushes; a lookup
//! searches the packs newest first, then (for a version 1 store) the
//! loose files. When a build finds more than [`MAX_PACKS`] packs it merges
//! a run of consecutive ones into one (see [`ObjectStore::sync`]). Why
//! packs and not a file each: `pack.rs`.
//!
//! **Writes** of other files are atomic, so a reader sees a whole file or
//! none: a temp file beside the final name, renamed over it
//! ([`ObjectStore::write_atomic`]). Durability is batched like
//! git's `core.fsyncMethod=batch`: instead of an fsync per file (0.4 ms each
//! here, one after another, which would double a 10,000-target build),
//! [`ObjectStore::sync`] flushes once at the end of a build: the few files
//! a small build wrote each `fsync`ed at once, or the whole file system
//! (`syncfs`) after more than [`SYNC_EACH_MAX`]. A crash before
//! that can leave a file whose data never reached the disk; that is safe
//! because of the next rule.
//!
//! **Reads** trust nothing: an object is re-hashed and must match its name,
//! an action-cache entry must parse as a manifest of the current schema and
//! name the InputBundleHash it is filed under. Anything else is reported as
//! corrupt, deleted, and treated as a miss.

use crate::error::{Error, Result};
use crate::hash::{Digest, InputBundleHash};
use crate::layout;
use crate::manifest::RunManifest;
use crate::pack::{Found, Pack, PackWriter, RecordKind};
use camino::{Utf8Path, Utf8PathBuf};
use rustc_hash::FxHashSet as HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

pub use crate::layout::{PACKS_DIR, STORE_DIR};
pub const STORE_VERSION: &str = "2";
/// The format before packs (loose files only), read as well: such a store
/// becomes version 2 when its first pack is written.
const STORE_VERSION_LOOSE: &str = "1";
/// With more packs than this, [`ObjectStore::sync`] merges some.
pub const MAX_PACKS: usize = 8;

pub struct ObjectStore {
    dir: Utf8PathBuf,
    /// Opened read-only: nothing is written or deleted, not even a corrupt
    /// entry (it is still reported as corrupt and never served).
    read_only: bool,
    /// What this store has written since it was opened, for
    /// [`ObjectStore::sync`].
    written: Mutex<Written>,
    packs: Mutex<Packs>,
    /// Its VERSION said "1": "2" is written with the first pack.
    loose_version: AtomicBool,
    /// It took the project lock: only then may it seal or merge packs
    /// it did not write.
    holds_lock: AtomicBool,
    /// When it was opened: a temp file older than that is no write of
    /// this build's.
    opened: SystemTime,
    /// Output directories already cleared of stale temp files.
    swept: Mutex<HashSet<Utf8PathBuf>>,
}

/// The store's packs, read at first use.
#[derive(Default)]
struct Packs {
    /// Every pack on disk, newest first.
    loaded: Option<Vec<Pack>>,
    /// Whether `objects/` or `ac/` holds anything (a version 1 store).
    loose: Option<bool>,
    /// The pack this store is writing.
    writer: Option<OpenPack>,
    /// Records found corrupt: stored again when asked, whatever an index says.
    corrupt: HashSet<(RecordKind, [u8; 32])>,
}

struct OpenPack {
    path: Utf8PathBuf,
    writer: PackWriter,
}

/// A pack's file name: its number, 16 hex digits, so names sort by number.
fn pack_name(seq: u64) -> String {
    format!("{seq:016x}.pack")
}

fn pack_seq(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".pack")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// The packs in `packs_dir`, oldest first.
fn list_packs(packs_dir: &Utf8Path) -> Vec<(u64, Utf8PathBuf)> {
    let mut packs: Vec<(u64, Utf8PathBuf)> = fs::read_dir(packs_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((pack_seq(&name)?, packs_dir.join(name)))
        })
        .collect();
    packs.sort();
    packs
}

/// Whether a record in the pack at that path is to be kept.
pub type KeepRecord<'a> = dyn Fn(&Utf8Path, RecordKind, &[u8; 32]) -> bool + 'a;

/// The manifest an action-cache entry filed under `ibh` holds, when it
/// can be believed: a valid manifest of a run of that bundle that did not
/// fail.
pub fn believed_ac_entry(ibh: &InputBundleHash, bytes: &[u8]) -> Option<RunManifest> {
    RunManifest::from_json(bytes)
        .filter(|m| m.input_bundle_hash == *ibh && m.status == crate::manifest::RunStatus::Ok)
}

/// One record of the store's packs as `mkt gc` sees it: the newest copy
/// of each key that verifies.
#[derive(Debug)]
pub struct PackedRecord<T> {
    pub kind: RecordKind,
    pub key: [u8; 32],
    /// Its size in the pack, header included.
    pub bytes: u64,
    /// The pack that holds it: an index into [`PackedRecords::packs`].
    pub pack: usize,
    /// What the caller made of an action-cache entry's payload.
    pub read: Option<Box<T>>,
}

/// Every pack of the store, newest first, and their records.
pub struct PackedRecords<T> {
    pub packs: Vec<Utf8PathBuf>,
    pub records: Vec<PackedRecord<T>>,
}

/// The files a store wrote, up to [`SYNC_EACH_MAX`]; past that, only that
/// there were more.
#[derive(Default)]
struct Written {
    paths: Vec<Utf8PathBuf>,
    more: bool,
}

/// Present while a build's writes may not be on disk yet
/// ([`ObjectStore::begin_writes`]).
use crate::layout::SYNC_PENDING;

/// Up to this many written files, [`ObjectStore::sync`] flushes each of
/// them (and their directories) instead of the whole file system...
const SYNC_EACH_MAX: usize = 64;

/// ...unless the whole system has no more than this much data waiting to
/// be written (`/proc/meminfo`'s `Dirty` and `Writeback`, in kB).
const SYNC_ALL_DIRTY_KB: u64 = 1024;

/// The system's page cache waiting to be written, in kB; `None` where
/// that cannot be read.
fn dirty_kb() -> Option<u64> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some(field("Dirty:")? + field("Writeback:")?)
}

/// The held project lock; released when dropped.
pub struct StoreLock {
    _file: File,
}

/// What an action-cache lookup found.
#[derive(Debug, PartialEq)]
pub enum AcRead {
    Found(Box<RunManifest>),
    Missing,
    /// An entry was there but is not a valid manifest for this hash.
    Corrupt,
}

/// What reading an object found.
#[derive(Debug, PartialEq, Eq)]
pub enum ObjectRead {
    Found(Vec<u8>),
    Missing,
    /// The file was there but its bytes do not hash to its name.
    Corrupt,
}

/// The store's directories: each must be a directory of its own, never a
/// symlink (see [`check_store_dir`]).
const STORE_SUBDIRS: [&str; 4] = [
    layout::PACKS_DIR,
    layout::RUNS_DIR,
    layout::OBJECTS_DIR,
    layout::AC_DIR,
];

/// The first line of the `CACHEDIR.TAG` of every store mkt creates (the
/// tag's standard signature) and the line after it, which says it is
/// mkt's: `mkt gc --all` empties only a directory that carries both.
const CACHEDIR_TAG_TEXT: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55\n# This file marks mkt's store (.mkt/) as a cache directory.\n";

/// A project root whose store passed [`check_store_dir`], for
/// [`ObjectStore::open_checked`]: the build checks before anything else
/// (its no-op stamp's fast path writes the store too) and need not check
/// again when it opens the store.
#[derive(Debug, Clone, Copy)]
pub struct CheckedRoot<'a>(&'a Utf8Path);

impl CheckedRoot<'_> {
    pub fn path(&self) -> &Utf8Path {
        self.0
    }
}

/// Refuses a store (`.mkt`, or one of its directories) that is a symlink
/// or a file: through a link, builds would write, and `mkt gc` delete,
/// wherever it leads (a cloned repository can carry `.mkt -> ~`). A
/// store not there yet is fine.
pub fn check_store_dir(root: &Utf8Path) -> Result<CheckedRoot<'_>> {
    let dir = root.join(STORE_DIR);
    let subdirs = STORE_SUBDIRS.iter().map(|d| dir.join(d));
    for path in std::iter::once(dir.clone()).chain(subdirs) {
        let what = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => continue,
            Ok(m) if m.file_type().is_symlink() => match fs::read_link(&path) {
                Ok(to) => format!("a symlink to `{}`", to.display()),
                Err(_) => "a symlink".to_string(),
            },
            Ok(_) => "a file".to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == dir => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read", path, e)),
        };
        return Err(Error::StoreNotADirectory { path, what });
    }
    Ok(CheckedRoot(root))
}

/// Whether `dir` carries the `CACHEDIR.TAG` mkt writes into every store
/// it creates.
pub fn is_marked_store(dir: &Utf8Path) -> bool {
    let tag = dir.join(layout::CACHEDIR_TAG);
    fs::symlink_metadata(&tag).is_ok_and(|m| m.is_file())
        && fs::read(&tag).is_ok_and(|b| b.starts_with(CACHEDIR_TAG_TEXT))
}

/// Opens a file of the store that is written in place (appended to, cut
/// back, locked), never through a symlink: `O_NOFOLLOW`, and a link
/// refused as [`Error::StoreFileIsALink`].
pub(crate) fn open_in_place(
    opts: &mut OpenOptions,
    path: &Utf8Path,
    action: &'static str,
) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    opts.custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::StoreFileIsALink {
                path: path.to_owned(),
            },
            _ => Error::io(action, path, e),
        })
}

impl ObjectStore {
    /// Opens (creating if needed) the store of the project at `root`.
    pub fn open(root: &Utf8Path) -> Result<ObjectStore> {
        ObjectStore::open_checked(check_store_dir(root)?, true)
    }

    /// Opens the store for reading only: a missing store is not created
    /// (every read then finds nothing). For `--dry-run`, which writes
    /// nothing.
    pub fn open_read_only(root: &Utf8Path) -> Result<ObjectStore> {
        ObjectStore::open_checked(check_store_dir(root)?, false)
    }

    /// [`ObjectStore::open`] (with `create`) or
    /// [`ObjectStore::open_read_only`] of a root already checked.
    pub fn open_checked(root: CheckedRoot<'_>, create: bool) -> Result<ObjectStore> {
        let mut store = ObjectStore::open_unchecked(root.path());
        store.read_only = !create;
        let version = store.dir.join(layout::VERSION);
        let start_over = "run `mkt gc --all` to delete the store and start over (the next build runs everything again)";
        let refuse = |what: String, help: String| Error::InvalidFile {
            path: version.clone(),
            message: format!("the store `{}` {what}", store.dir),
            help: Some(help),
        };
        match fs::read(&version) {
            Ok(v) if v.trim_ascii() == STORE_VERSION.as_bytes() => {}
            Ok(v) if v.trim_ascii() == STORE_VERSION_LOOSE.as_bytes() => {
                store.loose_version.store(true, Ordering::Relaxed);
            }
            Ok(v) => {
                let v = v.trim_ascii();
                // a version is short printable text; anything else is damage
                let damage = if v.is_empty() {
                    "is empty"
                } else if v.len() > 16 || !v.iter().all(u8::is_ascii_graphic) {
                    "holds no version number"
                } else {
                    let v = String::from_utf8_lossy(v);
                    return Err(refuse(
                        format!("has format version {v}, this mkt reads version {STORE_VERSION}"),
                        format!("upgrade mkt to the version that wrote it, or {start_over}"),
                    ));
                };
                return Err(refuse(
                    format!(
                        "is damaged: its `VERSION` file {damage} (this mkt reads version {STORE_VERSION})"
                    ),
                    start_over.to_string(),
                ));
            }
            // no VERSION: no store yet (only then may `init` write one)
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if create {
                    store.init()?;
                }
            }
            Err(e) => return Err(Error::io("read", version, e)),
        }
        Ok(store)
    }

    /// The store of the project at `root` as it is on disk, without reading
    /// its VERSION or creating anything: for `mkt gc --all`, which must be
    /// able to lock and empty a store this mkt cannot read.
    pub fn open_unchecked(root: &Utf8Path) -> ObjectStore {
        ObjectStore {
            dir: root.join(STORE_DIR),
            read_only: false,
            written: Default::default(),
            packs: Default::default(),
            loose_version: AtomicBool::new(false),
            holds_lock: AtomicBool::new(false),
            opened: SystemTime::now(),
            swept: Default::default(),
        }
    }

    /// Writes the store's marker files (VERSION, CACHEDIR.TAG, .gitignore)
    /// and its directories.
    pub(crate) fn init(&self) -> Result<()> {
        for sub in [PACKS_DIR, layout::RUNS_DIR] {
            self.create_dirs(&self.dir.join(sub))?;
        }
        self.write_atomic(&self.dir.join(layout::CACHEDIR_TAG), CACHEDIR_TAG_TEXT)?;
        self.write_atomic(&self.dir.join(layout::GITIGNORE), b"*\n")?;
        self.write_atomic(
            &self.dir.join(layout::VERSION),
            format!("{STORE_VERSION}\n").as_bytes(),
        )
    }

    /// The store of a command that writes it (`gc`, `clean`): opened and
    /// locked; or, for its `--dry-run`, opened read-only with no lock.
    pub fn open_for(
        root: &Utf8Path,
        dry_run: bool,
        wait: bool,
        on_wait: &dyn Fn(),
    ) -> Result<(ObjectStore, Option<StoreLock>)> {
        if dry_run {
            return Ok((ObjectStore::open_read_only(root)?, None));
        }
        let store = ObjectStore::open(root)?;
        let lock = store.lock(wait, on_wait)?;
        Ok((store, Some(lock)))
    }

    pub fn dir(&self) -> &Utf8Path {
        &self.dir
    }

    /// Takes the project lock. With `wait`, blocks until it is free, calling
    /// `on_wait` once first so the caller can say why it is waiting.
    pub fn lock(&self, wait: bool, on_wait: &dyn Fn()) -> Result<StoreLock> {
        let path = self.dir.join(layout::LOCK);
        let mut opts = OpenOptions::new();
        let file = open_in_place(opts.create(true).truncate(false).write(true), &path, "open")?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) if wait => {
                on_wait();
                file.lock().map_err(|e| Error::io("lock", &path, e))?;
            }
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked { path }),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
        }
        self.holds_lock.store(true, Ordering::Relaxed);
        Ok(StoreLock { _file: file })
    }

    /// Writes `bytes` to `path` through a hidden temp file in the same
    /// directory (`.mkt-tmp-*`), renamed over `path`, so `path` only ever
    /// holds a complete file. Temp files sit beside their destination, not
    /// in one shared directory: at 10,000 targets a single temp directory
    /// made its inode lock the build's bottleneck.
    pub fn write_atomic(&self, path: &Utf8Path, bytes: &[u8]) -> Result<()> {
        let parent = dir_of(path);
        let mut tmp = match temp_in(parent) {
            Ok(t) => t,
            Err(_) => {
                self.create_dirs(parent)?;
                temp_in(parent).map_err(|e| Error::io("create a temp file in", parent, e))?
            }
        };
        tmp.write_all(bytes)
            .map_err(|e| Error::io("write", path, e))?;
        tmp.persist(path)
            .map_err(|e| Error::io("write", path, e.error))?;
        self.note_written(path);
        Ok(())
    }

    /// [`ObjectStore::write_atomic`] for a build's output: the first write
    /// into a directory also removes the temp files that interrupted
    /// writes (a SIGKILL between creating and renaming) left there. Only
    /// under the project lock, which every writer of outputs holds, and
    /// only files older than this store: so none is a write in progress.
    pub fn write_output(&self, path: &Utf8Path, bytes: &[u8]) -> Result<()> {
        let dir = dir_of(path);
        if self.holds_lock.load(Ordering::Relaxed) {
            let mut swept = self.swept.lock().unwrap();
            // held while sweeping: another worker's temp file in `dir`
            // is created only after this
            if swept.insert(dir.to_owned()) {
                remove_stale_temps(dir, self.opened);
            }
        }
        self.write_atomic(path, bytes)
    }

    /// Creates `dir` and the directories above it that are missing, each
    /// recorded for [`ObjectStore::sync`] (a new directory's entry is in
    /// the one above it, which the sync flushes with it).
    fn create_dirs(&self, dir: &Utf8Path) -> Result<()> {
        let missing: Vec<&Utf8Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
        fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        for d in missing {
            self.note_written(d);
        }
        Ok(())
    }

    /// Marks the store as being written to, until [`ObjectStore::sync`]
    /// has flushed it (a `sync-pending` file). If the mark is already there,
    /// an earlier build stopped between its writes and its flush; what it
    /// wrote (objects, outputs, the state) may still be only in memory and
    /// this build may rely on it without writing it again, so this build's
    /// sync flushes the whole file system.
    pub fn begin_writes(&self) -> Result<()> {
        let mark = self.dir.join(SYNC_PENDING);
        match OpenOptions::new().write(true).create_new(true).open(&mark) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.written.lock().unwrap_or_else(|e| e.into_inner()).more = true;
                Ok(())
            }
            Err(e) => Err(Error::io("create", &mark, e)),
        }
    }

    /// Whether this build must end with a sync even if it wrote nothing
    /// itself (see [`ObjectStore::begin_writes`]).
    pub fn sync_due(&self) -> bool {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).more
    }

    /// Records that `path` was written (or removed) and must be on disk
    /// by the next [`ObjectStore::sync`]. The store's own writes are
    /// recorded as they happen; a caller that writes a file of the store
    /// itself (the state) says so here.
    pub fn note_written(&self, path: &Utf8Path) {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if w.more || w.paths.iter().any(|p| p == path) {
            return;
        }
        if w.paths.len() == SYNC_EACH_MAX {
            w.paths = Vec::new();
            w.more = true;
        } else {
            w.paths.push(path.to_owned());
        }
    }

    /// [`replace_cache`], for one of this store's caches.
    pub fn write_cache(&self, path: &Utf8Path, bytes: &[u8]) -> Result<()> {
        replace_cache(path, &[bytes]).map_err(|e| Error::io("write", path, e))
    }

    pub(crate) fn object_path(&self, d: &Digest) -> Utf8PathBuf {
        let hex = d.to_hex();
        self.dir
            .join(layout::OBJECTS_DIR)
            .join(&hex[..2])
            .join(&hex)
    }

    /// Stores `bytes`, returning their digest. Storing what is already
    /// there (same name, same length) costs a stat.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        self.put_known(&d, bytes)?;
        Ok(d)
    }

    fn put_known(&self, d: &Digest, bytes: &[u8]) -> Result<()> {
        let mut packs = self.packs();
        if packs.has(&self.dir, RecordKind::Object, &d.0) {
            return Ok(());
        }
        if packs.loose(&self.dir)
            && fs::metadata(self.object_path(d)).is_ok_and(|m| m.len() == bytes.len() as u64)
        {
            return Ok(());
        }
        self.append(&mut packs, RecordKind::Object, &d.0, bytes)
    }

    fn packs(&self) -> MutexGuard<'_, Packs> {
        self.packs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a record to this store's pack, starting the pack first.
    fn append(
        &self,
        packs: &mut Packs,
        kind: RecordKind,
        key: &[u8; 32],
        bytes: &[u8],
    ) -> Result<()> {
        if packs.writer.is_none() {
            packs.writer = Some(self.start_pack()?);
        }
        let open = packs.writer.as_mut().expect("started above");
        open.writer
            .append(kind, key, bytes)
            .map_err(|e| Error::io("write", &open.path, e))?;
        packs.corrupt.remove(&(kind, *key));
        Ok(())
    }

    /// A new pack, numbered after every pack there is.
    fn start_pack(&self) -> Result<OpenPack> {
        let dir = self.dir.join(PACKS_DIR);
        if !dir.is_dir() {
            self.create_dirs(&dir)?;
        }
        if self.loose_version.swap(false, Ordering::Relaxed) {
            let version = format!("{STORE_VERSION}\n");
            self.write_atomic(&self.dir.join(layout::VERSION), version.as_bytes())?;
        }
        let seq = list_packs(&dir).last().map_or(1, |(s, _)| s + 1);
        let path = dir.join(pack_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        let writer = match PackWriter::start(file) {
            Ok(w) => w,
            Err(e) => {
                // (a full disk): no empty pack is left behind
                let _ = fs::remove_file(&path);
                return Err(Error::io("write", &path, e));
            }
        };
        self.note_written(&path);
        Ok(OpenPack { path, writer })
    }

    /// Reads and verifies an object; a corrupt loose one is deleted.
    pub fn get(&self, d: &Digest) -> ObjectRead {
        let packed = {
            let mut packs = self.packs();
            match packs.find(&self.dir, RecordKind::Object, &d.0) {
                Found::Payload(b) => return ObjectRead::Found(b),
                Found::Missing if !packs.loose(&self.dir) => return ObjectRead::Missing,
                found => found,
            }
        };
        let path = self.object_path(d);
        match fs::read(&path) {
            Ok(bytes) if Digest::of(&bytes) == *d => ObjectRead::Found(bytes),
            Ok(_) => {
                self.remove(&path);
                ObjectRead::Corrupt
            }
            Err(_) if packed == Found::Corrupt => ObjectRead::Corrupt,
            Err(_) => ObjectRead::Missing,
        }
    }

    pub(crate) fn ac_path(&self, ibh: &InputBundleHash) -> Utf8PathBuf {
        let hex = ibh.0.to_hex();
        self.dir
            .join(layout::AC_DIR)
            .join(&hex[..2])
            .join(format!("{hex}.json"))
    }

    /// Looks up the manifest of the run that produced `ibh`. An entry that
    /// cannot be believed is deleted and reported as [`AcRead::Corrupt`].
    pub fn ac_get(&self, ibh: &InputBundleHash) -> AcRead {
        let believed = |bytes: &[u8]| believed_ac_entry(ibh, bytes);
        let (packed_corrupt, loose) = {
            let mut packs = self.packs();
            let key = (RecordKind::AcEntry, ibh.0.0);
            let corrupt = match packs.find(&self.dir, key.0, &key.1) {
                // (the payload verified, so this is a valid record of a
                // manifest mkt would not write: treated as corrupt too)
                Found::Payload(b) => match believed(&b) {
                    Some(m) => return AcRead::Found(Box::new(m)),
                    None => {
                        packs.corrupt.insert(key);
                        true
                    }
                },
                Found::Corrupt => true,
                Found::Missing => false,
            };
            (corrupt, packs.loose(&self.dir))
        };
        let none = || match packed_corrupt {
            true => AcRead::Corrupt,
            false => AcRead::Missing,
        };
        if !loose {
            return none();
        }
        let path = self.ac_path(ibh);
        let Ok(bytes) = fs::read(&path) else {
            return none();
        };
        match believed(&bytes) {
            Some(m) => AcRead::Found(Box::new(m)),
            None => {
                self.remove(&path);
                AcRead::Corrupt
            }
        }
    }

    /// Deletes a corrupt entry so it is not read again, unless read-only.
    fn remove(&self, path: &Utf8Path) {
        if !self.read_only {
            let _ = fs::remove_file(path);
        }
    }

    pub fn ac_put(&self, m: &RunManifest) -> Result<()> {
        let mut packs = self.packs();
        self.append(
            &mut packs,
            RecordKind::AcEntry,
            &m.input_bundle_hash.0.0,
            &m.to_json_line(),
        )
    }

    pub fn put_run(&self, m: &RunManifest) -> Result<()> {
        self.write_atomic(&self.run_path(&m.run_id), &m.to_json())
    }

    pub(crate) fn run_path(&self, run_id: &str) -> Utf8PathBuf {
        self.dir
            .join(layout::RUNS_DIR)
            .join(format!("{run_id}.json"))
    }

    /// Reads the manifest of failed run `run_id` from `runs/`; `None` when
    /// it is missing, or not a valid failed-run manifest of that id.
    pub fn run_get(&self, run_id: &str) -> Option<RunManifest> {
        if !crate::manifest::is_run_id(run_id) {
            return None;
        }
        let bytes = fs::read(self.run_path(run_id)).ok()?;
        RunManifest::from_json(&bytes).filter(|m| m.run_id == run_id)
    }

    /// Appends lines to `history.jsonl` in one write.
    pub fn append_history(&self, lines: &str) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(layout::HISTORY);
        let mut opts = OpenOptions::new();
        let mut f = open_in_place(opts.create(true).append(true), &path, "open")?;
        f.write_all(lines.as_bytes())
            .map_err(|e| Error::io("write", &path, e))?;
        self.note_written(&path);
        Ok(())
    }

    /// Flushes everything written so far to disk. After a few writes (an
    /// edit's build: its objects, action-cache entry, output, state log
    /// and history) that is an `fsync` of each file and of each directory
    /// that holds one, all at once (the file system commits them
    /// together); after more, or when nothing was recorded, or with hardly
    /// anything else waiting to be written, one `syncfs`.
    /// `syncfs` writes out every dirty file of the file system, other
    /// programs' too: an edit's build right after `cargo build` had
    /// written a 130 MB binary spent 130-185 ms in it (four tries).
    pub fn sync(&self) -> Result<()> {
        self.seal_packs()?;
        let Written { paths, more } =
            std::mem::take(&mut *self.written.lock().unwrap_or_else(|e| e.into_inner()));
        // With little else dirty, one syncfs is the cheaper: an edit's build
        // of 1,000 targets (0.4 MB dirty, mostly the last build's stamp)
        // flushed in 0.7-1.1 ms that way, against 1.1-1.9 ms file by file;
        // at 10,000 targets (3 MB dirty) 2.1-3.4 ms against 1.4-2.5 ms.
        if !more && !paths.is_empty() && dirty_kb().is_none_or(|kb| kb > SYNC_ALL_DIRTY_KB) {
            sync_each(&paths)?;
        } else {
            self.sync_all()?;
        }
        // flushed: no longer pending (a build that wrote nothing has
        // nothing to flush, and removes the mark the same way)
        self.end_writes();
        Ok(())
    }

    /// Removes the mark [`ObjectStore::begin_writes`] made, once nothing
    /// this store wrote is waiting to be flushed.
    pub fn end_writes(&self) {
        // (a read-only store, `--dry-run`'s, holds no lock: the mark it
        // sees may be a running build's)
        if !self.read_only {
            let _ = fs::remove_file(self.dir.join(SYNC_PENDING));
        }
    }

    /// Seals the pack this store wrote; then, holding the project lock,
    /// does the packs' upkeep ([`ObjectStore::maintain_packs`]), which is
    /// best effort: it never fails the build whose pack is sealed here.
    fn seal_packs(&self) -> Result<()> {
        self.seal_own_pack()?;
        if self.holds_lock.load(Ordering::Relaxed) {
            let _ = self.maintain_packs();
        }
        Ok(())
    }

    /// Seals the pack this store is writing, if any (it is written no
    /// more; a later store write starts a new one). A build does so as
    /// soon as its models are done, to free the pack's index before it
    /// saves its state, where its memory peaks; [`ObjectStore::sync`]
    /// does it otherwise.
    pub fn seal_own_pack(&self) -> Result<()> {
        let mut packs = self.packs();
        if let Some(open) = packs.writer.take() {
            if open.writer.is_empty() {
                // every append failed (a full disk): a pack of nothing
                // is not kept
                drop(open.writer);
                let _ = fs::remove_file(&open.path);
            } else {
                open.writer
                    .seal()
                    .map_err(|e| Error::io("write", &open.path, e))?;
            }
        }
        packs.loaded = None; // read again when next needed
        Ok(())
    }

    /// Seals any pack a dead build left unsealed and, with more than
    /// [`MAX_PACKS`] packs, merges a run of them. The largest pack (in
    /// general a full build's) splits them: the packs after it are merged
    /// when there are at least two, else those before it. An edit's build
    /// thus merges small packs only; the order of the rest stays. Only for
    /// the lock holder: no one else writes packs, so an unsealed one is
    /// not being written.
    fn maintain_packs(&self) -> Result<()> {
        let list = list_packs(&self.dir.join(PACKS_DIR));
        let mut sizes = Vec::with_capacity(list.len());
        for (_, path) in &list {
            // (read-only to look: a pack may be another user's)
            let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
            let (sealed, mut len) =
                crate::pack::is_sealed(&file).map_err(|e| Error::io("read", path, e))?;
            if !sealed {
                let mut opts = OpenOptions::new();
                let file = open_in_place(opts.read(true).write(true), path, "open")?;
                let mut pack = Pack::open(file).map_err(|e| Error::io("read", path, e))?;
                pack.seal_in_place()
                    .map_err(|e| Error::io("write", path, e))?;
                self.note_written(path);
                len = pack.file_len;
            }
            sizes.push(len);
        }
        if list.len() <= MAX_PACKS {
            return Ok(());
        }
        let largest = (0..list.len()).max_by_key(|&i| sizes[i]).unwrap_or(0);
        let range = if list.len() - 1 - largest >= 2 {
            largest + 1..list.len()
        } else {
            0..largest
        };
        self.merge(&list[range], &|_, _, _| true)
    }

    /// Replaces `packs` (consecutive, oldest first) by one pack under the
    /// newest one's name, holding the newest copy of each record `keep`
    /// accepts that verifies. The new pack is flushed before the old ones
    /// go, so a crash leaves either.
    fn merge(&self, packs: &[(u64, Utf8PathBuf)], keep: &KeepRecord<'_>) -> Result<()> {
        let Some((_, newest)) = packs.last() else {
            return Ok(());
        };
        let dir = self.dir.join(PACKS_DIR);
        let tmp = temp_in(&dir).map_err(|e| Error::io("create a temp file in", &dir, e))?;
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(|e| Error::io("write", newest, e))?;
        let mut w = PackWriter::start(file).map_err(|e| Error::io("write", newest, e))?;
        let mut taken: HashSet<(RecordKind, [u8; 32])> = HashSet::default();
        let mut times: Option<(std::time::SystemTime, std::time::SystemTime)> = None;
        for (_, path) in packs.iter().rev() {
            // a pack that cannot be read is not dropped for it: the merge stops
            let pack = File::open(path)
                .and_then(Pack::open)
                .map_err(|e| Error::io("read", path, e))?;
            // the merged pack keeps the newest times, which gc's eviction
            // order reads
            if let Ok(m) = fs::metadata(path) {
                let (a, w) = (m.accessed(), m.modified());
                if let (Ok(a), Ok(w)) = (a, w) {
                    times = Some(times.map_or((a, w), |(ta, tw)| (ta.max(a), tw.max(w))));
                }
            }
            for e in pack.entries() {
                if !keep(path, e.kind, &e.key) || taken.contains(&(e.kind, e.key)) {
                    continue;
                }
                if let Some(payload) = pack.read(&e) {
                    w.append(e.kind, &e.key, &payload)
                        .map_err(|err| Error::io("write", newest, err))?;
                    taken.insert((e.kind, e.key));
                }
            }
        }
        let file = w.seal().map_err(|e| Error::io("write", newest, e))?;
        if let Some((a, w)) = times {
            let _ = file.set_times(fs::FileTimes::new().set_accessed(a).set_modified(w));
        }
        file.sync_all().map_err(|e| Error::io("sync", newest, e))?;
        if taken.is_empty() {
            drop(tmp); // nothing kept: the packs just go
            fs::remove_file(newest).map_err(|e| Error::io("remove", newest, e))?;
        } else {
            tmp.persist(newest)
                .map_err(|e| Error::io("write", newest, e.error))?;
        }
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("sync", &dir, e))?;
        for (_, path) in &packs[..packs.len() - 1] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", path, e)),
            }
        }
        self.note_written(&dir);
        Ok(())
    }

    /// The newest copy that verifies of every record in the store's packs
    /// (for `mkt gc`: every record is read, on every core), with what
    /// `read_ac` makes of each action-cache entry's payload, so the caller
    /// need not read those again. A pack that cannot be read is an error,
    /// not a pack without records.
    pub fn packed_records<T: Send>(
        &self,
        read_ac: impl Fn(&[u8; 32], &[u8]) -> Option<T> + Sync,
    ) -> Result<PackedRecords<T>> {
        use rayon::prelude::*;
        let mut seen: HashSet<(RecordKind, [u8; 32])> = HashSet::default();
        let mut out = PackedRecords {
            packs: Vec::new(),
            records: Vec::new(),
        };
        for (_, path) in list_packs(&self.dir.join(PACKS_DIR)).into_iter().rev() {
            let pack = match File::open(&path).and_then(Pack::open) {
                Ok(p) => p,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("read", &path, e)),
            };
            let at = out.packs.len();
            // (a pack's index holds a key once, so only a newer pack can
            // have read it already)
            let verified: Vec<PackedRecord<T>> = (pack.entries().into_par_iter())
                .filter(|e| !seen.contains(&(e.kind, e.key)))
                .filter_map(|e| {
                    let payload = pack.read(&e)?;
                    let read = match e.kind {
                        RecordKind::AcEntry => read_ac(&e.key, &payload).map(Box::new),
                        RecordKind::Object => None,
                    };
                    Some(PackedRecord {
                        kind: e.kind,
                        key: e.key,
                        bytes: e.record_bytes(),
                        pack: at,
                        read,
                    })
                })
                .collect();
            seen.extend(verified.iter().map(|r| (r.kind, r.key)));
            out.records.extend(verified);
            out.packs.push(path);
        }
        Ok(out)
    }

    /// Rewrites each pack that holds a record `keep` refuses without it,
    /// under its own name (for `mkt gc`, which holds the lock). One pack
    /// at a time: the space it takes meanwhile is one pack's, which
    /// matters to a gc run on a full disk.
    pub fn repack(&self, keep: &KeepRecord<'_>) -> Result<()> {
        // sealed only: a merge now would move records out of the packs
        // `keep` knows them in
        self.seal_own_pack()?;
        for one in list_packs(&self.dir.join(PACKS_DIR)) {
            let pack = File::open(&one.1)
                .and_then(Pack::open)
                .map_err(|e| Error::io("read", &one.1, e))?;
            let entries = pack.entries();
            if entries.is_empty() || entries.iter().any(|e| !keep(&one.1, e.kind, &e.key)) {
                self.merge(std::slice::from_ref(&one), keep)?;
            }
        }
        self.packs().loaded = None;
        Ok(())
    }

    /// One `syncfs` of the store's file system.
    fn sync_all(&self) -> Result<()> {
        let f = File::open(&self.dir).map_err(|e| Error::io("open", &self.dir, e))?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: syncfs only reads the descriptor, which `f` keeps open.
            if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
                return Err(Error::io(
                    "sync",
                    &self.dir,
                    std::io::Error::last_os_error(),
                ));
            }
        }
        #[cfg(not(target_os = "linux"))]
        f.sync_all().map_err(|e| Error::io("sync", &self.dir, e))?;
        Ok(())
    }
}

impl Packs {
    /// The packs on disk, newest first, opened at first use.
    fn load(&mut self, store_dir: &Utf8Path) -> &[Pack] {
        self.loaded.get_or_insert_with(|| {
            // Oldest first: a merge renames its pack over the newest of
            // those it merges, then removes the others, so opening in this
            // order never misses a record a merge moved meanwhile.
            let mut loaded: Vec<Pack> = list_packs(&store_dir.join(PACKS_DIR))
                .into_iter()
                .filter_map(|(_, path)| File::open(&path).and_then(Pack::open).ok())
                .collect();
            loaded.reverse();
            loaded
        })
    }

    /// Whether the store still has loose files (from version 1).
    fn loose(&mut self, store_dir: &Utf8Path) -> bool {
        *self.loose.get_or_insert_with(|| {
            [layout::OBJECTS_DIR, layout::AC_DIR]
                .iter()
                .any(|sub| fs::read_dir(store_dir.join(sub)).is_ok_and(|mut d| d.next().is_some()))
        })
    }

    /// Whether a record is stored (by the indexes; not read). One found
    /// corrupt is not, whatever they say.
    fn has(&mut self, store_dir: &Utf8Path, kind: RecordKind, key: &[u8; 32]) -> bool {
        if self.corrupt.contains(&(kind, *key)) {
            return false;
        }
        if self
            .writer
            .as_ref()
            .is_some_and(|w| w.writer.contains(kind, key))
        {
            return true;
        }
        self.load(store_dir).iter().any(|p| p.contains(kind, key))
    }

    /// The newest copy of a record that verifies: this store's pack first,
    /// then the packs newest first. `Corrupt` when every copy was.
    fn find(&mut self, store_dir: &Utf8Path, kind: RecordKind, key: &[u8; 32]) -> Found {
        let mut corrupt = false;
        if let Some(w) = &self.writer {
            match w.writer.get(kind, key) {
                Found::Payload(b) => return Found::Payload(b),
                Found::Corrupt => corrupt = true,
                Found::Missing => {}
            }
        }
        if self.corrupt.contains(&(kind, *key)) {
            return Found::Missing; // reported once, then as good as gone
        }
        for p in self.load(store_dir) {
            match p.get(kind, key) {
                Found::Payload(b) => return Found::Payload(b),
                Found::Corrupt => corrupt = true,
                Found::Missing => {}
            }
        }
        if corrupt {
            self.corrupt.insert((kind, *key));
            Found::Corrupt
        } else {
            Found::Missing
        }
    }
}

/// The directory `path` is in (`.` for a bare name).
fn dir_of(path: &Utf8Path) -> &Utf8Path {
    match path.parent() {
        Some(p) if !p.as_str().is_empty() => p,
        _ => Utf8Path::new("."),
    }
}

/// A temp file (`.mkt-tmp-*`) in `dir`, to be renamed into place: 0666
/// less the umask, like any file a program creates (tempfile's default
/// 0600 would leave outputs unreadable to others).
pub(crate) fn temp_in(dir: &Utf8Path) -> std::io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(layout::TEMP_PREFIX)
        .rand_bytes(TEMP_RANDOM_CHARS)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
}

/// [`temp_in`]'s names: this prefix, then random letters and digits.
const TEMP_RANDOM_CHARS: usize = 6;

/// Whether `name` is one [`temp_in`] makes.
fn is_temp_name(name: &str) -> bool {
    name.strip_prefix(layout::TEMP_PREFIX).is_some_and(|r| {
        r.len() == TEMP_RANDOM_CHARS && r.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// The temp files of interrupted writes in `dir`: regular files with
/// [`temp_in`]'s names last modified before `before`. Anything else,
/// a directory or symlink of that name among them, is not mkt's.
pub fn stale_temps(dir: &Utf8Path, before: SystemTime) -> Vec<Utf8PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<Utf8PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(is_temp_name))
        .filter(|e| {
            // DirEntry::metadata does not follow a symlink
            e.metadata()
                .is_ok_and(|m| m.is_file() && m.modified().is_ok_and(|t| t < before))
        })
        .filter_map(|e| Utf8PathBuf::from_path_buf(e.path()).ok())
        .collect();
    found.sort();
    found
}

/// Removes [`stale_temps`]`(dir, before)`; returns those it removed.
/// Best effort: one that cannot be removed is left for the next time.
pub fn remove_stale_temps(dir: &Utf8Path, before: SystemTime) -> Vec<Utf8PathBuf> {
    let mut found = stale_temps(dir, before);
    found.retain(|p| fs::remove_file(p).is_ok());
    found
}

/// The stale temp files in the directories of `outputs` (paths relative to
/// `root`), removed unless `dry_run`: for `mkt clean`. Relative paths,
/// sorted.
pub fn clear_temps_beside<'a>(
    root: &Utf8Path,
    outputs: impl Iterator<Item = &'a str>,
    before: SystemTime,
    dry_run: bool,
) -> Vec<String> {
    let dirs: std::collections::BTreeSet<&Utf8Path> =
        outputs.map(|o| dir_of(Utf8Path::new(o))).collect();
    let mut found = Vec::new();
    for d in dirs {
        let dir = root.join(d);
        let temps = if dry_run {
            stale_temps(&dir, before)
        } else {
            remove_stale_temps(&dir, before)
        };
        found.extend(
            temps
                .iter()
                .filter_map(|p| p.strip_prefix(root).ok())
                .map(|p| p.to_string()),
        );
    }
    found
}

/// `fsync`s each of `paths` (files, and the directories the store
/// created) and the directory holding each, on up to 16 threads at once,
/// so that the file system can commit them together. A file that is gone
/// was removed after it was written: its directory records that.
fn sync_each(paths: &[Utf8PathBuf]) -> Result<()> {
    let mut todo: Vec<&Utf8Path> = paths.iter().map(|p| p.as_path()).collect();
    for p in paths {
        let dir = dir_of(p);
        if !todo.contains(&dir) {
            todo.push(dir);
        }
    }
    let sync_one = |p: &Utf8Path| -> Result<()> {
        match File::open(p) {
            Ok(f) => f.sync_all().map_err(|e| Error::io("sync", p, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("open", p, e)),
        }
    };
    // (each thread takes every THREADS-th path: a few at most each)
    const THREADS: usize = 16;
    let sync_some = |k: usize| -> Result<()> {
        todo.iter()
            .skip(k)
            .step_by(THREADS)
            .try_for_each(|p| sync_one(p))
    };
    std::thread::scope(|scope| {
        // a share whose thread cannot be started is synced here instead
        let mut inline = vec![0];
        let mut others = Vec::new();
        for k in 1..THREADS.min(todo.len()) {
            match std::thread::Builder::new().spawn_scoped(scope, move || sync_some(k)) {
                Ok(h) => others.push(h),
                Err(_) => inline.push(k),
            }
        }
        let here = inline.into_iter().try_for_each(sync_some);
        others
            .into_iter()
            .map(|h| h.join().expect("an fsync does not panic"))
            .fold(here, |acc, r| acc.and(r))
    })
}

/// Replaces one of the store's caches (the no-op stamp, the graph and
/// project caches) with `parts`, one after another: a temp file beside it, the old file
/// unlinked, the temp file renamed into place. Unlinking first keeps ext4
/// from writing the new file out during the rename (its `auto_da_alloc`
/// guard for files replaced by rename): 2.7 ms against 0.6 ms for the
/// 2.5 MB stamp of 10,000 targets, on every build. A crash in between
/// leaves no cache, or one whose checksum fails; either only costs the
/// next build its fast path. (The state snapshot, which holds the only
/// copy of the target records, and outputs, which are the user's, are
/// renamed over the old file: they never go missing, even for a moment.)
/// Removes the file at `path`; one already gone is no error.
pub fn remove_if_there(path: &Utf8Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

pub fn replace_cache(path: &Utf8Path, parts: &[&[u8]]) -> std::io::Result<()> {
    // (readable as any file mkt writes, so that others sharing the project
    // keep the fast path)
    replace_cache_with(path, |w| {
        parts.iter().try_for_each(|bytes| w.write_all(bytes))
    })
}

/// [`replace_cache`] of a file that `write` writes in pieces (through a
/// buffer): for caches too large to encode whole first.
pub fn replace_cache_with(
    path: &Utf8Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = temp_in(dir_of(path))?;
    let mut w = std::io::BufWriter::with_capacity(256 * 1024, tmp);
    write(&mut w)?;
    let tmp = w.into_inner().map_err(|e| e.into_error())?;
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The bytes of one of the store's own files that mkt only ever replaces
/// whole (a temp file renamed over it: the state snapshot, the graph and
/// project caches, the no-op stamp), mapped rather than read. An
/// incremental build reads 10 MB of them at 10,000 targets; copying them
/// into fresh, zeroed heap pages cost more than their decoding.
pub enum MappedFile {
    Mapped(memmap2::Mmap),
    /// A private, writable mapping ([`map_replaced_writable`]): a page
    /// written to is copied first, the file under it never changes.
    Written(memmap2::MmapMut),
    /// An empty file (which cannot be mapped), or bytes from elsewhere.
    Owned(Vec<u8>),
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            MappedFile::Mapped(m) => m,
            MappedFile::Written(m) => m,
            MappedFile::Owned(v) => v,
        }
    }
}

impl MappedFile {
    /// The bytes as a vector of their own (a mapping is copied).
    pub fn make_owned(&mut self) -> &mut Vec<u8> {
        if !matches!(self, MappedFile::Owned(_)) {
            *self = MappedFile::Owned(self.to_vec());
        }
        match self {
            MappedFile::Owned(v) => v,
            _ => unreachable!("copied above"),
        }
    }

    /// Lets the pages of `range` go from this process's memory (a read-only
    /// mapping only; anything else keeps them). Touched again, they are
    /// read back from the page cache, the same bytes: the file is never
    /// written in place. For a scan of a large file of which little is read
    /// again (an edit's build reads a few of a million state records).
    pub fn release(&self, range: std::ops::Range<usize>) {
        if let MappedFile::Mapped(m) = self
            && !range.is_empty()
        {
            // SAFETY: `MADV_DONTNEED` on a shared read-only file mapping
            // drops its pages from this process only; the next access
            // faults in the file's unchanged bytes, so no reference into
            // the range sees anything else.
            let _ = unsafe {
                m.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    range.start,
                    range.len(),
                )
            };
        }
    }

    /// The digest of `self[range]`, hashed on every core a few megabytes
    /// at a time, each let go once hashed ([`MappedFile::release`]).
    pub fn digest_releasing(&self, range: std::ops::Range<usize>) -> Digest {
        let mut h = blake3::Hasher::new();
        let mut at = range.start;
        while at < range.end {
            let end = (at + RELEASE_EVERY).min(range.end);
            h.update_rayon(&self[at..end]);
            self.release(at..end);
            at = end;
        }
        Digest(*h.finalize().as_bytes())
    }

    /// The bytes, to write to: a writable mapping in place (only the
    /// pages written to are copied), anything else copied out first.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        if let MappedFile::Written(w) = self {
            return w;
        }
        self.make_owned()
    }
}

/// Maps `path` (see [`MappedFile`]): only for files replaced by rename,
/// never written in place.
pub fn map_replaced(path: &Utf8Path) -> std::io::Result<MappedFile> {
    let f = File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(MappedFile::Owned(Vec::new()));
    }
    // SAFETY: a mapping is undefined behaviour if the file changes under
    // it. mkt writes these files only through a new temp file renamed over
    // (or after unlinking) the old name, which leaves the mapped inode as
    // it was; every reader checks a checksum and the file's shape when it
    // maps it, and reads it for the rest of one build. (A stamp kept for
    // the next build of a `mkt watch` session is copied out first.) A
    // process that rewrites one of these files in place, against the
    // store's rules, could make a running build read changed bytes.
    let m = unsafe { memmap2::MmapOptions::new().populate().map(&f)? };
    Ok(MappedFile::Mapped(m))
}

/// How much of a file scanned once ([`MappedFile::release`]) stays mapped
/// at most.
pub const RELEASE_EVERY: usize = 8 << 20;

/// [`map_replaced`] without reading the file in up front: for a file
/// scanned once through [`MappedFile::release`], whose pages would
/// otherwise all be this process's at once.
pub fn map_replaced_lazily(path: &Utf8Path) -> std::io::Result<MappedFile> {
    let f = File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(MappedFile::Owned(Vec::new()));
    }
    // SAFETY: as for `map_replaced`
    let m = unsafe { memmap2::MmapOptions::new().map(&f)? };
    Ok(MappedFile::Mapped(m))
}

/// [`map_replaced`], mapped private and writable, for a file a build
/// patches a few bytes of (the no-op stamp): writing to a page copies that
/// page only, where copying the whole 2.5 MB stamp of 10,000 targets to
/// patch it cost 1.4 ms. Not populated up front (that would copy every
/// page of a writable private mapping); reads fault it in, many pages at
/// a time.
pub fn map_replaced_writable(path: &Utf8Path) -> std::io::Result<MappedFile> {
    let f = File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(MappedFile::Owned(Vec::new()));
    }
    // SAFETY: as for `map_replaced`; writes go to private copies of pages.
    let m = unsafe { memmap2::MmapOptions::new().map_copy(&f)? };
    Ok(MappedFile::Written(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_cache_creates_and_replaces_and_leaves_no_temp_file() {
        let t = tempfile::tempdir().unwrap();
        let dir = Utf8Path::from_path(t.path()).unwrap();
        let path = dir.join("noop");
        replace_cache(&path, &[b"first"]).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        let before = fs::metadata(&path).unwrap();
        replace_cache(&path, &[b"second, ", b"longer"]).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        use std::os::unix::fs::MetadataExt;
        assert_ne!(
            fs::metadata(&path).unwrap().ino(),
            before.ino(),
            "a new file"
        );
        let names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["noop"]);
        assert_created_like_open(&path);
    }

    /// Readable as open(2) with 0666 would make a file: the umask decides.
    fn assert_created_like_open(path: &Utf8Path) {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask, "{path}");
    }

    #[test]
    fn write_atomic_creates_its_directory_replaces_and_leaves_no_temp_file() {
        let (_t, s) = store();
        let dir = s.dir().join("runs").join("new");
        // no directory yet: it is created
        let first = dir.join("first");
        s.write_atomic(&first, b"one").unwrap();
        assert_eq!(fs::read(&first).unwrap(), b"one");
        assert_created_like_open(&first);
        // a file that is there is replaced
        s.write_atomic(&first, b"two").unwrap();
        assert_eq!(fs::read(&first).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["first"], "no temp file is left");
    }

    fn store() -> (tempfile::TempDir, ObjectStore) {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap().to_owned();
        let s = ObjectStore::open(&root).unwrap();
        (t, s)
    }

    fn packs_of(s: &ObjectStore) -> Vec<Utf8PathBuf> {
        list_packs(&s.dir().join(PACKS_DIR))
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    #[test]
    fn objects_round_trip_and_a_corrupt_copy_is_stored_again() {
        let (t, s) = store();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let d = s.put(b"hello").unwrap();
        assert_eq!(s.get(&d), ObjectRead::Found(b"hello".to_vec()));
        s.sync().unwrap();
        let s = ObjectStore::open(root).unwrap();
        assert_eq!(s.get(&d), ObjectRead::Found(b"hello".to_vec()));
        let packs = packs_of(&s);
        assert_eq!(packs.len(), 1);
        let mut bytes = fs::read(&packs[0]).unwrap();
        let at = bytes.windows(5).position(|w| w == b"hello").unwrap();
        bytes[at + 4] = b'p';
        fs::write(&packs[0], &bytes).unwrap();
        let s = ObjectStore::open(root).unwrap();
        assert_eq!(s.get(&d), ObjectRead::Corrupt);
        assert_eq!(s.get(&d), ObjectRead::Missing, "reported once");
        // stored again, into a new pack that shadows the corrupt copy
        s.put(b"hello").unwrap();
        assert_eq!(s.get(&d), ObjectRead::Found(b"hello".to_vec()));
        s.sync().unwrap();
        let s = ObjectStore::open(root).unwrap();
        assert_eq!(s.get(&d), ObjectRead::Found(b"hello".to_vec()));
        assert_eq!(packs_of(&s).len(), 2);
    }

    /// A store from before packs: its loose files are read, verified, and
    /// a corrupt one removed; its first pack makes it version 2.
    #[test]
    fn a_version_1_store_is_read_and_becomes_version_2() {
        let (t, s) = store();
        let root = Utf8Path::from_path(t.path()).unwrap();
        fs::write(s.dir().join("VERSION"), "1\n").unwrap();
        let s = ObjectStore::open(root).unwrap();
        let d = Digest::of(b"hello");
        fs::create_dir_all(s.object_path(&d).parent().unwrap()).unwrap();
        fs::write(s.object_path(&d), b"hello").unwrap();
        assert_eq!(s.get(&d), ObjectRead::Found(b"hello".to_vec()));
        assert_eq!(s.put(b"hello").unwrap(), d, "stored already");
        assert!(packs_of(&s).is_empty());
        fs::write(s.object_path(&d), b"hellp").unwrap();
        assert_eq!(s.get(&d), ObjectRead::Corrupt);
        assert_eq!(
            s.get(&d),
            ObjectRead::Missing,
            "a corrupt object is removed"
        );
        // every truncation of an object is detected
        let d = Digest::of(b"some longer object text");
        fs::create_dir_all(s.object_path(&d).parent().unwrap()).unwrap();
        for cut in 0..23 {
            fs::write(s.object_path(&d), &b"some longer object text"[..cut]).unwrap();
            assert_eq!(s.get(&d), ObjectRead::Corrupt, "cut at {cut}");
        }
        assert_eq!(fs::read_to_string(s.dir().join("VERSION")).unwrap(), "1\n");
        s.put(b"new").unwrap();
        assert_eq!(fs::read_to_string(s.dir().join("VERSION")).unwrap(), "2\n");
        assert_eq!(packs_of(&s).len(), 1);
    }

    /// Past [`MAX_PACKS`] packs, a run of them is merged; the newest copy
    /// of an entry written again still wins, and nothing is lost.
    #[test]
    fn packs_are_merged_and_the_newest_entry_wins() {
        let (t, s) = store();
        let root = Utf8Path::from_path(t.path()).unwrap();
        drop(s);
        let mut m = crate::manifest::tests::sample();
        let mut objects = Vec::new();
        for n in 0..3 * MAX_PACKS {
            let s = ObjectStore::open(root).unwrap();
            let _lock = s.lock(false, &|| {}).unwrap();
            // one large build first, then small ones
            let size = if n == 0 { 4000 } else { 10 };
            objects.push(s.put(format!("{n:0size$}").as_bytes()).unwrap());
            m.run_id = format!("2026112500000{n:04}-0000000{}", n % 10);
            s.ac_put(&m).unwrap();
            s.sync().unwrap();
            assert!(packs_of(&s).len() <= MAX_PACKS, "after build {n}");
        }
        let s = ObjectStore::open_read_only(root).unwrap();
        for d in &objects {
            assert!(matches!(s.get(d), ObjectRead::Found(_)));
        }
        match s.ac_get(&m.input_bundle_hash) {
            AcRead::Found(e) => assert_eq!(e.run_id, m.run_id, "the last run's"),
            other => panic!("{other:?}"),
        }
        // every pack is sealed, and each key is in one pack only
        let mut keys = HashSet::default();
        for p in packs_of(&s) {
            let pack = Pack::open(File::open(&p).unwrap()).unwrap();
            assert!(pack.sealed);
            for e in pack.entries() {
                assert!(keys.insert((e.kind, e.key)) || e.kind == RecordKind::AcEntry);
            }
        }
    }

    /// A merge that meets a pack it cannot read stops there: it says which
    /// pack, and every pack, the unreadable one too, stays as it was.
    #[test]
    fn a_merge_stops_on_a_pack_it_cannot_read_and_deletes_nothing() {
        let (t, s) = store();
        let root = Utf8Path::from_path(t.path()).unwrap();
        drop(s);
        let mut objects = Vec::new();
        for n in 0..3 {
            let s = ObjectStore::open(root).unwrap();
            objects.push(s.put(format!("object {n}").as_bytes()).unwrap());
            s.sync().unwrap();
        }
        let s = ObjectStore::open(root).unwrap();
        let list = list_packs(&s.dir().join(PACKS_DIR));
        assert_eq!(list.len(), 3);
        // the middle pack becomes something that opens but cannot be read
        let middle = &list[1].1;
        fs::remove_file(middle).unwrap();
        fs::create_dir(middle).unwrap();
        let e = s.merge(&list, &|_, _, _| true).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot read `{middle}`: Is a directory (os error 21)")
        );
        assert_eq!(
            packs_of(&s),
            list.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>()
        );
        assert!(middle.is_dir());
        let names: Vec<_> = fs::read_dir(s.dir().join(PACKS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".pack"))
            .collect();
        assert!(names.is_empty(), "no temp file is left: {names:?}");
        let s = ObjectStore::open_read_only(root).unwrap();
        for i in [0, 2] {
            assert_eq!(
                s.get(&objects[i]),
                ObjectRead::Found(format!("object {i}").into_bytes())
            );
        }
    }

    /// A damaged header hides nothing, and no merge drops the pack.
    #[test]
    fn a_pack_with_a_damaged_header_still_serves_its_records() {
        let (t, s) = store();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let d = s.put(b"kept").unwrap();
        s.sync().unwrap();
        let pack = packs_of(&s).remove(0);
        let mut b = fs::read(&pack).unwrap();
        b[0] ^= 0xff;
        fs::write(&pack, &b).unwrap();
        for n in 0..=MAX_PACKS {
            let s = ObjectStore::open(root).unwrap();
            let _lock = s.lock(false, &|| {}).unwrap();
            assert_eq!(s.get(&d), ObjectRead::Found(b"kept".to_vec()), "build {n}");
            s.put(format!("build {n}").as_bytes()).unwrap();
            s.sync().unwrap();
        }
        let s = ObjectStore::open_read_only(root).unwrap();
        assert_eq!(s.get(&d), ObjectRead::Found(b"kept".to_vec()));
    }

    /// A build killed before its flush leaves its pack unsealed: it is
    /// read by scanning, and the next build to flush seals it.
    #[test]
    fn a_dead_builds_pack_is_read_and_then_sealed() {
        let (t, s) = store();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let d = s.put(b"from a build that died").unwrap();
        std::mem::forget(s); // no seal, as if killed
        let reader = ObjectStore::open_read_only(root).unwrap();
        assert!(matches!(reader.get(&d), ObjectRead::Found(_)));
        let pack = packs_of(&reader).remove(0);
        assert!(!Pack::open(File::open(&pack).unwrap()).unwrap().sealed);
        let s = ObjectStore::open(root).unwrap();
        let _lock = s.lock(false, &|| {}).unwrap();
        s.put(b"the next build").unwrap();
        s.sync().unwrap();
        assert!(Pack::open(File::open(&pack).unwrap()).unwrap().sealed);
        assert!(matches!(s.get(&d), ObjectRead::Found(_)));
    }

    #[test]
    fn sync_flushes_each_written_file_or_after_many_the_file_system() {
        let (_t, s) = store();
        let written = |s: &ObjectStore| {
            let w = s.written.lock().unwrap();
            (w.paths.len(), w.more)
        };
        // the store's marker files, then a file written twice (recorded
        // once, with the directory its write created) and one removed
        // after it was written, and objects: their pack, once
        let kept = s.dir().join("runs").join("new").join("kept");
        s.write_atomic(&kept, b"kept").unwrap();
        s.write_atomic(&kept, b"kept").unwrap();
        let gone = s.dir().join("runs").join("gone");
        s.write_atomic(&gone, b"gone").unwrap();
        fs::remove_file(&gone).unwrap();
        s.put(b"one").unwrap();
        s.put(b"two").unwrap();
        {
            let w = s.written.lock().unwrap();
            let count = |p: &Utf8Path| w.paths.iter().filter(|q| *q == p).count();
            assert_eq!(count(&kept), 1);
            assert_eq!(count(&gone), 1);
            assert_eq!(count(kept.parent().unwrap()), 1, "a new directory");
            assert_eq!(count(&packs_of(&s)[0]), 1);
            assert!(!w.more);
        }
        s.sync().unwrap();
        assert_eq!(written(&s), (0, false), "a sync takes what was recorded");
        // past SYNC_EACH_MAX files only the count is kept: one syncfs
        for i in 0..=SYNC_EACH_MAX {
            s.write_atomic(&s.dir().join("runs").join(format!("{i}")), b"x")
                .unwrap();
        }
        assert_eq!(written(&s), (0, true));
        s.sync().unwrap();
        assert_eq!(written(&s), (0, false));
        // what decides between the two with few files
        #[cfg(target_os = "linux")]
        assert!(
            dirty_kb().is_some(),
            "/proc/meminfo has Dirty and Writeback"
        );
    }

    #[test]
    fn a_build_after_one_that_stopped_before_its_flush_flushes_everything() {
        let (_t, s) = store();
        let mark = s.dir().join(SYNC_PENDING);
        s.begin_writes().unwrap();
        assert!(mark.exists() && !s.sync_due());
        s.put(b"written, then the build is killed").unwrap();
        // the next build: the mark is still there
        let next = ObjectStore::open(s.dir().parent().unwrap()).unwrap();
        next.begin_writes().unwrap();
        assert!(
            next.sync_due(),
            "an earlier build's writes may not be on disk"
        );
        next.put(b"one small write").unwrap();
        next.sync().unwrap();
        assert!(!mark.exists(), "flushed: the mark is gone");
        // and the one after that flushes only its own files again
        let third = ObjectStore::open(s.dir().parent().unwrap()).unwrap();
        third.begin_writes().unwrap();
        assert!(!third.sync_due());
        third.end_writes();
        assert!(!mark.exists());
        // a dry run's read-only store never removes a running build's mark
        third.begin_writes().unwrap();
        let root = s.dir().parent().unwrap();
        ObjectStore::open_read_only(root).unwrap().end_writes();
        assert!(mark.exists());
    }

    #[test]
    fn a_writable_mapping_changes_the_bytes_never_the_file() {
        let t = tempfile::tempdir().unwrap();
        let path = Utf8Path::from_path(t.path()).unwrap().join("stamp");
        fs::write(&path, vec![7u8; 3 * 4096]).unwrap();
        let mut m = map_replaced_writable(&path).unwrap();
        assert!(matches!(m, MappedFile::Written(_)));
        m.bytes_mut()[5000] = 9;
        assert_eq!((m[4999], m[5000]), (7, 9));
        assert!(
            fs::read(&path).unwrap().iter().all(|&b| b == 7),
            "the file is as it was"
        );
        // kept apart from the file: a copy of the patched bytes
        m.make_owned();
        assert!(matches!(m, MappedFile::Owned(_)));
        assert_eq!(m[5000], 9);
        // an empty file cannot be mapped: its (no) bytes are owned
        fs::write(&path, b"").unwrap();
        assert!(matches!(
            map_replaced_writable(&path).unwrap(),
            MappedFile::Owned(v) if v.is_empty()
        ));
    }

    #[test]
    fn store_marks_itself_and_refuses_unknown_versions() {
        let (t, s) = store();
        assert!(s.dir().join("CACHEDIR.TAG").is_file());
        assert_eq!(
            fs::read_to_string(s.dir().join(".gitignore")).unwrap(),
            "*\n"
        );
        fs::write(s.dir().join("VERSION"), "99\n").unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let e = ObjectStore::open(root).err().unwrap().to_string();
        assert!(
            e.contains("has format version 99, this mkt reads version 2"),
            "{e}"
        );
        assert!(e.contains("help: upgrade mkt"), "{e}");
        // a VERSION that is not text at all is refused too, not overwritten
        fs::write(s.dir().join("VERSION"), b"\xff\xfe\x00garbage").unwrap();
        let e = ObjectStore::open(root).err().unwrap().to_string();
        assert!(
            e.contains(
                "is damaged: its `VERSION` file holds no version number (this mkt reads version 2)"
            ),
            "{e}"
        );
        assert_eq!(
            fs::read(s.dir().join("VERSION")).unwrap(),
            b"\xff\xfe\x00garbage"
        );
    }

    #[test]
    fn second_lock_fails_without_wait() {
        let (_t, s) = store();
        let _held = s.lock(false, &|| {}).unwrap();
        let e = s.lock(false, &|| {}).err().unwrap();
        assert!(matches!(e, Error::Locked { .. }));
    }

    #[test]
    fn action_cache_rejects_entries_filed_under_another_hash() {
        let (_t, s) = store();
        let m = crate::manifest::tests::sample();
        s.ac_put(&m).unwrap();
        assert_eq!(
            s.ac_get(&m.input_bundle_hash),
            AcRead::Found(Box::new(m.clone()))
        );
        // a forged entry: a valid manifest copied under another name
        let other = InputBundleHash(Digest::of(b"other"));
        let p = s.ac_path(&other);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, m.to_json()).unwrap();
        assert_eq!(s.ac_get(&other), AcRead::Corrupt);
        assert_eq!(s.ac_get(&other), AcRead::Missing);
    }

    /// Every cut of an action-cache entry is a miss, never a hit; a random
    /// corruption is a miss, or a hit whose output is still verified by its
    /// digest (a changed digest names an object that is not there).
    #[test]
    fn every_cut_or_corruption_of_an_ac_entry_is_a_miss_never_a_wrong_output() {
        let (_t, s) = store();
        let mut m = crate::manifest::tests::sample();
        let output = b"the output".to_vec();
        m.outputs[0].digest = Digest::of(&output);
        // a loose entry, as a version 1 store holds them
        let bytes = m.to_json();
        let path = s.ac_path(&m.input_bundle_hash);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &bytes).unwrap();
        s.put(&output).unwrap();
        let check = |case: &[u8], what: &str| {
            fs::write(&path, case).unwrap();
            match s.ac_get(&m.input_bundle_hash) {
                AcRead::Missing => panic!("{what}: the entry is there"),
                AcRead::Corrupt => assert!(!path.exists(), "{what}: a corrupt entry is removed"),
                AcRead::Found(got) => match s.get(&got.outputs[0].digest) {
                    ObjectRead::Found(b) => assert_eq!(b, output, "{what}"),
                    ObjectRead::Missing => {}
                    ObjectRead::Corrupt => panic!("{what}: the object was never touched"),
                },
            }
        };
        // the last byte is the newline JSON does not need
        for cut in 0..bytes.len() - 1 {
            fs::write(&path, &bytes[..cut]).unwrap();
            assert_eq!(
                s.ac_get(&m.input_bundle_hash),
                AcRead::Corrupt,
                "cut at {cut}"
            );
        }
        for (i, case) in crate::faults::corruptions(&bytes, 2000, 0x5eed)
            .iter()
            .enumerate()
        {
            check(case, &format!("corruption {i}"));
        }
    }

    /// The same for a failed run's manifest in `runs/`: `None`, or a
    /// manifest of that very run.
    #[test]
    fn every_cut_or_corruption_of_a_failed_run_manifest_is_refused() {
        let (_t, s) = store();
        let mut m = crate::manifest::tests::sample();
        m.status = crate::manifest::RunStatus::Failed;
        m.outputs.clear();
        m.error = Some("`sh` exited with code 3".into());
        s.put_run(&m).unwrap();
        assert_eq!(s.run_get(&m.run_id), Some(m.clone()));
        let bytes = m.to_json();
        let path = s.run_path(&m.run_id);
        for cut in 0..bytes.len() - 1 {
            fs::write(&path, &bytes[..cut]).unwrap();
            assert_eq!(s.run_get(&m.run_id), None, "cut at {cut}");
        }
        for (i, case) in crate::faults::corruptions(&bytes, 2000, 0xfa11)
            .iter()
            .enumerate()
        {
            fs::write(&path, case).unwrap();
            if let Some(got) = s.run_get(&m.run_id) {
                assert_eq!(got.run_id, m.run_id, "corruption {i}");
                assert!(got.error.is_some(), "corruption {i}");
            }
        }
        // an id that is not a run id is never looked up as a path
        assert_eq!(s.run_get("../../prompts"), None);
    }
}
