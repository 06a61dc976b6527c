//! Batch builds: model calls submitted now through the providers' batch
//! APIs (`exec::batch`) and collected by a later build, in this process or
//! another, on any day within the provider's retention.
//!
//! **The life of a request.** A build with batching on (`--batch`, or
//! `batch = true` on a model) prepares each stale target as usual (restore,
//! compile, action cache, remote cache: `build::job`). A target that would
//! call a batch-capable model is queued instead; when the scheduler has
//! nothing left to run, each model's queue is [`submit`]ted as one batch or
//! more (split at the provider's limits), the compiled prompts are in the
//! store and the batch's record is on disk (`record.rs`) before the build
//! reports it as submitted. Targets downstream of a queued one wait.
//!
//! Every later build begins with [`collect`]: it polls each recorded batch
//! and fetches the answers of those that ended. A stale target whose
//! compiled prompt has the InputBundleHash of an answer is finished with it
//! through the same path as an ordinary call (manifest, action cache,
//! output file, state, history with `"batch"`); an answer no target asks
//! for any more (its inputs changed meanwhile) is still stored under its
//! InputBundleHash, as a valid result for that prompt, but writes no
//! output file. A failed, expired or cancelled request is reported for its
//! target and never cached. The record goes only once the build that used
//! its answers has saved them, so a build killed in between collects the
//! same answers again.
//!
//! **Never twice.** An InputBundleHash in a batch that has not ended is
//! *pending*: no build sends it again, as an ordinary call or in another
//! batch, until the batch ends or `mkt batch cancel` cancels it. Builds
//! take the project lock, so two never submit at once; the record is
//! written before the request leaves, so a build killed while submitting
//! leaves a record without a batch id, which the next build resolves by
//! asking the provider for the batch tagged with the record's tag (OpenAI
//! keeps metadata with a batch; Anthropic does not, and then the requests
//! are free to be sent again, with a warning).

pub mod record;

use crate::config::{ModelConfig, Project};
use crate::error::Result;
use crate::exec::batch::{BatchApi, BatchPhase, BatchProgress, BatchRequest, batch_api_for};
use crate::exec::{ModelError, ModelResponse};
use crate::hash::InputBundleHash;
use crate::manifest::RunManifest;
use crate::template::CompiledPrompt;
use camino::{Utf8Path, Utf8PathBuf};
pub use record::{BatchRecord, Records};
use rustc_hash::FxHashMap as HashMap;
use std::time::Duration;

/// `.mkt/batches/` of the store at `store_dir`.
pub fn records_dir(store_dir: &Utf8Path) -> Utf8PathBuf {
    store_dir.join(crate::layout::BATCHES_DIR)
}

/// A request's answer, collected from its ended batch.
#[derive(Debug)]
pub struct Answer {
    /// The provider's batch id.
    pub batch: String,
    pub model: String,
    pub response: std::result::Result<ModelResponse, ModelError>,
    /// The request's manifest before the call, as recorded.
    pub manifest: RunManifest,
}

/// What [`collect`] found.
#[derive(Debug, Default)]
pub struct Collection {
    /// The answers of ended batches, by request.
    pub answers: HashMap<InputBundleHash, Answer>,
    /// Requests in batches that have not ended: batch id by request.
    pub pending: HashMap<InputBundleHash, String>,
    /// Records whose batches ended: removed once their answers are saved.
    pub ended: Vec<BatchRecord>,
    /// Each batch as the poll found it (id, model, progress).
    pub polled: Vec<(String, String, BatchProgress)>,
    pub warnings: Vec<String>,
}

impl Collection {
    /// Whether anything is recorded at all.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.pending.is_empty() && self.ended.is_empty()
    }
}

/// The batch API for a recorded batch's model, or why there is none.
fn api_for(project: &Project, rec: &BatchRecord) -> std::result::Result<Box<dyn BatchApi>, String> {
    let model = project.models.get(&rec.model).ok_or_else(|| {
        format!(
            "batch {} was sent to model `{}`, which `prompts.toml` no longer defines: its answers cannot be collected\n\
             help: define the model again, or `mkt batch cancel {}` to give its requests up",
            rec.name(),
            rec.model,
            rec.name()
        )
    })?;
    batch_api_for(model).ok_or_else(|| {
        format!(
            "batch {} was sent to model `{}`, whose provider `{}` has no batch API now",
            rec.name(),
            rec.model,
            model.provider.as_str()
        )
    })
}

