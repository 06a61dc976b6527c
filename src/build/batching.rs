//! A build's part in batch builds (`crate::batch` has the design): what
//! this build collected and what is still pending, the routing of each
//! prepared call (finished with a collected answer, pending, queued for a
//! batch, or called now), and, once the scheduler is done, the submission
//! of what was queued and the storing of answers no target asked for.

use super::compile::Sources;
use super::job::{Called, JobResult, PreparedCall, finish};
use super::report::{BuildOptions, Event, Outcome};
use crate::batch::{self, Answer, BatchRecord, Collection, Queued};
use crate::config::{ModelConfig, Project};
use crate::error::Result;
use crate::exec::batch::batch_api_for;
use crate::hash::InputBundleHash;
use crate::history::{HistoryEntry, RunKind};
use crate::manifest::{self, OutputRecord};
use crate::store::ObjectStore;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::{Arc, Mutex};

/// What one build knows and does of batches.
pub(crate) struct BatchPass {
    answers: Mutex<HashMap<InputBundleHash, Answer>>,
    pending: HashMap<InputBundleHash, String>,
    /// The models whose calls go into batches in this build (by name).
    batched: HashSet<String>,
    /// Calls queued for a batch, with the model config each is sent with
    /// and its target's output path.
    queued: Mutex<Vec<(Arc<ModelConfig>, PreparedCall, String)>>,
    /// Records whose batches ended: forgotten once the build has saved.
    ended: Vec<BatchRecord>,
}

/// Where a prepared call goes.
#[expect(
    clippy::large_enum_variant,
    reason = "made and taken apart once per job, never stored"
)]
pub(crate) enum Route {
    /// Not to the model now: finished with a collected answer, or pending.
    Done(JobResult),
    /// To the model, as an ordinary call.
    Call(PreparedCall),
}

