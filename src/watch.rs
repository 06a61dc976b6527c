//! `mkt watch`: one build, then a rebuild after every saved change to
//! something the selected targets depend on, until interrupted.
//!
//! **The watcher is only a trigger.** Every rebuild is an ordinary
//! `mkt build` (same engine, same output, same errors), and the engine
//! decides freshness by content: a file saved without a change, or an
//! event the watcher reports twice, rebuilds nothing. So a lost event is
//! the only way to miss a change, and the watcher guards against that: an
//! event queue overflow (notify's rescan flag) triggers a rebuild, whose
//! no-op check stats every file the project uses.
//!
//! **What is watched.** Directories, never single files, so an editor's
//! atomic save (write a temp file, rename it over the original) is seen:
//! the project root (for `prompts.toml`), the directory of every file the
//! last successful build read or wrote, and every directory a glob listed.
//! The set only grows while watching (a new partial or input found by a
//! rebuild is watched from then on). Directories outside that set (`.git/`,
//! `target/`, ...) cost no watch at all.
//!
//! **What triggers a rebuild.** An event on `prompts.toml`, on a file the
//! last build read, or a file created or removed in a directory a glob
//! lists. Never an event under `.mkt/`, on an editor's temp file (`*~`,
//! `.#*`, `*.swp`, vim's `4913`, ...) or on an output `mkt` writes, so its
//! own writes cannot loop. After a failed build (an invalid `prompts.toml`,
//! a template syntax error) any event in a watched directory triggers one,
//! so fixing the file recovers.
//!
//! **Cost.** The watcher keeps the project, its graph, its state and its
//! no-op stamp in memory between builds (`build::Session`), and tells the
//! engine which paths it saw change: only their stamp entries are stat-ed.
//! A change to one target then costs about the same in a project of
//! 10,000 targets as in one of 100. Every path an event names counts,
//! relevant or not (an output edited by hand is checked, and repaired,
//! when something else triggers the next build). A build after new
//! directories were watched, and after a rescan, checks every file: a
//! change made before its directory was watched has no event.
//!
//! **Coalescing.** The debouncer (notify-debouncer-full) waits for
//! `debounce` of quiet per path; changes that arrive while a build runs
//! queue up and are taken together into one follow-up build.

use crate::build::{BuildOptions, BuildReport, Event, Session, WatchSet, build_in};
use crate::config::PROJECT_FILE;
use crate::error::{Error, Result};
use crate::store::STORE_DIR;
use camino::{Utf8Path, Utf8PathBuf};
use notify_debouncer_full::notify::{RecursiveMode, event::EventKind};
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use rustc_hash::FxHashSet as HashSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub build: BuildOptions,
    /// Quiet time per path before a change is acted on.
    pub debounce: Duration,
}

/// What the watcher reports; the CLI decides what to print.
#[derive(Debug)]
pub enum WatchEvent<'a> {
    /// A build starts: the first one (no changes), one triggered by
    /// `changes` (project-relative paths), one for lost events (`rescan`),
    /// or a check of every file after new directories were watched
    /// (`verify`: usually finds nothing to do).
    Rebuilding {
        changes: &'a [String],
        rescan: bool,
        verify: bool,
    },
    /// Something the build reports.
    Build(Event<'a>),
    /// A build ended, after `elapsed`.
    Built {
        result: &'a Result<BuildReport>,
        elapsed: Duration,
        verify: bool,
    },
    /// Watching, with this many directories, until the next change.
    Idle { dirs: usize },
    /// A problem with watching itself; the watcher goes on.
    Warning(String),
}

/// Whether `rel` is a file no build ever depends on: the store, an
/// editor's temp or backup file.
pub fn is_ignored(rel: &str) -> bool {
    if rel
        .strip_prefix(STORE_DIR)
        .is_some_and(|r| r.is_empty() || r.starts_with('/'))
    {
        return true;
    }
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name.starts_with(".#")
        || name.starts_with(crate::layout::TEMP_PREFIX)
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".swo")
        || name == "4913"
        || (name.starts_with('#') && name.ends_with('#'))
}