/// Polls every recorded batch and fetches the answers of those that ended
/// (module docs). Nothing here fails the build: a batch that cannot be
/// polled stays pending, with a warning.
pub fn collect(store_dir: &Utf8Path, project: &Project) -> Collection {
    let dir = records_dir(store_dir);
    let Records {
        records,
        unreadable,
    } = record::read_all(&dir);
    let mut out = Collection::default();
    for path in unreadable {
        out.warnings.push(format!(
            "`{path}` is not a complete batch record: ignored, so its requests may be sent again\n\
             help: remove the file once you have checked the provider's console for its batch"
        ));
    }
    for rec in records {
        collect_one(&dir, project, rec, &mut out);
    }
    out
}

fn collect_one(dir: &Utf8Path, project: &Project, mut rec: BatchRecord, out: &mut Collection) {
    let pend = |out: &mut Collection, rec: &BatchRecord| {
        if !rec.cancelled {
            for m in &rec.requests {
                out.pending
                    .insert(m.input_bundle_hash, rec.name().to_string());
            }
        }
    };
    let api = match api_for(project, &rec) {
        Ok(api) => api,
        Err(why) => {
            out.warnings.push(why);
            return pend(out, &rec);
        }
    };
    let id = match rec.batch_id.clone() {
        Some(id) => id,
        None => match recover(dir, api.as_ref(), &mut rec, out) {
            Some(id) => id,
            None => return,
        },
    };
    let progress = match api.poll(&id) {
        Ok(p) => p,
        Err(e) => {
            out.warnings.push(format!(
                "could not poll batch {id} (model `{}`): {e}; its {} requests stay pending",
                rec.model,
                rec.requests.len()
            ));
            return pend(out, &rec);
        }
    };
    out.polled
        .push((id.clone(), rec.model.clone(), progress.clone()));
    let answers = match progress.phase {
        BatchPhase::Running | BatchPhase::Cancelling => return pend(out, &rec),
        BatchPhase::Failed => Ok(Vec::new()),
        BatchPhase::Ended => api.results(&id),
    };
    let answers = match answers {
        Ok(a) => a,
        Err(e) => {
            out.warnings.push(format!(
                "batch {id} (model `{}`) ended, but its answers could not be read: {e}; trying again next build",
                rec.model
            ));
            return pend(out, &rec);
        }
    };
    let mut by_id: HashMap<String, std::result::Result<ModelResponse, ModelError>> =
        answers.into_iter().collect();
    for m in &rec.requests {
        let response = by_id
            .remove(&BatchRecord::custom_id(&m.input_bundle_hash))
            .unwrap_or_else(|| Err(not_answered(&id, &progress)));
        // of a batch the user cancelled, only answers count: the rest are
        // free to be sent again, not failures
        if rec.cancelled && response.is_err() {
            continue;
        }
        let answer = Answer {
            batch: id.clone(),
            model: rec.model.clone(),
            response,
            manifest: m.clone(),
        };
        out.answers.insert(m.input_bundle_hash, answer);
    }
    rec.batch_id = Some(id);
    out.ended.push(rec);
}

/// The error of a request its ended batch gave no answer for.
fn not_answered(id: &str, progress: &BatchProgress) -> ModelError {
    ModelError::Failed(match progress.phase {
        BatchPhase::Failed => format!("batch {id} failed: {}", progress.status),
        _ => format!(
            "batch {id} ended ({}) without an answer for this request",
            progress.status
        ),
    })
}

