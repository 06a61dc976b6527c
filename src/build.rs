//! The build engine: decides per node whether it is fresh (see `state.rs`),
//! and runs the stale ones through compilation and processing on a pool of
//! `-j` worker threads, in dependency order, with early cutoff.
//!
//! Per stale node a worker: restores the output from the store when only
//! the output file is missing or edited; otherwise renders the compiled
//! prompt, computes the InputBundleHash, serves the action cache's result
//! when there is one (the local store's, else the remote cache's, see
//! `remote.rs`), and only then calls the model. A failed run is recorded in
//! `runs/` but never in the action cache; a successful one is queued for
//! upload to the remote, and the build waits for the queue before it ends.
//!
//! Before any of that, a build of everything consults the no-op stamp
//! (`stamp.rs`): if no file changed it is done; if only inputs or outputs
//! changed, the graph comes from its cache and nodes that touch none of
//! the changes are taken as recorded. Anything else gets the full check.
//! At the end the state is saved first, then the history, one sync, and
//! the new stamp last, so the stamp never vouches for what is not on disk.
//! (That one sync waits for all of a build's writes: 120-130 ms at 10,000
//! targets since the store packs its files, 0.5-0.8 s before. Flushing
//! every second in the background while models ran, to leave it less,
//! made full builds 3-4 s slower on a project whose files had just been
//! written: a build's reads of cold file-system metadata then queued
//! behind the flushes, 17-28 ms each.)

use crate::config::PROJECT_FILE;
use crate::config::Project;
use crate::error::Result;
use crate::files::ProjectFiles;
use crate::graph::{Graph, Node, analyse_project};
use crate::hash::{Digest, InputBundleHash};
use crate::history::{HistoryEntry, RunKind};
use crate::manifest::{
    self, FileDigest, InputRecord, ModelRecord, OutputRecord, RunManifest, RunStatus, Timing,
    UpstreamRecord, Usage,
};
use crate::stamp::{Changes, EntryKind, NoopStamp, StampEntry};
use crate::state::{
    DepKind, DirtyReason, FileStat, Fingerprint, StatEntry, State, StateDelta, StateFiles,
    TargetRecord, TargetRecords, dirty_reason, is_racy, now_ns,
};
use crate::store::STORE_DIR;
use crate::store::{AcRead, ObjectRead, ObjectStore};
use crate::template::{RenderInput, compile};
use camino::Utf8Path;
use minijinja::Value;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub targets: Vec<String>,
    pub jobs: usize,
    pub force: bool,
    pub dry_run: bool,
    pub keep_going: bool,
    pub wait_for_lock: bool,
    /// Report the files and directories the build depends on
    /// ([`BuildReport::watch_set`]), for `mkt watch`.
    pub want_watch_set: bool,
    /// Use the remote cache, when the project or `MKT_REMOTE_CACHE` names
    /// one (`--remote-cache off` clears it).
    pub remote_cache: bool,
    /// `mkt cache pull`: never call a model; a target neither cache has
    /// is skipped.
    pub fetch_only: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            targets: Vec::new(),
            jobs: 16,
            force: false,
            dry_run: false,
            keep_going: false,
            wait_for_lock: true,
            want_watch_set: false,
            remote_cache: true,
            fetch_only: false,
        }
    }
}

/// What happened to one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Up to date: nothing done.
    Fresh,
    /// Output file restored from the store; no compilation, no model call.
    Restored,
    /// Served from the action cache (the local one, or with `remote` the
    /// remote cache): compiled, but no model call.
    Cached {
        run_id: String,
        remote: bool,
    },
    /// The model was called.
    Ran {
        run_id: String,
    },
    Failed {
        error: String,
    },
    /// Not attempted because something it needs failed.
    Skipped {
        because: String,
    },
    /// `--dry-run`: would be rebuilt.
    WouldRun,
}

/// Progress as the engine reports it; the CLI decides what to print.
#[derive(Debug)]
pub enum Event<'a> {
    WaitingForLock,
    /// Selected node count, known after analysis.
    Planned {
        total: usize,
    },
    Started {
        key: &'a str,
        reason: &'a DirtyReason,
    },
    Finished {
        key: &'a str,
        outcome: &'a Outcome,
        reason: Option<&'a DirtyReason>,
        done: usize,
        total: usize,
    },
    Warning(String),
}

#[derive(Debug, Default, Clone)]
pub struct BuildReport {
    pub total: usize,
    pub fresh: usize,
    pub restored: usize,
    pub cached: usize,
    /// Of the `cached` targets, how many came from the remote cache.
    pub remote: usize,
    pub ran: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Stopped by Ctrl-C or SIGTERM (what finished is saved).
    pub interrupted: bool,
    /// `--dry-run`: each node that would be rebuilt and why.
    pub would_run: Vec<(String, DirtyReason)>,
    /// With [`BuildOptions::want_watch_set`]: what the build depends on;
    /// `None` from a [`build_in`] whose session graph did not change (what
    /// the last build reported still holds).
    pub watch_set: Option<WatchSet>,
    /// Tokens the model calls of this build used, as the providers
    /// reported them (failed calls included), and their cost in US dollars
    /// where the model has prices.
    pub spent: Spend,
    /// What the runs served from the action cache had cost, priced with
    /// the current prices.
    pub saved: Spend,
    /// Output files of targets no longer in the graph that are still on
    /// disk (`mkt clean --stale` removes them). Counted only on builds that
    /// analysed the project, never on the no-op or cached-graph paths.
    pub stale_outputs: usize,
    /// Wall time of each phase of the build, in order (`mkt build
    /// --timings`): where an incremental build's milliseconds go.
    pub phases: Phases,
}

impl BuildReport {
    /// Counts one node's outcome.
    pub fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Fresh => self.fresh += 1,
            Outcome::Restored => self.restored += 1,
            Outcome::Cached { remote, .. } => {
                self.cached += 1;
                self.remote += usize::from(*remote);
            }
            Outcome::Ran { .. } => self.ran += 1,
            Outcome::Failed { .. } => self.failed += 1,
            Outcome::Skipped { .. } => self.skipped += 1,
            Outcome::WouldRun => {}
        }
    }
}

/// Phase timings: each entry is a phase's name and how long it took.
#[derive(Debug, Clone, Default)]
pub struct Phases {
    pub done: Vec<(&'static str, std::time::Duration)>,
    last: Option<Instant>,
}

impl Phases {
    fn start() -> Phases {
        Phases {
            done: Vec::new(),
            last: Some(Instant::now()),
        }
    }

    /// Ends the phase running since the last mark, naming it `name`.
    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        if let Some(last) = self.last.replace(now) {
            self.done.push((name, now - last));
        }
    }
}

/// The project paths a build depends on: a change to anything else cannot
/// change what it does (see `watch.rs`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WatchSet {
    /// Files it reads: `prompts.toml`, templates, partials, verbatim files,
    /// inputs, `foreach` files.
    pub reads: HashSet<String>,
    /// Files it writes (a change to one is repaired by the next build, but
    /// mkt's own writes must not trigger one).
    pub outputs: HashSet<String>,
    /// Directories globs list: a file created or removed in one can add or
    /// remove an input or a `foreach` node.
    pub dirs: HashSet<String>,
}

impl WatchSet {
    fn from_stamp(stamp: &NoopStamp) -> WatchSet {
        let mut w = WatchSet::default();
        for e in stamp.entries() {
            let set = match e.kind {
                EntryKind::Output => &mut w.outputs,
                EntryKind::Dir => &mut w.dirs,
                _ => &mut w.reads,
            };
            set.insert(e.path.to_string());
        }
        w
    }
}

/// US dollars with enough digits to show a cheap call: `$1.23`,
/// `$0.0042`, `$0.000015`.
pub fn format_usd(v: f64) -> String {
    if v >= 1.0 || v == 0.0 {
        format!("${v:.2}")
    } else {
        // four significant digits at most, trailing zeros dropped
        let digits = (-v.log10()).floor() as usize + 4;
        let t = format!("{v:.digits$}");
        let t = t.trim_end_matches('0');
        format!("${t}")
    }
}

/// Tokens (input + output) and their cost.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Spend {
    pub tokens: u64,
    pub cost_usd: f64,
}

