//! One stale target's work, in two parts with a seam between them:
//! [`prepare`] (restore the output from the store, compile, look the
//! prompt up in the action cache and the remote cache) comes either to a
//! finished result or to a [`PreparedCall`]: the compiled prompt and its
//! InputBundleHash, and all that finishing needs, as plain data. Then the
//! model is called, and [`finish`] takes its response: the run's manifest,
//! the output in the store, the output file, the record and the history
//! line. Nothing of [`finish`]'s input borrows from the build that
//! prepared the call, so a response that arrives later, in another
//! process, can be finished with the store and project opened there.

use super::batching::{BatchPass, Route, batch_cost};
use super::compile::{Sources, compile_node, node_model};
use super::report::{INTERRUPTED, JobError, Outcome, STOPPED};
use crate::config::TargetDecl;
use crate::error::Result;
use crate::exec::{ModelError, ModelResponse};
use crate::graph::Node;
use crate::hash::{Digest, InputBundleHash};
use crate::history::{HistoryEntry, RunKind};
use crate::manifest::{
    self, FileDigest, InputRecord, ModelRecord, OutputRecord, RunManifest, RunStatus, Timing,
    UpstreamRecord, Usage,
};
use crate::state::{DirtyReason, Fingerprint, TargetRecord, TargetRecords};
use crate::store::{AcRead, ObjectRead};
use crate::template::CompiledPrompt;
use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A stale node to build, and what its freshness check found.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Job {
    /// Its index in the graph (the same in any process that analyses the
    /// same project).
    pub(crate) node: usize,
    pub(crate) reason: DirtyReason,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) upstream: Vec<UpstreamRecord>,
}

pub(crate) struct JobResult {
    pub(crate) node: usize,
    pub(crate) outcome: Outcome,
    pub(crate) record: Option<TargetRecord>,
    pub(crate) warnings: Vec<String>,
    pub(crate) history: Option<String>,
    /// Usage and cost of the model call made (`spent`) or of the run
    /// served from the action cache instead (`saved`).
    pub(crate) spent: Option<(Usage, Option<f64>)>,
    pub(crate) saved: Option<(Usage, Option<f64>)>,
    /// A batch answer: what the ordinary call would have cost more.
    pub(crate) batch_saved: Option<f64>,
    /// What the provider's prompt cache did for the model call made.
    pub(crate) prompt_cache: Option<CacheUse>,
}

/// A model call's use of the provider's prompt cache.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CacheUse {
    pub(crate) read: u64,
    pub(crate) written: u64,
    /// Against the same tokens uncached, where the model has prices.
    pub(crate) saved_usd: Option<f64>,
    /// The prompt marked a prefix for caching, and the answer shows it
    /// was not cached (too short for the model): the model's name.
    pub(crate) missed: Option<String>,
}

impl CacheUse {
    /// From the usage of a call to `decl`'s model; `marked`: its prompt
    /// had a cache prefix, `follower`: sent after that prefix's first call
    /// was answered.
    fn of(decl: &TargetDecl, usage: &Usage, marked: bool, follower: bool) -> CacheUse {
        let (read, written) = (usage.cached_tokens, usage.cache_write_tokens);
        // Anthropic reports a write for a prefix it caches; OpenAI, which
        // reports none, a read for every call after the first
        let missed = marked
            && read == 0
            && match decl.model.provider {
                crate::config::Provider::Anthropic => written == 0,
                _ => follower,
            };
        CacheUse {
            read,
            written,
            saved_usd: decl.model.settings.prompt_cache_saving(usage),
            missed: missed.then(|| decl.model.name.clone()),
        }
    }
}

/// A job ready for its model call (see the module docs).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct PreparedCall {
    pub(crate) job: Job,
    /// The model to send it to: the target's, with a `.prompty`
    /// template's parameters applied.
    pub(crate) model: std::sync::Arc<crate::config::ModelConfig>,
    /// What to send to the model.
    pub(crate) prompt: CompiledPrompt,
    /// Its canonical JSON, stored with the run.
    pub(crate) prompt_json: Vec<u8>,
    /// The run's manifest as far as it is known before the call: its
    /// InputBundleHash, the digests of the sources compiled, the model, the
    /// start; `finish` adds the run id, the outputs and the end.
    pub(crate) manifest: RunManifest,
    /// Wall time the job took before the call.
    pub(crate) prepare_ms: f64,
    pub(crate) warnings: Vec<String>,
    /// With `pin = true`: the snapshot the answer must come from (the one
    /// that made the target's output, or the model's newest; `drift.rs`).
    #[serde(default)]
    pub(crate) pinned_to: Option<String>,
    /// The key of the prompt prefix marked for the provider's cache
    /// (`exec/cache.rs`), if one is.
    #[serde(default)]
    pub(crate) cache_prefix: Option<Digest>,
    /// Sent after the first call of its prefix was answered (`prefix.rs`):
    /// its answer should read the cache.
    #[serde(default)]
    pub(crate) cache_follower: bool,
}

