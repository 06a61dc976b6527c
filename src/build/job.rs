//! One stale target's work, on a worker thread.

use super::compile::{Sources, compile_node};
use super::report::{INTERRUPTED, Outcome, STOPPED};
use crate::error::Result;
use crate::graph::Node;
use crate::hash::{Digest, InputBundleHash};
use crate::history::{HistoryEntry, RunKind};
use crate::manifest::{
    self, FileDigest, InputRecord, ModelRecord, OutputRecord, RunManifest, RunStatus, Timing,
    UpstreamRecord, Usage,
};
use crate::state::{DirtyReason, Fingerprint, TargetRecord, TargetRecords};
use crate::store::{AcRead, ObjectRead};
use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub(super) struct Job {
    pub(super) node: usize,
    pub(super) reason: DirtyReason,
    pub(super) fingerprint: Fingerprint,
    pub(super) upstream: Vec<UpstreamRecord>,
}

pub(super) struct JobResult {
    pub(super) node: usize,
    pub(super) outcome: Outcome,
    pub(super) record: Option<TargetRecord>,
    pub(super) warnings: Vec<String>,
    pub(super) history: Option<String>,
    /// Usage and cost of the model call made (`spent`) or of the run
    /// served from the action cache instead (`saved`).
    pub(super) spent: Option<(Usage, Option<f64>)>,
    pub(super) saved: Option<(Usage, Option<f64>)>,
}

pub(super) struct Ctx<'a> {
    pub(super) src: Sources<'a>,
    pub(super) old: &'a TargetRecords,
    /// `--force`: which nodes skip the action cache.
    pub(super) forced: Vec<bool>,
    pub(super) remote: Option<&'a crate::remote::Remote>,
    pub(super) fetch_only: bool,
    /// Set by the first failure unless `--keep-going` ([`Ctx::failed`]):
    /// no node is dispatched after it, and the jobs queued before it are
    /// not started (the scheduler may have queued a whole layer of
    /// independent targets before the failure).
    pub(super) stopping: std::sync::atomic::AtomicBool,
    pub(super) keep_going: bool,
}

impl Ctx<'_> {
    /// Notes a failure (in a worker, as soon as its job ends, so that the
    /// job it takes next already sees it): the build stops unless
    /// `--keep-going`.
    pub(super) fn failed(&self) {
        if !self.keep_going {
            self.stopping.store(true, Ordering::SeqCst);
        }
    }

    /// Why a job should not start now, if the build is stopping.
    pub(super) fn why_stopped(&self) -> Option<&'static str> {
        if crate::exec::interrupted() {
            Some(INTERRUPTED)
        } else if self.stopping.load(Ordering::SeqCst) {
            Some(STOPPED)
        } else {
            None
        }
    }
}

pub(super) fn write_output(ctx: &Ctx<'_>, node: &Node, bytes: &[u8], digest: Digest) -> Result<()> {
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
        .write_atomic(&ctx.src.files.abs(&node.output), bytes)?;
    ctx.src.files.wrote(&node.output, digest);
    Ok(())
}

/// The history line of a job that ends now (format: `history.rs`).
pub(super) fn history_line(
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

pub(super) fn run_job(ctx: &Ctx<'_>, job: Job) -> JobResult {
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
    let response = crate::exec::call(&decl.model, &prompt, ctx.src.files.root());
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
                m.error = Some(e.message.clone());
                m.cost_usd = e
                    .usage
                    .as_ref()
                    .and_then(|u| decl.model.settings.cost_usd(u));
                m.usage = e.usage;
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
