//! The build engine: decides per node whether it is fresh (see `state/mod.rs`),
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

mod batching;
mod budget;
mod compile;
mod estimate;
mod job;
mod prefix;
mod report;
mod schedule;
mod stamp;

pub use compile::CompileError;
pub(crate) use compile::Sources;
pub(crate) use compile::compile_node;
pub(crate) use compile::node_model;
pub use report::{
    BuildOptions, BuildReport, Event, JobError, Outcome, Phases, PromptCache, Spend, WatchSet,
    format_count, format_usd,
};

use crate::config::PROJECT_FILE;
use crate::config::Project;
use crate::error::Result;
use crate::files::ProjectFiles;
use crate::graph::{Graph, analyse_project};
use crate::hash::Digest;
use crate::stamp::{Changes, NoopStamp};
use crate::state::{FileStat, StatEntry, StatTable, State, StateDelta, StateFiles, now_ns};
use crate::state::{NewRecords, TargetRecord, TargetRecords};
use crate::store::STORE_DIR;
use crate::store::{ObjectStore, StoreLock};
use crate::template::TemplateRefs;
use camino::Utf8Path;
use job::Ctx;

use rustc_hash::FxHashMap as HashMap;
use rustc_hash::FxHashSet as HashSet;
use schedule::{Progress, Scheduled, run_all};
use stamp::{noop_stamp, patch_stamp};
use std::sync::Arc;

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
    disk: Option<[Option<FileStat>; 4]>,
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

    /// Forgets everything kept: another process wrote the store.
    fn reset(&mut self) {
        *self = Session {
            one_shot: self.one_shot,
            ..Session::default()
        };
    }

    fn disk_now(root: &Utf8Path) -> [Option<FileStat>; 4] {
        let dir = root.join(STORE_DIR);
        [
            NOOP_STAMP_FILE,
            crate::layout::NOOP_PATCH,
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
///
/// The build is a pipeline: check the no-op stamp, open the store, load
/// (deciding the [`Mode`]), plan (analyse, stat), schedule, save.
pub fn build_in(
    root: &Utf8Path,
    opts: &BuildOptions,
    session: &mut Session,
    changed: Option<&HashSet<String>>,
    report: &(dyn Fn(Event<'_>) + Sync),
) -> Result<BuildReport> {
    // (before anything of the store is read, or written: the stamp's
    // fast path writes it too)
    let checked = crate::store::check_store_dir(root)?;
    // what the store's stamp and state were when this build looked at them
    let disk_seen = Session::disk_now(root);
    if session.disk.is_some() && session.disk != Some(disk_seen) {
        session.reset(); // someone else wrote the store
    }
    crate::exec::begin_build();
    let mut phases = Phases::start();
    let looked = match check_stamp(root, opts, session, changed, &mut phases, report) {
        Stamped::UpToDate(rep) => return Ok(*rep),
        Stamped::Looked(looked) => looked,
    };
    // (of the file itself, through a symlink: as the stamp checks it)
    let project_stat = std::fs::metadata(root.join(PROJECT_FILE))
        .ok()
        .map(|m| (FileStat::from_metadata(&m), now_ns()));
    let (store, lock) = open_store(checked, opts, report)?;
    let mut looked = looked;
    // Another build that took the lock after this one read the stamp may
    // have changed outputs and records since: what the stamp saw change
    // then no longer covers what did, and nothing it said can be used.
    if (looked.saw.is_some() || session.disk.is_some()) && Session::disk_now(root) != disk_seen {
        looked.saw = None;
        looked.from_session = false;
        session.reset();
    }
    phases.mark("open the store and lock");
    let (loaded, mut mode) = load(root, &store, opts, session, looked)?;
    phases.mark("read the project, state and graph");
    let batch = batching::BatchPass::open(&store, &loaded.project, opts, report);
    if batch.is_some() {
        phases.mark("collect batches");
    }
    let mut plan = plan(root, opts, loaded, &mut mode, project_stat, report)?;
    phases.mark("analyse");
    plan.stat_and_hash(&mode);
    phases.mark("stat and hash");
    if let Some(cap) = cost_cap(&plan, opts) {
        let refused = check_cost_cap(cap, &estimate_plan(&store, &plan, &mode, opts));
        // nothing was written: nothing to flush (unless an earlier build
        // left its writes unflushed)
        if refused.is_err() && !store.sync_due() {
            store.end_writes();
        }
        refused?;
        phases.mark("estimate the cost");
    }
    let mut done = schedule(&store, &plan, &mode, opts, batch.as_ref(), report)?;
    phases.mark("schedule and run");
    let rep = &mut done.rep;
    rep.interrupted = crate::exec::interrupted();
    rep.stale_outputs = plan.stale_outputs;
    // (a graph kept by the session depends on what it did last time)
    if opts.want_watch_set && !mode.graph_from_session {
        rep.watch_set = Some(plan.watch_set(&mode));
    }
    if opts.dry_run {
        done.rep.phases = phases;
        return Ok(done.rep);
    }
    let rep = save(root, &store, plan, mode, done, session, &mut phases)?;
    // (only now that what they answered is durable)
    if let Some(b) = &batch {
        b.forget_collected(&store)?;
    }
    drop(lock);
    session.disk = Some(Session::disk_now(root));
    Ok(rep)
}

/// What the no-op stamp said when it did not settle the build at once.
struct StampSaw {
    stamp: Arc<NoopStamp>,
    /// The paths it saw change.
    changed: HashSet<String>,
    /// It saw the graph's shape change: then it vouches for no node, only
    /// for the files it did not see change. Their stat and digest, just
    /// checked, spare the analysis and the freshness check a second and
    /// third `lstat` of every file (a third of a 10,000-target build after
    /// an edit of `prompts.toml`).
    structural: bool,
}

/// What [`check_stamp`] found, for a build that goes on.
struct Looked {
    saw: Option<StampSaw>,
    /// When the stamp's files were checked (before any stat: the racy rule).
    checked_at: i64,
    /// The stamp was the session's.
    from_session: bool,
}

enum Stamped {
    /// Nothing changed: the build is done.
    UpToDate(Box<BuildReport>),
    Looked(Looked),
}

/// How this build takes its shortcuts, decided once, in [`load`], from
/// the stamp, the session and what was on disk; every later phase asks it.
struct Mode {
    /// What the stamp saw; `None` when it was not read or does not hold.
    saw: Option<StampSaw>,
    checked_at: i64,
    /// The state and stamp this process saved last agree on every file.
    in_session: bool,
    /// The graph is the one the session kept.
    graph_from_session: bool,
    /// The graph came from its cache (or the session): the structure did
    /// not change since the last full analysis.
    graph_from_cache: bool,
    /// Only the state's target records were read (`StateFiles::load_records`).
    records_only: bool,
    /// The stamp's word for a node (as its record says) holds: the state's
    /// records are the ones its build saved (`StateFiles::tip`).
    records_vouched: bool,
}

impl Mode {
    /// With a stamp that saw no structural change: the paths it saw change.
    fn changed(&self) -> Option<&HashSet<String>> {
        (self.saw.as_ref())
            .filter(|s| !s.structural)
            .map(|s| &s.changed)
    }

    /// The stamp that saw no structural change, if there is one.
    fn prior(&self) -> Option<&Arc<NoopStamp>> {
        (self.saw.as_ref())
            .filter(|s| !s.structural)
            .map(|s| &s.stamp)
    }

    /// An incremental one-shot build with little to do: what it freed is
    /// not worth a trim of the heap.
    fn small_edit(&self, jobs: usize) -> bool {
        self.records_only && jobs < 256
    }
}

/// The no-op fast path: one lstat per file (see `stamp.rs`). When only
/// inputs or outputs changed, the stamp also vouches for every file it
/// did not see change, and the graph can come from its cache.
fn check_stamp(
    root: &Utf8Path,
    opts: &BuildOptions,
    session: &mut Session,
    changed: Option<&HashSet<String>>,
    phases: &mut Phases,
    report: &(dyn Fn(Event<'_>) + Sync),
) -> Stamped {
    let mut looked = Looked {
        saw: None,
        checked_at: 0,
        from_session: false,
    };
    // (named targets are a part of what the stamp covers: it vouches for
    // them as for the whole, though only a build of everything answers
    // from it at once or writes one)
    // (a recorded batch is collected by a build that looks at its targets)
    if opts.force
        || crate::batch::record::any_in(&root.join(STORE_DIR).join(crate::layout::BATCHES_DIR))
    {
        return Stamped::Looked(looked);
    }
    let hint = changed.filter(|_| session.stamp.is_some());
    let store_dir = root.join(STORE_DIR);
    let kept = session.stamp.take();
    looked.from_session = kept.is_some();
    let stamp = kept.or_else(|| NoopStamp::read(&store_dir));
    phases.mark("read the no-op stamp");
    let (Some(mut stamp), Some(dir)) = (stamp, crate::stamp::Root::open(root)) else {
        return Stamped::Looked(looked);
    };
    looked.checked_at = now_ns(); // before any stat: see the racy rule
    let Changes { structural, paths } = stamp.changes(&dir, hint);
    phases.mark("stat the stamp's files");
    if paths.is_empty() && opts.targets.is_empty() {
        // Racy entries were just verified by content; once they have aged
        // past the window they need not be read again.
        if !opts.dry_run && stamp.age(looked.checked_at) {
            let _ = stamp.write(&store_dir);
            session.disk = Some(Session::disk_now(root));
        }
        let n = stamp.nodes as usize;
        report(Event::Planned { total: n });
        let watch_set = opts.want_watch_set.then(|| WatchSet::from_stamp(&stamp));
        session.keep_stamp(Some(stamp));
        phases.mark("finish");
        return Stamped::UpToDate(Box::new(BuildReport {
            total: n,
            fresh: n,
            watch_set,
            phases: std::mem::take(phases),
            ..Default::default()
        }));
    }
    looked.saw = Some(StampSaw {
        stamp: Arc::new(stamp),
        changed: paths,
        structural,
    });
    Stamped::Looked(looked)
}

/// The store, locked and ready for writes unless `--dry-run`.
fn open_store(
    root: crate::store::CheckedRoot<'_>,
    opts: &BuildOptions,
    report: &(dyn Fn(Event<'_>) + Sync),
) -> Result<(ObjectStore, Option<StoreLock>)> {
    if opts.dry_run {
        return Ok((ObjectStore::open_checked(root, false)?, None));
    }
    let store = ObjectStore::open_checked(root, true)?;
    let lock = store.lock(opts.wait_for_lock, &|| report(Event::WaitingForLock))?;
    store.begin_writes()?;
    Ok((store, Some(lock)))
}

/// What a build loaded: the project, the state, and a graph that fits.
struct Loaded {
    project: Project,
    state_files: StateFiles,
    /// The state less its target records (`old_targets`).
    state: State,
    old_targets: TargetRecords,
    /// The graph from the session or its cache, when it fits the project.
    cached: Option<Graph>,
}

/// Reads the project, the state and the graph cached for them (what the
/// session kept of them instead, where it holds), and decides the
/// build's [`Mode`].
fn load(
    root: &Utf8Path,
    store: &ObjectStore,
    opts: &BuildOptions,
    session: &mut Session,
    looked: Looked,
) -> Result<(Loaded, Mode)> {
    let Looked {
        saw,
        checked_at,
        from_session,
    } = looked;
    let prior = saw.as_ref().filter(|s| !s.structural);
    // with a stamp that saw no structural change, `prompts.toml` is as the
    // session's project was read from, and the session's graph still holds
    let session_project = session.project.take().filter(|_| prior.is_some());
    let session_graph = session.graph.take().filter(|_| prior.is_some());
    let session_state = session.state.take();
    let in_session = from_session && session_state.is_some();
    let graph_from_session = session_graph.is_some();
    // A one-shot incremental build with a stamp that vouches for every
    // file reads only the state's target records, as it asks for them
    // (`StateFiles::load_records`); should its graph not come from the
    // cache after all, the rest is read then.
    let records_only = session.one_shot && prior.is_some() && session_state.is_none();
    let cache_path = store.dir().join(crate::layout::PROJECT_CACHE);
    let graph_path = root.join(STORE_DIR).join(GRAPH_CACHE_FILE);
    // The state, the project and the graph cached for it are independent:
    // read them on both cores at once.
    let (((state_files, state, old_targets), cached), loaded) = rayon::join(
        || {
            rayon::join(
                || match session_state {
                    Some(kept) => split_records(kept),
                    None if records_only => {
                        let (files, records) = StateFiles::load_records(store.dir());
                        (files, State::default(), records)
                    }
                    None => split_records(StateFiles::load(store.dir())),
                },
                || {
                    session_graph.or_else(|| {
                        let bytes = crate::store::map_replaced_lazily(&graph_path).ok()?;
                        Graph::decode_mapped(&bytes, &prior?.stamp.structure_key())
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
    let cached = cached.filter(|g| g.fits(&project));
    let (state_files, state, old_targets) = match (records_only, &cached) {
        (true, None) => split_records(StateFiles::load(store.dir())),
        _ => (state_files, state, old_targets),
    };
    // what was read of the state: the target records only, or everything
    let records_only = records_only && cached.is_some();
    // The stamp's word for a node (as its record says) holds only for the
    // records its build saved: a journal cut short or removed leaves older
    // ones, each consistent alone (`StateFiles::tip`).
    let records_vouched = prior.is_some_and(|s| s.stamp.state_tip() == state_files.tip());
    if let (Some(bytes), false) = (&new_cache, opts.dry_run) {
        store.write_cache(&cache_path, bytes)?;
    }
    // (an edit's build that reads only records has nothing large to free:
    // a trim would walk the heap for nothing, about a millisecond)
    if !in_session && !records_only {
        release_free_memory(); // a first build's TOML parse tree is gone
    }
    let mode = Mode {
        saw,
        checked_at,
        in_session,
        graph_from_session,
        graph_from_cache: cached.is_some(),
        records_only,
        records_vouched,
    };
    let loaded = Loaded {
        project,
        state_files,
        state,
        old_targets,
        cached,
    };
    Ok((loaded, mode))
}

/// A state as loaded, its target records apart.
fn split_records((files, mut st): (StateFiles, State)) -> (StateFiles, State, TargetRecords) {
    let records = std::mem::take(&mut st.targets).into();
    (files, st, records)
}

/// What a build will do: the graph, what of it is selected, and the
/// project's files as this build sees them.
struct Plan {
    project: Project,
    state_files: StateFiles,
    /// The analyses the state held (a snapshot keeps them).
    old_analysis: HashMap<Digest, crate::template::TemplateRefs>,
    old_targets: TargetRecords,
    files: ProjectFiles,
    graph: Graph,
    selected: Vec<bool>,
    named: Vec<bool>,
    total: usize,
    stale_outputs: usize,
    /// `prompts.toml`'s stat, and when it was taken, for the next stamp.
    project_stat: Option<(FileStat, i64)>,
    /// Only named targets were asked for: the build writes no stamp.
    named_only: bool,
}

/// Analyses the project, unless the graph came from the session or its
/// cache, and selects the targets asked for.
fn plan(
    root: &Utf8Path,
    opts: &BuildOptions,
    loaded: Loaded,
    mode: &mut Mode,
    project_stat: Option<(FileStat, i64)>,
    report: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Plan> {
    let Loaded {
        project,
        state_files,
        state,
        old_targets,
        cached,
    } = loaded;
    let State {
        files: old_files,
        analysis: old_analysis,
        ..
    } = state;
    let mut files = ProjectFiles::new(root, old_files);
    match mode.saw.take() {
        Some(s) if s.structural => files.vouch(s.stamp, s.changed, mode.checked_at),
        Some(s) => {
            files.vouch(Arc::clone(&s.stamp), s.changed.clone(), mode.checked_at);
            mode.saw = Some(s);
        }
        None => {}
    }
    let graph = match cached {
        Some(g) => g,
        None => analyse_project(&project, &files, &old_analysis)?,
    };
    let (selected, named) = graph.select(&project, &opts.targets)?;
    let total = selected.iter().filter(|s| **s).count();
    // A cached graph means the structure did not change since the last
    // full analysis, which counted these already: skip the work then.
    let stale_outputs = if mode.graph_from_cache {
        0
    } else {
        graph.leftovers(root, &old_targets)
    };
    if !mode.graph_from_cache {
        for w in crate::graph::empty_foreach(&project, &graph) {
            report(Event::Warning(w));
        }
    }
    report(Event::Planned { total });
    Ok(Plan {
        project,
        state_files,
        old_analysis,
        old_targets,
        files,
        graph,
        selected,
        named,
        total,
        stale_outputs,
        project_stat,
        named_only: !opts.targets.is_empty(),
    })
}

impl Plan {
    /// A context to run the plan's jobs in: nothing remote, no batches,
    /// no cost cap, going on after failures (what a caller adds is its own).
    fn ctx<'a>(&'a self, store: &'a ObjectStore, opts: &BuildOptions) -> Ctx<'a> {
        Ctx {
            src: Sources {
                project: &self.project,
                graph: &self.graph,
                files: &self.files,
                store,
            },
            old: &self.old_targets,
            forced: self.named.iter().map(|&n| n && opts.force).collect(),
            remote: None,
            fetch_only: false,
            stopping: Default::default(),
            keep_going: true,
            budget: None,
            batch: None,
            pins: Default::default(),
        }
    }

    /// Stats (and where needed hashes) every file the selected nodes read
    /// or write, in parallel: on a no-op build this is nearly all the work.
    /// With a stamp that vouches for the rest, only what it saw change.
    fn stat_and_hash(&mut self, mode: &Mode) {
        let mut paths: Vec<&str> = Vec::new();
        match (mode.changed(), mode.graph_from_cache) {
            (Some(changed), true) => paths.extend(changed.iter().map(String::as_str)),
            _ => {
                let mut seen_paths = HashSet::default();
                for (i, n) in self.graph.nodes.iter().enumerate() {
                    if self.selected[i] {
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
        self.files.digest_all(&paths);
    }

    /// What the build depends on, for `mkt watch`.
    fn watch_set(&self, mode: &Mode) -> WatchSet {
        let mut w = match mode.prior() {
            // a graph from its cache walked no directory: the stamp has them
            Some(stamp) if mode.graph_from_cache => WatchSet {
                dirs: WatchSet::from_stamp(stamp).dirs,
                ..Default::default()
            },
            _ => WatchSet {
                dirs: self
                    .files
                    .walked_dirs()
                    .into_iter()
                    .map(|d| d.path)
                    .collect(),
                ..Default::default()
            },
        };
        w.reads.insert(PROJECT_FILE.to_string());
        for (i, n) in self.graph.nodes.iter().enumerate() {
            if self.selected[i] {
                w.reads
                    .extend(n.source_files().into_iter().map(|(_, p)| p.to_string()));
                w.outputs.insert(n.output.clone());
            }
        }
        w
    }
}

/// Runs the plan: opens the remote, schedules the selected nodes, waits
/// for the uploads.
fn schedule(
    store: &ObjectStore,
    plan: &Plan,
    mode: &Mode,
    opts: &BuildOptions,
    batch: Option<&batching::BatchPass>,
    report: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Scheduled> {
    // The remote is opened only for builds that may run something (a dry
    // run writes nothing and asks no one).
    let remote = if opts.dry_run || !opts.remote_cache {
        None
    } else {
        match crate::remote::open_for(&plan.project)? {
            Some(Err(why)) => {
                report(Event::Warning(why.to_string()));
                None
            }
            opened => opened.and_then(|r| r.ok()),
        }
    };
    let ctx = Ctx {
        remote: remote.as_ref(),
        fetch_only: opts.fetch_only,
        keep_going: opts.keep_going,
        batch,
        budget: cost_cap(plan, opts).map(budget::Budget::new),
        ..plan.ctx(store, opts)
    };
    let mut prog = Progress::new(&plan.graph, &plan.selected, plan.total);
    if let Some(changed) = mode.changed() {
        touched_first(&mut prog, &plan.graph, changed);
    }
    let untouched = mode.changed().filter(|_| mode.records_vouched);
    let mut done = run_all(&ctx, prog, untouched, opts, report);
    if let Some(b) = batch {
        b.submit(store, &mut done.rep, report);
        let lines = b.store_unclaimed(store, &plan.project, &mut done.rep)?;
        done.history.push_str(&lines);
    }
    if !done.answered.is_empty() {
        let (project, graph) = (&plan.project, &plan.graph);
        let drifts =
            crate::drift::seen_in_build(project, graph, ctx.old, &done.records, &done.answered);
        for d in &drifts {
            report(Event::ModelDrift(d));
        }
    }
    // uploads ran beside the build; what is left is waited for here, so
    // that the build ends with its results published
    if let Some(r) = &remote {
        r.finish_uploads();
        if let Some(w) = r.take_down_warning() {
            report(Event::Warning(w.to_string()));
        }
    }
    drop(remote);
    store.seal_own_pack()?;
    Ok(done)
}

/// The build's cost cap: `--max-cost`, else the project's `max_cost_usd`;
/// none for a dry run or `mkt cache pull`, which call no model.
fn cost_cap(plan: &Plan, opts: &BuildOptions) -> Option<f64> {
    (opts.max_cost_usd.or(plan.project.max_cost_usd)).filter(|_| !opts.dry_run && !opts.fetch_only)
}

/// What the model calls of the plan would cost: its dry run, with an
/// estimate (reporting nothing).
fn estimate_plan(
    store: &ObjectStore,
    plan: &Plan,
    mode: &Mode,
    opts: &BuildOptions,
) -> crate::estimate::Estimate {
    let dry = BuildOptions {
        dry_run: true,
        estimate: true,
        keep_going: true,
        ..opts.clone()
    };
    let ctx = plan.ctx(store, opts);
    let prog = Progress::new(&plan.graph, &plan.selected, plan.total);
    let untouched = mode.changed().filter(|_| mode.records_vouched);
    let done = run_all(&ctx, prog, untouched, &dry, &|_| {});
    done.rep.estimate.unwrap_or_default()
}

/// Refuses a build whose estimate may cost more than `cap` (module docs
/// of `estimate.rs`): one whose upper bound is over it, or unbounded.
fn check_cost_cap(cap: f64, est: &crate::estimate::Estimate) -> Result<()> {
    let totals = est.totals();
    let high = totals.cost.map_or(Some(0.0), |c| c.high);
    if high.is_some_and(|h| h <= cap + 1e-12) {
        return Ok(());
    }
    let dearest = (est.dearest(5).into_iter())
        .map(|t| (t.target.clone(), t.cost_high()))
        .collect();
    Err(crate::error::Error::CostCap {
        cap,
        high,
        targets: est.targets.len(),
        dearest,
    })
}

/// With a stamp that names what changed, the nodes that read or write it
/// go first: their model calls then run while the scheduler walks the
/// thousands of nodes nothing touched (at 10,000 that walk is 2.5 ms).
fn touched_first(prog: &mut Progress<'_>, graph: &Graph, changed: &HashSet<String>) {
    use rayon::prelude::*;
    let touched: Vec<bool> = (prog.ready.make_contiguous().par_iter())
        .map(|&i| {
            let n = &graph.nodes[i];
            changed.contains(&n.output) || n.sources().any(|(_, p)| changed.contains(p))
        })
        .collect();
    let (first, rest): (Vec<_>, Vec<_>) = prog.ready.iter().zip(&touched).partition(|(_, t)| **t);
    prog.ready = first.into_iter().chain(rest).map(|(&i, _)| i).collect();
}

/// Saves in this order: the state (what was learnt), the history, one
/// sync, and the no-op stamp last, so it never claims what is not durable;
/// then keeps in `session` what the next build may reuse.
fn save(
    root: &Utf8Path,
    store: &ObjectStore,
    mut plan: Plan,
    mut mode: Mode,
    done: Scheduled,
    session: &mut Session,
    phases: &mut Phases,
) -> Result<BuildReport> {
    let Scheduled {
        mut rep,
        records,
        history,
        ..
    } = done;
    let jobs = rep.ran + rep.cached + rep.restored + rep.failed;
    if !mode.in_session && !mode.small_edit(jobs) {
        release_free_memory(); // the compile jobs' garbage is gone
    }
    let store_dir = root.join(STORE_DIR);
    plan.files.settle_racy(); // for the stamp and the stat cache
    phases.mark("verify racy files");
    let (mut new_stamp, graph_key) = next_stamp(&mut plan, &mut mode, &rep);
    // A build that writes no stamp removes the old one before it saves
    // anything: records saved after the stamp would let its word ("only
    // these files changed") hide what they changed, were the history or
    // the sync to fail, or the build be killed, before a later removal.
    // (A build of named targets that found them all up to date changed
    // nothing the stamp describes: it still holds.)
    if new_stamp.is_none() && (!plan.named_only || jobs > 0) {
        NoopStamp::remove(&store_dir)?;
    }
    let saved = save_state(store, plan, &mode, records, !session.one_shot)?;
    phases.mark("save the state");
    store.append_history(&history)?;
    if saved.wrote || !history.is_empty() || store.sync_due() {
        store.sync()?;
    } else {
        store.end_writes(); // nothing written: nothing to flush
    }
    phases.mark("append the history, sync");
    // (with none, the old one was removed above if it no longer holds)
    if let Some(stamp) = &mut new_stamp {
        stamp.set_state_tip(saved.state_files.tip());
        if let Some(key) = graph_key {
            let graph_path = root.join(STORE_DIR).join(GRAPH_CACHE_FILE);
            crate::store::replace_cache_with(&graph_path, |w| saved.graph.encode_to(&key, w))
                .map_err(|e| crate::error::Error::io("write", &graph_path, e))?;
        }
        stamp.write(&store_dir)?
    }
    phases.mark("write the stamp and caches");
    rep.phases = std::mem::take(phases);
    session.graph = new_stamp.is_some().then_some(saved.graph);
    session.keep_stamp(new_stamp);
    session.project = Some(saved.project);
    session.state = saved.state.map(|st| (saved.state_files, st));
    Ok(rep)
}

/// The next stamp: patched from the old one when the graph came from its
/// cache (same entries, same order), else built from scratch (then with
/// the key to cache the graph under); `None` when the build may not write
/// one.
fn next_stamp(
    plan: &mut Plan,
    mode: &mut Mode,
    rep: &BuildReport,
) -> (Option<NoopStamp>, Option<Digest>) {
    if plan.named_only || !rep.success() {
        return (None, None);
    }
    let files = &mut plan.files;
    // (a file the stamp knew as a file that is a symlink now needs a
    // `Resolve` entry, which a stamp patched in place cannot gain)
    let prior = (mode.saw.take())
        .filter(|s| !s.structural && mode.graph_from_cache)
        .filter(|_| !files.followed_unstamped_symlinks());
    if let Some(prior) = prior {
        // the entries of the files this build saw, found through the
        // vouching index before it lets go of the stamp
        let seen: Vec<(usize, StatEntry)> = files.with_seen(|seen| {
            seen.iter()
                .filter_map(|(p, e)| Some((files.stamp_position(p)?, *e)))
                .collect()
        });
        files.unvouch(); // its hold on the stamp, which is patched in place
        let mut old = Arc::try_unwrap(prior.stamp).unwrap_or_else(|shared| (*shared).clone());
        patch_stamp(&mut old, &seen, mode.checked_at);
        return (Some(old), None);
    }
    let stamp = noop_stamp(&plan.project, &plan.graph, files, plan.project_stat);
    let key = stamp.as_ref().map(NoopStamp::structure_key);
    (stamp, key)
}

/// What [`save_state`] leaves of the plan.
struct Saved {
    project: Project,
    graph: Graph,
    state_files: StateFiles,
    /// The state as it now stands on disk, when it was wanted.
    state: Option<State>,
    /// Something was written to the state.
    wrote: bool,
}

/// Saves what this build learnt: a delta appended to the state's log, or
/// a snapshot when one is due. With `keep` (a session kept between
/// builds), the state as it now stands is returned too.
fn save_state(
    store: &ObjectStore,
    plan: Plan,
    mode: &Mode,
    records: NewRecords,
    keep: bool,
) -> Result<Saved> {
    let Plan {
        project,
        mut state_files,
        old_analysis,
        old_targets,
        files,
        mut graph,
        ..
    } = plan;
    let (old_files, seen) = files.into_parts();
    let mut delta = StateDelta::default();
    for (p, e) in seen.iter() {
        if old_files.get(p) != Some(e) {
            delta.files.push((p, e));
        }
    }
    for (d, r) in &graph.analysis {
        if !old_analysis.contains_key(d) {
            delta.analysis.push((d, r));
        }
    }
    delta.targets = Some(&records);
    let wrote = !delta.is_empty();
    // a first build writes a snapshot: no need to encode its delta too
    let appended = wrote && !state_files.needs_snapshot() && state_files.append(&delta.encode())?;
    drop(delta);
    if appended {
        store.note_written(&store.dir().join(crate::layout::STATE_LOG));
    }
    let snapshot_due = wrote && !appended;
    // the state as it now stands on disk: for a snapshot, and for the next
    // build of a session that is kept
    let state = if !(snapshot_due || keep) {
        None
    } else {
        // a snapshot keeps the stat cache and the analyses, which a build
        // that read only the records must read now
        let (old_files, old_analysis, old_targets) = if mode.records_only {
            drop(old_targets); // its mapping of the snapshot, read again now
            let (_, full) = StateFiles::load(store.dir());
            (full.files, full.analysis, full.targets.into())
        } else {
            (old_files, old_analysis, old_targets)
        };
        let (files, analysis) = if snapshot_due {
            let (files, analysis) = snapshot_parts(old_files, old_analysis, seen, &mut graph, mode);
            state_files.snapshot_over(&files, &analysis, &records, &old_targets)?;
            // (the log it replaces is gone: its directory records that)
            store.note_written(&store.dir().join(crate::layout::STATE));
            if !keep {
                // (nothing is decoded for a build that keeps nothing: at a
                // million targets the records and the stat cache as maps
                // were most of a full build's peak memory)
                return Ok(Saved {
                    project,
                    graph,
                    state_files,
                    state: None,
                    wrote,
                });
            }
            (files.into_entries().collect(), analysis)
        } else {
            let (mut files, mut analysis) = (old_files, old_analysis);
            files.extend(seen.into_entries());
            analysis.extend(std::mem::take(&mut graph.analysis));
            (files, analysis)
        };
        Some(State {
            files,
            analysis,
            targets: newer_over(records.into_map(), old_targets.into_map()),
        })
    };
    Ok(Saved {
        project,
        graph,
        state_files,
        state,
        wrote,
    })
}

/// `old` with `newer`'s records over its own, grown from whichever is the
/// larger: a first build's hundred thousand records moved into an empty
/// map were a second table as large as theirs.
fn newer_over(
    mut newer: HashMap<String, TargetRecord>,
    mut old: HashMap<String, TargetRecord>,
) -> HashMap<String, TargetRecord> {
    if newer.len() >= old.len() {
        for (k, r) in old {
            newer.entry(k).or_insert(r);
        }
        newer
    } else {
        old.extend(newer);
        old
    }
}

/// What a snapshot saves besides the records: the stat cache of the files
/// the project uses now (`seen`, and of the others `old_files` had), and
/// the analyses.
fn snapshot_parts(
    old_files: HashMap<String, StatEntry>,
    old_analysis: HashMap<Digest, TemplateRefs>,
    seen: StatTable,
    graph: &mut Graph,
    mode: &Mode,
) -> (StatTable, HashMap<Digest, TemplateRefs>) {
    let mut used: HashSet<&str> = HashSet::default();
    for n in &graph.nodes {
        used.extend(n.sources().map(|(_, p)| p));
        used.insert(&n.output);
    }
    let mut files = seen;
    for (p, e) in old_files {
        if used.contains(p.as_str()) && !files.contains(&p) {
            files.insert(&p, e);
        }
    }
    drop(used);
    // a graph from the cache carries no analyses: keep the old ones
    let analysis = if mode.graph_from_cache {
        old_analysis
    } else {
        std::mem::take(&mut graph.analysis)
    };
    (files, analysis)
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
    let stamp = NoopStamp::read(&store)?;
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