impl BatchPass {
    /// Collects what the recorded batches answered, and decides which
    /// models batch in this build; `None` when there is nothing to do with
    /// batches (no record, no batching asked for): the build then pays one
    /// `readdir` for them.
    pub(crate) fn open(
        store: &ObjectStore,
        project: &Project,
        opts: &BuildOptions,
        report: &(dyn Fn(Event<'_>) + Sync),
    ) -> Option<BatchPass> {
        if opts.dry_run || opts.fetch_only {
            return None;
        }
        let batched = batched_models(project, opts, report);
        let recorded = batch::record::any_in(&batch::records_dir(store.dir()));
        if batched.is_empty() && !recorded {
            return None;
        }
        let Collection {
            answers,
            pending,
            ended,
            polled,
            warnings,
        } = batch::collect(store.dir(), project);
        warnings.into_iter().for_each(|w| report(Event::Warning(w)));
        for (id, model, progress) in &polled {
            report(Event::BatchPolled {
                batch: id,
                model,
                progress,
            });
        }
        Some(BatchPass {
            answers: Mutex::new(answers),
            pending,
            batched,
            queued: Mutex::new(Vec::new()),
            ended,
        })
    }

    /// Routes a prepared call (module docs). `src` is the build's.
    pub(crate) fn route(
        &self,
        src: &Sources<'_>,
        remote: Option<&crate::remote::Remote>,
        call: PreparedCall,
    ) -> Route {
        // (the target's model, with a `.prompty` file's parameters applied)
        let model = &Arc::clone(&call.model);
        let ibh = call.manifest.input_bundle_hash;
        let answer = self.answers.lock().unwrap().remove(&ibh);
        if let Some(a) = answer {
            let response = a.response.and_then(|r| crate::exec::check_answer(model, r));
            let called = Called {
                process_ms: 0.0,
                stats: Default::default(),
                batch: Some(a.batch),
            };
            return Route::Done(finish(src, remote, call, response, called));
        }
        if let Some(id) = self.pending.get(&ibh) {
            return Route::Done(pending(&call, Some(id.clone())));
        }
        if !self.batched.contains(&model.name) {
            return Route::Call(call);
        }
        let r = pending(&call, None);
        let output = src.graph.nodes[call.job.node].output.clone();
        match src.store.put(&call.prompt_json) {
            Ok(_) => {
                let q = (Arc::clone(model), call, output);
                self.queued.lock().unwrap().push(q);
                Route::Done(r)
            }
            Err(e) => Route::Done(JobResult {
                outcome: Outcome::Failed { error: e.into() },
                ..r
            }),
        }
    }

    /// Submits what was queued, a batch per model (and per set of target
    /// params): reported as it goes; targets whose batch could not be
    /// submitted count as failed. Nothing is submitted once the build
    /// was interrupted: those count as skipped.
    pub(crate) fn submit(
        &self,
        store: &ObjectStore,
        rep: &mut super::BuildReport,
        report: &(dyn Fn(Event<'_>) + Sync),
    ) {
        let queued = std::mem::take(&mut *self.queued.lock().unwrap());
        if queued.is_empty() {
            return;
        }
        if crate::exec::interrupted() {
            rep.pending -= queued.len();
            rep.skipped += queued.len();
            return;
        }
        // one model per batch, as sent: targets with `params` of their own
        // have a config of their own
        let mut by_model: Vec<(Arc<ModelConfig>, Vec<Queued>)> = Vec::new();
        for (model, call, output) in queued {
            let mut manifest = call.manifest;
            // where the answer goes, known to whoever stores it later
            manifest.outputs = vec![OutputRecord {
                path: output,
                digest: Default::default(),
                bytes: 0,
            }];
            let q = Queued {
                manifest,
                prompt: call.prompt,
            };
            match by_model.iter_mut().find(|(m, _)| Arc::ptr_eq(m, &model)) {
                Some((_, list)) => list.push(q),
                None => by_model.push((model, vec![q])),
            }
        }
        for (model, list) in by_model {
            for r in batch::submit(store.dir(), &model, list) {
                match r {
                    Ok(s) => {
                        report(Event::BatchSubmitted(&s));
                        rep.submitted.push(s);
                    }
                    Err(n) => {
                        rep.pending -= n.requests.len();
                        rep.failed += n.requests.len();
                        report(Event::BatchNotSubmitted(&n));
                    }
                }
            }
        }
    }

    /// Stores the collected answers no target of this build took (module
    /// docs of `crate::batch`): each a run under its InputBundleHash, with
    /// a history line, but no output file. Returns the history lines.
    pub(crate) fn store_unclaimed(
        &self,
        store: &ObjectStore,
        project: &Project,
        rep: &mut super::BuildReport,
    ) -> Result<String> {
        let answers = std::mem::take(&mut *self.answers.lock().unwrap());
        let mut history = String::new();
        for (ibh, a) in answers {
            let Some(model) = project.models.get(&a.model) else {
                continue;
            };
            // (a run stored meanwhile, by a target that ran it as an
            // ordinary call, stays the one on record)
            if matches!(store.ac_get(&ibh), crate::store::AcRead::Found(_)) {
                continue;
            }
            let Ok(resp) = a.response.and_then(|r| crate::exec::check_answer(model, r)) else {
                continue; // a failure no target waits for: nothing to keep
            };
            let mut m = a.manifest;
            m.run_id = manifest::new_run_id();
            m.timing.finished_at = manifest::now_rfc3339();
            let path = m.outputs.pop().map(|o| o.path).unwrap_or_default();
            m.outputs = vec![OutputRecord {
                path,
                digest: store.put(&resp.output)?,
                bytes: resp.output.len() as u64,
            }];
            m.cost_usd = batch_cost(model, resp.usage.as_ref());
            m.usage = resp.usage;
            m.batch = Some(a.batch.clone());
            store.ac_put(&m)?;
            rep.unclaimed += 1;
            history.push_str(
                &HistoryEntry {
                    time: manifest::now_rfc3339(),
                    target: m.target.clone(),
                    status: RunKind::Ran,
                    run_id: m.run_id.clone(),
                    input_bundle_hash: Some(m.input_bundle_hash.0),
                    model: a.model,
                    reason: "answered by a batch after the target changed".into(),
                    duration_ms: 0.0,
                    usage: m.usage.clone(),
                    cost_usd: m.cost_usd,
                    remote: false,
                    host: None,
                    batch: Some(a.batch),
                }
                .to_line(),
            );
        }
        Ok(history)
    }

    /// Forgets the records of the batches this build collected: to be
    /// called once what they answered is saved.
    pub(crate) fn forget_collected(&self, store: &ObjectStore) -> Result<()> {
        batch::forget(store.dir(), &self.ended)
    }
}

/// A batch answer's cost: the ordinary price times the model's
/// `batch_discount`.
pub(crate) fn batch_cost(model: &ModelConfig, usage: Option<&manifest::Usage>) -> Option<f64> {
    let ordinary = model.settings.cost_usd(usage?)?;
    Some(ordinary * model.settings.batch_discount())
}

/// The result of a job whose call waits in a batch (`batch`: its id, or
/// `None` for one queued by this build).
fn pending(call: &PreparedCall, batch: Option<String>) -> JobResult {
    JobResult {
        node: call.job.node,
        outcome: Outcome::Pending { batch },
        record: None,
        warnings: call.warnings.clone(),
        history: None,
        spent: None,
        saved: None,
        batch_saved: None,
        prompt_cache: None,
    }
}

/// The models of the project whose calls go into batches: those with
/// `batch = true`, or all with `--batch`, that have a batch API; a model
/// `--batch` cannot batch is said once.
fn batched_models(
    project: &Project,
    opts: &BuildOptions,
    report: &(dyn Fn(Event<'_>) + Sync),
) -> HashSet<String> {
    let mut out = HashSet::default();
    let used: HashSet<&str> = (project.targets.iter())
        .map(|t| t.model.name.as_str())
        .collect();
    for (name, m) in &project.models {
        let wanted = opts.batch.unwrap_or(m.settings.batch == Some(true));
        if !wanted || !used.contains(name.as_str()) {
            continue;
        }
        if batch_api_for(m).is_some() {
            out.insert(name.clone());
        } else if opts.batch == Some(true) {
            report(Event::Warning(format!(
                "model `{name}` (provider `{}`) has no batch API: its targets run as ordinary calls",
                m.provider.as_str()
            )));
        }
    }
    out
}