/// A record without a batch id: its submission was cut short. The
/// provider may know the batch by its tag (then the record gets its id);
/// else its requests are free to be sent again.
fn recover(
    dir: &Utf8Path,
    api: &dyn BatchApi,
    rec: &mut BatchRecord,
    out: &mut Collection,
) -> Option<String> {
    match api.find(&rec.tag) {
        Ok(Some(id)) => {
            rec.batch_id = Some(id.clone());
            if let Err(e) = rec.write(dir) {
                out.warnings.push(e.to_string());
            }
            Some(id)
        }
        Ok(None) => {
            out.warnings.push(format!(
                "a submission of {} requests to model `{}` at {} was cut short before the provider's batch id was recorded, \
                 and the provider has no batch tagged `{}`: they will be sent again\n\
                 help: should a batch of {} requests show in the provider's console, cancel it there",
                rec.requests.len(),
                rec.model,
                rec.submitted_at,
                rec.tag,
                rec.requests.len(),
            ));
            if let Err(e) = rec.remove(dir) {
                out.warnings.push(e.to_string());
            }
            None
        }
        Err(e) => {
            out.warnings.push(format!(
                "a submission to model `{}` was cut short and the provider could not be asked about it: {e}; \
                 its {} requests stay pending",
                rec.model,
                rec.requests.len()
            ));
            for m in &rec.requests {
                out.pending.insert(m.input_bundle_hash, rec.tag.clone());
            }
            None
        }
    }
}

/// One request to submit: its manifest before the call and its prompt.
pub struct Queued {
    pub manifest: RunManifest,
    pub prompt: CompiledPrompt,
}

/// A batch the provider accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub batch: String,
    pub model: String,
    pub requests: usize,
}

/// Requests a submission could not send: they are not pending.
#[derive(Debug)]
pub struct NotSubmitted {
    pub model: String,
    pub requests: Vec<InputBundleHash>,
    pub error: String,
}

/// Submits `queued`, all for `model`, as batches within the provider's
/// limits: each recorded before it is sent, and again with its id (module
/// docs). The prompts must already be in the store.
pub fn submit(
    store_dir: &Utf8Path,
    model: &ModelConfig,
    queued: Vec<Queued>,
) -> Vec<std::result::Result<Submitted, NotSubmitted>> {
    let Some(api) = batch_api_for(model) else {
        let requests = queued
            .iter()
            .map(|q| q.manifest.input_bundle_hash)
            .collect();
        return vec![Err(NotSubmitted {
            model: model.name.clone(),
            requests,
            error: format!("model `{}` has no batch API", model.name),
        })];
    };
    let dir = records_dir(store_dir);
    let requests = queued.into_iter().map(|q| {
        let request = BatchRequest {
            custom_id: BatchRecord::custom_id(&q.manifest.input_bundle_hash),
            prompt: q.prompt,
        };
        (q.manifest, request)
    });
    chunks(api.as_ref(), requests)
        .into_iter()
        .map(|chunk| submit_one(&dir, api.as_ref(), model, chunk))
        .collect()
}

/// `requests` split so that each part fits the provider's limits, by the
/// bytes each request takes of them.
fn chunks(
    api: &dyn BatchApi,
    requests: impl Iterator<Item = (RunManifest, BatchRequest)>,
) -> Vec<Vec<(RunManifest, BatchRequest)>> {
    let limits = api.limits();
    let mut out: Vec<Vec<(RunManifest, BatchRequest)>> = Vec::new();
    let mut bytes = 0usize;
    for r in requests {
        let size = api.request_bytes(&r.1);
        match out.last_mut() {
            Some(last) if last.len() < limits.max_requests && bytes + size <= limits.max_bytes => {
                bytes += size;
                last.push(r);
            }
            _ => {
                bytes = size;
                out.push(vec![r]);
            }
        }
    }
    out
}

fn submit_one(
    dir: &Utf8Path,
    api: &dyn BatchApi,
    model: &ModelConfig,
    chunk: Vec<(RunManifest, BatchRequest)>,
) -> std::result::Result<Submitted, NotSubmitted> {
    let (manifests, requests): (Vec<RunManifest>, Vec<BatchRequest>) = chunk.into_iter().unzip();
    let mut rec = BatchRecord {
        schema: record::BATCH_SCHEMA.into(),
        tag: crate::manifest::new_run_id(),
        provider: model.provider.as_str().into(),
        model: model.name.clone(),
        batch_id: None,
        submitted_at: crate::manifest::now_rfc3339(),
        cancelled: false,
        requests: manifests,
    };
    let fail = |rec: &BatchRecord, error: String| NotSubmitted {
        model: model.name.clone(),
        requests: rec.requests.iter().map(|m| m.input_bundle_hash).collect(),
        error,
    };
    // the record first: a build killed after the provider accepted the
    // batch finds it by its tag (module docs)
    if let Err(e) = rec.write(dir) {
        return Err(fail(&rec, e.to_string()));
    }
    match api.submit(&requests, &rec.tag) {
        Ok(id) => {
            rec.batch_id = Some(id.clone());
            if let Err(e) = rec.write(dir) {
                // the batch runs; the record without its id is resolved by
                // the next build, as after a kill
                return Err(fail(&rec, format!("batch {id} was submitted, but {e}")));
            }
            Ok(Submitted {
                batch: id,
                model: model.name.clone(),
                requests: rec.requests.len(),
            })
        }
        // no answer: the provider may have made the batch all the same, so
        // the record stays, without an id, for the next build to resolve
        Err(e @ ModelError::Transport { .. }) => Err(fail(&rec, e.to_string())),
        Err(e) => {
            let _ = rec.remove(dir);
            Err(fail(&rec, e.to_string()))
        }
    }
}