impl Spend {
    fn add(&mut self, usage: Option<&Usage>, cost: Option<f64>) {
        if let Some(u) = usage {
            self.tokens += u.input_tokens + u.output_tokens;
        }
        self.cost_usd += cost.unwrap_or(0.0);
    }
}

impl BuildReport {
    pub fn success(&self) -> bool {
        self.failed == 0 && self.skipped == 0
    }
}

#[derive(Clone)]
struct Done {
    /// Up to date without any work (the output did not change).
    fresh: bool,
    output_digest: Digest,
    /// The run that made the output; empty for a fresh node (see
    /// [`Done::fresh`]).
    run_id: String,
    /// For a node that failed or was skipped: why its dependants cannot run.
    blame: Option<Blame>,
    /// `--dry-run`: would run, so its output may still change.
    pending: bool,
}

impl Done {
    fn ok(output_digest: Digest, run_id: String) -> Done {
        Done {
            fresh: false,
            output_digest,
            run_id,
            blame: None,
            pending: false,
        }
    }

    /// Up to date as recorded: its run id is its record's (not copied
    /// here, as most nodes of an incremental build are fresh and no one
    /// asks).
    fn fresh(output_digest: Digest) -> Done {
        Done {
            fresh: true,
            ..Done::ok(output_digest, String::new())
        }
    }

    fn failed(blame: String) -> Done {
        Done::blamed(Blame::Failed(blame))
    }

    /// Not run, for the reason its skip gave.
    fn not_run(why: &str) -> Done {
        Done::blamed(Blame::NotRun(why.to_string()))
    }

    fn blamed(blame: Blame) -> Done {
        Done {
            fresh: false,
            output_digest: Digest::default(),
            run_id: String::new(),
            blame: Some(blame),
            pending: false,
        }
    }
}

/// Why the dependants of a node that did not build are skipped.
#[derive(Clone)]
enum Blame {
    /// This target failed (the node itself, or one upstream of it).
    Failed(String),
    /// It was not run, for this reason (the build stopped before it:
    /// [`INTERRUPTED`], [`STOPPED`]; or `mkt cache pull` found it in no
    /// cache), which its dependants give too.
    NotRun(String),
}

impl Blame {
    fn because(&self) -> String {
        match self {
            Blame::Failed(key) => format!("`{key}` failed"),
            Blame::NotRun(why) => why.clone(),
        }
    }
}

/// The scheduler's bookkeeping: what each node came to, what is ready to
/// go, the counts for the summary.
struct Progress<'g> {
    graph: &'g Graph,
    downstream: Vec<Vec<usize>>,
    /// Unfinished upstream nodes of each node.
    waiting: Vec<usize>,
    ready: VecDeque<usize>,
    results: Vec<Option<Done>>,
    reasons: HashMap<usize, DirtyReason>,
    rep: BuildReport,
    done: usize,
}

impl<'g> Progress<'g> {
    fn new(graph: &'g Graph, selected: &[bool], total: usize) -> Progress<'g> {
        let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); graph.nodes.len()];
        let mut waiting: Vec<usize> = vec![0; graph.nodes.len()];
        for &i in &graph.order {
            if selected[i] {
                for u in graph.nodes[i].upstream_nodes() {
                    downstream[u].push(i);
                    waiting[i] += 1;
                }
            }
        }
        let ready = graph
            .order
            .iter()
            .copied()
            .filter(|&i| selected[i] && waiting[i] == 0)
            .collect();
        Progress {
            graph,
            downstream,
            waiting,
            ready,
            results: vec![None; graph.nodes.len()],
            reasons: HashMap::default(),
            rep: BuildReport {
                total,
                ..Default::default()
            },
            done: 0,
        }
    }

    /// The report, the rest dropped (it is a few megabytes at 10,000
    /// nodes, not to be held through the saves at the end of a build).
    fn into_report(self) -> BuildReport {
        self.rep
    }

    /// Records what node `i` came to, reports it, and readies the nodes
    /// that were waiting only for it.
    fn complete(
        &mut self,
        i: usize,
        outcome: Outcome,
        d: Done,
        report: &(dyn Fn(Event<'_>) + Sync),
    ) {
        self.rep.count(&outcome);
        self.results[i] = Some(d);
        self.done += 1;
        report(Event::Finished {
            key: &self.graph.nodes[i].key,
            outcome: &outcome,
            reason: self.reasons.get(&i),
            done: self.done,
            total: self.rep.total,
        });
        for &dn in &self.downstream[i] {
            self.waiting[dn] -= 1;
            if self.waiting[dn] == 0 {
                self.ready.push_back(dn);
            }
        }
    }
}

struct Job {
    node: usize,
    reason: DirtyReason,
    fingerprint: Fingerprint,
    upstream: Vec<UpstreamRecord>,
}

struct JobResult {
    node: usize,
    outcome: Outcome,
    record: Option<TargetRecord>,
    warnings: Vec<String>,
    history: Option<String>,
    /// Usage and cost of the model call made (`spent`) or of the run
    /// served from the action cache instead (`saved`).
    spent: Option<(Usage, Option<f64>)>,
    saved: Option<(Usage, Option<f64>)>,
}

struct Ctx<'a> {
    src: Sources<'a>,
    old: &'a TargetRecords,
    /// `--force`: which nodes skip the action cache.
    forced: Vec<bool>,
    remote: Option<&'a crate::remote::Remote>,
    fetch_only: bool,
    /// Set by the first failure unless `--keep-going` ([`Ctx::failed`]):
    /// no node is dispatched after it, and the jobs queued before it are
    /// not started (the scheduler may have queued a whole layer of
    /// independent targets before the failure).
    stopping: std::sync::atomic::AtomicBool,
    keep_going: bool,
}

/// Why a skipped node did not run, when the build stopped.
const INTERRUPTED: &str = "the build was interrupted";
const STOPPED: &str = "the build stopped after a failure (use `--keep-going` to go on)";

impl Ctx<'_> {
    /// Notes a failure (in a worker, as soon as its job ends, so that the
    /// job it takes next already sees it): the build stops unless
    /// `--keep-going`.
    fn failed(&self) {
        if !self.keep_going {
            self.stopping.store(true, Ordering::SeqCst);
        }
    }

    /// Why a job should not start now, if the build is stopping.
    fn why_stopped(&self) -> Option<&'static str> {
        if crate::exec::interrupted() {
            Some(INTERRUPTED)
        } else if self.stopping.load(Ordering::SeqCst) {
            Some(STOPPED)
        } else {
            None
        }
    }
}

/// What a long-running caller (`mkt watch`) keeps between builds, so that
/// a rebuild costs what its changes cost rather than what the project's
/// size costs: the last no-op stamp, the project, the state and the graph,
/// as the last build left them on disk. A session is dropped as soon as
/// any other process writes the store (the stamp or the state files no
/// longer have the stat this session left them with): it then reloads
/// from disk, as a new process would.
#[derive(Default)]
pub struct Session {
    stamp: Option<NoopStamp>,
    project: Option<Project>,
    state: Option<(StateFiles, State)>,
    /// The graph the stamp's structure entries describe.
    graph: Option<Graph>,
    /// The stat of `.mkt/noop`, `state` and `state.log` after our last save.
    disk: Option<[Option<FileStat>; 3]>,
    /// Made for one build only (see [`Session::one_shot`]).
    one_shot: bool,
}

impl Session {
    /// A session for a single build, whose caller drops what it keeps: the
    /// build may then skip reading what only a later build would use.
    pub fn one_shot() -> Session {
        Session {
            one_shot: true,
            ..Session::default()
        }
    }

    /// Keeps `stamp` for the next build. A session kept between builds
    /// (`mkt watch`) holds a copy, not a mapping of a file another process
    /// may replace.
    fn keep_stamp(&mut self, mut stamp: Option<NoopStamp>) {
        if !self.one_shot {
            stamp.iter_mut().for_each(NoopStamp::detach);
        }
        self.stamp = stamp;
    }

