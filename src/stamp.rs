//! The no-op stamp: lets `mkt build` (of everything) answer "all up to date"
//! with one `lstat` per file and nothing else, like ninja.
//!
//! After a successful build of every target, `.mkt/noop` lists every path
//! the result depends on (`prompts.toml`, each template, partial, verbatim
//! file, input, `foreach` file and output) with its stat and BLAKE3 digest
//! when its content was hashed, and every directory a glob listed with its
//! stat from before the listing. The next `mkt build` with no target names
//! and no `--force` stats them all; if nothing changed the build is a no-op
//! and nothing else is read. Any difference (an edit, a touch, a new file
//! in a globbed directory, a deleted output) goes on to the freshness check
//! (`state/mod.rs`), which takes the stamp's word for no more than this: each
//! file it did not see change has the stat and digest it records, and,
//! when nothing that shapes the graph changed, the cached graph holds and
//! a node that reads and writes none of the changed files, below only such
//! nodes, is as its record says (`build/schedule.rs`). Builds of named targets and
//! the commands that only read (`status`, `explain`, `show`, `graph`) use
//! it the same way, but never write one.
//!
//! That last rule holds only while the records are those of the build that
//! wrote the stamp. The stamp names them (the state's tip, `state/mod.rs`), and
//! a build whose state read is not those records (a journal cut short or
//! removed, a snapshot replaced) takes the stamp's word for files only. So a build that will write no stamp removes the old one
//! before it saves its records (unless it ran nothing, so changed no
//! record), and a build that read the stamp before it
//! got the lock uses none of it if the stamp or the state changed on disk
//! meanwhile (another build ran).
//!
//! A path's stat says nothing of how the path resolves: a directory moved
//! out of the project and replaced by a symlink to it keeps every file's
//! stat. So the stamp also records what resolving each path depends on
//! (`Resolve` entries): every directory on a stamped path, and each stamped
//! path that is itself a symlink, by file type and inode (a directory's
//! times change whenever a file is created in it, so they are not kept),
//! and a symlink also by whether it leads inside the project, nowhere, or
//! out (where inside it leads is the stat of the file it leads to, which
//! its own entry checks). These are taken before the build checked the
//! path stays inside the project (`files.rs`). One that changed makes the
//! change structural and takes the word of the stamp for nothing below
//! it, so analysis checks again. Nothing absolute is kept: the project
//! can be moved, or reached through a bind mount, and keep its stamp.
//!
//! An entry seen within the file system's timestamp granularity of its
//! mtime is "racy" (git's term): a second write in the same tick would
//! leave the stat unchanged, so a racy file is re-hashed and compared by
//! digest instead, and a racy directory listed again and compared by the
//! digest of its listing (`files::listing_digest`: the names a glob sees,
//! each with whether it is a directory). A build verifies the racy entries
//! it saw that have aged past the window before it writes the stamp (its
//! own outputs are all racy when written), so the next build reads only
//! the few still inside it.
//!
//! # File format of `.mkt/noop`
//!
//! ```text
//! "MKTNOOP4" | str mkt version | u32 nodes | digest state | u32 n | n × ENTRY
//!            | BLAKE3 of all before
//! ENTRY := str path | u8 kind | u8 present | u8 racy | u64 size | u64 mtime_ns
//!          | u64 ctime_ns | u64 ino | 32-byte digest
//! kind  := 0 prompts.toml | 1 template or partial | 2 input, item or verbatim
//!          | 3 output | 4 directory | 5 resolve
//! ```
//!
//! A `resolve` entry keeps the file type (`st_mode & S_IFMT`) in `size`,
//! for a symlink where it leads in `mtime_ns` (1 inside, 2 nowhere, 3 out;
//! 0 for anything else), a zero `ctime_ns` and a zero digest.
//!
//! (`str` and integers as in `state/mod.rs`.) A directory that did not exist is
//! recorded as absent, so creating it is noticed.
//!
//! # File format of `.mkt/noop.patch`
//!
//! A build that changed few entries of the stamp it read (an edit's build
//! changes a handful of a million) writes what changed beside it rather
//! than the whole stamp again:
//!
//! ```text
//! "MKTNPAT1" | 32-byte checksum of the `noop` it patches | u32 nodes
//!            | digest state | u32 n | n × (u32 entry | ENTRY less its kind)
//!            | BLAKE3 of all before
//! ```
//!
//! The patch holds every entry set since that `noop` was written (each
//! build's patch replaces the last one) and the header the stamp now has;
//! once it would be more than a sixteenth of the stamp, the stamp is
//! written whole and the patch removed. A patch is applied only to the
//! file whose checksum it names and only if it verifies; otherwise the
//! file alone is the stamp, the one an earlier build wrote, which holds as
//! any stamp does. Both files are replaced by rename, so a reader sees
//! each whole, and any pairing it can see is a stamp some build wrote.
//!
//! A [`NoopStamp`] is this encoding, not a decoded copy of it: reading one
//! checks the checksum and every entry's shape in one pass that notes where
//! each entry starts, and entries are read from the mapped file when asked
//! for. A no-op build at 10,000 targets read its stamp in 6-9 ms when every
//! path was copied into a `String`, and in about 1 ms this way. Patching an
//! entry rewrites its fixed-size fields (everything after the path) in a
//! copy of the bytes, so writing the stamp out is the bytes and a checksum.

use crate::at::{ParentDirs, lstat_at};
use crate::hash::Digest;
use crate::state::{FileStat, Reader, Writer};
use crate::store::MappedFile;
use camino::{Utf8Path, Utf8PathBuf};
use rayon::prelude::*;

const MAGIC: &[u8; 8] = b"MKTNOOP4";
const PATCH_MAGIC: &[u8; 8] = b"MKTNPAT1";
/// The stamp's file and its patch, in `.mkt/`.
const NOOP_STAMP: &str = crate::layout::NOOP_STAMP;
const NOOP_PATCH: &str = crate::layout::NOOP_PATCH;
/// A patch record: an entry's index and its fields after the kind.
const PATCH_RECORD: usize = 4 + ENTRY_TAIL - 1;
/// A stamp is written as a patch while the patch is at most this
/// fraction of it: past that, reading the patch on every build costs more
/// than one rewrite.
const PATCH_AT_MOST: usize = 16;

