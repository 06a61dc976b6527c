//! The no-op stamp a finished build leaves (`crate::stamp` reads it).

use crate::config::{PROJECT_FILE, Project};
use crate::files::ProjectFiles;
use crate::graph::Graph;
use crate::hash::Digest;
use crate::stamp::{EntryKind, EntryRef, NoopStamp, StampEntry};
use crate::state::{DepKind, FileStat, StatEntry, is_racy};
use rustc_hash::FxHashSet as HashSet;

/// The stamp for the build that just finished, or `None` when some entry
/// is unknown (the next build then takes the full path).
pub(super) fn noop_stamp(
    project: &Project,
    graph: &Graph,
    files: &ProjectFiles,
    project_stat: Option<(FileStat, i64)>,
) -> Option<NoopStamp> {
    let (pstat, seen_at) = project_stat?;
    let paths = stamped_paths(graph);
    if !paths.iter().all(|(p, _)| files.seen_entry(p).is_some()) {
        return None;
    }
    let dirs = files.walked_dirs();
    let all_paths = std::iter::once(PROJECT_FILE)
        .chain(paths.iter().map(|(p, _)| *p))
        .chain(dirs.iter().map(|d| d.path.as_str()));
    let resolve = resolve_entries(all_paths, files)?;
    let project_entry = EntryRef {
        path: PROJECT_FILE,
        kind: EntryKind::Project,
        stat: Some(pstat),
        racy: is_racy(&pstat, seen_at),
        digest: Digest::of(project.source.as_bytes()),
    };
    let file_entries = paths.iter().map(|&(path, kind)| {
        let e = files.seen_entry(path).expect("checked above");
        EntryRef {
            path,
            kind,
            stat: Some(e.stat),
            racy: e.racy,
            digest: e.digest,
        }
    });
    let dir_entries = dirs.iter().map(|d| EntryRef {
        path: &d.path,
        kind: EntryKind::Dir,
        stat: d.stat,
        racy: d.stat.as_ref().is_some_and(|st| is_racy(st, d.seen_at)),
        digest: d.listing,
    });
    let len = 1 + paths.len() + dirs.len() + resolve.len();
    let entries = std::iter::once(project_entry)
        .chain(file_entries)
        .chain(dir_entries)
        .chain(resolve.iter().map(StampEntry::as_ref));
    Some(NoopStamp::from_refs(graph.nodes.len() as u32, len, entries))
}

/// Every file the graph's nodes read or write, once, in the order nodes
/// name them, with its kind. A path with several roles (a template that is
/// also an input) is stamped with the one that matters most: structure
/// before content.
fn stamped_paths(graph: &Graph) -> Vec<(&str, EntryKind)> {
    let mut paths: Vec<(&str, EntryKind)> = Vec::new();
    // (positions in `paths` by the path's hash: a map of `&str` to `usize`
    // over a million targets' two million paths was 100 MB of the save)
    let mut index: hashbrown::HashTable<u32> = hashbrown::HashTable::new();
    let hash = crate::state::key_hash;
    for n in &graph.nodes {
        let sources = n.source_files().into_iter().map(|(k, p)| {
            let kind = match k {
                DepKind::Template | DepKind::Partial => EntryKind::Structure,
                DepKind::Input | DepKind::Item | DepKind::Verbatim => EntryKind::Content,
            };
            (kind, p)
        });
        for (kind, p) in sources.chain([(EntryKind::Output, n.output.as_str())]) {
            let h = hash(p);
            match index.find(h, |&i| paths[i as usize].0 == p) {
                Some(&i) if kind.outranks(paths[i as usize].1) => paths[i as usize].1 = kind,
                Some(_) => {}
                None => {
                    let at = paths.len() as u32;
                    index.insert_unique(h, at, |&i| hash(paths[i as usize].0));
                    paths.push((p, kind));
                }
            }
        }
    }
    paths
}

