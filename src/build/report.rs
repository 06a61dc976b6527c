//! What a build takes and tells: its options, the events it reports as it
//! goes, what happened to each node, and the summary.

use crate::manifest::Usage;
use crate::stamp::{EntryKind, NoopStamp};
use crate::state::DirtyReason;
use rustc_hash::FxHashSet as HashSet;
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
    /// `--batch` (`Some(true)`): every model with a batch API sends its
    /// calls through it; `--no-batch` (`Some(false)`): none does; `None`:
    /// the models with `batch = true` do.
    pub batch: Option<bool>,
    /// `--dry-run`: estimate the tokens and cost of the model calls that
    /// would be made ([`BuildReport::estimate`]).
    pub estimate: bool,
    /// `--max-cost`: the cost cap in US dollars (else the project's
    /// `max_cost_usd`): a build whose estimate may cost more is refused,
    /// and one that reaches it stops dispatching.
    pub max_cost_usd: Option<f64>,
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
            batch: None,
            estimate: false,
            max_cost_usd: None,
        }
    }
}

/// Why a node's job failed, as data; `Display` is the text the user sees.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// Its prompt could not be compiled.
    #[error("{0}")]
    Compile(std::sync::Arc<super::CompileError>),
    /// The model call failed, or its answer did not pass the check.
    #[error("{0}")]
    Model(crate::exec::ModelError),
    /// What it reads could not be read, or what it writes (the store, the
    /// output file) could not be written.
    #[error("{0}")]
    Project(std::sync::Arc<crate::error::Error>),
    /// A file it reads cannot be read as the project stands.
    #[error("{0}")]
    Source(std::sync::Arc<crate::files::FileError>),
}

impl From<crate::files::FileError> for JobError {
    fn from(e: crate::files::FileError) -> JobError {
        JobError::Source(std::sync::Arc::new(e))
    }
}

impl From<crate::error::Error> for JobError {
    fn from(e: crate::error::Error) -> JobError {
        JobError::Project(std::sync::Arc::new(e))
    }
}

/// What happened to one node.
#[derive(Debug, Clone)]
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
    /// The model was called (or answered in `batch`).
    Ran {
        run_id: String,
        batch: Option<String>,
    },
    Failed {
        error: JobError,
    },
    /// Not attempted because something it needs failed.
    Skipped {
        because: String,
    },
    /// `--dry-run`: would be rebuilt.
    WouldRun,
    /// Its call waits in a provider's batch: the one named, or (`None`)
    /// the one this build submits for it.
    Pending {
        batch: Option<String>,
    },
    /// Not attempted because something it needs is pending in a batch.
    Waiting {
        because: String,
    },
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
    /// A recorded batch, as this build's poll found it.
    BatchPolled {
        batch: &'a str,
        model: &'a str,
        progress: &'a crate::exec::batch::BatchProgress,
    },
    /// A batch the provider accepted.
    BatchSubmitted(&'a crate::batch::Submitted),
    /// Requests that could not be submitted (they count as failed).
    BatchNotSubmitted(&'a crate::batch::NotSubmitted),
    /// A model answered as another snapshot than the one that made some
    /// of its outputs (once per model and build, after the runs).
    ModelDrift(&'a crate::drift::ModelDrift),
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
    /// Targets whose call waits in a batch (submitted by this build or an
    /// earlier one), and those that wait for them.
    pub pending: usize,
    pub waiting: usize,
    /// The batches this build submitted.
    pub submitted: Vec<crate::batch::Submitted>,
    /// Answers collected from batches for targets that changed meanwhile:
    /// stored under their InputBundleHash, no output written.
    pub unclaimed: usize,
    /// What the batch answers of this build would have cost more as
    /// ordinary calls.
    pub batch_saved_usd: f64,
    /// Stopped by Ctrl-C or SIGTERM (what finished is saved).
    pub interrupted: bool,
    /// `--dry-run`: each node that would be rebuilt and why.
    pub would_run: Vec<(String, DirtyReason)>,
    /// `--dry-run` with [`BuildOptions::estimate`]: what the model calls
    /// of the nodes that would run may cost (those of `openai` and
    /// `anthropic` models), in build order.
    pub estimate: Option<crate::estimate::Estimate>,
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
    /// What the providers' prompt caches did for this build's calls.
    pub prompt_cache: PromptCache,
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
            Outcome::Pending { .. } => self.pending += 1,
            Outcome::Waiting { .. } => self.waiting += 1,
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
    pub(super) fn start() -> Phases {
        Phases {
            done: Vec::new(),
            last: Some(Instant::now()),
        }
    }

    /// Ends the phase running since the last mark, naming it `name`.
    pub(super) fn mark(&mut self, name: &'static str) {
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
    pub(super) fn from_stamp(stamp: &NoopStamp) -> WatchSet {
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

/// A count with its thousands grouped: `1204` as `1,204`.
pub fn format_count(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Input tokens read from and written to the providers' prompt caches,
/// and what that saved against the same tokens uncached (US dollars, where
/// the models have prices; less than 0 when the writes cost more).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct PromptCache {
    pub read_tokens: u64,
    pub write_tokens: u64,
    pub saved_usd: f64,
    pub priced: bool,
}

impl PromptCache {
    pub(super) fn add(&mut self, read: u64, written: u64, saved_usd: Option<f64>) {
        self.read_tokens += read;
        self.write_tokens += written;
        if let Some(s) = saved_usd.filter(|_| read + written > 0) {
            self.saved_usd += s;
            self.priced = true;
        }
    }
}

/// Tokens (input + output) and their cost.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Spend {
    pub tokens: u64,
    pub cost_usd: f64,
}

impl Spend {
    pub(super) fn add(&mut self, usage: Option<&Usage>, cost: Option<f64>) {
        if let Some(u) = usage {
            self.tokens += u.input_tokens + u.output_tokens;
        }
        self.cost_usd += cost.unwrap_or(0.0);
    }
}

impl BuildReport {
    /// Everything selected is built: nothing failed, was skipped or waits.
    pub fn success(&self) -> bool {
        self.failed == 0 && self.skipped == 0 && self.pending == 0 && self.waiting == 0
    }

    /// Nothing failed or was skipped, though targets may wait in batches.
    pub fn no_failure(&self) -> bool {
        self.failed == 0 && self.skipped == 0
    }
}

/// Why a skipped node did not run, when the build stopped.
pub(super) const INTERRUPTED: &str = "the build was interrupted";
pub(super) const STOPPED: &str = "the build stopped after a failure (use `--keep-going` to go on)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_group_their_thousands() {
        let shown: Vec<String> = [0, 7, 999, 1_000, 1_204, 12_345, 1_000_000]
            .into_iter()
            .map(format_count)
            .collect();
        assert_eq!(
            shown,
            ["0", "7", "999", "1,000", "1,204", "12,345", "1,000,000"]
        );
    }
}
