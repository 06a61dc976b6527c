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

mod compile;
mod job;
mod report;
mod schedule;
mod stamp;

pub(crate) use compile::Sources;
pub(crate) use compile::compile_node;
pub use report::{BuildOptions, BuildReport, Event, Outcome, Phases, Spend, WatchSet, format_usd};

use crate::config::PROJECT_FILE;
use crate::config::Project;
use crate::error::Result;
use crate::files::ProjectFiles;
use crate::graph::{Graph, analyse_project};
use crate::hash::Digest;
use crate::manifest::UpstreamRecord;
use crate::stamp::{Changes, NoopStamp};
use crate::state::TargetRecord;
use crate::state::{
    DirtyReason, FileStat, Fingerprint, StatEntry, State, StateDelta, StateFiles, dirty_reason,
    now_ns,
};
use crate::store::ObjectStore;
use crate::store::STORE_DIR;
use camino::Utf8Path;
use job::{Ctx, Job, JobResult, run_job};
use report::{INTERRUPTED, STOPPED};
use rustc_hash::FxHashMap as HashMap;
use rustc_hash::FxHashSet as HashSet;
use schedule::{Blame, Done, Progress};
use stamp::{noop_stamp, patch_stamp};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

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
        [NOOP_STAMP_FILE, "state", "state.log"].map(|f| {
            std::fs::symlink_metadata(dir.join(f))
                .ok()
                .map(|m| FileStat::from_metadata(&m))
        })
    }
}

/// The no-op stamp (`stamp.rs`) and the graph cache (`graph.rs`), in `.mkt/`.
const NOOP_STAMP_FILE: &str = "noop";
const GRAPH_CACHE_FILE: &str = "graph";

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
    let cache_path = store.dir().join("project-cache.json");
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
            store.note_written(&store.dir().join("state.log"));
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
            store.note_written(&store.dir().join("state"));
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