/// Removes the records of collected batches, once what they answered is
/// saved.
pub fn forget(store_dir: &Utf8Path, ended: &[BatchRecord]) -> Result<()> {
    let dir = records_dir(store_dir);
    ended.iter().try_for_each(|r| r.remove(&dir))
}

/// How long to wait before the next poll: a few seconds at first, up to a
/// minute (batches take minutes to hours; polling faster buys nothing).
pub fn poll_interval(polls: u32) -> Duration {
    let s = 2.0 * 1.5f64.powi(polls.min(16) as i32);
    Duration::from_secs_f64(s.min(60.0))
}

/// What [`wait`] reports while it waits.
pub enum WaitEvent<'a> {
    Polled(&'a [(String, String, BatchProgress)]),
    Warning(String),
}

/// How [`wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// A batch ended (or a record needs a build to resolve it): a build
    /// has something to collect.
    Ended,
    /// No recorded batch can end by waiting (none left, or none that can
    /// be polled): the build says why.
    NothingToWaitFor,
    Interrupted,
}

/// Waits until a recorded, uncancelled batch of the project at `root` has
/// ended, polling with [`poll_interval`]; `polls` counts the polls made so
/// far, across the waits of one `mkt build`, so that a batch that ends
/// but cannot be read is not asked about in a tight loop. Takes no lock:
/// a build collects what ended.
pub fn wait(root: &Utf8Path, polls: &mut u32, on: &dyn Fn(WaitEvent<'_>)) -> Result<WaitEnd> {
    let project = Project::parse(root, Project::read_source(root)?)?;
    let dir = records_dir(&root.join(crate::layout::STORE_DIR));
    let tags = |records: &[BatchRecord]| -> Vec<String> {
        records.iter().map(|r| r.tag.clone()).collect()
    };
    let at_start = tags(&record::read_all(&dir).records);
    loop {
        if !sleep_unless_interrupted(poll_interval(*polls)) {
            return Ok(WaitEnd::Interrupted);
        }
        *polls += 1;
        let Records { records, .. } = record::read_all(&dir);
        // another build collected (or submitted) meanwhile: look again
        if tags(&records) != at_start {
            return Ok(WaitEnd::Ended);
        }
        let mut polled = Vec::new();
        for rec in records.iter().filter(|r| !r.cancelled) {
            let Some(id) = &rec.batch_id else {
                return Ok(WaitEnd::Ended); // cut short: the build resolves it
            };
            let Ok(api) = api_for(&project, rec) else {
                continue; // the build warns of it
            };
            match api.poll(id) {
                Ok(p) if matches!(p.phase, BatchPhase::Ended | BatchPhase::Failed) => {
                    return Ok(WaitEnd::Ended);
                }
                Ok(p) => polled.push((id.clone(), rec.model.clone(), p)),
                Err(e) => {
                    on(WaitEvent::Warning(format!(
                        "could not poll batch {id}: {e}; trying again"
                    )));
                    polled.push((id.clone(), rec.model.clone(), unknown_progress()));
                }
            }
        }
        if polled.is_empty() {
            return Ok(WaitEnd::NothingToWaitFor);
        }
        on(WaitEvent::Polled(&polled));
    }
}

fn unknown_progress() -> BatchProgress {
    BatchProgress {
        phase: BatchPhase::Running,
        status: "not known (the poll failed)".into(),
        total: 0,
        done: 0,
        failed: 0,
    }
}

/// Sleeps for `d`; `false` as soon as the build is interrupted.
fn sleep_unless_interrupted(d: Duration) -> bool {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        if crate::exec::interrupted() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100).min(end - std::time::Instant::now()));
    }
    !crate::exec::interrupted()
}

