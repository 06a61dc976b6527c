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
//! in a globbed directory, a deleted output) falls back to the full
//! freshness check (`state.rs`), which never trusts this file.
//!
//! An entry seen within the file system's timestamp granularity of its
//! mtime is "racy" (git's term): a second write in the same tick would
//! leave the stat unchanged, so a racy file is re-hashed and compared by
//! digest instead. A racy directory cannot be checked that way and always
//! counts as changed.
//!
//! # File format of `.mkt/noop`
//!
//! ```text
//! "MKTNOOP2" | str mkt version | u32 nodes | u32 n | n × ENTRY | BLAKE3 of all before
//! ENTRY := str path | u8 kind | u8 present | u8 racy | u64 size | u64 mtime_ns
//!          | u64 ctime_ns | u64 ino | 32-byte digest
//! kind  := 0 prompts.toml | 1 template or partial | 2 input, item or verbatim
//!          | 3 output | 4 directory
//! ```
//!
//! (`str` and integers as in `state.rs`.) A directory that did not exist is
//! recorded as absent, so creating it is noticed.

use crate::files::lstat_at;
use crate::hash::Digest;
use crate::state::{FileStat, Reader, Writer};
use rayon::prelude::*;

const MAGIC: &[u8; 8] = b"MKTNOOP2";

/// What an entry is to the build: only `Project`, `Structure` and `Dir`
/// entries can change the shape of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Project,
    Structure,
    Content,
    Output,
    Dir,
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
            _ => return None,
        })
    }
}

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoopStamp {
    /// How many nodes the build had (for the summary line).
    pub nodes: u32,
    pub entries: Vec<StampEntry>,
}

impl NoopStamp {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(16 + self.entries.len() * 96));
        w.0.extend_from_slice(MAGIC);
        w.str(env!("CARGO_PKG_VERSION"));
        w.u32(self.nodes);
        w.u32(self.entries.len() as u32);
        for e in &self.entries {
            w.str(&e.path);
            w.u8(e.kind.code());
            w.u8(e.stat.is_some() as u8);
            w.u8(e.racy as u8);
            let st = e.stat.unwrap_or(FileStat {
                size: 0,
                mtime_ns: 0,
                ctime_ns: 0,
                ino: 0,
            });
            w.file_stat(&st);
            w.digest(&e.digest);
        }
        let sum = Digest::of(&w.0);
        w.digest(&sum);
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Option<NoopStamp> {
        let body = bytes.get(..bytes.len().checked_sub(32)?)?;
        if Digest::of(body).0 != bytes[body.len()..] {
            return None;
        }
        let mut r = Reader { buf: body, pos: 0 };
        if r.take(8)? != MAGIC || r.str()? != env!("CARGO_PKG_VERSION") {
            return None;
        }
        let nodes = r.u32()?;
        let n = r.count(4 + 3 + 32 + 32)?;
        // find where each entry starts (a quick pass over the lengths), then
        // decode them on every core: 30,000 paths to copy at 10,000 targets
        let mut starts = Vec::with_capacity(n);
        for _ in 0..n {
            starts.push(r.pos);
            let len = r.u32()? as usize;
            r.take(len.checked_add(3 + 32 + 32)?)?;
        }
        if r.pos != body.len() {
            return None;
        }
        let entries = starts
            .par_iter()
            .with_min_len(1024)
            .map(|&pos| StampEntry::decode(&mut Reader { buf: body, pos }))
            .collect::<Option<Vec<_>>>()?;
        Some(NoopStamp { nodes, entries })
    }

    /// A digest of the entries that shape the graph (`prompts.toml`,
    /// templates, partials, globbed directories): the key of the graph
    /// cache (`Graph::encode`).
    pub fn structure_key(&self) -> Digest {
        // one contiguous buffer hashed at once: BLAKE3 is several times
        // faster over one long input than over 10,000 tiny updates
        let mut buf = Vec::with_capacity(64 + self.entries.len() * 96);
        buf.extend_from_slice(b"mkt.graph-key.v1");
        for e in &self.entries {
            if matches!(
                e.kind,
                EntryKind::Project | EntryKind::Structure | EntryKind::Dir
            ) {
                let st = e.stat.unwrap_or(FileStat {
                    size: 0,
                    mtime_ns: 0,
                    ctime_ns: 0,
                    ino: 0,
                });
                buf.extend_from_slice(&(e.path.len() as u64).to_le_bytes());
                buf.extend_from_slice(e.path.as_bytes());
                buf.extend_from_slice(&[e.kind.code(), e.stat.is_some() as u8]);
                for v in [st.size, st.mtime_ns as u64, st.ctime_ns as u64, st.ino] {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
                buf.extend_from_slice(&e.digest.0);
            }
        }
        Digest::of(&buf)
    }

    /// The entries that changed since the stamp was written (empty: the
    /// build is a no-op).
    pub fn changed(&self, root: &std::fs::File) -> Vec<&StampEntry> {
        self.entries
            .par_iter()
            .filter(|e| !e.unchanged(root))
            .collect()
    }

    /// [`NoopStamp::changed`] for a caller that knows which paths can have
    /// changed (`mkt watch`: every path its file watcher reported): only
    /// those entries, the directories that hold them and racy entries are
    /// checked; every other entry is taken as unchanged.
    pub fn changed_among(
        &self,
        root: &std::fs::File,
        paths: &rustc_hash::FxHashSet<String>,
    ) -> Vec<&StampEntry> {
        let parent = |p: &str| p.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        let dirs: rustc_hash::FxHashSet<String> = paths.iter().map(|p| parent(p)).collect();
        self.entries
            .iter()
            .filter(|e| {
                e.racy
                    || paths.contains(&e.path)
                    || (e.kind == EntryKind::Dir && dirs.contains(&e.path))
            })
            .filter(|e| !e.unchanged(root))
            .collect()
    }

    /// Clears the racy flag of entries [`NoopStamp::changed`] verified at
    /// `checked_at` that have aged past the window since; true if any did.
    pub fn age(&mut self, checked_at: i64) -> bool {
        let mut any = false;
        for e in &mut self.entries {
            if e.racy
                && e.kind != EntryKind::Dir
                && e.stat
                    .is_some_and(|st| !crate::state::is_racy(&st, checked_at))
            {
                e.racy = false;
                any = true;
            }
        }
        any
    }
}