/// A patch file, checked (see [`NoopStamp::read`]).
struct Patch<'p> {
    nodes: u32,
    state_tip: Digest,
    records: Vec<(usize, &'p [u8])>,
}

/// Where the state tip starts: after the magic, the version and the node count.
const STATE_AT: usize = 8 + 4 + env!("CARGO_PKG_VERSION").len() + 4;

/// The project root a stamp is checked against: open (paths are stat'ed
/// relative to it) and by path (a symlink is resolved from it).
pub struct Root {
    pub dir: std::fs::File,
    pub path: Utf8PathBuf,
}

impl Root {
    pub fn open(path: &Utf8Path) -> Option<Root> {
        Some(Root {
            dir: std::fs::File::open(path).ok()?,
            path: path.to_owned(),
        })
    }
}

/// What resolving a path yields, as a `Resolve` entry records it (see the
/// module note): `None` when nothing is there, else its file type (in
/// `size`), its inode and, for a symlink, where it leads (in `mtime_ns`:
/// [`LEADS_INSIDE`], [`LEADS_NOWHERE`] or [`LEADS_OUTSIDE`]).
pub type Resolution = Option<FileStat>;

/// Where a symlink leads, as a `Resolve` entry records it.
pub const LEADS_INSIDE: i64 = 1;
pub const LEADS_NOWHERE: i64 = 2;
pub const LEADS_OUTSIDE: i64 = 3;

/// Whether a [`Resolution`] is of a symlink.
pub fn is_symlink(r: &Resolution) -> bool {
    r.is_some_and(|st| st.size == libc::S_IFLNK as u64)
}

/// Whether a path that resolves so can be stamped without the build having
/// checked it: nothing there, a directory (inside when its parent is), or
/// a symlink the kernel says leads inside or nowhere.
pub fn resolves_soundly(r: &Resolution) -> bool {
    match r {
        None => true,
        Some(st) if st.size == libc::S_IFDIR as u64 => true,
        Some(st) if is_symlink(r) => matches!(st.mtime_ns, LEADS_INSIDE | LEADS_NOWHERE),
        Some(_) => false,
    }
}

/// [`Resolution`] of `rel` now; `None` when it cannot be told (an error
/// other than "not there").
pub fn resolution(dir: &std::fs::File, root: &Utf8Path, rel: &str) -> Option<Resolution> {
    let st = match lstat_at(dir, rel)? {
        Ok(st) => st,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(None),
        Err(_) => return None,
    };
    let kind = st.st_mode & libc::S_IFMT;
    let leads = if kind == libc::S_IFLNK {
        where_it_leads(dir, root, rel)
    } else {
        0
    };
    Some(Some(FileStat {
        size: kind as u64,
        mtime_ns: leads,
        ctime_ns: 0,
        ino: st.st_ino,
    }))
}

/// Whether the symlink `rel` leads inside the project, nowhere, or out.
/// (Where inside it leads is the stat of what it leads to, which the
/// stamp checks too: another file is another inode.)
fn where_it_leads(dir: &std::fs::File, root: &Utf8Path, rel: &str) -> i64 {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // one system call where it works: the kernel refuses to leave the
        // directory (`RESOLVE_BENEATH`), so success means inside
        if let Ok(c) = std::ffi::CString::new(rel) {
            // SAFETY: `open_how` is plain integers; all zero is valid.
            let mut how: libc::open_how = unsafe { std::mem::zeroed() };
            how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
            how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
            // SAFETY: `c` is NUL-terminated, `how` is a valid `open_how`
            // of the size passed, and a non-negative result is a new
            // descriptor, closed at once.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if fd >= 0 {
                // SAFETY: `fd` is ours and open.
                unsafe { libc::close(fd as libc::c_int) };
                return LEADS_INSIDE;
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP) => {
                    return LEADS_NOWHERE;
                }
                // out, or in through an absolute link; or no openat2 here
                _ => {}
            }
        }
    }
    let (Ok(path), Ok(top)) = (
        std::fs::canonicalize(root.join(rel)),
        std::fs::canonicalize(root),
    ) else {
        return LEADS_NOWHERE;
    };
    if path.starts_with(top) {
        LEADS_INSIDE
    } else {
        LEADS_OUTSIDE
    }
}

/// The entries a stamp saw change ([`NoopStamp::changes`]).
pub struct Changes {
    /// Whether any can change the graph's shape (then the graph cache and
    /// the nodes' records vouch for nothing).
    pub structural: bool,
    pub paths: rustc_hash::FxHashSet<String>,
}

/// What an entry is to the build: only `Project`, `Structure`, `Dir` and
/// `Resolve` entries can change the shape of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Project,
    Structure,
    Content,
    Output,
    Dir,
    /// What resolving a path depends on: a directory on it, or the path
    /// itself when it is a symlink (see the module note).
    Resolve,
}

impl EntryKind {
    /// Whether a path with both roles should be stamped as `self`: what
    /// can change the graph's shape wins over content, content over output.
    pub fn outranks(self, other: EntryKind) -> bool {
        self.code() < other.code()
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Option<EntryKind> {
        Some(match c {
            0 => EntryKind::Project,
            1 => EntryKind::Structure,
            2 => EntryKind::Content,
            3 => EntryKind::Output,
            4 => EntryKind::Dir,
            5 => EntryKind::Resolve,
            _ => return None,
        })
    }
}

/// An entry to stamp (what [`NoopStamp::new`] encodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampEntry {
    pub path: String,
    pub kind: EntryKind,
    /// `None`: the path did not exist (directories only).
    pub stat: Option<FileStat>,
    pub racy: bool,
    /// The content digest (files; zero for directories).
    pub digest: Digest,
}

impl StampEntry {
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            path: &self.path,
            kind: self.kind,
            stat: self.stat,
            racy: self.racy,
            digest: self.digest,
        }
    }
}

/// An entry of a stamp, read in place from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub path: &'a str,
    pub kind: EntryKind,
    pub stat: Option<FileStat>,
    pub racy: bool,
    pub digest: Digest,
}

