//! `mkt clean`: removes output files that mkt wrote and nobody changed.
//!
//! The state's target records say which files mkt wrote and with what
//! content (`output`, `output_digest`). A file is removed only when its
//! bytes still hash to the recorded digest: a file the user edited, one
//! whose last run failed (mkt then vouches for no content), or a path
//! that is not a regular file inside the project is left alone and
//! reported. Plain `clean` keeps the records and the store, so the next
//! `mkt build` restores every output from the store without a model call.
//!
//! `--stale` (ninja's `-t cleandead`) only looks at records whose node is
//! no longer in the graph: a removed target, a deleted `foreach` file. It
//! removes their outputs (unless a current node now writes the same path)
//! and drops the records, which lets `mkt gc` collect their runs.
//! `Graph::leftovers` counts such outputs for `mkt build`'s summary.
//!
//! Both take the project lock (a build could be writing the same files);
//! `--dry-run` takes none and changes nothing.

use crate::error::Result;
use crate::files::ProjectFiles;
use crate::hash::Digest;
use crate::provenance::Snapshot;
use crate::state::{StateFiles, TargetRecord};
use crate::store::ObjectStore;
use camino::Utf8Path;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

#[derive(Debug, Clone, Default)]
pub struct CleanOptions {
    /// Only outputs of targets no longer in the graph.
    pub stale: bool,
    pub dry_run: bool,
    pub wait_for_lock: bool,
}

/// Why an output was left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftAlone {
    /// Its content differs from what mkt wrote.
    Edited,
    /// Its last run failed: mkt has no record of its content.
    NotRecorded,
    /// A symlink, a directory, or a path leading out of the project.
    NotAFile,
}

#[derive(Debug, Clone, Default)]
pub struct CleanReport {
    /// Output paths removed (or, with `--dry-run`, that would be), sorted.
    pub removed: Vec<String>,
    pub left_alone: Vec<(String, LeftAlone)>,
    /// `--stale`: records dropped from the state.
    pub records_dropped: usize,
    /// Temp files of interrupted writes beside the outputs, removed.
    pub temps: Vec<String>,
}

/// Removes outputs as the module docs say. `on_wait` is called once if
/// another mkt holds the lock.
pub fn clean(root: &Utf8Path, opts: &CleanOptions, on_wait: &dyn Fn()) -> Result<CleanReport> {
    let started = std::time::SystemTime::now();
    let (store, _lock) = ObjectStore::open_for(root, opts.dry_run, opts.wait_for_lock, on_wait)?;
    let (mut state_files, mut state) = StateFiles::load(store.dir());
    // (record key, is a current output path)
    let mut candidates: Vec<(String, bool)> = Vec::new();
    if opts.stale {
        let snap = Snapshot::load(root)?;
        let keys: HashSet<&str> = snap.graph.nodes.iter().map(|n| n.key.as_str()).collect();
        let outputs: HashSet<&str> = snap.graph.nodes.iter().map(|n| n.output.as_str()).collect();
        for (k, rec) in &state.targets {
            if !keys.contains(k.as_str()) {
                candidates.push((k.clone(), outputs.contains(rec.output.as_str())));
            }
        }
    } else {
        candidates.extend(state.targets.keys().map(|k| (k.clone(), false)));
    }
    candidates.sort();

    let files = ProjectFiles::new(root, HashMap::default());
    let mut rep = CleanReport::default();
    for (key, now_current) in &candidates {
        let rec = &state.targets[key];
        if *now_current {
            continue; // a node of the current graph writes this path now
        }
        match check(&files, root, rec) {
            Check::Ours => rep.removed.push(rec.output.clone()),
            Check::Missing => {}
            Check::Left(why) => rep.left_alone.push((rec.output.clone(), why)),
        }
    }
    rep.removed.sort();
    rep.removed.dedup();
    rep.left_alone.sort_by(|a, b| a.0.cmp(&b.0));
    rep.left_alone.dedup();
    if opts.stale {
        rep.records_dropped = candidates.len();
    }
    let outputs = state.targets.values().map(|r| r.output.as_str());
    rep.temps = crate::store::clear_temps_beside(root, outputs, started, opts.dry_run);
    if opts.dry_run {
        return Ok(rep);
    }
    for out in &rep.removed {
        let p = root.join(out);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::error::Error::io("remove", p, e)),
        }
    }
    if opts.stale && !candidates.is_empty() {
        for (k, _) in &candidates {
            state.targets.remove(k);
        }
        state_files.snapshot(&state)?;
    }
    Ok(rep)
}

enum Check {
    Ours,
    Missing,
    Left(LeftAlone),
}

fn check(files: &ProjectFiles, root: &Utf8Path, rec: &TargetRecord) -> Check {
    if files.check_writable(&rec.output).is_err() {
        return Check::Left(LeftAlone::NotAFile);
    }
    let path = root.join(&rec.output);
    match std::fs::symlink_metadata(&path) {
        Err(_) => return Check::Missing,
        Ok(m) if !m.is_file() => return Check::Left(LeftAlone::NotAFile),
        Ok(_) => {}
    }
    if rec.failed {
        return Check::Left(LeftAlone::NotRecorded);
    }
    match std::fs::read(&path) {
        Ok(bytes) if Digest::of(&bytes) == rec.output_digest => Check::Ours,
        Ok(_) => Check::Left(LeftAlone::Edited),
        Err(_) => Check::Missing,
    }
}