/// Whether an event on `rel` can change what a build does, given what the
/// last build depended on (`None` after a failed build: anything can).
pub fn is_relevant(rel: &str, set: Option<&WatchSet>) -> bool {
    if is_ignored(rel) {
        return false;
    }
    let Some(set) = set else {
        return true;
    };
    if set.outputs.contains(rel) {
        return false;
    }
    let parent = rel.rsplit_once('/').map_or("", |(d, _)| d);
    rel == PROJECT_FILE || set.reads.contains(rel) || set.dirs.contains(parent)
}

/// Builds, then rebuilds on every relevant change until interrupted
/// (`crate::exec::interrupt`). Errors from builds are reported, not
/// returned: only a watcher that cannot start is an error.
pub fn watch(
    root: &Utf8Path,
    opts: &WatchOptions,
    report: &(dyn Fn(WatchEvent<'_>) + Sync),
) -> Result<()> {
    let mut build_opts = opts.build.clone();
    build_opts.want_watch_set = true;
    let (tx, rx) = mpsc::channel::<DebounceEventResult>();
    let mut debouncer = new_debouncer(opts.debounce, None, tx).map_err(|e| Error::Io {
        action: "watch",
        path: root.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut watched: HashSet<Utf8PathBuf> = HashSet::default();
    let mut session = Session::default();
    let own = own_output_files();
    let mut last_set: Option<WatchSet> = None;
    // what triggers the next build, and every path seen to change since
    // the last one (relevant or not: an output edited by hand must still
    // be checked when something else triggers the build)
    let mut changes: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::default();
    let mut rescan = false;
    // the first build, and any build after new directories were watched,
    // checks every file: a change made before a watch existed has no event
    let mut verify = false;
    loop {
        report(WatchEvent::Rebuilding {
            changes: &changes,
            rescan,
            verify,
        });
        let started = Instant::now();
        let hint = (!rescan && !verify && !changes.is_empty()).then_some(&seen);
        let result = build_in(root, &build_opts, &mut session, hint, &|e| {
            report(WatchEvent::Build(e))
        });
        report(WatchEvent::Built {
            result: &result,
            elapsed: started.elapsed(),
            verify,
        });
        let mut want: Vec<Utf8PathBuf> = vec![root.to_owned()];
        let set = match &result {
            Ok(rep) => rep.watch_set.clone(),
            Err(e) => {
                // the file with the error, so that fixing it is seen
                if let Some(dir) = error_file(e).and_then(|f| f.parent().map(|d| d.to_owned())) {
                    want.push(if dir.is_absolute() {
                        dir
                    } else {
                        root.join(dir)
                    });
                }
                None
            }
        };
        if let Some(s) = &set {
            for p in s.reads.iter().chain(&s.outputs) {
                let dir = Utf8Path::new(p).parent().unwrap_or(Utf8Path::new(""));
                want.push(root.join(dir));
            }
            want.extend(s.dirs.iter().map(|d| root.join(d)));
        }
        let mut added = false;
        for dir in want {
            let dir = Utf8PathBuf::from(dir.as_str().trim_end_matches('/'));
            if !watched.contains(&dir) && dir.is_dir() {
                match debouncer.watch(dir.as_std_path(), RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        watched.insert(dir);
                        added = true;
                    }
                    Err(e) => report(WatchEvent::Warning(format!("cannot watch `{dir}`: {e}"))),
                }
            }
        }
        if set.is_some() || last_set.is_none() {
            last_set = set;
        }
        let failed = result.is_err();
        if crate::exec::interrupted() {
            return Ok(());
        }
        changes.clear();
        seen.clear();
        rescan = false;
        verify = added;
        if verify {
            continue;
        }
        report(WatchEvent::Idle {
            dirs: watched.len(),
        });

        // wait for relevant changes; take everything queued with them
        let relevant_set = if failed { None } else { last_set.as_ref() };
        loop {
            let got = if changes.is_empty() && !rescan {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(r) => Some(r),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                }
            } else {
                rx.try_recv().ok()
            };
            match got {
                Some(Ok(events)) => {
                    for ev in events {
                        if ev.need_rescan() {
                            rescan = true;
                        }
                        if matches!(ev.kind, EventKind::Access(_)) {
                            continue;
                        }
                        for p in &ev.paths {
                            let Some(rel) = relative(root, p) else {
                                continue;
                            };
                            if is_ignored(&rel) || is_own(&own, p) || !seen.insert(rel.clone()) {
                                continue;
                            }
                            if is_relevant(&rel, relevant_set) {
                                changes.push(rel);
                            }
                        }
                    }
                }
                Some(Err(errors)) => {
                    for e in errors {
                        report(WatchEvent::Warning(format!("file watcher: {e}")));
                    }
                    rescan = true;
                }
                None if !changes.is_empty() || rescan => break,
                None => {}
            }
            if crate::exec::interrupted() {
                return Ok(());
            }
        }
        changes.sort();
    }
}

/// The files this process's stdout and stderr are redirected to
/// (`mkt watch 2> log.txt`): writing to them must not count as a change,
/// or a watcher whose last build failed would rebuild for its own report.
fn own_output_files() -> Vec<(u64, u64)> {
    [1, 2]
        .into_iter()
        .filter_map(|fd| {
            // SAFETY: fstat on a descriptor number; `st` is plain data it fills.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
            (ok && st.st_mode & libc::S_IFMT == libc::S_IFREG).then_some((st.st_dev, st.st_ino))
        })
        .collect()
}

fn is_own(own: &[(u64, u64)], path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    !own.is_empty()
        && std::fs::symlink_metadata(path).is_ok_and(|m| own.contains(&(m.dev(), m.ino())))
}

fn relative(root: &Utf8Path, p: &std::path::Path) -> Option<String> {
    let p = Utf8Path::from_path(p)?;
    let rel = p.strip_prefix(root).ok()?;
    Some(rel.as_str().to_string())
}

/// The file an error is about, when it names one.
fn error_file(e: &Error) -> Option<&Utf8Path> {
    match e {
        Error::Invalid { loc, .. } => Some(&loc.file),
        Error::InvalidFile { path, .. } => Some(path),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> WatchSet {
        let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect();
        WatchSet {
            reads: s(&["prompts.toml", "t/a.md", "docs/x.md"]),
            outputs: s(&["out/a.md"]),
            dirs: s(&["docs", ""]),
        }
    }

    #[test]
    fn editor_temp_files_and_the_store_are_ignored() {
        for p in [
            ".mkt/state",
            ".mkt",
            "t/.a.md.swp",
            "t/a.md~",
            "t/.#a.md",
            "t/4913",
            "docs/#x.md#",
            "out/.mkt-tmp-abc",
        ] {
            assert!(is_ignored(p), "{p}");
            assert!(!is_relevant(p, None), "{p}");
        }
        assert!(!is_ignored("t/a.md"));
    }

    #[test]
    fn only_what_the_build_depends_on_is_relevant() {
        let s = set();
        assert!(is_relevant("prompts.toml", Some(&s)));
        assert!(is_relevant("t/a.md", Some(&s)));
        // a new file in a directory a glob lists
        assert!(is_relevant("docs/new.md", Some(&s)));
        assert!(is_relevant("top.md", Some(&s)), "the root is globbed here");
        // a file nothing reads, and mkt's own output
        assert!(!is_relevant("t/b.md", Some(&s)));
        assert!(!is_relevant("out/a.md", Some(&s)));
        // after a failed build anything in a watched directory counts
        assert!(is_relevant("t/b.md", None));
    }
}