    fn disk_now(root: &Utf8Path) -> [Option<FileStat>; 3] {
        let dir = root.join(STORE_DIR);
        [
            NOOP_STAMP_FILE,
            crate::layout::STATE,
            crate::layout::STATE_LOG,
        ]
        .map(|f| {
            std::fs::symlink_metadata(dir.join(f))
                .ok()
                .map(|m| FileStat::from_metadata(&m))
        })
    }
}

/// The no-op stamp (`stamp.rs`) and the graph cache (`graph.rs`), in `.mkt/`.
const NOOP_STAMP_FILE: &str = crate::layout::NOOP_STAMP;
const GRAPH_CACHE_FILE: &str = crate::layout::GRAPH_CACHE;

/// Builds the selected targets of the project at `root` (module docs).
pub fn build(
    root: &Utf8Path,
    opts: &BuildOptions,
    report: &(dyn Fn(Event<'_>) + Sync),
) -> Result<BuildReport> {
    build_in(root, opts, &mut Session::one_shot(), None, report)
}

/// [`build`], reusing what `session` kept from the last build in this
/// process. `changed`, when given, holds every project path that can have
/// changed since that build (a file watcher's report): then only those
/// are checked against the no-op stamp.
pub fn build_in(
    root: &Utf8Path,
    opts: &BuildOptions,
    session: &mut Session,
    changed: Option<&HashSet<String>>,
    report: &(dyn Fn(Event<'_>) + Sync),
) -> Result<BuildReport> {
    // (before anything of the store is read, or written: the stamp's
    // fast path writes it too)
    crate::store::check_store_dir(root)?;
    // what the store's stamp and state were when this build looked at them
    let disk_seen = Session::disk_now(root);
    if session.disk.is_some() && session.disk != Some(disk_seen) {
        // someone else wrote the store
        *session = Session {
            one_shot: session.one_shot,
            ..Session::default()
        };
    }
    let hint = changed.filter(|_| session.stamp.is_some());
    // The no-op fast path: one lstat per file (see `stamp.rs`). When only
    // inputs or outputs changed, the stamp also vouches for every file it
    // did not see change, and the graph can come from its cache.
    crate::exec::begin_build();
    let mut phases = Phases::start();
    let noop_path = root.join(STORE_DIR).join(NOOP_STAMP_FILE);
    let graph_path = root.join(STORE_DIR).join(GRAPH_CACHE_FILE);
    let mut prior: Option<(Arc<NoopStamp>, HashSet<String>)> = None;
    // A stamp that saw the graph's shape change vouches for no node, only
    // for the files it did not see change: their stat and digest, just
    // checked, spare the analysis and the freshness check a second and
    // third `lstat` of every file (a third of a 10,000-target build after
    // an edit of `prompts.toml`).
    let mut verified: Option<(Arc<NoopStamp>, HashSet<String>)> = None;
    let mut checked_at = 0;
    let mut stamp_from_session = false;
    // (named targets are a part of what the stamp covers: it vouches for
    // them as for the whole, though only a build of everything answers
    // from it at once or writes one)
    if !opts.force {
        let kept = session.stamp.take();
        stamp_from_session = kept.is_some();
        let stamp = kept.or_else(|| {
            crate::store::map_replaced_writable(&noop_path)
                .ok()
                .and_then(NoopStamp::decode)
        });
        phases.mark("read the no-op stamp");
        if let (Some(mut stamp), Some(dir)) = (stamp, crate::stamp::Root::open(root)) {
            checked_at = now_ns(); // before any stat: see the racy rule
            let Changes { structural, paths } = stamp.changes(&dir, hint);
            phases.mark("stat the stamp's files");
            if paths.is_empty() && opts.targets.is_empty() {
                // Racy entries were just verified by content; once they have
                // aged past the window they need not be read again.
                if !opts.dry_run && stamp.age(checked_at) {
                    let _ = crate::store::replace_stamp(&noop_path, &stamp);
                    session.disk = Some(Session::disk_now(root));
                }
                let n = stamp.nodes as usize;
                report(Event::Planned { total: n });
                let watch_set = opts.want_watch_set.then(|| WatchSet::from_stamp(&stamp));
                session.keep_stamp(Some(stamp));
                phases.mark("finish");
                return Ok(BuildReport {
                    total: n,
                    fresh: n,
                    watch_set,
                    phases,
                    ..Default::default()
                });
            }
            if structural {
                verified = Some((Arc::new(stamp), paths));
            } else {
                prior = Some((Arc::new(stamp), paths));
            }
        }
    }
    // (of the file itself, through a symlink: as the stamp checks it)
    let project_stat = std::fs::metadata(root.join(PROJECT_FILE))
        .ok()
        .map(|m| (FileStat::from_metadata(&m), now_ns()));
    let store = if opts.dry_run {
        ObjectStore::open_read_only(root)?
    } else {
        ObjectStore::open(root)?
    };
    let cache_path = store.dir().join(crate::layout::PROJECT_CACHE);
    let _lock = if opts.dry_run {
        None
    } else {
        Some(store.lock(opts.wait_for_lock, &|| report(Event::WaitingForLock))?)
    };
    if !opts.dry_run {
        store.begin_writes()?;
    }
    // Another build that took the lock after this one read the stamp may
    // have changed outputs and records since: what the stamp saw change
    // then no longer covers what did, and nothing it said can be used.
    if (prior.is_some() || verified.is_some() || session.disk.is_some())
        && Session::disk_now(root) != disk_seen
    {
        prior = None;
        verified = None;
        stamp_from_session = false;
        *session = Session {
            one_shot: session.one_shot,
            ..Session::default()
        };
    }
    // with a stamp that saw no structural change, `prompts.toml` is as the
    // session's project was read from, and the session's graph still holds
    let session_project = session.project.take().filter(|_| prior.is_some());
    let session_graph = session.graph.take().filter(|_| prior.is_some());
    let session_state = session.state.take();
    // the state and stamp this process saved last agree on every file
    let in_session = stamp_from_session && session_state.is_some();
    let graph_from_session = session_graph.is_some();
    // A one-shot incremental build with a stamp that vouches for every
    // file reads only the state's target records, as it asks for them
    // (`StateFiles::load_records`); should its graph not come from the
    // cache after all, the rest is read then.
    let records_only = session.one_shot && prior.is_some() && session_state.is_none();
    phases.mark("open the store and lock");
    // The state, the project and the graph cached for it are independent:
    // read them on both cores at once.
    let (((state_files, state, old_targets), cached), loaded) = rayon::join(
        || {
            rayon::join(
                || {
                    let (files, mut st) = match session_state {
                        Some(kept) => kept,
                        None if records_only => {
                            let (files, records) = StateFiles::load_records(store.dir());
                            return (files, State::default(), records);
                        }
                        None => StateFiles::load(store.dir()),
                    };
                    let records = std::mem::take(&mut st.targets).into();
                    (files, st, records)
                },
                || {
                    session_graph.or_else(|| {
                        let (stamp, _) = prior.as_ref()?;
                        let bytes = crate::store::map_replaced(&graph_path).ok()?;
                        Graph::decode(&bytes, &stamp.structure_key())
                    })
                },
            )
        },
        || match session_project {
            Some(p) => Ok((p, None)),
            None => Project::load_cached(root, &cache_path),
        },
    );
    let (project, new_cache) = loaded?;
    phases.mark("read the project, state and graph");
    let cached = cached.filter(|g| g.fits(&project));
    let (mut state_files, state, old_targets) = match (records_only, &cached) {
        (true, None) => {
            let (files, mut st) = StateFiles::load(store.dir());
            let records = std::mem::take(&mut st.targets).into();
            (files, st, records)
        }
        _ => (state_files, state, old_targets),
    };
    // what was read of the state: the target records only, or everything
    let records_only = records_only && cached.is_some();
    // The stamp's word for a node (as its record says) holds only for the
    // records its build saved: a journal cut short or removed leaves older
    // ones, each consistent alone (`StateFiles::tip`).
    let records_vouched = prior
        .as_ref()
        .is_some_and(|(stamp, _)| stamp.state_tip() == state_files.tip());
    if let (Some(bytes), false) = (&new_cache, opts.dry_run) {
        store.write_cache(&cache_path, bytes)?;
    }
    // (an edit's build that reads only records has nothing large to free:
    // a trim would walk the heap for nothing, about a millisecond)
    if !in_session && !records_only {
        release_free_memory(); // a first build's TOML parse tree is gone
    }
    let State {
        files: old_files,
        analysis: old_analysis,
        ..
    } = state;
    let mut files = ProjectFiles::new(root, old_files);
    match (&prior, verified) {
        (Some((stamp, changed)), _) => files.vouch(Arc::clone(stamp), changed.clone(), checked_at),
        (None, Some((stamp, changed))) => files.vouch(stamp, changed, checked_at),
        (None, None) => {}
    }
    let graph_from_cache = cached.is_some();
    let mut graph = match cached {
        Some(g) => g,
        None => analyse_project(&project, &files, &old_analysis)?,
    };
    let (selected, named) = graph.select(&project, &opts.targets)?;
    let total = selected.iter().filter(|s| **s).count();
    // A cached graph means the structure did not change since the last
    // full analysis, which counted these already: skip the work then.
    let stale_outputs = if graph_from_cache {
        0
    } else {
        crate::clean::leftovers(root, &graph, &old_targets)
    };
    if !graph_from_cache {
        for w in crate::graph::empty_foreach(&project, &graph) {
            report(Event::Warning(w));
        }
    }
    phases.mark("analyse");
    report(Event::Planned { total });

    // Stat (and where needed hash) every file the selected nodes read or
    // write, in parallel: on a no-op build this is nearly all the work.
    // With a stamp that vouches for the rest, only what it saw change.
    let mut paths: Vec<&str> = Vec::new();
    match (&prior, graph_from_cache) {
        (Some((_, changed)), true) => paths.extend(changed.iter().map(String::as_str)),
        _ => {
            let mut seen_paths = HashSet::default();
            for (i, n) in graph.nodes.iter().enumerate() {
                if selected[i] {
                    for (_, p) in n.source_files() {
                        if seen_paths.insert(p) {
                            paths.push(p);
                        }
                    }
                    paths.push(&n.output);
                }
            }
        }
    }
    files.digest_all(&paths);
    phases.mark("stat and hash");

    // The remote is opened only for builds that may run something (a dry
    // run writes nothing and asks no one).
    let remote = if opts.dry_run || !opts.remote_cache {
        None
    } else {
        match crate::remote::open_for(&project)? {
            Some(Err(warning)) => {
                report(Event::Warning(warning));
                None
            }
            opened => opened.and_then(|r| r.ok()),
        }
    };
    let ctx = Ctx {
        src: Sources {
            project: &project,
            graph: &graph,
            files: &files,
            store: &store,
        },
        old: &old_targets,
        forced: named.iter().map(|&n| n && opts.force).collect(),
        remote: remote.as_ref(),
        fetch_only: opts.fetch_only,
        stopping: Default::default(),
        keep_going: opts.keep_going,
    };
    let mut prog = Progress::new(&graph, &selected, total);
    // With a stamp that names what changed, the nodes that read or write
    // it go first: their model calls then run while the scheduler walks
    // the thousands of nodes nothing touched (at 10,000 that walk is 2.5 ms).
    if let Some((_, changed)) = &prior {
        use rayon::prelude::*;
        let touched: Vec<bool> = (prog.ready.make_contiguous().par_iter())
            .map(|&i| {
                let n = &graph.nodes[i];
                changed.contains(&n.output) || n.sources().any(|(_, p)| changed.contains(p))
            })
            .collect();
        let (first, rest): (Vec<_>, Vec<_>) =
            prog.ready.iter().zip(&touched).partition(|(_, t)| **t);
        prog.ready = first.into_iter().chain(rest).map(|(&i, _)| i).collect();
    }
    let mut new_records: HashMap<String, TargetRecord> = HashMap::default();
    let mut history = String::new();

    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (res_tx, res_rx) = mpsc::channel::<JobResult>();

    std::thread::scope(|scope| {
        let mut workers = 0usize;
        let mut in_flight = 0usize;
        loop {
            while let Some(i) = prog.ready.pop_front() {
                let node = &graph.nodes[i];
                if crate::exec::interrupted() {
                    let because = INTERRUPTED.to_string();
                    let d = Done::not_run(INTERRUPTED);
                    prog.complete(i, Outcome::Skipped { because }, d, report);
                    continue;
                }
                let blame = node
                    .upstream_nodes()
                    .filter_map(|u| prog.results[u].as_ref().and_then(|d| d.blame.as_ref()))
                    // a failure upstream says more than that the build stopped
                    .min_by_key(|b| matches!(b, Blame::NotRun(_)))
                    .cloned();
                if let Some(blame) = blame {
                    let because = blame.because();
                    let d = Done::blamed(blame);
                    prog.complete(i, Outcome::Skipped { because }, d, report);
                    continue;
                }
                if ctx.stopping.load(Ordering::SeqCst) {
                    let d = Done::not_run(STOPPED);
                    let because = STOPPED.to_string();
                    prog.complete(i, Outcome::Skipped { because }, d, report);
                    continue;
                }
                // With a stamp that lists what changed, a node that reads and
                // writes none of it, below only untouched nodes, is up to date
                // as recorded: the stamp was written after a complete,
                // successful build whose records were saved first, and
                // these are they.
                if let Some((_, changed)) = prior.as_ref().filter(|_| records_vouched)
                    && node
                        .upstream_nodes()
                        .all(|u| prog.results[u].as_ref().is_some_and(|d| d.fresh))
                    && !changed.contains(&node.output)
                    && !node.sources().any(|(_, p)| changed.contains(p))
                    && let Some((output_digest, false)) = old_targets.output(&node.key)
                {
                    let d = Done::fresh(output_digest);
                    prog.complete(i, Outcome::Fresh, d, report);
                    continue;
                }
                let deps = match graph.source_deps(node, &files) {
                    Ok(d) => d,
                    Err(e) => {
                        let d = Done::failed(node.key.clone());
                        prog.complete(
                            i,
                            Outcome::Failed {
                                error: e.to_string(),
                            },
                            d,
                            report,
                        );
                        ctx.failed();
                        continue;
                    }
                };
                let upstream: Vec<UpstreamRecord> = node
                    .upstream_nodes()
                    .map(|u| {
                        let d = prog.results[u].as_ref().expect("upstream finished first");
                        let target = &graph.nodes[u].key;
                        // a fresh node's run is the one its record names
                        let run_id = match old_targets.get(target) {
                            Some(rec) if d.fresh => rec.run_id.clone(),
                            _ => d.run_id.clone(),
                        };
                        UpstreamRecord {
                            target: target.clone(),
                            run_id,
                            output_digest: d.output_digest,
                        }
                    })
                    .collect();
                let fingerprint = Fingerprint {
                    config: node.config_digest,
                    model: node.model_digest,
                    deps,
                    upstream: upstream
                        .iter()
                        .map(|u| (u.target.clone(), u.output_digest))
                        .collect(),
                };
                let record = old_targets.get(&node.key);
                let out_digest = files.digest(&node.output).ok().flatten();
                let mut reason = if opts.force && named[i] {
                    Some(DirtyReason::Forced)
                } else {
                    dirty_reason(record, &fingerprint, &node.output, out_digest)
                };
                // a dry run cannot know what a stale upstream will produce
                if let Some(DirtyReason::UpstreamChanged { target }) = &reason
                    && node.upstream_nodes().any(|u| {
                        graph.nodes[u].key == *target
                            && prog.results[u].as_ref().is_some_and(|d| d.pending)
                    })
                {
                    let target = target.clone();
                    reason = Some(DirtyReason::UpstreamStale { target });
                }
                let Some(reason) = reason else {
                    let rec = record.expect("fresh implies a record");
                    let d = Done::fresh(rec.output_digest);
                    prog.complete(i, Outcome::Fresh, d, report);
                    continue;
                };
                prog.reasons.insert(i, reason.clone());
                if opts.dry_run {
                    prog.rep.would_run.push((node.key.clone(), reason.clone()));
                    // an output-only repair keeps the recorded digest; anything
                    // else may change it, which downstream must assume
                    let digest = match (&reason, record) {
                        (r, Some(rec)) if r.output_only() => rec.output_digest,
                        _ => Digest::default(),
                    };
                    let d = Done {
                        pending: !reason.output_only(),
                        ..Done::ok(digest, String::new())
                    };
                    prog.complete(i, Outcome::WouldRun, d, report);
                    continue;
                }
                report(Event::Started {
                    key: &node.key,
                    reason: &reason,
                });
                if workers < opts.jobs.max(1) && in_flight >= workers {
                    let rx = Arc::clone(&job_rx);
                    let tx = res_tx.clone();
                    let ctx = &ctx;
                    scope.spawn(move || {
                        loop {
                            let job = match rx.lock().unwrap().recv() {
                                Ok(j) => j,
                                Err(_) => return,
                            };
                            let r = run_job(ctx, job);
                            if matches!(r.outcome, Outcome::Failed { .. }) {
                                ctx.failed();
                            }
                            if tx.send(r).is_err() {
                                return;
                            }
                        }
                    });
                    workers += 1;
                }
                in_flight += 1;
                job_tx
                    .send(Job {
                        node: i,
                        reason,
                        fingerprint,
                        upstream,
                    })
                    .expect("workers alive");
            }
            if in_flight == 0 {
                break;
            }
            let r = res_rx.recv().expect("a worker answers every job");
            in_flight -= 1;
            if let Some((u, c)) = &r.spent {
                prog.rep.spent.add(Some(u), *c);
            }
            if let Some((u, c)) = &r.saved {
                prog.rep.saved.add(Some(u), *c);
            }
            for w in r.warnings {
                report(Event::Warning(w));
            }
            if let Some(h) = r.history {
                history.push_str(&h);
                // written as the build goes: bounded memory, and finished
                // runs are on record even if the build is interrupted
                if history.len() > 64 * 1024 && store.append_history(&history).is_ok() {
                    history.clear();
                }
            }
            let key = graph.nodes[r.node].key.clone();
            let d = match &r.record {
                Some(rec) if !rec.failed => Done::ok(rec.output_digest, rec.run_id.clone()),
                // (a job that did not run: the build stopped first, or `mkt cache
                // pull` found it in no cache)
                _ if let Outcome::Skipped { because } = &r.outcome => Done::not_run(because),
                _ => Done::failed(key.clone()),
            };
            if let Some(rec) = r.record {
                new_records.insert(key, rec);
            }
            prog.complete(r.node, r.outcome, d, report);
        }
        drop(job_tx);
    });
    // uploads ran beside the build; what is left is waited for here, so
    // that the build ends with its results published
    if let Some(r) = &remote {
        r.finish_uploads();
        if let Some(w) = r.take_down_warning() {
            report(Event::Warning(w));
        }
    }
    drop(remote);
    store.seal_own_pack()?;
    phases.mark("schedule and run");
    let mut rep = prog.into_report(); // the per-node bookkeeping is freed here
    rep.interrupted = crate::exec::interrupted();
    rep.stale_outputs = stale_outputs;
    // (a graph kept by the session depends on what it did last time)
    if opts.want_watch_set && !graph_from_session {
        let mut w = match &prior {
            // a graph from its cache walked no directory: the stamp has them
            Some((stamp, _)) if graph_from_cache => WatchSet {
                dirs: WatchSet::from_stamp(stamp).dirs,
                ..Default::default()
            },
            _ => WatchSet {
                dirs: files.walked_dirs().into_iter().map(|d| d.0).collect(),
                ..Default::default()
            },
        };
        w.reads.insert(PROJECT_FILE.to_string());
        for (i, n) in graph.nodes.iter().enumerate() {
            if selected[i] {
                w.reads
                    .extend(n.source_files().into_iter().map(|(_, p)| p.to_string()));
                w.outputs.insert(n.output.clone());
            }
        }
        rep.watch_set = Some(w);
    }

    if opts.dry_run {
        rep.phases = phases;
        return Ok(rep);
    }
    // Save in this order: the state (what was learnt), the history, one
    // sync, and the no-op stamp last, so it never claims what is not durable.
    let jobs = rep.ran + rep.cached + rep.restored + rep.failed;
    let small_edit = records_only && jobs < 256;
    if !in_session && !small_edit {
        release_free_memory(); // the compile jobs' garbage is gone
    }
    // The next stamp: patched from the old one when the graph came from
    // its cache (same entries, same order), else built from scratch.
    let mut graph_key = None;
    let mut new_stamp = if !(opts.targets.is_empty() && rep.success()) {
        None
    } else if let (Some((old, _)), true) = (
        // (a file the stamp knew as a file that is a symlink now needs a
        // `Resolve` entry, which a stamp patched in place cannot gain)
        prior
            .take()
            .filter(|_| !files.followed_unstamped_symlinks()),
        graph_from_cache,
    ) {
        // the entries of the files this build saw, found through the
        // vouching index before it lets go of the stamp
        let seen: Vec<(usize, StatEntry)> = files.with_seen(|seen| {
            seen.iter()
                .filter_map(|(p, e)| Some((files.stamp_position(p)?, *e)))
                .collect()
        });
        files.unvouch(); // its hold on the stamp, which is patched in place
        let mut old = Arc::try_unwrap(old).unwrap_or_else(|shared| (*shared).clone());
        patch_stamp(&mut old, &seen, checked_at);
        Some(old)
    } else {
        noop_stamp(&project, &graph, &files, project_stat)
            .inspect(|s| graph_key = Some(s.structure_key()))
    };
    // A build that writes no stamp removes the old one before it saves
    // anything: records saved after the stamp would let its word ("only
    // these files changed") hide what they changed, were the history or
    // the sync to fail, or the build be killed, before a later removal.
    // (A build of named targets that found them all up to date changed
    // nothing the stamp describes: it still holds.)
    if new_stamp.is_none() && (opts.targets.is_empty() || jobs > 0) {
        match std::fs::remove_file(&noop_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::error::Error::io("remove", &noop_path, e)),
        }
    }
    let (old_files, seen) = files.into_parts();
    let (wrote_state, appended) = {
        let mut delta = StateDelta::default();
        for (p, e) in &seen {
            if old_files.get(p) != Some(e) {
                delta.files.push((p, e));
            }
        }
        for (d, r) in &graph.analysis {
            if !old_analysis.contains_key(d) {
                delta.analysis.push((d, r));
            }
        }
        delta.targets = new_records.iter().map(|(k, r)| (k.as_str(), r)).collect();
        let wrote = !delta.is_empty();
        // a first build writes a snapshot: no need to encode its delta too
        let appended =
            wrote && !state_files.needs_snapshot() && state_files.append(&delta.encode())?;
        if appended {
            store.note_written(&store.dir().join(crate::layout::STATE_LOG));
        }
        (wrote, appended)
    };
    let snapshot_due = wrote_state && !appended;
    // the state as it now stands on disk: for a snapshot, and for the next
    // build of a session that is kept
    let state_now = if snapshot_due || !session.one_shot {
        // a snapshot keeps the stat cache and the analyses, which a build
        // that read only the records must read now
        let (mut old_files, old_analysis, old_targets) = if records_only {
            drop(old_targets); // its mapping of the snapshot, read again now
            let (_, full) = StateFiles::load(store.dir());
            (full.files, full.analysis, full.targets)
        } else {
            (old_files, old_analysis, old_targets.into_map())
        };
        let mut targets = old_targets;
        targets.extend(new_records);
        if snapshot_due {
            // a snapshot keeps the stat cache of the files the project uses now
            let mut used: HashSet<&str> = HashSet::default();
            for n in &graph.nodes {
                used.extend(n.sources().map(|(_, p)| p));
                used.insert(&n.output);
            }
            let mut files = seen;
            for (p, e) in old_files {
                if used.contains(p.as_str()) && !files.contains_key(&p) {
                    files.insert(p, e);
                }
            }
            // a graph from the cache carries no analyses: keep the old ones
            let analysis = if graph_from_cache {
                old_analysis
            } else {
                std::mem::take(&mut graph.analysis)
            };
            let st = State {
                files,
                analysis,
                targets,
            };
            state_files.snapshot(&st)?;
            // (the log it replaces is gone: its directory records that)
            store.note_written(&store.dir().join(crate::layout::STATE));
            Some(st)
        } else {
            old_files.extend(seen);
            let mut analysis = old_analysis;
            analysis.extend(std::mem::take(&mut graph.analysis));
            Some(State {
                files: old_files,
                analysis,
                targets,
            })
        }
    } else {
        None
    };
    phases.mark("save the state");
    store.append_history(&history)?;
    if wrote_state || !history.is_empty() || store.sync_due() {
        store.sync()?;
    } else {
        store.end_writes(); // nothing written: nothing to flush
    }
    phases.mark("append the history, sync");
    // (with none, the old one was removed above if it no longer holds)
    if let Some(stamp) = &mut new_stamp {
        stamp.set_state_tip(state_files.tip());
        if let Some(key) = graph_key {
            store.write_cache(&graph_path, &graph.encode(&key))?;
        }
        store.write_stamp(&noop_path, stamp)?
    }
    phases.mark("write the stamp and caches");
    rep.phases = phases;
    drop(_lock);
    session.graph = new_stamp.is_some().then_some(graph);
    session.keep_stamp(new_stamp);
    session.project = Some(project);
    session.state = state_now.map(|st| (state_files, st));
    session.disk = Some(Session::disk_now(root));
    Ok(rep)
}

/// The stamp for the build that just finished, or `None` when some entry
/// is unknown (the next build then takes the full path).
fn noop_stamp(
    project: &Project,
    graph: &Graph,
    files: &ProjectFiles,
    project_stat: Option<(FileStat, i64)>,
) -> Option<NoopStamp> {
    let (pstat, seen_at) = project_stat?;
    let mut entries = vec![StampEntry {
        path: PROJECT_FILE.to_string(),
        kind: EntryKind::Project,
        stat: Some(pstat),
        racy: is_racy(&pstat, seen_at),
        digest: Digest::of(project.source.as_bytes()),
    }];
    // a path with several roles (a template that is also an input) is
    // stamped with the one that matters most: structure before content
    let mut index: HashMap<&str, usize> = HashMap::default();
    for n in &graph.nodes {
        let paths = n.source_files().into_iter().map(|(k, p)| {
            let kind = match k {
                DepKind::Template | DepKind::Partial => EntryKind::Structure,
                DepKind::Input | DepKind::Item | DepKind::Verbatim => EntryKind::Content,
            };
            (kind, p)
        });
        for (kind, p) in paths.chain([(EntryKind::Output, n.output.as_str())]) {
            if let Some(&i) = index.get(p) {
                if kind.outranks(entries[i].kind) {
                    entries[i].kind = kind;
                }
            } else {
                index.insert(p, entries.len());
                let e = files.seen_entry(p)?;
                entries.push(StampEntry {
                    path: p.to_string(),
                    kind,
                    stat: Some(e.stat),
                    racy: e.racy,
                    digest: e.digest,
                });
            }
        }
    }
    for (dir, stat, at) in files.walked_dirs() {
        let racy = stat.as_ref().is_some_and(|st| is_racy(st, at));
        entries.push(StampEntry {
            path: dir,
            kind: EntryKind::Dir,
            stat,
            racy,
            digest: Digest::default(),
        });
    }
    let resolve = resolve_entries(&entries, files)?;
    entries.extend(resolve);
    Some(NoopStamp::new(graph.nodes.len() as u32, &entries))
}

/// The `Resolve` entries for a stamp of `entries` (see `stamp.rs`): every
/// directory on a stamped path and every stamped path that is a symlink,
/// as they were when this build (or the stamp that vouched for them)
/// checked where they lead; `None` when one was not checked and is a
/// symlink now (the next build then checks it).
fn resolve_entries(entries: &[StampEntry], files: &ProjectFiles) -> Option<Vec<StampEntry>> {
    let dirs: HashSet<&str> = (entries.iter())
        .filter_map(|e| Some(e.path.rsplit_once('/')?.0))
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
        let stamped: HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
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

/// Hands freed heap pages back to the system. glibc keeps them (and its
/// per-thread arenas fragment), so without this the peak RSS of a large
/// build counts memory that was freed long before.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Brings the old stamp up to date in place: every file this build looked
/// at (`seen`: its entry's position and what the build found) gets its
/// current stat and digest. An entry that was racy but was verified by
/// content at `checked_at` and has aged past the window since is no longer
/// racy. Only those entries are visited, not all 30,000 of a 10,000-target
/// stamp.
fn patch_stamp(stamp: &mut NoopStamp, seen: &[(usize, StatEntry)], checked_at: i64) {
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

/// What compilation reads from: the project, its graph, its files and
/// the store (for upstream outputs).
pub(crate) struct Sources<'a> {
    pub project: &'a Project,
    pub graph: &'a Graph,
    pub files: &'a ProjectFiles,
    pub store: &'a ObjectStore,
}

/// Renders `node`'s compiled prompt. Every source file must still have the
/// digest in `expected` (when listed there); `upstream` gives, in the
/// node's upstream order, the output each upstream node has now.
pub(crate) fn compile_node(
    src: &Sources<'_>,
    node: &Node,
    expected: &HashMap<&str, Digest>,
    upstream: &[UpstreamRecord],
) -> std::result::Result<crate::template::CompiledPrompt, String> {
    let template_source = read_text(src.files, expected, &node.template)?;
    let mut partials = BTreeMap::new();
    for p in &node.partials {
        partials.insert(
            p.clone(),
            Arc::<str>::from(read_text(src.files, expected, p)?),
        );
    }
    let mut verbatim = BTreeMap::new();
    for p in &node.verbatim {
        verbatim.insert(
            p.clone(),
            Arc::<str>::from(read_text(src.files, expected, p)?),
        );
    }
    let mut inputs = BTreeMap::new();
    for i in &node.inputs {
        let v = if i.is_glob {
            let mut list = Vec::new();
            for p in &i.paths {
                list.push(
                    minijinja::context! { path => p, content => read_text(src.files, expected, p)? },
                );
            }
            Value::from(list)
        } else {
            Value::from(read_text(src.files, expected, &i.paths[0])?)
        };
        inputs.insert(i.name.clone(), v);
    }
    let mut targets = BTreeMap::new();
    let mut up = upstream.iter();
    for (name, nodes) in &node.upstream {
        // a plain target is exactly one node without an item
        let is_foreach = nodes.len() != 1 || src.graph.nodes[nodes[0]].item.is_some();
        let mut list = Vec::new();
        for &u in nodes {
            let rec = up.next().expect("one upstream record per upstream node");
            let un = &src.graph.nodes[u];
            let text = upstream_text(src, un, rec.output_digest)?;
            if is_foreach {
                list.push(minijinja::context! {
                    path => un.output.clone(),
                    content => text,
                    item => un.item.clone(),
                    stem => un.item.as_deref().and_then(|i| Utf8Path::new(i).file_stem()).unwrap_or(""),
                });
            } else {
                targets.insert(name.clone(), Value::from(text));
            }
        }
        if is_foreach {
            targets.insert(name.clone(), Value::from(list));
        }
    }
    let item = match &node.item {
        Some(p) => item_value(
            p,
            if node.uses_item {
                Some(read_checked(src.files, expected, p)?)
            } else {
                None
            },
        ),
        None => Value::UNDEFINED,
    };
    let context = if node.item.is_some() {
        minijinja::context! { inputs => inputs, targets => targets, item => item }
    } else {
        minijinja::context! { inputs => inputs, targets => targets }
    };
    let prompt = compile(&RenderInput {
        template_path: Utf8Path::new(&node.template),
        template_source: &template_source,
        partials: &partials,
        verbatim: &verbatim,
        context,
    })
    .map_err(|e| e.to_string())?;
    Ok(prompt)
}

/// Reads a source file for compilation and checks it still has the digest
/// its fingerprint recorded: the prompt must be built from exactly the
/// bytes the record will claim.
fn read_text(
    files: &ProjectFiles,
    expected: &HashMap<&str, Digest>,
    path: &str,
) -> std::result::Result<String, String> {
    let bytes = read_checked(files, expected, path)?;
    String::from_utf8(bytes).map_err(|_| not_utf8(path))
}

/// [`read_text`] without the UTF-8 check.
fn read_checked(
    files: &ProjectFiles,
    expected: &HashMap<&str, Digest>,
    path: &str,
) -> std::result::Result<Vec<u8>, String> {
    let bytes = files.read(path).map_err(|e| e.to_string())?;
    if expected.get(path).is_some_and(|d| *d != Digest::of(&bytes)) {
        return Err(format!(
            "`{path}` changed while the build was running; run `mkt build` again"
        ));
    }
    Ok(bytes)
}

fn not_utf8(path: &str) -> String {
    format!("`{path}` is not UTF-8 text")
}

/// The text of an upstream output: from the store (verified), else from
/// the output file when it still has the expected digest.
fn upstream_text(
    src: &Sources<'_>,
    node: &Node,
    digest: Digest,
) -> std::result::Result<String, String> {
    let bytes = match src.store.get(&digest) {
        ObjectRead::Found(b) => b,
        _ => {
            let b = src.files.read(&node.output).map_err(|e| e.to_string())?;
            if Digest::of(&b) != digest {
                return Err(format!(
                    "the output of `{}` changed during the build",
                    node.key
                ));
            }
            b
        }
    };
    String::from_utf8(bytes).map_err(|_| format!("the output of `{}` is not UTF-8 text", node.key))
}

/// `item`; its `content` is an error only where the template uses it,
/// so a template that reads `item.name` works on a file that is not text.
fn item_value(path: &str, content: Option<Vec<u8>>) -> Value {
    let content = match content.map(String::from_utf8) {
        Some(Ok(text)) => Value::from(text),
        Some(Err(_)) => Value::from(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            not_utf8(path),
        )),
        None => Value::from(""),
    };
    let p = Utf8Path::new(path);
    let name = p.file_name().unwrap_or(path);
    minijinja::context! {
        path => path,
        name => name,
        stem => p.file_stem().unwrap_or(name),
        dir => p.parent().map_or("", |d| d.as_str()),
        content => content,
    }
}

fn write_output(ctx: &Ctx<'_>, node: &Node, bytes: &[u8], digest: Digest) -> Result<()> {
    // Checked again here, not only by analysis: a graph from its cache was
    // checked when its directories were as they were then, and one of them
    // may since have been swapped for a symlink out of the project.
    if ctx.src.files.check_writable(&node.output).is_err() {
        let (message, help) = crate::graph::output_escapes(&node.key, &node.output);
        return Err(crate::error::Error::InvalidFile {
            path: node.output.clone().into(),
            message,
            help: Some(help),
        });
    }
    if ctx.src.files.digest(&node.output).ok().flatten() == Some(digest) {
        return Ok(());
    }
    ctx.src.files.forget(&node.output);
    // (a temp file renamed into place, not an unnamed file linked: file
    // watchers, `mkt watch` among them, would see the unnamed file written
    // under a made-up name, `#<inode>`, in the output's directory)
    ctx.src
        .store
        .write_output(&ctx.src.files.abs(&node.output), bytes)?;
    ctx.src.files.wrote(&node.output, digest);
    Ok(())
}

/// The graph of the last complete build, from its cache, when the no-op
/// stamp shows that nothing which shapes it changed since; `files` then
/// takes the stamp's word for each file it did not see change. For the
/// commands that read a project without building it (`explain`, `show`,
/// `graph`): at 10,000 targets this is tens of milliseconds against a few
/// hundred for an analysis.
pub fn graph_from_stamp(
    root: &Utf8Path,
    project: &Project,
    files: &mut ProjectFiles,
) -> Option<Graph> {
    crate::store::check_store_dir(root).ok()?; // (the store's open refuses it)
    let store = root.join(STORE_DIR);
    let stamp = NoopStamp::decode(crate::store::map_replaced(&store.join(NOOP_STAMP_FILE)).ok()?)?;
    let dir = crate::stamp::Root::open(root)?;
    let checked_at = now_ns(); // before any stat: see the racy rule
    let Changes { structural, paths } = stamp.changes(&dir, None);
    if structural {
        return None;
    }
    let bytes = crate::store::map_replaced(&store.join(GRAPH_CACHE_FILE)).ok()?;
    let graph = Graph::decode(&bytes, &stamp.structure_key()).filter(|g| g.fits(project))?;
    files.vouch(Arc::new(stamp), paths, checked_at);
    Some(graph)
}

/// The history line of a job that ends now (format: `history.rs`).
fn history_line(
    node: &Node,
    job: &Job,
    model: &str,
    started: Instant,
    (status, run_id, ibh, usage, cost_usd): (
        RunKind,
        &str,
        Option<Digest>,
        Option<Usage>,
        Option<f64>,
    ),
    remote: Option<&RunManifest>,
) -> String {
    let ms = started.elapsed().as_secs_f64() * 1e3;
    HistoryEntry {
        time: manifest::now_rfc3339(),
        target: node.key.clone(),
        status,
        run_id: run_id.to_string(),
        input_bundle_hash: ibh,
        model: model.to_string(),
        reason: job.reason.to_string(),
        duration_ms: (ms * 1000.0).round() / 1000.0,
        usage,
        cost_usd,
        remote: remote.is_some(),
        host: remote.and_then(|m| m.host.clone()),
    }
    .to_line()
}

fn run_job(ctx: &Ctx<'_>, job: Job) -> JobResult {
    let node = &ctx.src.graph.nodes[job.node];
    let decl = &ctx.src.project.targets[node.target];
    let started = Instant::now();
    let hist = |line| {
        Some(history_line(
            node,
            &job,
            &decl.model.name,
            started,
            line,
            None,
        ))
    };
    let mut warnings = Vec::new();
    let fail = |error: String, warnings: Vec<String>, history: Option<String>| JobResult {
        node: job.node,
        outcome: Outcome::Failed { error },
        record: Some(TargetRecord {
            fingerprint: job.fingerprint.clone(),
            ibh: Digest::default(),
            output: node.output.clone(),
            output_digest: Digest::default(),
            run_id: String::new(),
            failed: true,
        }),
        warnings,
        history,
        spent: None,
        saved: None,
    };
    let skipped = |because: &str, warnings: Vec<String>| JobResult {
        node: job.node,
        outcome: Outcome::Skipped {
            because: because.to_string(),
        },
        record: None,
        warnings,
        history: None,
        spent: None,
        saved: None,
    };
    let record_for = |ibh: Digest, digest: Digest, run_id: &str| TargetRecord {
        fingerprint: job.fingerprint.clone(),
        ibh,
        output: node.output.clone(),
        output_digest: digest,
        run_id: run_id.to_string(),
        failed: false,
    };

    // a job queued before the build stopped is not started
    if let Some(because) = ctx.why_stopped() {
        return skipped(because, warnings);
    }

    // 1. Only the output file is off: restore it from the store.
    if job.reason.output_only()
        && let Some(rec) = ctx.old.get(&node.key)
    {
        match ctx.src.store.get(&rec.output_digest) {
            ObjectRead::Found(bytes) => {
                if let Err(e) = write_output(ctx, node, &bytes, rec.output_digest) {
                    return fail(e.to_string(), warnings, None);
                }
                return JobResult {
                    node: job.node,
                    outcome: Outcome::Restored,
                    record: Some(record_for(rec.ibh, rec.output_digest, &rec.run_id)),
                    warnings,
                    history: hist((RunKind::Restored, &rec.run_id, Some(rec.ibh), None, None)),
                    spent: None,
                    saved: None,
                };
            }
            ObjectRead::Corrupt => warnings.push(format!(
                "store object {} (output of `{}`) was corrupt and has been set aside; rebuilding",
                rec.output_digest.short(),
                node.key
            )),
            ObjectRead::Missing => {}
        }
    }

    // 2. Compilation.
    let expected: HashMap<&str, Digest> = job
        .fingerprint
        .deps
        .iter()
        .map(|d| (d.path.as_str(), d.digest))
        .collect();
    let compiled = compile_node(&ctx.src, node, &expected, &job.upstream);
    let prompt = match compiled {
        Ok(p) => p,
        Err(e) => {
            let h = hist((RunKind::Failed, "", None, None, None));
            return fail(e, warnings, h);
        }
    };
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let prompt_json = prompt.canonical_json();
    let prompt_digest = Digest::of(&prompt_json);
    let params = decl.model.hashed_params();
    let ibh = InputBundleHash::compute(prompt_digest, decl.model.provider.as_str(), &params);

    // 3. The action cache.
    if !ctx.forced[job.node] {
        match ctx.src.store.ac_get(&ibh) {
            AcRead::Found(m) => match ctx.src.store.get(&m.outputs[0].digest) {
                ObjectRead::Found(bytes) => {
                    if let Err(e) = write_output(ctx, node, &bytes, m.outputs[0].digest) {
                        return fail(e.to_string(), warnings, None);
                    }
                    return JobResult {
                        node: job.node,
                        outcome: Outcome::Cached {
                            run_id: m.run_id.clone(),
                            remote: false,
                        },
                        record: Some(record_for(ibh.0, m.outputs[0].digest, &m.run_id)),
                        warnings,
                        history: hist((RunKind::Cached, &m.run_id, Some(ibh.0), None, None)),
                        spent: None,
                        // what the run cost when it was made, at today's prices
                        saved: m.usage.clone().map(|u| {
                            let c = decl.model.settings.cost_usd(&u);
                            (u, c)
                        }),
                    };
                }
                ObjectRead::Corrupt => warnings.push(format!(
                    "store object {} (output of `{}`) was corrupt and has been set aside; running the model again",
                    m.outputs[0].digest.short(),
                    node.key
                )),
                ObjectRead::Missing => {}
            },
            AcRead::Missing => {}
            AcRead::Corrupt => warnings.push(format!(
                "action cache entry {} (for `{}`) was corrupt and has been set aside; running the model again",
                ibh.0.short(),
                node.key
            )),
        }
        // 3b. The remote cache: a local miss is looked up there before
        // any model call. What it returns was verified (`remote.rs`).
        if let Some(remote) = ctx.remote {
            use crate::remote::Fetch;
            match remote.fetch(&ibh, &prompt_digest) {
                Fetch::Hit {
                    manifest: m,
                    output,
                } => {
                    let d = m.outputs[0].digest;
                    let stored = (|| -> Result<()> {
                        ctx.src.store.put(&prompt_json)?;
                        ctx.src.store.put(&output)?;
                        ctx.src.store.ac_put(&m)?;
                        write_output(ctx, node, &output, d)
                    })();
                    if let Err(e) = stored {
                        return fail(e.to_string(), warnings, None);
                    }
                    let line = (RunKind::Cached, m.run_id.as_str(), Some(ibh.0), None, None);
                    let history =
                        history_line(node, &job, &decl.model.name, started, line, Some(&m));
                    return JobResult {
                        node: job.node,
                        outcome: Outcome::Cached {
                            run_id: m.run_id.clone(),
                            remote: true,
                        },
                        record: Some(record_for(ibh.0, d, &m.run_id)),
                        warnings,
                        history: Some(history),
                        spent: None,
                        saved: m.usage.clone().map(|u| {
                            let c = decl.model.settings.cost_usd(&u);
                            (u, c)
                        }),
                    };
                }
                Fetch::Bad(why) => warnings.push(format!(
                    "the remote cache `{}`: {why}; not used for `{}`, running the model",
                    remote.display(),
                    node.key
                )),
                Fetch::Miss | Fetch::Down => {}
            }
            warnings.extend(remote.take_down_warning());
        }
    }

    if ctx.fetch_only {
        return skipped("not in the remote cache", warnings);
    }

    // 4. Processing.
    let started_at = manifest::now_rfc3339();
    let t_process = Instant::now();
    let mut stats = crate::exec::CallStats::default();
    let response = crate::exec::call(&decl.model, &prompt, ctx.src.files.root(), &mut stats);
    let process_ms = t_process.elapsed().as_secs_f64() * 1e3;
    let run_id = manifest::new_run_id();
    let digest_of = |p: &str| ctx.src.files.digest(p).ok().flatten().unwrap_or_default();
    let mut m = RunManifest {
        schema: manifest::MANIFEST_SCHEMA.into(),
        run_id: run_id.clone(),
        target: node.key.clone(),
        input_bundle_hash: ibh,
        template: FileDigest {
            path: node.template.clone(),
            digest: digest_of(&node.template),
        },
        partials: node
            .partials
            .iter()
            .map(|p| FileDigest {
                path: p.clone(),
                digest: digest_of(p),
            })
            .collect(),
        verbatim: node
            .verbatim
            .iter()
            .map(|p| FileDigest {
                path: p.clone(),
                digest: digest_of(p),
            })
            .collect(),
        item: node.item.as_ref().map(|p| FileDigest {
            path: p.clone(),
            digest: digest_of(p),
        }),
        inputs: node
            .inputs
            .iter()
            .flat_map(|i| i.paths.iter().map(move |p| (i.name.clone(), p)))
            .map(|(name, p)| InputRecord {
                name,
                path: p.clone(),
                digest: digest_of(p),
            })
            .collect(),
        upstream: job.upstream.clone(),
        prompt_digest,
        model: ModelRecord {
            name: decl.model.name.clone(),
            provider: decl.model.provider.as_str().into(),
            params,
        },
        outputs: Vec::new(),
        status: RunStatus::Ok,
        error: None,
        usage: None,
        cost_usd: None,
        timing: Timing {
            started_at,
            finished_at: manifest::now_rfc3339(),
            compile_ms,
            process_ms,
            attempts: (stats.attempts > 0).then_some(stats.attempts),
            rate_limit_wait_ms: (stats.attempts > 0)
                .then_some(stats.rate_limit_wait.as_secs_f64() * 1e3),
        },
        tool_version: env!("CARGO_PKG_VERSION").into(),
        host: crate::remote::hostname(),
    };
    // Ok(Some(digest)): stored; Ok(None): the model failed (recorded in
    // `runs/`); Err: the store could not be written
    let stored = (|| -> Result<Option<Digest>> {
        ctx.src.store.put(&prompt_json)?;
        match response {
            Ok(resp) => {
                let d = ctx.src.store.put(&resp.output)?;
                m.outputs.push(OutputRecord {
                    path: node.output.clone(),
                    digest: d,
                    bytes: resp.output.len() as u64,
                });
                m.cost_usd = resp
                    .usage
                    .as_ref()
                    .and_then(|u| decl.model.settings.cost_usd(u));
                m.usage = resp.usage;
                ctx.src.store.ac_put(&m)?;
                write_output(ctx, node, &resp.output, d)?;
                // published in the background once it is safe locally
                if let Some(remote) = ctx.remote {
                    remote.upload(m.clone(), prompt_json.clone(), resp.output);
                }
                Ok(Some(d))
            }
            Err(e) => {
                m.status = RunStatus::Failed;
                m.error = Some(e.to_string());
                m.cost_usd = e.usage().and_then(|u| decl.model.settings.cost_usd(u));
                m.usage = e.into_usage();
                ctx.src.store.put_run(&m)?;
                Ok(None)
            }
        }
    })();
    let spent = m.usage.clone().map(|u| (u, m.cost_usd));
    match stored {
        Ok(Some(d)) => JobResult {
            node: job.node,
            outcome: Outcome::Ran {
                run_id: run_id.clone(),
            },
            record: Some(record_for(ibh.0, d, &run_id)),
            warnings,
            history: hist((
                RunKind::Ran,
                &run_id,
                Some(ibh.0),
                m.usage.clone(),
                m.cost_usd,
            )),
            spent,
            saved: None,
        },
        Ok(None) => {
            let h = hist((
                RunKind::Failed,
                &run_id,
                Some(ibh.0),
                m.usage.clone(),
                m.cost_usd,
            ));
            JobResult {
                spent,
                ..fail(m.error.clone().unwrap_or_default(), warnings, h)
            }
        }
        Err(e) => JobResult {
            spent,
            ..fail(e.to_string(), warnings, None)
        },
    }
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
                // a racy directory stays racy: it cannot be checked by content
                ("in", Some(st(3)), true, Digest::of(b"in")),
                ("out/a.md", Some(st(4)), false, Digest::of(b"out/a.md")),
            ]
        );
    }
}