/// What follows an entry's path: kind, present, racy, stat, digest.
const ENTRY_TAIL: usize = 3 + 32 + 32;

/// A stamp is its encoding: the file's bytes (mapped, until an entry is
/// patched) and where each entry starts. Reading one is a checksum and a
/// pass over the entries' lengths, with no copy of the 30,000 paths of a
/// 10,000-target project; patching one writes its fixed-size fields in
/// place; writing it out is the bytes and a new checksum.
pub struct NoopStamp {
    /// How many nodes the build had (for the summary line).
    pub nodes: u32,
    /// The encoding; the first `body_len` bytes are all but its checksum.
    bytes: MappedFile,
    body_len: usize,
    /// Offset of each entry in `bytes`.
    starts: Vec<u32>,
    /// The checksum of the stamp file these bytes were read from, which a
    /// patch of them names; `None` for a stamp made anew.
    base: Option<[u8; 32]>,
    /// The entries set since that file was written (by its patch, then by
    /// this build): what a patch of it lists.
    patched: Vec<u32>,
}

impl std::fmt::Debug for NoopStamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoopStamp")
            .field("nodes", &self.nodes)
            .field("entries", &self.entries().collect::<Vec<_>>())
            .finish()
    }
}

impl PartialEq for NoopStamp {
    fn eq(&self, other: &NoopStamp) -> bool {
        // the encoding is canonical: equal bytes, equal stamps
        self.body() == other.body()
    }
}

impl Clone for NoopStamp {
    fn clone(&self) -> NoopStamp {
        NoopStamp {
            nodes: self.nodes,
            bytes: MappedFile::Owned(self.body().to_vec()),
            body_len: self.body_len,
            starts: self.starts.clone(),
            base: self.base,
            patched: self.patched.clone(),
        }
    }
}

impl NoopStamp {
    pub fn new(nodes: u32, entries: &[StampEntry]) -> NoopStamp {
        NoopStamp::from_refs(nodes, entries.len(), entries.iter().map(StampEntry::as_ref))
    }

