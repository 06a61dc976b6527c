//! The scheduler: the ready queue, what each node came to, and the pool of
//! workers the stale nodes' jobs run on.

use super::estimate::{Wanted, estimate_nodes};

use super::job::{Ctx, Job, JobResult, PreparedCall, Worked, call_model_now, run_job_gated};
use super::prefix::{Arrival, PrefixGate};
use super::report::{BuildOptions, BuildReport, Event, INTERRUPTED, Outcome, STOPPED};
use crate::fingerprint::{DirtyReason, Fingerprint, TargetRecord, staleness};
use crate::graph::Graph;
use crate::hash::Digest;
use crate::manifest::UpstreamRecord;
use crate::state::NewRecords;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub(super) struct Done {
    /// Up to date without any work (the output did not change).
    pub(super) fresh: bool,
    pub(super) output_digest: Digest,
    /// The run that made the output; empty for a fresh node (see
    /// [`Done::fresh`]). (A `Box<str>`: a `Done` is kept per node.)
    pub(super) run_id: Box<str>,
    /// For a node that failed or was skipped: why its dependants cannot run.
    /// (Boxed: a build keeps a `Done` for each of a corpus's million
    /// nodes, and almost none has one.)
    pub(super) blame: Option<Box<Blame>>,
    /// `--dry-run`: would run, so its output may still change.
    pub(super) pending: bool,
}