/// The `Resolve` entries for a stamp of `paths` (see `stamp.rs`): every
/// directory on a stamped path and every stamped path that is a symlink,
/// as they were when this build (or the stamp that vouched for them)
/// checked where they lead; `None` when one was not checked and is a
/// symlink now (the next build then checks it).
fn resolve_entries<'a>(
    paths: impl Iterator<Item = &'a str> + Clone,
    files: &ProjectFiles,
) -> Option<Vec<StampEntry>> {
    let dirs: HashSet<&str> = (paths.clone())
        .filter_map(|p| Some(p.rsplit_once('/')?.0))
        .collect();
    let mut needed: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for dir in dirs {
        for (i, _) in dir.match_indices('/') {
            needed.insert(dir[..i].to_string());
        }
        needed.insert(dir.to_string());
    }
    let links = files.noted_symlinks();
    if !links.is_empty() {
        let stamped: HashSet<&str> = paths.collect();
        needed.extend(links.into_iter().filter(|p| stamped.contains(p.as_str())));
    }
    let mut out = Vec::with_capacity(needed.len());
    for path in needed {
        let r = match files.resolution(&path) {
            Some(r @ Some(_)) => r,
            // not there when it was checked (a directory mkt made since),
            // or not checked: taken as it is now if that is sound
            _ => match files.resolution_now(&path)? {
                r if crate::stamp::resolves_soundly(&r) => r,
                _ => return None,
            },
        };
        out.push(StampEntry {
            path,
            kind: EntryKind::Resolve,
            stat: r,
            racy: false,
            digest: Digest::default(),
        });
    }
    Some(out)
}

/// Brings the old stamp up to date in place: every file this build looked
/// at (`seen`: its entry's position and what the build found) gets its
/// current stat and digest. An entry that was racy but was verified by
/// content at `checked_at` and has aged past the window since is no longer
/// racy. Only those entries are visited, not all 30,000 of a 10,000-target
/// stamp.
pub(super) fn patch_stamp(stamp: &mut NoopStamp, seen: &[(usize, StatEntry)], checked_at: i64) {
    let mut patched = HashSet::default();
    for (i, s) in seen {
        let e = stamp.entry(*i);
        if Some(s.stat) != e.stat || s.digest != e.digest {
            stamp.set(*i, Some(s.stat), s.racy, s.digest);
            patched.insert(*i);
        }
    }
    stamp.age_except(checked_at, |i| patched.contains(&i));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RACY_NS;

    fn st(mtime_ns: i64) -> FileStat {
        FileStat {
            size: 1,
            mtime_ns,
            ctime_ns: mtime_ns,
            ino: 7,
        }
    }

    fn entry(path: &str, kind: EntryKind, stat: Option<FileStat>, racy: bool) -> StampEntry {
        StampEntry {
            path: path.into(),
            kind,
            stat,
            racy,
            digest: Digest::of(path.as_bytes()),
        }
    }

    #[test]
    fn patching_a_stamp_updates_what_was_seen_and_settles_aged_racy_entries() {
        let now = 100 * RACY_NS;
        let mut stamp = NoopStamp::new(
            2,
            &[
                entry("in/a.md", EntryKind::Content, Some(st(1)), false),
                entry("in/old.md", EntryKind::Content, Some(st(2)), true),
                entry("in/new.md", EntryKind::Content, Some(st(now)), true),
                entry("in", EntryKind::Dir, Some(st(3)), true),
                entry("out/a.md", EntryKind::Output, Some(st(4)), false),
            ],
        );
        // the build saw `in/a.md` edited (a racy new stat) and `out/a.md`
        // as it was
        let edited = StatEntry {
            stat: st(now),
            racy: true,
            digest: Digest::of(b"edited"),
        };
        let same = StatEntry {
            stat: st(4),
            racy: false,
            digest: Digest::of(b"out/a.md"),
        };
        patch_stamp(&mut stamp, &[(0, edited), (4, same)], now);
        let got: Vec<_> = stamp
            .entries()
            .map(|e| (e.path, e.stat, e.racy, e.digest))
            .collect();
        assert_eq!(
            got,
            [
                ("in/a.md", Some(st(now)), true, Digest::of(b"edited")),
                // aged past the window: settled
                ("in/old.md", Some(st(2)), false, Digest::of(b"in/old.md")),
                // still within it
                ("in/new.md", Some(st(now)), true, Digest::of(b"in/new.md")),
                // a directory too (verified by its listing)
                ("in", Some(st(3)), false, Digest::of(b"in")),
                ("out/a.md", Some(st(4)), false, Digest::of(b"out/a.md")),
            ]
        );
    }
}