    /// [`NoopStamp::new`] of `len` entries given one at a time, their paths
    /// borrowed (at a million targets, owned copies of two million paths
    /// were a fifth of a full build's peak memory).
    pub fn from_refs<'a>(
        nodes: u32,
        len: usize,
        entries: impl Iterator<Item = EntryRef<'a>>,
    ) -> NoopStamp {
        let mut w = Writer(Vec::with_capacity(64 + len * 96));
        w.0.extend_from_slice(MAGIC);
        w.str(env!("CARGO_PKG_VERSION"));
        w.u32(nodes);
        w.digest(&Digest::default()); // the state tip: set_state_tip
        w.u32(len as u32);
        let mut starts = Vec::with_capacity(len);
        for e in entries {
            starts.push(w.0.len() as u32);
            w.str(e.path);
            w.u8(e.kind.code());
            w.u8(e.stat.is_some() as u8);
            w.u8(e.racy as u8);
            w.file_stat(&e.stat.unwrap_or(ABSENT));
            w.digest(&e.digest);
        }
        debug_assert_eq!(starts.len(), len, "the count the header gave");
        NoopStamp {
            nodes,
            body_len: w.0.len(),
            bytes: MappedFile::Owned(w.0),
            starts,
            base: None,
            patched: Vec::new(),
        }
    }

    /// The file: the bytes and their BLAKE3.
    pub fn encode(&self) -> Vec<u8> {
        let (body, sum) = self.encoded_parts();
        let mut out = Vec::with_capacity(body.len() + 32);
        out.extend_from_slice(body);
        out.extend_from_slice(&sum);
        out
    }

    /// [`NoopStamp::encode`] as its two parts, the bytes and the checksum,
    /// to write without copying 2.5 MB at 10,000 targets.
    pub fn encoded_parts(&self) -> (&[u8], [u8; 32]) {
        let body = self.body();
        (body, Digest::of_large(body).0)
    }

    /// Checks the checksum and the shape of every entry; `None` for
    /// anything mkt did not write.
    pub fn decode(file: MappedFile) -> Option<NoopStamp> {
        let body_len = file.len().checked_sub(32)?;
        let (body, sum) = file.split_at(body_len);
        u32::try_from(body_len).ok()?;
        // (one thread below 16 MB: hashing on both would start the thread
        // pool first, which costs more than the 2.5 MB hash of 10,000
        // targets saves; the 187 MB of a million took 0.4 s on one)
        let digest = if body.len() < 16 << 20 {
            Digest::of(body)
        } else {
            Digest::of_large(body)
        };
        if digest.0 != sum {
            return None;
        }
        let mut r = Reader { buf: body, pos: 0 };
        if r.take(8)? != MAGIC || r.str()? != env!("CARGO_PKG_VERSION") {
            return None;
        }
        let nodes = r.u32()?;
        r.digest()?;
        let n = r.count(4 + ENTRY_TAIL)?;
        let mut starts = Vec::with_capacity(n);
        for _ in 0..n {
            starts.push(r.pos as u32);
            let len = r.u32()? as usize;
            std::str::from_utf8(r.take(len)?).ok()?;
            let tail = r.take(ENTRY_TAIL)?;
            EntryKind::from_code(tail[0])?;
            if tail[1] > 1 || tail[2] > 1 {
                return None;
            }
        }
        if r.pos != body.len() {
            return None;
        }
        let base = Some(sum.try_into().expect("32 bytes"));
        Some(NoopStamp {
            nodes,
            bytes: file,
            body_len,
            starts,
            base,
            patched: Vec::new(),
        })
    }

    fn body(&self) -> &[u8] {
        &self.bytes[..self.body_len]
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Entry `i` (`i < len()`), read from the bytes `decode` checked.
    pub fn entry(&self, i: usize) -> EntryRef<'_> {
        let (b, tail) = (self.body(), self.tail_of(i));
        let path = std::str::from_utf8(&b[self.starts[i] as usize + 4..tail]).unwrap_or_default();
        let mut r = Reader { buf: b, pos: tail };
        let (kind, present, racy) = (r.u8(), r.u8(), r.u8());
        let stat = r.file_stat().expect("a checked entry");
        EntryRef {
            path,
            kind: kind.and_then(EntryKind::from_code).expect("a checked kind"),
            stat: (present == Some(1)).then_some(stat),
            racy: racy == Some(1),
            digest: r.digest().expect("a checked entry"),
        }
    }

    /// Whether entry `i`'s path is `path` (compared as bytes: no decode of
    /// the rest, for a lookup that probes a few entries per path).
    pub fn path_is(&self, i: usize, path: &str) -> bool {
        self.path_bytes(i) == path.as_bytes()
    }

    /// Entry `i`'s path as stored (checked to be UTF-8 by `decode`).
    pub fn path_bytes(&self, i: usize) -> &[u8] {
        &self.body()[self.starts[i] as usize + 4..self.tail_of(i)]
    }

    /// Whether entry `i` is a `Resolve` entry.
    pub fn is_resolve(&self, i: usize) -> bool {
        EntryKind::from_code(self.body()[self.tail_of(i)]) == Some(EntryKind::Resolve)
    }

    /// Whether entry `i` is of a file (not a directory, nor how a path
    /// resolves) that was there: the entries a path's lookup finds.
    pub fn is_present_file(&self, i: usize) -> bool {
        let tail = &self.body()[self.tail_of(i)..];
        let kind = EntryKind::from_code(tail[0]);
        !matches!(kind, Some(EntryKind::Dir | EntryKind::Resolve)) && tail[1] == 1
    }

    pub fn entries(&self) -> impl Iterator<Item = EntryRef<'_>> {
        (0..self.len()).map(|i| self.entry(i))
    }

    /// The positions of the entries marked racy (read from one byte each).
    pub fn racy_entries(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.body()[self.tail_of(i) + 2] == 1)
            .collect()
    }

    /// Holds the bytes in memory of its own rather than mapped (for a stamp
    /// kept between builds, whose file the next build replaces).
    pub fn detach(&mut self) {
        self.bytes.make_owned();
    }

    /// Where entry `i`'s fixed-size fields start (after its path).
    fn tail_of(&self, i: usize) -> usize {
        let at = self.starts[i] as usize;
        let len = u32::from_le_bytes(self.body()[at..at + 4].try_into().expect("4 bytes"));
        at + 4 + len as usize
    }

    /// The [`StateFiles::tip`](crate::state::StateFiles::tip) of the
    /// records saved by the build that wrote the stamp.
    pub fn state_tip(&self) -> Digest {
        Digest(
            self.body()[STATE_AT..STATE_AT + 32]
                .try_into()
                .expect("32 bytes"),
        )
    }

    /// Sets [`NoopStamp::state_tip`] (in place, as [`NoopStamp::set`]).
    pub fn set_state_tip(&mut self, tip: Digest) {
        self.bytes.bytes_mut()[STATE_AT..STATE_AT + 32].copy_from_slice(&tip.0);
    }

    /// Rewrites entry `i`'s stat, racy flag and digest in place (in a
    /// private copy of a mapping's page, or a copy of the bytes: the file
    /// is never written).
    pub fn set(&mut self, i: usize, stat: Option<FileStat>, racy: bool, digest: Digest) {
        let mut tail = Writer(Vec::with_capacity(ENTRY_TAIL - 1));
        tail.u8(stat.is_some() as u8);
        tail.u8(racy as u8);
        tail.file_stat(&stat.unwrap_or(ABSENT));
        tail.digest(&digest);
        self.set_tail(i, &tail.0);
    }

    /// Writes entry `i`'s fields after its kind (as [`NoopStamp::set`]
    /// encodes them) and notes the entry as patched.
    fn set_tail(&mut self, i: usize, tail: &[u8]) {
        let at = self.tail_of(i);
        self.bytes.bytes_mut()[at + 1..at + ENTRY_TAIL].copy_from_slice(tail);
        self.patched.push(i as u32);
    }

    /// The stamp in `store_dir`: `noop`, with `noop.patch` applied when it
    /// is a patch of that file; `None` when there is no stamp mkt wrote. A
    /// patch that does not verify, or is of another file, is not applied:
    /// the file alone is the stamp an earlier build wrote, which holds as
    /// any stamp does (its state tip names its own records).
    pub fn read(store_dir: &Utf8Path) -> Option<NoopStamp> {
        let file = crate::store::map_replaced_writable(&store_dir.join(NOOP_STAMP)).ok()?;
        let mut stamp = NoopStamp::decode(file)?;
        if let Ok(patch) = std::fs::read(store_dir.join(NOOP_PATCH)) {
            stamp.apply_patch(&patch);
        }
        Some(stamp)
    }

    /// Writes the stamp into `store_dir`: as a patch of the file it was
    /// read from when the entries set since are few (an edit's build sets
    /// a handful of a million), else whole, the patch then removed.
    /// (Rewriting the 187 MB stamp of a million targets was a quarter of
    /// the build after one edit.)
    pub fn write(&mut self, store_dir: &Utf8Path) -> crate::error::Result<()> {
        use crate::error::Error;
        use crate::store::{remove_if_there, replace_cache};
        self.patched.sort_unstable();
        self.patched.dedup();
        let patch_path = store_dir.join(NOOP_PATCH);
        if let Some(base) = self.base
            && self.patched.len() * PATCH_RECORD <= self.body_len / PATCH_AT_MOST
        {
            return replace_cache(&patch_path, &[&self.encode_patch(&base)])
                .map_err(|e| Error::io("write", &patch_path, e));
        }
        let (body, sum) = self.encoded_parts();
        let stamp_path = store_dir.join(NOOP_STAMP);
        replace_cache(&stamp_path, &[body, &sum])
            .map_err(|e| Error::io("write", &stamp_path, e))?;
        self.base = Some(sum);
        self.patched.clear();
        remove_if_there(&patch_path)
    }

    /// Removes the stamp from `store_dir`, its patch after it (a patch
    /// alone is of no file).
    pub fn remove(store_dir: &Utf8Path) -> crate::error::Result<()> {
        crate::store::remove_if_there(&store_dir.join(NOOP_STAMP))?;
        crate::store::remove_if_there(&store_dir.join(NOOP_PATCH))
    }

    /// The patch file of this stamp over the file whose checksum is `base`
    /// (format in the module note).
    fn encode_patch(&self, base: &[u8; 32]) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(84 + self.patched.len() * PATCH_RECORD));
        w.0.extend_from_slice(PATCH_MAGIC);
        w.0.extend_from_slice(base);
        w.u32(self.nodes);
        w.digest(&self.state_tip());
        w.u32(self.patched.len() as u32);
        for &i in &self.patched {
            let at = self.tail_of(i as usize);
            w.u32(i);
            w.0.extend_from_slice(&self.body()[at + 1..at + ENTRY_TAIL]);
        }
        let sum = Digest::of(&w.0);
        w.0.extend_from_slice(&sum.0);
        w.0
    }

    /// Applies `patch` if it verifies and is a patch of this stamp's file;
    /// whether it did.
    fn apply_patch(&mut self, patch: &[u8]) -> bool {
        let Some(p) = self.check_patch(patch) else {
            return false;
        };
        self.nodes = p.nodes;
        self.set_state_tip(p.state_tip);
        for (i, tail) in p.records {
            self.set_tail(i, tail);
        }
        true
    }

    /// `patch` read and checked against this stamp, applying nothing.
    fn check_patch<'p>(&self, patch: &'p [u8]) -> Option<Patch<'p>> {
        let body_len = patch.len().checked_sub(32)?;
        let (body, sum) = patch.split_at(body_len);
        if Digest::of(body).0 != sum {
            return None;
        }
        let mut r = Reader { buf: body, pos: 0 };
        if r.take(8)? != PATCH_MAGIC || Some(r.take(32)?) != self.base.as_ref().map(|b| &b[..]) {
            return None;
        }
        let nodes = r.u32()?;
        let state_tip = r.digest()?;
        let n = r.count(PATCH_RECORD)?;
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            let i = r.u32()? as usize;
            let tail = r.take(ENTRY_TAIL - 1)?;
            if i >= self.len() || tail[0] > 1 || tail[1] > 1 {
                return None;
            }
            records.push((i, tail));
        }
        (r.pos == body.len()).then_some(Patch {
            nodes,
            state_tip,
            records,
        })
    }

    /// A digest of the entries that shape the graph (`prompts.toml`,
    /// templates, partials, globbed directories): the key of the graph
    /// cache (`Graph::encode`).
    pub fn structure_key(&self) -> Digest {
        // hashed in long chunks: BLAKE3 is several times faster over long
        // inputs than over 10,000 tiny updates (and a buffer sized for
        // every entry was 190 MB at a million targets, most of them not
        // structure)
        const CHUNK: usize = 64 * 1024;
        let mut h = blake3::Hasher::new();
        let mut buf = Vec::with_capacity(CHUNK + 4096);
        buf.extend_from_slice(b"mkt.graph-key.v1");
        for e in self.entries() {
            if matches!(
                e.kind,
                EntryKind::Project | EntryKind::Structure | EntryKind::Dir
            ) {
                let st = e.stat.unwrap_or(ABSENT);
                buf.extend_from_slice(&(e.path.len() as u64).to_le_bytes());
                buf.extend_from_slice(e.path.as_bytes());
                buf.extend_from_slice(&[e.kind.code(), e.stat.is_some() as u8]);
                for v in [st.size, st.mtime_ns as u64, st.ctime_ns as u64, st.ino] {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
                buf.extend_from_slice(&e.digest.0);
                if buf.len() >= CHUNK {
                    h.update(&buf);
                    buf.clear();
                }
            }
        }
        h.update(&buf);
        Digest(*h.finalize().as_bytes())
    }

    /// The entries that changed since the stamp was written (empty: the
    /// build is a no-op).
    pub fn changed(&self, root: &Root) -> Vec<EntryRef<'_>> {
        (0..self.len())
            .into_par_iter()
            .with_min_len(512)
            .map_init(
                || ParentDirs::new(&root.dir),
                |dirs, i| Some(self.entry(i)).filter(|e| !e.unchanged(root, dirs)),
            )
            .flatten()
            .collect()
    }

    /// What [`NoopStamp::changed`] (or, given the paths a file watcher
    /// reported, [`NoopStamp::changed_among`]) finds, as a build needs it:
    /// the paths, and whether any of them can change the graph's shape.
    pub fn changes(&self, root: &Root, hint: Option<&rustc_hash::FxHashSet<String>>) -> Changes {
        let changed = match hint {
            Some(h) => self.changed_among(root, h),
            None => self.changed(root),
        };
        let mut paths: rustc_hash::FxHashSet<String> =
            changed.iter().map(|e| e.path.to_string()).collect();
        // what a path resolves through changed: nothing below it is as the
        // stamp saw it, whatever its stat says
        let moved: rustc_hash::FxHashSet<&str> = (changed.iter())
            .filter(|e| e.kind == EntryKind::Resolve)
            .map(|e| e.path)
            .collect();
        if !moved.is_empty() {
            let below = |p: &str| {
                moved.contains(p) || p.match_indices('/').any(|(i, _)| moved.contains(&p[..i]))
            };
            paths.extend(
                self.entries()
                    .filter(|e| below(e.path))
                    .map(|e| e.path.to_string()),
            );
        }
        Changes {
            structural: changed.iter().any(|e| e.changes_structure(&root.dir)),
            paths,
        }
    }

    /// [`NoopStamp::changed`] for a caller that knows which paths can have
    /// changed (`mkt watch`: every path its file watcher reported): only
    /// those entries, the directories that hold them and racy entries are
    /// checked; every other entry is taken as unchanged.
    pub fn changed_among(
        &self,
        root: &Root,
        paths: &rustc_hash::FxHashSet<String>,
    ) -> Vec<EntryRef<'_>> {
        let parent = |p: &str| p.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        let dirs: rustc_hash::FxHashSet<String> = paths.iter().map(|p| parent(p)).collect();
        self.entries()
            .filter(|e| {
                e.racy
                    || paths.contains(e.path)
                    || (e.kind == EntryKind::Dir && dirs.contains(e.path))
                    // (how a path resolves can change where no watcher
                    // looks: a directory above it, or one a symlink leads
                    // through; there are few of these, one per directory)
                    || e.kind == EntryKind::Resolve
            })
            .collect::<Vec<_>>()
            .into_par_iter()
            .map_init(
                || ParentDirs::new(&root.dir),
                |dirs, e| Some(e).filter(|e| !e.unchanged(root, dirs)),
            )
            .flatten()
            .collect()
    }

    /// Clears the racy flag of entries [`NoopStamp::changed`] verified at
    /// `checked_at` that have aged past the window since; true if any did.
    pub fn age(&mut self, checked_at: i64) -> bool {
        self.age_except(checked_at, |_| false)
    }

    /// [`NoopStamp::age`] for every racy entry but those `skip` names (the
    /// ones a build just patched).
    pub fn age_except(&mut self, checked_at: i64, skip: impl Fn(usize) -> bool) -> bool {
        let mut any = false;
        for i in self.racy_entries() {
            if skip(i) {
                continue;
            }
            let e = self.entry(i);
            if e.stat
                .is_some_and(|st| !crate::state::is_racy(&st, checked_at))
            {
                let (stat, digest) = (e.stat, e.digest);
                self.set(i, stat, false, digest);
                any = true;
            }
        }
        any
    }
}