/// A recorded batch, as `mkt batch status` shows it.
#[derive(Debug)]
pub struct BatchInfo {
    pub record: BatchRecord,
    /// The provider's answer to a poll, or why there is none.
    pub progress: std::result::Result<BatchProgress, String>,
    /// What its requests cost at most, at the batch price: input tokens
    /// estimated at a quarter of the prompts' bytes, output at
    /// `max_tokens`; `None` without prices or `max_tokens`.
    pub cost_bound_usd: Option<f64>,
}

/// Every recorded batch of the project at `root`, each polled now.
pub fn list(root: &Utf8Path) -> Result<Vec<BatchInfo>> {
    let project = Project::parse(root, Project::read_source(root)?)?;
    let store_dir = root.join(crate::layout::STORE_DIR);
    let Records { records, .. } = record::read_all(&records_dir(&store_dir));
    let store = crate::store::ObjectStore::open_read_only(root).ok();
    Ok(records
        .into_iter()
        .map(|rec| {
            let progress = match (&rec.batch_id, api_for(&project, &rec)) {
                (None, _) => Err("its submission was cut short; the next build resolves it".into()),
                (_, Err(why)) => Err(why),
                (Some(id), Ok(api)) => api.poll(id).map_err(|e| e.to_string()),
            };
            let model = project.models.get(&rec.model);
            let cost_bound_usd = model.and_then(|m| cost_bound(m, &rec, store.as_ref()));
            BatchInfo {
                record: rec,
                progress,
                cost_bound_usd,
            }
        })
        .collect())
}

fn cost_bound(
    model: &ModelConfig,
    rec: &BatchRecord,
    store: Option<&crate::store::ObjectStore>,
) -> Option<f64> {
    let store = store?;
    let max_out = model.settings.max_tokens?;
    let mut usage = crate::manifest::Usage::default();
    for m in &rec.requests {
        let crate::store::ObjectRead::Found(prompt) = store.get(&m.prompt_digest) else {
            return None;
        };
        usage.input_tokens += prompt.len() as u64 / 4;
        usage.output_tokens += max_out;
    }
    Some(model.settings.cost_usd(&usage)? * model.settings.batch_discount())
}

/// Asks the provider to cancel the recorded batch `id` (all uncancelled
/// ones when `None`), under the project lock, and marks each record
/// cancelled: its requests are no longer pending, and the answers that
/// came before the cancellation are still collected. Returns each batch
/// asked and how the provider answered.
pub fn cancel(
    root: &Utf8Path,
    id: Option<&str>,
    wait_for_lock: bool,
    on_wait: &dyn Fn(),
) -> Result<Vec<(String, std::result::Result<(), String>)>> {
    let project = Project::parse(root, Project::read_source(root)?)?;
    let store = crate::store::ObjectStore::open(root)?;
    let _lock = store.lock(wait_for_lock, on_wait)?;
    let dir = records_dir(store.dir());
    let Records { records, .. } = record::read_all(&dir);
    let chosen: Vec<BatchRecord> = records
        .into_iter()
        .filter(|r| !r.cancelled && id.is_none_or(|id| r.name() == id))
        .collect();
    if let (Some(id), true) = (id, chosen.is_empty()) {
        return Err(crate::error::Error::NoSuchBatch { id: id.into() });
    }
    let mut out = Vec::new();
    for mut rec in chosen {
        let asked = match (&rec.batch_id, api_for(&project, &rec)) {
            (None, _) => Err("its submission was cut short; the next build resolves it".into()),
            (Some(_), Err(why)) => {
                // nothing can reach it any more: give its requests up
                rec.cancelled = true;
                rec.write(&dir)?;
                Err(why)
            }
            (Some(bid), Ok(api)) => match api.cancel(bid) {
                Ok(()) => {
                    rec.cancelled = true;
                    rec.write(&dir)?;
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
        };
        out.push((rec.name().to_string(), asked));
    }
    Ok(out)
}