/// What [`prepare`] came to.
#[expect(
    clippy::large_enum_variant,
    reason = "made and taken apart once per job, never stored"
)]
pub(crate) enum Prepared {
    /// Done without a model call: restored, served from a cache, skipped
    /// or failed.
    Done(JobResult),
    /// A model call to make.
    Call(PreparedCall),
}

pub(crate) struct Ctx<'a> {
    pub(crate) src: Sources<'a>,
    pub(crate) old: &'a TargetRecords,
    /// `--force`: which nodes skip the action cache.
    pub(crate) forced: Vec<bool>,
    pub(crate) remote: Option<&'a crate::remote::Remote>,
    pub(crate) fetch_only: bool,
    /// Set by the first failure unless `--keep-going` ([`Ctx::failed`]):
    /// no node is dispatched after it, and the jobs queued before it are
    /// not started (the scheduler may have queued a whole layer of
    /// independent targets before the failure).
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    pub(crate) keep_going: bool,
    /// Batches: what was collected, what is pending, what to queue.
    pub(crate) batch: Option<&'a BatchPass>,
    /// The cost cap, when the build has one.
    pub(crate) budget: Option<super::budget::Budget>,
    /// The newest snapshot of each pinned model's outputs, found when
    /// first asked for.
    pub(crate) pins: crate::drift::Pins,
}

impl Ctx<'_> {
    /// Notes a failure (in a worker, as soon as its job ends, so that the
    /// job it takes next already sees it): the build stops unless
    /// `--keep-going`.
    pub(crate) fn failed(&self) {
        if !self.keep_going {
            self.stopping.store(true, Ordering::SeqCst);
        }
    }

    /// The snapshot a pinned model must answer `node` from: the one that
    /// made its output, else the one that made the model's newest output.
    fn pinned_to(&self, node: &Node, model: &str) -> Option<String> {
        match self.old.get(&node.key) {
            Some(rec) if !rec.answered_by.is_empty() => Some(rec.answered_by.clone()),
            _ => {
                let (project, graph) = (self.src.project, self.src.graph);
                self.pins.newest(model, || {
                    crate::drift::census(project, graph, model, |k| {
                        self.old.get(k).map(std::borrow::Cow::Borrowed)
                    })
                })
            }
        }
    }

    /// Why a job should not start now, if the build is stopping.
    pub(crate) fn why_stopped(&self) -> Option<&str> {
        if crate::exec::interrupted() {
            Some(INTERRUPTED)
        } else if self.stopping.load(Ordering::SeqCst) {
            Some(STOPPED)
        } else {
            self.budget.as_ref().and_then(|b| b.reached())
        }
    }
}

/// What a worker's job came to: its result, or a call whose prompt shares
/// a cache prefix, for the scheduler's gate (`prefix.rs`) to send on.
#[expect(
    clippy::large_enum_variant,
    reason = "made and taken apart once per job, never stored"
)]
pub(crate) enum Worked {
    Done(JobResult),
    AtGate(Box<PreparedCall>, Digest),
}

/// One job's work, in this process: prepared, the model called, finished;
/// except that a call with a cache prefix goes back to the scheduler
/// before the model is called.
pub(crate) fn run_job_gated(ctx: &Ctx<'_>, job: Job) -> Worked {
    match prepare(ctx, job) {
        Prepared::Done(r) => Worked::Done(r),
        Prepared::Call(call) => match call.cache_prefix {
            Some(key) => Worked::AtGate(Box::new(call), key),
            None => Worked::Done(call_model(ctx, call)),
        },
    }
}

/// A call the gate let through: skipped if the build stopped meanwhile.
pub(crate) fn call_model_now(ctx: &Ctx<'_>, call: PreparedCall) -> JobResult {
    match ctx.why_stopped() {
        Some(because) => skipped(&call.job, because, call.warnings),
        None => call_model(ctx, call),
    }
}

