//! The no-op stamp: lets `mkt build` (of everything) answer "all up to date"
//! with one `lstat` per file and nothing else, like ninja.
//!
//! After a successful build of every target, `.mkt/noop` lists every path
//! the result depends on (`prompts.toml`, each template, partial, verbatim
//! file, input, `foreach` file and output) and every directory a glob
//! listed, each with the stat seen when its content was hashed (or, for a
//! directory, before it was listed). The next `mkt build` with no target
//! names and no `--force` stats them all; if every stat is identical the
//! build is a no-op and nothing else is read. Any difference (an edit, a
//! touch, a new file in a globbed directory, a deleted output) falls back
//! to the full freshness check (`state.rs`), which never trusts this file.
//!
//! The stamp is written only when no entry is racy (modified within the
//! file system's timestamp granularity of the moment it was seen), so a
//! second write within the same tick cannot hide behind an equal stat.
//!
//! # File format of `.mkt/noop`
//!
//! ```text
//! "MKTNOOP1" | str mkt version | u32 nodes | u32 n | n × ENTRY | BLAKE3 of all before
//! ENTRY := str path | u8 present | u64 size | u64 mtime_ns | u64 ctime_ns | u64 ino
//! ```
//!
//! (`str` and integers as in `state.rs`.) A directory that did not exist is
//! recorded as absent, so creating it is noticed.

use crate::files::lstat_at;
use crate::hash::Digest;
use crate::state::{FileStat, Reader, Writer};
use rayon::prelude::*;

const MAGIC: &[u8; 8] = b"MKTNOOP1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoopStamp {
    /// How many nodes the build had (for the summary line).
    pub nodes: u32,
    pub entries: Vec<(String, Option<FileStat>)>,
}

impl NoopStamp {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(16 + self.entries.len() * 56));
        w.0.extend_from_slice(MAGIC);
        w.str(env!("CARGO_PKG_VERSION"));
        w.u32(self.nodes);
        w.u32(self.entries.len() as u32);
        for (path, st) in &self.entries {
            w.str(path);
            let st = match st {
                Some(st) => {
                    w.u8(1);
                    *st
                }
                None => {
                    w.u8(0);
                    FileStat {
                        size: 0,
                        mtime_ns: 0,
                        ctime_ns: 0,
                        ino: 0,
                    }
                }
            };
            w.u64(st.size);
            w.u64(st.mtime_ns as u64);
            w.u64(st.ctime_ns as u64);
            w.u64(st.ino);
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
        let n = r.count(4 + 1 + 32)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let path = r.str()?;
            let present = r.bool()?;
            let st = FileStat {
                size: r.u64()?,
                mtime_ns: r.u64()? as i64,
                ctime_ns: r.u64()? as i64,
                ino: r.u64()?,
            };
            entries.push((path, present.then_some(st)));
        }
        (r.pos == body.len()).then_some(NoopStamp { nodes, entries })
    }

    /// True when every entry's stat is what the stamp recorded.
    pub fn still_holds(&self, root: &std::fs::File) -> bool {
        self.entries
            .par_iter()
            .all(|(path, want)| match lstat_at(root, path) {
                Some(Ok(st)) => want.as_ref() == Some(&FileStat::from_libc(&st)),
                Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => want.is_none(),
                _ => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NoopStamp {
        NoopStamp {
            nodes: 2,
            entries: vec![
                (
                    "prompts.toml".into(),
                    Some(FileStat {
                        size: 10,
                        mtime_ns: 5,
                        ctime_ns: 6,
                        ino: 7,
                    }),
                ),
                ("docs".into(), None),
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

    #[test]
    fn still_holds_notices_edits_and_new_directories() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), "x").unwrap();
        let root = std::fs::File::open(t.path()).unwrap();
        let st = |p: &str| {
            lstat_at(&root, p)
                .unwrap()
                .ok()
                .map(|s| FileStat::from_libc(&s))
        };
        let stamp = NoopStamp {
            nodes: 1,
            entries: vec![("a".into(), st("a")), ("d".into(), None)],
        };
        assert!(stamp.still_holds(&root));
        std::fs::create_dir(t.path().join("d")).unwrap();
        assert!(!stamp.still_holds(&root));
        std::fs::remove_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("a"), "yy").unwrap();
        assert!(!stamp.still_holds(&root));
    }
}