impl StampEntry {
    /// Whether a change to this entry can change the graph's shape: an
    /// edit of `prompts.toml`, a template, a partial, a globbed directory,
    /// or an input that is gone or no longer a plain file (analysis must
    /// report that).
    pub fn changes_structure(&self, root: &std::fs::File) -> bool {
        match self.kind {
            EntryKind::Project | EntryKind::Structure | EntryKind::Dir => true,
            EntryKind::Content => {
                !matches!(lstat_at(root, &self.path), Some(Ok(st)) if st.st_mode & libc::S_IFMT == libc::S_IFREG)
            }
            EntryKind::Output => false,
        }
    }

    fn decode(r: &mut Reader<'_>) -> Option<StampEntry> {
        let path = r.str()?;
        let kind = EntryKind::from_code(r.u8()?)?;
        let present = r.bool()?;
        let racy = r.bool()?;
        let st = r.file_stat()?;
        Some(StampEntry {
            path,
            kind,
            stat: present.then_some(st),
            racy,
            digest: r.digest()?,
        })
    }

    fn unchanged(&self, root: &std::fs::File) -> bool {
        let now = match lstat_at(root, &self.path) {
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
            return false;
        }
        // racy: the same stat does not prove the same bytes
        use std::io::Read;
        let mut bytes = Vec::new();
        let read = crate::files::open_at(root, &self.path)
            .and_then(|mut f| f.read_to_end(&mut bytes).ok());
        read.is_some() && Digest::of(&bytes) == self.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NoopStamp {
        NoopStamp {
            nodes: 2,
            entries: vec![
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
                    path: "docs".into(),
                    kind: EntryKind::Dir,
                    stat: None,
                    racy: false,
                    digest: Digest::default(),
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_every_truncation_or_flip_is_rejected() {
        let bytes = sample().encode();
        assert_eq!(NoopStamp::decode(&bytes), Some(sample()));
        for cut in 0..bytes.len() {
            assert_eq!(NoopStamp::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert_eq!(NoopStamp::decode(&b), None, "flip at {i}");
        }
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
        let mut stamp = NoopStamp {
            nodes: 1,
            entries: vec![entry(root, "a", EntryKind::Content, true, b"yy")],
        };
        let mtime = stamp.entries[0].stat.unwrap().mtime_ns;
        assert!(!stamp.age(mtime), "still within the window");
        assert!(stamp.age(mtime + crate::state::RACY_NS), "aged out");
        stamp.encode()
    }

    #[test]
    fn changes_are_noticed_and_racy_files_are_checked_by_content() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), "x").unwrap();
        let root = std::fs::File::open(t.path()).unwrap();
        let stamp = NoopStamp {
            nodes: 1,
            entries: vec![
                entry(&root, "a", EntryKind::Content, false, b"x"),
                entry(&root, "d", EntryKind::Dir, false, b""),
            ],
        };
        assert!(stamp.changed(&root).is_empty());
        std::fs::create_dir(t.path().join("d")).unwrap();
        assert_eq!(stamp.changed(&root)[0].path, "d");
        std::fs::remove_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("a"), "yy").unwrap();
        assert_eq!(stamp.changed(&root)[0].path, "a");

        // a racy entry whose stat still matches is compared by digest
        let mut racy = NoopStamp {
            nodes: 1,
            entries: vec![entry(&root, "a", EntryKind::Content, true, b"yy")],
        };
        assert!(racy.changed(&root).is_empty());
        racy.entries[0].digest = Digest::of(b"zz"); // as if rewritten within the same tick
        assert_eq!(racy.changed(&root).len(), 1);
        // once past the window, a verified racy entry is stamped as settled
        let aged = NoopStamp::decode(&racy_settled(&root)).unwrap();
        assert!(!aged.entries[0].racy);
        // told which paths can have changed, only those are checked
        std::fs::write(t.path().join("b"), "b").unwrap();
        let two = NoopStamp {
            nodes: 1,
            entries: vec![
                entry(&root, "a", EntryKind::Content, false, b"yy"),
                entry(&root, "b", EntryKind::Content, false, b"b"),
            ],
        };
        std::fs::write(t.path().join("a"), "zzz").unwrap();
        std::fs::write(t.path().join("b"), "bbbb").unwrap();
        let only_b: rustc_hash::FxHashSet<String> = ["b".to_string()].into_iter().collect();
        let got: Vec<&str> = two
            .changed_among(&root, &only_b)
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(got, ["b"]);
        assert_eq!(two.changed(&root).len(), 2);
        // a racy directory always counts as changed
        let dir = NoopStamp {
            nodes: 1,
            entries: vec![entry(&root, "", EntryKind::Dir, true, b"")],
        };
        assert_eq!(dir.changed(&root).len(), 1);
    }
}