/// The model call of a prepared job, and its finish: unless a batch
/// answers it, or it waits in one, or the cost cap holds it back.
fn call_model(ctx: &Ctx<'_>, call: PreparedCall) -> JobResult {
    let call = match ctx.batch {
        Some(b) => match b.route(&ctx.src, ctx.remote, call) {
            Route::Done(r) => return r,
            Route::Call(call) => call,
        },
        None => call,
    };
    // with a cost cap, the call's upper bound is taken out of the budget
    // before it is sent (see `budget.rs`)
    let reserved = match &ctx.budget {
        None => None,
        Some(b) => match b.reserve(super::estimate::call_high_cost(ctx, &call)) {
            Ok(r) => Some((b, r)),
            Err(why) => return skipped(&call.job, why, call.warnings),
        },
    };
    let t_process = Instant::now();
    let mut stats = crate::exec::CallStats::default();
    let response = crate::exec::call(&call.model, &call.prompt, ctx.src.files.root(), &mut stats);
    let called = Called {
        process_ms: t_process.elapsed().as_secs_f64() * 1e3,
        stats,
        batch: None,
    };
    let r = finish(&ctx.src, ctx.remote, call, response, called);
    if let Some((budget, reserved)) = reserved {
        let cost = r.spent.as_ref().and_then(|(_, c)| *c);
        budget.settle(reserved, cost.unwrap_or(0.0));
    }
    r
}

fn decl_of<'a>(src: &Sources<'a>, node: usize) -> &'a TargetDecl {
    &src.project.targets[src.graph.nodes[node].target]
}