impl Done {
    pub(super) fn ok(output_digest: Digest, run_id: Box<str>) -> Done {
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
    pub(super) fn fresh(output_digest: Digest) -> Done {
        Done {
            fresh: true,
            ..Done::ok(output_digest, Box::default())
        }
    }

    pub(super) fn failed(blame: String) -> Done {
        Done::blamed(Blame::Failed(blame))
    }

    /// Not run, for the reason its skip gave.
    pub(super) fn not_run(why: &str) -> Done {
        Done::blamed(Blame::NotRun(why.to_string()))
    }

    pub(super) fn blamed(blame: Blame) -> Done {
        Done {
            fresh: false,
            output_digest: Digest::default(),
            run_id: Box::default(),
            blame: Some(Box::new(blame)),
            pending: false,
        }
    }
}

/// Why the dependants of a node that did not build are skipped.
#[derive(Clone)]
pub(super) enum Blame {
    /// This target failed (the node itself, or one upstream of it).
    Failed(String),
    /// It was not run, for this reason (the build stopped before it:
    /// [`INTERRUPTED`], [`STOPPED`]; or `mkt cache pull` found it in no
    /// cache), which its dependants give too.
    NotRun(String),
    /// This target's call waits in a batch.
    Pending(String),
}

impl Blame {
    pub(super) fn because(&self) -> String {
        match self {
            Blame::Failed(key) => format!("`{key}` failed"),
            Blame::NotRun(why) => why.clone(),
            Blame::Pending(key) => format!("`{key}` is pending in a batch"),
        }
    }
}

/// The selected nodes that use each node's output, all in one array (a
/// `Vec` per node was 24 bytes a node, a million of them empty in a
/// corpus-sized `foreach`): node `i`'s are `edges[starts[i]..starts[i + 1]]`,
/// in dependency order.
pub(super) struct Downstream {
    starts: Vec<u32>,
    edges: Vec<u32>,
}

impl Downstream {
    fn of(graph: &Graph, selected: &[bool]) -> Downstream {
        let edges_of = || {
            (graph.order.iter())
                .filter(|&&i| selected[i])
                .flat_map(|&i| graph.nodes[i].upstream_nodes().map(move |u| (u, i)))
        };
        let mut starts = vec![0u32; graph.nodes.len() + 1];
        for (u, _) in edges_of() {
            starts[u + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut next: Vec<u32> = starts[..graph.nodes.len()].to_vec();
        let mut edges = vec![0u32; starts[graph.nodes.len()] as usize];
        for (u, i) in edges_of() {
            edges[next[u] as usize] = i as u32;
            next[u] += 1;
        }
        Downstream { starts, edges }
    }

    fn of_node(&self, i: usize) -> &[u32] {
        &self.edges[self.starts[i] as usize..self.starts[i + 1] as usize]
    }
}

/// The scheduler's bookkeeping: what each node came to, what is ready to
/// go, the counts for the summary.
pub(super) struct Progress<'g> {
    pub(super) graph: &'g Graph,
    pub(super) downstream: Downstream,
    /// Unfinished upstream nodes of each node.
    pub(super) waiting: Vec<u32>,
    pub(super) ready: VecDeque<usize>,
    pub(super) results: Vec<Option<Done>>,
    /// Why each stale node in flight is stale, until it is reported.
    pub(super) reasons: HashMap<usize, DirtyReason>,
    pub(super) rep: BuildReport,
    pub(super) done: usize,
    /// `--dry-run` with an estimate: the nodes that would call a model.
    pub(super) wanted: Vec<Wanted>,
    /// Where in the stamp to look first for the next node's output.
    pub(super) near: usize,
}

impl<'g> Progress<'g> {
    pub(super) fn new(graph: &'g Graph, selected: &[bool], total: usize) -> Progress<'g> {
        let downstream = Downstream::of(graph, selected);
        let mut waiting: Vec<u32> = vec![0; graph.nodes.len()];
        for &i in &graph.order {
            if selected[i] {
                waiting[i] = graph.nodes[i].upstream_nodes().count() as u32;
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
            wanted: Vec::new(),
            near: 0,
        }
    }

    /// The report, the rest dropped (it is a few megabytes at 10,000
    /// nodes, not to be held through the saves at the end of a build).
    pub(super) fn into_report(self) -> BuildReport {
        self.rep
    }

    /// Records what node `i` came to, reports it, and readies the nodes
    /// that were waiting only for it.
    pub(super) fn complete(
        &mut self,
        i: usize,
        outcome: Outcome,
        d: Done,
        report: &(dyn Fn(Event<'_>) + Sync),
    ) {
        self.rep.count(&outcome);
        self.results[i] = Some(d);
        self.done += 1;
        // (let go once reported: kept, a full build's million were 86 MB)
        let reason = self.reasons.remove(&i);
        report(Event::Finished {
            key: &self.graph.nodes[i].key,
            outcome: &outcome,
            reason: reason.as_ref(),
            done: self.done,
            total: self.rep.total,
        });
        for &dn in self.downstream.of_node(i) {
            let dn = dn as usize;
            self.waiting[dn] -= 1;
            if self.waiting[dn] == 0 {
                self.ready.push_back(dn);
            }
        }
    }
}

/// What scheduling leaves for the save: the counts, the new records, and
/// the history lines not yet appended.
pub(super) struct Scheduled {
    pub(super) rep: BuildReport,
    pub(super) records: NewRecords,
    pub(super) history: String,
    /// The nodes whose model was called and named the snapshot that
    /// answered, with that snapshot (`drift.rs`).
    pub(super) answered: Vec<(usize, String)>,
    /// The models whose prompts' cache prefixes went uncached (reported
    /// once each).
    pub(super) cache_missed: Vec<String>,
}

/// What a worker is given: a job, or a call the prefix gate let through.
enum Work {
    Job(Job),
    Call(Box<PreparedCall>),
}

/// Runs the selected nodes (`prog`) in dependency order, the stale ones
/// on up to `opts.jobs` worker threads, with early cutoff. `untouched`,
/// from a stamp that vouches for the records, lists what changed: a node
/// that touches none of it is taken as recorded.
pub(super) fn run_all(
    ctx: &Ctx<'_>,
    mut prog: Progress<'_>,
    untouched: Option<&HashSet<String>>,
    opts: &BuildOptions,
    report: &(dyn Fn(Event<'_>) + Sync),
) -> Scheduled {
    let mut out = Scheduled {
        rep: BuildReport::default(),
        records: NewRecords::spilling_in(ctx.src.store.dir(), prog.rep.total),
        history: String::new(),
        answered: Vec::new(),
        cache_missed: Vec::new(),
    };
    let (job_tx, job_rx) = mpsc::channel::<Work>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (res_tx, res_rx) = mpsc::channel::<Worked>();
    // (used only by builds whose prompts mark a cache prefix)
    let mut gate: PrefixGate<Box<PreparedCall>> = PrefixGate::default();
    let mut gated = false;
    std::thread::scope(|scope| {
        let mut workers = 0usize;
        let mut in_flight = 0usize;
        // (it owns the sending end: dropped, it closes the queue, and the
        // workers end)
        let mut dispatch = move |work: Work, in_flight: &mut usize| {
            if workers < opts.jobs.max(1) && *in_flight >= workers {
                spawn_worker(scope, ctx, Arc::clone(&job_rx), res_tx.clone());
                workers += 1;
            }
            *in_flight += 1;
            job_tx.send(work).expect("workers alive");
        };
        // Jobs are triaged as workers can take them, not all at once: a
        // job holds its fingerprint and upstream records, and a million
        // ready nodes queued at once held a million of them (a quarter of
        // a full build's memory).
        let window = opts.jobs.max(1) * 4;
        loop {
            while in_flight < window
                && let Some(i) = prog.ready.pop_front()
            {
                let Some(job) = triage(ctx, &mut prog, i, untouched, opts, report) else {
                    continue;
                };
                dispatch(Work::Job(job), &mut in_flight);
            }
            if in_flight == 0 {
                break;
            }
            let worked = res_rx.recv().expect("a worker answers every job");
            in_flight -= 1;
            match worked {
                Worked::Done(r) => {
                    if gated {
                        for call in gate.finished(r.node) {
                            dispatch(Work::Call(call), &mut in_flight);
                        }
                    }
                    take_result(ctx, &mut prog, &mut out, r, report);
                }
                Worked::AtGate(mut call, key) => {
                    gated = true;
                    let node = call.job.node;
                    call.cache_follower = true; // unless it leads, below
                    if let Arrival::Go { mut call, first } = gate.arrive(key, node, call) {
                        call.cache_follower = !first;
                        dispatch(Work::Call(call), &mut in_flight);
                    }
                }
            }
        }
        drop(dispatch);
    });
    if opts.dry_run && opts.estimate {
        prog.rep.estimate = Some(estimate_nodes(ctx, &prog.wanted));
    }
    out.rep = prog.into_report(); // the per-node bookkeeping is freed here
    out
}

/// A worker: runs jobs until the queue closes.
fn spawn_worker<'s, 'a: 's>(
    scope: &'s std::thread::Scope<'s, '_>,
    ctx: &'a Ctx<'a>,
    rx: Arc<Mutex<mpsc::Receiver<Work>>>,
    tx: mpsc::Sender<Worked>,
) {
    scope.spawn(move || {
        loop {
            let work = match rx.lock().unwrap().recv() {
                Ok(w) => w,
                Err(_) => return,
            };
            let worked = match work {
                Work::Job(job) => run_job_gated(ctx, job),
                Work::Call(call) => Worked::Done(call_model_now(ctx, *call)),
            };
            if let Worked::Done(r) = &worked
                && matches!(r.outcome, Outcome::Failed { .. })
            {
                ctx.failed();
            }
            if tx.send(worked).is_err() {
                return;
            }
        }
    });
}

/// Decides what ready node `i` needs: completes it at once when it is
/// skipped, up to date or (`--dry-run`) would run; else the job to run.
fn triage(
    ctx: &Ctx<'_>,
    prog: &mut Progress<'_>,
    i: usize,
    untouched: Option<&HashSet<String>>,
    opts: &BuildOptions,
    report: &(dyn Fn(Event<'_>) + Sync),
) -> Option<Job> {
    let graph = ctx.src.graph;
    let node = &graph.nodes[i];
    if let Some(blame) = blocked(ctx, prog, i) {
        let because = blame.because();
        let outcome = match blame {
            Blame::Pending(_) => Outcome::Waiting { because },
            _ => Outcome::Skipped { because },
        };
        prog.complete(i, outcome, Done::blamed(blame), report);
        return None;
    }
    // With a stamp that lists what changed, a node that reads and writes
    // none of it, below only untouched nodes, is up to date as recorded:
    // the stamp was written after a complete, successful build whose
    // records were saved first, and these are they.
    if let Some(changed) = untouched
        && node
            .upstream_nodes()
            .all(|u| prog.results[u].as_ref().is_some_and(|d| d.fresh))
        && !changed.contains(&node.output)
        && !node.sources().any(|(_, p)| changed.contains(p))
        && let Some(output_digest) = recorded_output(ctx, &node.key, &node.output, &mut prog.near)
    {
        prog.complete(i, Outcome::Fresh, Done::fresh(output_digest), report);
        return None;
    }
    let deps = match graph.source_deps(node, ctx.src.files) {
        Ok(d) => d,
        Err(e) => {
            let error = e.into();
            let d = Done::failed(node.key.clone());
            prog.complete(i, Outcome::Failed { error }, d, report);
            ctx.failed();
            return None;
        }
    };
    let upstream = upstream_records(ctx, prog, i);
    let fingerprint = Fingerprint {
        config: node.config_digest,
        model: graph.model_digest(node),
        deps,
        upstream: upstream
            .iter()
            .map(|u| (u.target.clone(), u.output_digest))
            .collect(),
    };
    let record = ctx.old.get(&node.key);
    let Some(reason) = stale_reason(ctx, prog, i, record, &fingerprint) else {
        let rec = record.expect("fresh implies a record");
        prog.complete(i, Outcome::Fresh, Done::fresh(rec.output_digest), report);
        return None;
    };
    prog.reasons.insert(i, reason.clone());
    if opts.dry_run {
        prog.rep.would_run.push((node.key.clone(), reason.clone()));
        // an output-only repair keeps the recorded digest; anything else
        // may change it, which downstream must assume
        let digest = match (&reason, record) {
            (r, Some(rec)) if r.output_only() => rec.output_digest,
            _ => Digest::default(),
        };
        let d = Done {
            pending: !reason.output_only(),
            ..Done::ok(digest, Box::default())
        };
        prog.complete(i, Outcome::WouldRun, d, report);
        let model = &ctx.src.project.targets[node.target].model;
        if opts.estimate && !reason.output_only() && crate::estimate::is_estimated(model) {
            prog.wanted.push(Wanted { node: i, upstream });
        }
        return None;
    }
    report(Event::Started {
        key: &node.key,
        reason: &reason,
    });
    Some(Job {
        node: i,
        reason,
        fingerprint,
        upstream,
    })
}

/// The recorded output digest of an untouched node (see [`triage`]): the
/// one the vouching stamp keeps for its output file, as the build that
/// wrote the stamp succeeded at every node, so each record's output digest
/// is its output file's (read that way, an edit's build at a million
/// targets does not page in a million records); else its record's, when
/// that run did not fail.
fn recorded_output(ctx: &Ctx<'_>, key: &str, output: &str, near: &mut usize) -> Option<Digest> {
    if let Some(d) = ctx.src.files.vouched_digest(output, near) {
        return Some(d);
    }
    match ctx.old.output(key) {
        Some((d, false)) => Some(d),
        _ => None,
    }
}

/// Why node `i` cannot run now, if it cannot: the build was interrupted,
/// something upstream failed or was not run, or the build is stopping.
fn blocked(ctx: &Ctx<'_>, prog: &Progress<'_>, i: usize) -> Option<Blame> {
    if crate::exec::interrupted() {
        return Some(Blame::NotRun(INTERRUPTED.to_string()));
    }
    let blame = (ctx.src.graph.nodes[i].upstream_nodes())
        .filter_map(|u| prog.results[u].as_ref().and_then(|d| d.blame.as_deref()))
        // a failure upstream says more than that the build stopped, which
        // says more than a wait for a batch
        .min_by_key(|b| match b {
            Blame::Failed(_) => 0,
            Blame::NotRun(_) => 1,
            Blame::Pending(_) => 2,
        })
        .cloned();
    if blame.is_some() {
        return blame;
    }
    if let Some(why) = ctx.budget.as_ref().and_then(|b| b.reached()) {
        return Some(Blame::NotRun(why.to_string()));
    }
    (ctx.stopping.load(Ordering::SeqCst)).then(|| Blame::NotRun(STOPPED.to_string()))
}

/// What node `i`'s upstream nodes came to, in its upstream order.
fn upstream_records(ctx: &Ctx<'_>, prog: &Progress<'_>, i: usize) -> Vec<UpstreamRecord> {
    let graph = ctx.src.graph;
    (graph.nodes[i].upstream_nodes())
        .map(|u| {
            let d = prog.results[u].as_ref().expect("upstream finished first");
            let target = &graph.nodes[u].key;
            // a fresh node's run is the one its record names
            let run_id = match ctx.old.get(target) {
                Some(rec) if d.fresh => rec.run_id.clone(),
                _ => d.run_id.to_string(),
            };
            UpstreamRecord {
                target: target.clone(),
                run_id,
                output_digest: d.output_digest,
            }
        })
        .collect()
}

/// Why node `i` is stale, if it is (`fingerprint.rs` decides).
fn stale_reason(
    ctx: &Ctx<'_>,
    prog: &Progress<'_>,
    i: usize,
    record: Option<&TargetRecord>,
    fingerprint: &Fingerprint,
) -> Option<DirtyReason> {
    let graph = ctx.src.graph;
    let node = &graph.nodes[i];
    let out_digest = ctx.src.files.digest(&node.output).ok().flatten();
    let pending = |target: &str| {
        node.upstream_nodes().any(|u| {
            graph.nodes[u].key == target && prog.results[u].as_ref().is_some_and(|d| d.pending)
        })
    };
    let forced = ctx.forced[i];
    staleness(
        record,
        fingerprint,
        &node.output,
        out_digest,
        forced,
        pending,
    )
}

/// Takes in a finished job: its spend, warnings, history line and record.
fn take_result(
    ctx: &Ctx<'_>,
    prog: &mut Progress<'_>,
    out: &mut Scheduled,
    r: JobResult,
    report: &(dyn Fn(Event<'_>) + Sync),
) {
    if let Some((u, c)) = &r.spent {
        prog.rep.spent.add(Some(u), *c);
    }
    if let Some((u, c)) = &r.saved {
        prog.rep.saved.add(Some(u), *c);
    }
    prog.rep.batch_saved_usd += r.batch_saved.unwrap_or(0.0);
    if let Some(cache) = &r.prompt_cache {
        prog.rep
            .prompt_cache
            .add(cache.read, cache.written, cache.saved_usd);
        if let Some(model) = &cache.missed
            && !out.cache_missed.contains(model)
        {
            out.cache_missed.push(model.clone());
            report(Event::Warning(format!(
                "model `{model}`: a prompt prefix marked for caching was neither written to nor read from the provider's cache; it is likely shorter than the model's minimum (1,024 tokens for most models)\n\
                 help: mark a longer prefix (a later `{{# mkt:cache #}}` line, more in the system messages), or remove `prompt_cache`"
            )));
        }
    }
    for w in r.warnings {
        report(Event::Warning(w));
    }
    if let Some(h) = r.history {
        out.history.push_str(&h);
        // written as the build goes: bounded memory, and finished runs
        // are on record even if the build is interrupted
        if out.history.len() > 64 * 1024 && ctx.src.store.append_history(&out.history).is_ok() {
            out.history.clear();
        }
    }
    let key = &ctx.src.graph.nodes[r.node].key;
    // (only a node's dependants ask for its run id: a corpus's million
    // leaves keep none)
    let run_id = |rec: &TargetRecord| match prog.downstream.of_node(r.node) {
        [] => Box::default(),
        _ => rec.run_id.as_str().into(),
    };
    let d = match &r.record {
        Some(rec) if !rec.failed => Done::ok(rec.output_digest, run_id(rec)),
        // (a job that did not run: the build stopped first, or `mkt cache
        // pull` found it in no cache)
        _ if let Outcome::Skipped { because } = &r.outcome => Done::not_run(because),
        _ if matches!(r.outcome, Outcome::Pending { .. }) => {
            Done::blamed(Blame::Pending(key.clone()))
        }
        _ => Done::failed(key.clone()),
    };
    if let Some(rec) = r.record {
        if matches!(r.outcome, Outcome::Ran { .. }) && !rec.answered_by.is_empty() {
            out.answered.push((r.node, rec.answered_by.clone()));
        }
        out.records.insert(key, &rec);
    }
    prog.complete(r.node, r.outcome, d, report);
}