/// The stat stored for an absent path.
const ABSENT: FileStat = FileStat {
    size: 0,
    mtime_ns: 0,
    ctime_ns: 0,
    ino: 0,
};

impl EntryRef<'_> {
    /// Whether a change to this entry can change the graph's shape: an
    /// edit of `prompts.toml`, a template, a partial, a globbed directory,
    /// or an input that is gone or no longer a plain file (analysis must
    /// report that).
    pub fn changes_structure(&self, root: &std::fs::File) -> bool {
        match self.kind {
            EntryKind::Project | EntryKind::Structure | EntryKind::Dir | EntryKind::Resolve => true,
            // (a symlink that changed is judged by analysis, which checks
            // where it leads)
            EntryKind::Content => {
                !matches!(lstat_at(root, self.path), Some(Ok(st)) if st.st_mode & libc::S_IFMT == libc::S_IFREG)
            }
            EntryKind::Output => false,
        }
    }

    /// The entry's stat as it was taken when the stamp was written: a
    /// file's or directory's own, or, for a symlink (one inside the
    /// project: the build checked it), that of what it leads to.
    fn stat_now(&self, dirs: &mut ParentDirs) -> Option<std::io::Result<libc::stat>> {
        let (dir, name) = dirs.split(self.path);
        let st = lstat_at(dir, name)?;
        match st {
            Ok(l) if l.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                // (a link since led elsewhere, out of the project too, leads
                // to another file: another inode, or the same one with a
                // new ctime if it was moved, so a stat that still matches
                // is the file that was checked)
                crate::at::stat_at(dir, name)
            }
            other => Some(other),
        }
    }

    fn unchanged(&self, root: &Root, dirs: &mut ParentDirs) -> bool {
        if self.kind == EntryKind::Resolve {
            return resolution(&root.dir, &root.path, self.path)
                .is_some_and(|now| now == self.stat);
        }
        let now = match self.stat_now(dirs) {
            Some(Ok(st)) => Some(FileStat::from_libc(&st)),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
            _ => return false,
        };
        if now != self.stat {
            return false;
        }
        if !self.racy || self.stat.is_none() {
            return true;
        }
        if self.kind == EntryKind::Dir {
            return crate::files::listing_digest(&root.path.join(self.path)) == self.digest;
        }
        // racy: the same stat does not prove the same bytes
        use std::io::Read;
        let mut bytes = Vec::new();
        let read = crate::at::open_at(&root.dir, self.path)
            .and_then(|mut f| f.read_to_end(&mut bytes).ok());
        read.is_some() && Digest::of(&bytes) == self.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Option<NoopStamp> {
        NoopStamp::decode(MappedFile::Owned(bytes.to_vec()))
    }

    fn sample_entries() -> Vec<StampEntry> {
        vec![
            StampEntry {
                path: "prompts.toml".into(),
                kind: EntryKind::Project,
                stat: Some(FileStat {
                    size: 10,
                    mtime_ns: 5,
                    ctime_ns: 6,
                    ino: 7,
                }),
                racy: false,
                digest: Digest::of(b"p"),
            },
            StampEntry {
                path: "link".into(),
                kind: EntryKind::Resolve,
                stat: Some(FileStat {
                    size: libc::S_IFLNK as u64,
                    mtime_ns: LEADS_INSIDE,
                    ctime_ns: 0,
                    ino: 8,
                }),
                racy: false,
                digest: Digest::default(),
            },
            StampEntry {
                path: "docs".into(),
                kind: EntryKind::Dir,
                stat: None,
                racy: false,
                digest: Digest::default(),
            },
        ]
    }

    fn sample() -> NoopStamp {
        NoopStamp::new(2, &sample_entries())
    }

    #[test]
    fn round_trip_and_every_truncation_or_flip_is_rejected() {
        let bytes = sample().encode();
        let back = decode(&bytes).unwrap();
        assert_eq!(back, sample());
        assert_eq!(back.nodes, 2);
        let read: Vec<StampEntry> = back
            .entries()
            .map(|e| StampEntry {
                path: e.path.to_string(),
                kind: e.kind,
                stat: e.stat,
                racy: e.racy,
                digest: e.digest,
            })
            .collect();
        assert_eq!(read, sample_entries());
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert_eq!(decode(&b), None, "flip at {i}");
        }
    }

    /// A stamp with `n` entries written into a temp store dir, read back.
    fn written(n: usize) -> (tempfile::TempDir, Utf8PathBuf, NoopStamp) {
        let t = tempfile::tempdir().unwrap();
        let dir = Utf8Path::from_path(t.path()).unwrap().to_owned();
        let entries: Vec<StampEntry> = (0..n)
            .map(|i| StampEntry {
                path: format!("in/{i}.md"),
                kind: EntryKind::Content,
                stat: Some(FileStat {
                    size: i as u64,
                    mtime_ns: 1,
                    ctime_ns: 1,
                    ino: i as u64,
                }),
                racy: false,
                digest: Digest::of(&i.to_le_bytes()),
            })
            .collect();
        NoopStamp::new(3, &entries).write(&dir).unwrap();
        let read = NoopStamp::read(&dir).unwrap();
        (t, dir, read)
    }

    #[test]
    fn a_few_entries_set_are_written_as_a_patch_that_every_cut_or_flip_voids() {
        let (_t, dir, mut stamp) = written(100);
        let base = std::fs::read(dir.join(NOOP_STAMP)).unwrap();
        let edited = FileStat {
            size: 9,
            mtime_ns: 2,
            ctime_ns: 2,
            ino: 5,
        };
        stamp.set(5, Some(edited), true, Digest::of(b"edited"));
        stamp.set_state_tip(Digest::of(b"tip"));
        stamp.write(&dir).unwrap();
        assert_eq!(
            std::fs::read(dir.join(NOOP_STAMP)).unwrap(),
            base,
            "left as it was"
        );
        let back = NoopStamp::read(&dir).unwrap();
        assert_eq!(back, stamp);
        assert_eq!(
            (back.entry(5).stat, back.entry(5).racy),
            (Some(edited), true)
        );
        assert_eq!(back.state_tip(), Digest::of(b"tip"));

        // a patch cut short or damaged anywhere is not applied: the stamp
        // is then the file alone
        let patch = std::fs::read(dir.join(NOOP_PATCH)).unwrap();
        let alone = NoopStamp::decode(MappedFile::Owned(base.clone())).unwrap();
        let mut bad = Vec::new();
        bad.extend((0..patch.len()).map(|cut| patch[..cut].to_vec()));
        bad.extend((0..patch.len()).map(|i| {
            let mut b = patch.clone();
            b[i] ^= 1;
            b
        }));
        for b in bad {
            let mut s = NoopStamp::decode(MappedFile::Owned(base.clone())).unwrap();
            assert!(!s.apply_patch(&b));
            assert_eq!(s, alone);
        }

        // nor is it applied to another stamp file: a later build's
        let mut other = NoopStamp::decode(MappedFile::Owned(base.clone())).unwrap();
        other.set(7, None, false, Digest::default());
        let (body, sum) = other.encoded_parts();
        std::fs::write(dir.join(NOOP_STAMP), [body, &sum].concat()).unwrap();
        let read = NoopStamp::read(&dir).unwrap();
        assert_eq!(
            (read.entry(5).stat, read.entry(7).stat),
            (alone.entry(5).stat, None)
        );
    }

    #[test]
    fn many_entries_set_rewrite_the_stamp_whole_and_drop_the_patch() {
        let (_t, dir, mut stamp) = written(100);
        stamp.set(1, None, false, Digest::default());
        stamp.write(&dir).unwrap();
        assert!(dir.join(NOOP_PATCH).exists());
        for i in 0..100 {
            stamp.set(i, None, false, Digest::default());
        }
        stamp.write(&dir).unwrap();
        assert!(!dir.join(NOOP_PATCH).exists());
        assert_eq!(NoopStamp::read(&dir).unwrap(), stamp);
        // the stamp read back is the base of the next patch
        stamp.set(2, None, true, Digest::default());
        stamp.write(&dir).unwrap();
        assert!(dir.join(NOOP_PATCH).exists());
        assert_eq!(NoopStamp::read(&dir).unwrap(), stamp);
        NoopStamp::remove(&dir).unwrap();
        assert!(!dir.join(NOOP_STAMP).exists() && !dir.join(NOOP_PATCH).exists());
        assert!(NoopStamp::read(&dir).is_none());
    }

    fn entry(
        root: &std::fs::File,
        path: &str,
        kind: EntryKind,
        racy: bool,
        content: &[u8],
    ) -> StampEntry {
        let stat = lstat_at(root, path)
            .unwrap()
            .ok()
            .map(|s| FileStat::from_libc(&s));
        StampEntry {
            path: path.into(),
            kind,
            stat,
            racy,
            digest: Digest::of(content),
        }
    }

    fn racy_settled(root: &std::fs::File) -> Vec<u8> {
        let mut stamp = NoopStamp::new(1, &[entry(root, "a", EntryKind::Content, true, b"yy")]);
        let mtime = stamp.entry(0).stat.unwrap().mtime_ns;
        assert!(!stamp.age(mtime), "still within the window");
        assert!(stamp.age(mtime + crate::state::RACY_NS), "aged out");
        stamp.encode()
    }

    #[test]
    fn changes_are_noticed_and_racy_files_are_checked_by_content() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), "x").unwrap();
        let root = Root::open(Utf8Path::from_path(t.path()).unwrap()).unwrap();
        let dir = &root.dir;
        let stamp = NoopStamp::new(
            1,
            &[
                entry(dir, "a", EntryKind::Content, false, b"x"),
                entry(dir, "d", EntryKind::Dir, false, b""),
            ],
        );
        assert!(stamp.changed(&root).is_empty());
        std::fs::create_dir(t.path().join("d")).unwrap();
        assert_eq!(stamp.changed(&root)[0].path, "d");
        std::fs::remove_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("a"), "yy").unwrap();
        assert_eq!(stamp.changed(&root)[0].path, "a");

        // a racy entry whose stat still matches is compared by digest
        let mut racy = NoopStamp::new(1, &[entry(dir, "a", EntryKind::Content, true, b"yy")]);
        assert!(racy.changed(&root).is_empty());
        let stat = racy.entry(0).stat;
        racy.set(0, stat, true, Digest::of(b"zz")); // as if rewritten within the same tick
        assert_eq!(racy.changed(&root).len(), 1);
        // once past the window, a verified racy entry is stamped as settled
        let aged = decode(&racy_settled(dir)).unwrap();
        assert!(!aged.entry(0).racy);
        // told which paths can have changed, only those are checked
        std::fs::write(t.path().join("b"), "b").unwrap();
        let two = NoopStamp::new(
            1,
            &[
                entry(dir, "a", EntryKind::Content, false, b"yy"),
                entry(dir, "b", EntryKind::Content, false, b"b"),
            ],
        );
        std::fs::write(t.path().join("a"), "zzz").unwrap();
        std::fs::write(t.path().join("b"), "bbbb").unwrap();
        let only_b: rustc_hash::FxHashSet<String> = ["b".to_string()].into_iter().collect();
        let got: Vec<&str> = two
            .changed_among(&root, &only_b)
            .iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(got, ["b"]);
        assert_eq!(two.changed(&root).len(), 2);
        // a racy directory is verified by its listing
        let listed = crate::files::listing_digest(Utf8Path::from_path(t.path()).unwrap());
        let mut dir_entry = entry(dir, "", EntryKind::Dir, true, b"");
        dir_entry.digest = listed;
        assert_eq!(
            NoopStamp::new(1, &[dir_entry.clone()]).changed(&root).len(),
            0
        );
        dir_entry.digest = Digest::of(b"another listing");
        assert_eq!(NoopStamp::new(1, &[dir_entry]).changed(&root).len(), 1);
    }

    #[test]
    fn a_directory_that_resolves_elsewhere_takes_everything_below_it_along() {
        let t = tempfile::tempdir().unwrap();
        let (top, outside) = (t.path().join("project"), t.path().join("outside"));
        let at = |p: &str| top.join(p);
        for d in ["", "d", "d2", "real"] {
            std::fs::create_dir(at(d)).unwrap();
        }
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(at("d/a"), "x").unwrap();
        std::fs::write(at("real/b"), "y").unwrap();
        std::os::unix::fs::symlink("real", at("link")).unwrap();
        std::os::unix::fs::symlink("nowhere", at("dangling")).unwrap();
        let root_path = Utf8Path::from_path(&top).unwrap();
        let root = Root::open(root_path).unwrap();
        let resolve = |path: &str| StampEntry {
            path: path.into(),
            kind: EntryKind::Resolve,
            stat: resolution(&root.dir, root_path, path).unwrap(),
            racy: false,
            digest: Digest::default(),
        };
        let stamp = NoopStamp::new(
            2,
            &[
                entry(&root.dir, "d/a", EntryKind::Content, false, b"x"),
                entry(&root.dir, "link/b", EntryKind::Content, false, b"y"),
                resolve("d"),
                resolve("link"),
                resolve("gone"),
                resolve("dangling"),
            ],
        );
        assert_eq!(stamp.entry(3).stat.unwrap().mtime_ns, LEADS_INSIDE);
        assert_eq!(stamp.entry(5).stat.unwrap().mtime_ns, LEADS_NOWHERE);
        assert!(stamp.changed(&root).is_empty());
        // a file created in a directory changes its times, not how it resolves
        std::fs::write(at("d/new"), "n").unwrap();
        assert!(stamp.changed(&root).is_empty());
        // `d` moved away and a symlink to it put in its place: `d/a` has its
        // stat, but it is not the file that was checked
        std::fs::rename(at("d"), at("d2/d")).unwrap();
        std::os::unix::fs::symlink("d2/d", at("d")).unwrap();
        let c = stamp.changes(&root, None);
        assert!(c.structural);
        let mut paths: Vec<&str> = c.paths.iter().map(String::as_str).collect();
        paths.sort();
        assert_eq!(paths, ["d", "d/a"]);
        std::fs::remove_file(at("d")).unwrap();
        std::fs::rename(at("d2/d"), at("d")).unwrap();
        assert!(stamp.changed(&root).is_empty());
        // what `link` leads through moved, inside the project: `link/b` is
        // the same file, which its own stat says
        std::fs::rename(at("real"), at("d2/real")).unwrap();
        std::os::unix::fs::symlink("d2/real", at("real")).unwrap();
        assert!(stamp.changed(&root).is_empty());
        // and then out of it (an absolute link, so the kernel's check says
        // only "not beneath" and the canonical path decides)
        std::fs::remove_file(at("real")).unwrap();
        std::fs::rename(at("d2/real"), outside.join("real")).unwrap();
        std::os::unix::fs::symlink(outside.join("real"), at("real")).unwrap();
        let mut paths: Vec<String> = stamp.changes(&root, None).paths.into_iter().collect();
        paths.sort();
        assert_eq!(paths, ["link", "link/b"]);
        // a watcher that reported nothing still has every `Resolve` entry
        // checked
        let none = rustc_hash::FxHashSet::default();
        assert_eq!(stamp.changed_among(&root, &none).len(), 1);
        // the dangling link now leads somewhere; something where nothing was
        std::fs::write(at("nowhere"), "").unwrap();
        std::fs::create_dir(at("gone")).unwrap();
        let mut paths: Vec<&str> = stamp.changed(&root).iter().map(|e| e.path).collect();
        paths.sort();
        assert_eq!(paths, ["dangling", "gone", "link"]);
    }

    #[test]
    fn an_entry_patched_in_place_round_trips_and_a_forged_kind_is_refused() {
        let mut stamp = sample();
        let st = FileStat {
            size: 99,
            mtime_ns: 1,
            ctime_ns: 2,
            ino: 3,
        };
        stamp.set(2, Some(st), true, Digest::of(b"d"));
        let back = decode(&stamp.encode()).unwrap();
        let e = back.entry(2);
        assert_eq!(
            (e.path, e.kind, e.stat, e.racy, e.digest),
            ("docs", EntryKind::Dir, Some(st), true, Digest::of(b"d"))
        );
        for i in [0, 1] {
            assert_eq!(
                back.entry(i),
                sample().entry(i),
                "the others are as they were"
            );
        }
        // a valid checksum over an unknown kind code: not a file mkt wrote
        let mut bytes = sample().encode();
        bytes.truncate(bytes.len() - 32);
        let kind_at = bytes.len() - ENTRY_TAIL; // the last entry's kind
        let forged = |at: usize, value: u8| {
            let mut b = bytes.clone();
            b[at] = value;
            let sum = Digest::of(&b);
            b.extend_from_slice(&sum.0);
            decode(&b)
        };
        assert_eq!(forged(kind_at, 6), None, "an unknown kind");
        assert_eq!(forged(kind_at + 1, 2), None, "a present flag of 2");
        assert_eq!(forged(kind_at + 2, 2), None, "a racy flag of 2");
        let path_at = kind_at - "docs".len();
        assert_eq!(forged(path_at, 0xff), None, "a path that is not UTF-8");
        assert!(
            forged(kind_at, 1).is_some(),
            "the same bytes with a known kind"
        );
    }
}