/// The part of a job before its model call (module docs).
pub(crate) fn prepare(ctx: &Ctx<'_>, job: Job) -> Prepared {
    let started = Instant::now();
    let node = &ctx.src.graph.nodes[job.node];
    let decl = decl_of(&ctx.src, job.node);
    let mut warnings = Vec::new();
    // a job queued before the build stopped is not started
    if let Some(because) = ctx.why_stopped() {
        return Prepared::Done(skipped(&job, because, warnings));
    }
    // 1. Only the output file is off: restore it from the store.
    if job.reason.output_only()
        && let Some(rec) = ctx.old.get(&node.key)
    {
        match ctx.src.store.get(&rec.output_digest) {
            ObjectRead::Found(bytes) => {
                let how = Served::Restored(rec);
                return Prepared::Done(serve(&ctx.src, &job, started, how, &bytes, warnings));
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
    let expected: HashMap<&str, Digest> = (job.fingerprint.deps.iter())
        .map(|d| (d.path.as_str(), d.digest))
        .collect();
    let compiled = compile_node(&ctx.src, node, &expected, &job.upstream)
        .and_then(|p| Ok((p, node_model(&ctx.src, node, &expected)?)));
    let (prompt, model) = match compiled {
        Ok(c) => c,
        Err(e) => {
            let h = history_line(
                node,
                &job,
                &decl.model.name,
                ms_since(started),
                (RunKind::Failed, "", None, None, None),
                None,
                None,
            );
            let error = JobError::Compile(std::sync::Arc::new(e));
            return Prepared::Done(failed(&job, node, error, warnings, Some(h)));
        }
    };
    let compile_ms = ms_since(started);
    let prompt_json = prompt.canonical_json();
    let prompt_digest = Digest::of(&prompt_json);
    let params = model.hashed_params();
    let ibh = InputBundleHash::compute(prompt_digest, model.provider.as_str(), &params);
    // 3. The action caches.
    if !ctx.forced[job.node] {
        match look_up(ctx, &job, started, ibh, &prompt_json, warnings) {
            Ok(done) => return Prepared::Done(done),
            Err(w) => warnings = w,
        }
    }
    if ctx.fetch_only {
        return Prepared::Done(skipped(&job, "not in the remote cache", warnings));
    }
    let manifest = RunManifest {
        input_bundle_hash: ibh,
        prompt_digest,
        model: ModelRecord {
            name: model.name.clone(),
            provider: model.provider.as_str().into(),
            params,
        },
        upstream: job.upstream.clone(),
        timing: Timing {
            started_at: manifest::now_rfc3339(),
            finished_at: String::new(),
            compile_ms,
            process_ms: 0.0,
            attempts: None,
            rate_limit_wait_ms: None,
        },
        ..sources_manifest(&ctx.src, node)
    };
    let pinned_to = (decl.model.settings.pin == Some(true))
        .then(|| ctx.pinned_to(node, &decl.model.name))
        .flatten();
    let cache_prefix = crate::exec::cache::prefix_key(&decl.model, &prompt);
    Prepared::Call(PreparedCall {
        job,
        model,
        prompt,
        prompt_json,
        manifest,
        prepare_ms: ms_since(started),
        warnings,
        pinned_to,
        cache_prefix,
        cache_follower: false,
    })
}

/// Looks the prompt up in the local action cache, then in the remote
/// cache: the job's result when one of them has the run, else the
/// warnings so far.
fn look_up(
    ctx: &Ctx<'_>,
    job: &Job,
    started: Instant,
    ibh: InputBundleHash,
    prompt_json: &[u8],
    mut warnings: Vec<String>,
) -> std::result::Result<JobResult, Vec<String>> {
    let node = &ctx.src.graph.nodes[job.node];
    match ctx.src.store.ac_get(&ibh) {
        AcRead::Found(m) => match ctx.src.store.get(&m.outputs[0].digest) {
            ObjectRead::Found(bytes) => {
                let how = Served::Cached(&m, ibh, false);
                return Ok(serve(&ctx.src, job, started, how, &bytes, warnings));
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
    // The remote cache: a local miss is looked up there before any model
    // call. What it returns was verified (`remote.rs`).
    let Some(remote) = ctx.remote else {
        return Err(warnings);
    };
    use crate::remote::Fetch;
    match remote.fetch(&ibh, &Digest::of(prompt_json)) {
        Fetch::Hit {
            manifest: m,
            output,
        } => {
            let stored = (|| -> Result<()> {
                ctx.src.store.put(prompt_json)?;
                ctx.src.store.put(&output)?;
                ctx.src.store.ac_put(&m)
            })();
            return Ok(match stored {
                Err(e) => failed(job, node, e.into(), warnings, None),
                Ok(()) => {
                    let how = Served::Cached(&m, ibh, true);
                    serve(&ctx.src, job, started, how, &output, warnings)
                }
            });
        }
        Fetch::Bad(why) => warnings.push(format!(
            "{why}; not used for `{}`, running the model",
            node.key
        )),
        Fetch::Miss | Fetch::Down => {}
    }
    warnings.extend(remote.take_down_warning().map(|e| e.to_string()));
    Err(warnings)
}

/// How a job was served without a model call.
enum Served<'m> {
    /// Its output restored from the store, as its record says.
    Restored(&'m TargetRecord),
    /// From an action cache: the local one's, or (`true`) the remote's.
    Cached(&'m RunManifest, InputBundleHash, bool),
}

/// The result of a job served without a model call: its output written
/// from `bytes`, its record and history line.
fn serve(
    src: &Sources<'_>,
    job: &Job,
    started: Instant,
    how: Served<'_>,
    bytes: &[u8],
    warnings: Vec<String>,
) -> JobResult {
    let node = &src.graph.nodes[job.node];
    let decl = decl_of(src, job.node);
    let (digest, run_id, ibh, answered_by) = match &how {
        Served::Restored(rec) => (rec.output_digest, &rec.run_id, rec.ibh, &*rec.answered_by),
        Served::Cached(m, ibh, _) => (
            m.outputs[0].digest,
            &m.run_id,
            ibh.0,
            m.answered_by.as_deref().unwrap_or(""),
        ),
    };
    if let Err(e) = write_output(src, node, bytes, digest) {
        return failed(job, node, e.into(), warnings, None);
    }
    let (kind, outcome, remote, saved) = match how {
        Served::Restored(_) => (RunKind::Restored, Outcome::Restored, None, None),
        Served::Cached(m, _, remote) => {
            let run_id = m.run_id.clone();
            // what the run cost when it was made, at today's prices
            let saved = (m.usage.clone()).map(|u| {
                let c = decl.model.settings.cost_usd(&u);
                (u, c)
            });
            let outcome = Outcome::Cached { run_id, remote };
            (RunKind::Cached, outcome, remote.then_some(m), saved)
        }
    };
    let line = (kind, run_id.as_str(), Some(ibh), None, None);
    let h = history_line(
        node,
        job,
        &decl.model.name,
        ms_since(started),
        line,
        remote,
        None,
    );
    JobResult {
        node: job.node,
        outcome,
        record: Some(record_for(job, node, ibh, digest, (run_id, answered_by))),
        warnings,
        history: Some(h),
        spent: None,
        saved,
        batch_saved: None,
        prompt_cache: None,
    }
}

/// The manifest's record of the sources `node` was compiled from, with
/// the digests the build read them with (the rest to be filled in).
fn sources_manifest(src: &Sources<'_>, node: &Node) -> RunManifest {
    let digest_of = |p: &str| src.files.digest(p).ok().flatten().unwrap_or_default();
    let file = |p: &str| FileDigest {
        path: p.to_string(),
        digest: digest_of(p),
    };
    RunManifest {
        schema: manifest::MANIFEST_SCHEMA.into(),
        run_id: String::new(),
        target: node.key.clone(),
        input_bundle_hash: InputBundleHash(Digest::default()),
        template: file(&node.template),
        partials: node.partials.iter().map(|p| file(p)).collect(),
        verbatim: node.verbatim.iter().map(|p| file(p)).collect(),
        item: node.item.as_deref().map(file),
        inputs: (node.inputs.iter())
            .flat_map(|i| i.paths.iter().map(move |p| (i.name.clone(), p)))
            .map(|(name, p)| InputRecord {
                name,
                path: p.clone(),
                digest: digest_of(p),
            })
            .collect(),
        upstream: Vec::new(),
        prompt_digest: Digest::default(),
        model: ModelRecord {
            name: String::new(),
            provider: String::new(),
            params: Default::default(),
        },
        outputs: Vec::new(),
        status: RunStatus::Ok,
        error: None,
        usage: None,
        cost_usd: None,
        answered_by: None,
        system_fingerprint: None,
        timing: Timing {
            started_at: String::new(),
            finished_at: String::new(),
            compile_ms: 0.0,
            process_ms: 0.0,
            attempts: None,
            rate_limit_wait_ms: None,
        },
        tool_version: env!("CARGO_PKG_VERSION").into(),
        host: crate::remote::hostname(),
        batch: None,
    }
}

/// How a model call went: how long it took, and its requests and waits
/// (HTTP providers).
pub(crate) struct Called {
    pub process_ms: f64,
    pub stats: crate::exec::CallStats,
    /// The provider's batch that answered, for an answer collected from one.
    pub batch: Option<String>,
}

/// The part of a job after its model call (module docs): `response`,
/// which took what `called` says, becomes the run. `src` may belong to another
/// process than the one that prepared `call`, opened on the same project.
pub(crate) fn finish(
    src: &Sources<'_>,
    remote: Option<&crate::remote::Remote>,
    call: PreparedCall,
    response: std::result::Result<ModelResponse, ModelError>,
    called: Called,
) -> JobResult {
    let t_finish = Instant::now();
    let PreparedCall {
        job,
        prompt_json,
        mut manifest,
        prepare_ms,
        warnings,
        pinned_to,
        cache_prefix,
        cache_follower,
        ..
    } = call;
    let node = &src.graph.nodes[job.node];
    let decl = decl_of(src, job.node);
    let response = check_pin(&decl.model.name, pinned_to.as_deref(), response);
    let run_id = manifest::new_run_id();
    let m = &mut manifest;
    m.run_id = run_id.clone();
    m.timing.finished_at = manifest::now_rfc3339();
    m.timing.process_ms = called.process_ms;
    let stats = &called.stats;
    m.timing.attempts = (stats.attempts > 0).then_some(stats.attempts);
    m.timing.rate_limit_wait_ms =
        (stats.attempts > 0).then_some(stats.rate_limit_wait.as_secs_f64() * 1e3);
    m.batch = called.batch.clone();
    let stored = store_run(src, remote, node, decl, m, prompt_json, response);
    let spent = m.usage.clone().map(|u| (u, m.cost_usd));
    let batch_saved = (m.batch.as_ref())
        .and_then(|_| decl.model.settings.cost_usd(m.usage.as_ref()?))
        .map(|ordinary| ordinary - m.cost_usd.unwrap_or(0.0));
    let batch = m.batch.as_deref();
    let prompt_cache =
        (m.usage.as_ref()).map(|u| CacheUse::of(decl, u, cache_prefix.is_some(), cache_follower));
    let ibh = m.input_bundle_hash.0;
    let took = || prepare_ms + called.process_ms + ms_since(t_finish);
    let line = |kind| {
        (
            kind,
            run_id.as_str(),
            Some(ibh),
            m.usage.clone(),
            m.cost_usd,
        )
    };
    match stored {
        Ok(Ok(d)) => JobResult {
            node: job.node,
            outcome: Outcome::Ran {
                run_id: run_id.clone(),
                batch: batch.map(str::to_string),
            },
            record: Some(record_for(
                &job,
                node,
                ibh,
                d,
                (&run_id, m.answered_by.as_deref().unwrap_or("")),
            )),
            warnings,
            history: Some(history_line(
                node,
                &job,
                &decl.model.name,
                took(),
                line(RunKind::Ran),
                None,
                batch,
            )),
            spent,
            saved: None,
            batch_saved,
            prompt_cache,
        },
        Ok(Err(error)) => {
            let h = history_line(
                node,
                &job,
                &decl.model.name,
                took(),
                line(RunKind::Failed),
                None,
                batch,
            );
            JobResult {
                spent,
                prompt_cache,
                ..failed(&job, node, JobError::Model(error), warnings, Some(h))
            }
        }
        Err(e) => JobResult {
            spent,
            ..failed(&job, node, e.into(), warnings, None)
        },
    }
}

/// With `pin = true` (`pinned_to`, the snapshot the model's outputs were
/// made by), an answer from another snapshot is a failed run.
fn check_pin(
    model: &str,
    pinned_to: Option<&str>,
    response: std::result::Result<ModelResponse, ModelError>,
) -> std::result::Result<ModelResponse, ModelError> {
    match (response, pinned_to) {
        (Ok(r), Some(was)) if r.model.as_deref().is_some_and(|now| now != was) => {
            Err(ModelError::SnapshotChanged {
                model: model.to_string(),
                was: was.to_string(),
                now: r.model.unwrap_or_default(),
                usage: r.usage,
            })
        }
        (response, _) => response,
    }
}

/// Stores a finished call's run: `Ok(Ok(digest))`: its output, in the
/// store, the action cache and the output file; `Ok(Err)`: the model
/// failed (recorded in `runs/`); `Err`: the store could not be written.
fn store_run(
    src: &Sources<'_>,
    remote: Option<&crate::remote::Remote>,
    node: &Node,
    decl: &TargetDecl,
    m: &mut RunManifest,
    prompt_json: Vec<u8>,
    response: std::result::Result<ModelResponse, ModelError>,
) -> Result<std::result::Result<Digest, ModelError>> {
    src.store.put(&prompt_json)?;
    match response {
        Ok(resp) => {
            m.answered_by = resp.model;
            m.system_fingerprint = resp.system_fingerprint;
            let d = src.store.put(&resp.output)?;
            m.outputs.push(OutputRecord {
                path: node.output.clone(),
                digest: d,
                bytes: resp.output.len() as u64,
            });
            m.cost_usd = match m.batch {
                Some(_) => batch_cost(&decl.model, resp.usage.as_ref()),
                None => (resp.usage.as_ref()).and_then(|u| decl.model.settings.cost_usd(u)),
            };
            m.usage = resp.usage;
            src.store.ac_put(m)?;
            write_output(src, node, &resp.output, d)?;
            // published in the background once it is safe locally
            if let Some(remote) = remote {
                remote.upload(m.clone(), prompt_json, resp.output);
            }
            Ok(Ok(d))
        }
        Err(e) => {
            if let ModelError::SnapshotChanged { now, .. } = &e {
                m.answered_by = Some(now.clone());
            }
            m.status = RunStatus::Failed;
            m.error = Some(e.to_string());
            m.cost_usd = match m.batch {
                Some(_) => batch_cost(&decl.model, e.usage()),
                None => e.usage().and_then(|u| decl.model.settings.cost_usd(u)),
            };
            m.usage = e.usage().cloned();
            src.store.put_run(m)?;
            Ok(Err(e))
        }
    }
}

fn write_output(src: &Sources<'_>, node: &Node, bytes: &[u8], digest: Digest) -> Result<()> {
    // Checked again here, not only by analysis: a graph from its cache was
    // checked when its directories were as they were then, and one of them
    // may since have been swapped for a symlink out of the project.
    if src.files.check_writable(&node.output).is_err() {
        let (message, help) = crate::graph::output_escapes(&node.key, &node.output);
        return Err(crate::error::Error::InvalidFile {
            path: node.output.clone().into(),
            message,
            help: Some(help),
        });
    }
    if src.files.digest(&node.output).ok().flatten() == Some(digest) {
        return Ok(());
    }
    src.files.forget(&node.output);
    // (a temp file renamed into place, not an unnamed file linked: file
    // watchers, `mkt watch` among them, would see the unnamed file written
    // under a made-up name, `#<inode>`, in the output's directory)
    src.store
        .write_output(&src.files.abs(&node.output), bytes)?;
    src.files.wrote(&node.output, digest);
    Ok(())
}

/// The history line of a job that ends now (format: `history.rs`).
fn history_line(
    node: &Node,
    job: &Job,
    model: &str,
    duration_ms: f64,
    (status, run_id, ibh, usage, cost_usd): (
        RunKind,
        &str,
        Option<Digest>,
        Option<Usage>,
        Option<f64>,
    ),
    remote: Option<&RunManifest>,
    batch: Option<&str>,
) -> String {
    let ms = duration_ms;
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
        batch: batch.map(str::to_string),
    }
    .to_line()
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The record of a job whose output has `digest`, made by run `run_id`
/// (which the model snapshot `answered_by` answered, if known).
fn record_for(
    job: &Job,
    node: &Node,
    ibh: Digest,
    digest: Digest,
    (run_id, answered_by): (&str, &str),
) -> TargetRecord {
    TargetRecord {
        fingerprint: job.fingerprint.clone(),
        ibh,
        output: node.output.clone(),
        output_digest: digest,
        run_id: run_id.to_string(),
        failed: false,
        answered_by: answered_by.to_string(),
    }
}

/// A failed job's result: its record says so, and it is not cached.
fn failed(
    job: &Job,
    node: &Node,
    error: JobError,
    warnings: Vec<String>,
    history: Option<String>,
) -> JobResult {
    JobResult {
        node: job.node,
        outcome: Outcome::Failed { error },
        record: Some(TargetRecord {
            failed: true,
            ..record_for(job, node, Digest::default(), Digest::default(), ("", ""))
        }),
        warnings,
        history,
        spent: None,
        saved: None,
        batch_saved: None,
        prompt_cache: None,
    }
}

fn skipped(job: &Job, because: &str, warnings: Vec<String>) -> JobResult {
    JobResult {
        node: job.node,
        outcome: Outcome::Skipped {
            because: because.to_string(),
        },
        record: None,
        warnings,
        history: None,
        spent: None,
        saved: None,
        batch_saved: None,
        prompt_cache: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{BuildOptions, build};
    use crate::config::Project;
    use crate::files::ProjectFiles;
    use crate::graph::{Graph, analyse_project};
    use crate::state::{State, StateDelta, StateFiles};
    use crate::store::ObjectStore;
    use camino::Utf8Path;

    /// The project at `root` as a process that opens it finds it.
    fn open(root: &Utf8Path) -> (ObjectStore, Project, Graph, ProjectFiles) {
        let store = ObjectStore::open(root).unwrap();
        let project = Project::parse(root, Project::read_source(root).unwrap()).unwrap();
        let files = ProjectFiles::new(root, Default::default());
        let graph = analyse_project(&project, &files, &Default::default()).unwrap();
        (store, project, graph, files)
    }

    /// Prepares the job of the project's first node in one process's
    /// build: the call it comes to, as the bytes another process reads.
    fn prepared_call(root: &Utf8Path) -> Vec<u8> {
        let (store, project, graph, files) = open(root);
        let node = &graph.nodes[0];
        let fingerprint = Fingerprint {
            config: node.config_digest,
            model: graph.model_digest(node),
            deps: graph.source_deps(node, &files).unwrap(),
            upstream: Vec::new(),
        };
        let old = TargetRecords::from(HashMap::default());
        let ctx = Ctx {
            src: Sources {
                project: &project,
                graph: &graph,
                files: &files,
                store: &store,
            },
            old: &old,
            forced: vec![false],
            remote: None,
            fetch_only: false,
            stopping: Default::default(),
            keep_going: false,
            batch: None,
            budget: None,
            pins: Default::default(),
        };
        let job = Job {
            node: 0,
            reason: DirtyReason::NeverBuilt,
            fingerprint,
            upstream: Vec::new(),
        };
        match prepare(&ctx, job) {
            Prepared::Call(call) => serde_json::to_vec(&call).unwrap(),
            Prepared::Done(r) => panic!("prepared to {:?}, not to a call", r.outcome),
        }
    }

    #[test]
    fn a_failed_job_says_what_failed_as_data() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let write = |p: &str, s: &str| std::fs::write(root.join(p), s).unwrap();
        write(
            "prompts.toml",
            "[models.bad]\nprovider = \"command\"\ncommand = [\"false\"]\n\
             [targets.called]\ntemplate = \"ok.md\"\noutput = \"a.out\"\nmodel = \"bad\"\n\
             [targets.rendered]\ntemplate = \"bad.md\"\noutput = \"b.out\"\n",
        );
        write("ok.md", "hello\n");
        write("bad.md", "{{ \"a\" + 1 }}\n");
        let failures = std::sync::Mutex::new(Vec::new());
        let opts = BuildOptions {
            keep_going: true,
            ..Default::default()
        };
        build(root, &opts, &|e| {
            if let crate::build::Event::Finished {
                key,
                outcome: Outcome::Failed { error },
                ..
            } = e
            {
                failures
                    .lock()
                    .unwrap()
                    .push((key.to_string(), error.clone()));
            }
        })
        .unwrap();
        let mut failures = failures.into_inner().unwrap();
        failures.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(
            matches!(&failures[0], (k, JobError::Model(ModelError::Failed(_))) if k == "called"),
            "{failures:?}"
        );
        assert!(
            matches!(&failures[1], (k, JobError::Compile(_)) if k == "rendered"),
            "{failures:?}"
        );
    }

    #[test]
    fn a_prepared_call_is_finished_later_by_another_store_handle() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let write = |p: &str, s: &str| std::fs::write(root.join(p), s).unwrap();
        write(
            "prompts.toml",
            "[targets.notes]\ntemplate = \"notes.md\"\n\
             inputs = { topic = \"topic.txt\" }\noutput = \"notes.out.md\"\n",
        );
        write("notes.md", "Notes on {{ inputs.topic }}.\n");
        write("topic.txt", "owls\n");
        let bytes = prepared_call(root);
        // everything of that build is gone; only the call, as data, is left
        let call: PreparedCall = serde_json::from_slice(&bytes).unwrap();
        let ibh = call.manifest.input_bundle_hash;
        let (store, project, graph, files) = open(root);
        let mut stats = crate::exec::CallStats::default();
        let response = crate::exec::call(&call.model, &call.prompt, root, &mut stats);
        let want = response.as_ref().unwrap().output.clone();
        store.begin_writes().unwrap();
        let src = Sources {
            project: &project,
            graph: &graph,
            files: &files,
            store: &store,
        };
        let called = Called {
            process_ms: 1.0,
            stats,
            batch: None,
        };
        let r = finish(&src, None, call, response, called);
        let Outcome::Ran { run_id, .. } = &r.outcome else {
            panic!("finished to {:?}", r.outcome);
        };
        // the run is stored, and the output file written
        let AcRead::Found(m) = store.ac_get(&ibh) else {
            panic!("no action cache entry for the finished run");
        };
        assert_eq!(m.run_id, *run_id);
        assert_eq!(m.target, "notes");
        assert_eq!(m.outputs[0].path, "notes.out.md");
        assert!(matches!(store.get(&m.outputs[0].digest), ObjectRead::Found(b) if b == want));
        assert_eq!(std::fs::read(root.join("notes.out.md")).unwrap(), want);
        // its record and history line saved as a build saves them
        let record = r.record.expect("a finished run has a record");
        assert_eq!(
            (record.run_id.as_str(), record.failed),
            (run_id.as_str(), false)
        );
        let (mut state_files, _) = StateFiles::load(store.dir());
        if state_files.needs_snapshot() {
            let mut st = State::default();
            st.targets.insert("notes".into(), record);
            state_files.snapshot(&st).unwrap();
        } else {
            let mut new = crate::state::NewRecords::default();
            new.insert("notes", &record);
            let delta = StateDelta {
                targets: Some(&new),
                ..Default::default()
            };
            assert!(state_files.append(&delta.encode()).unwrap());
        }
        store.append_history(r.history.as_deref().unwrap()).unwrap();
        store.seal_own_pack().unwrap();
        store.sync().unwrap();
        drop((store, files));
        // and the next build has nothing to do
        let rep = build(root, &BuildOptions::default(), &|_| {}).unwrap();
        assert_eq!((rep.ran, rep.cached, rep.restored), (0, 0, 0));
        assert_eq!((rep.fresh, rep.total), (1, 1));
        let history = std::fs::read_to_string(
            root.join(crate::store::STORE_DIR)
                .join(crate::history::HISTORY_FILE),
        )
        .unwrap();
        assert!(history.contains(run_id.as_str()), "{history}");
    }
}
