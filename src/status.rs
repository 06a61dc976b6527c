//! `mkt status`: which targets are not fresh, and why.
//!
//! There is one place that decides freshness, the build engine; status is
//! a `--dry-run` build that collects what each node would come to. So it
//! answers exactly what `mkt build` would do, takes no lock, writes
//! nothing, and shares the no-op fast path: with nothing changed it costs
//! what a no-op build costs (one `lstat` per file).

use crate::build::{BuildOptions, Event, Outcome, build};
use crate::error::Result;
use crate::state::DirtyReason;
use camino::Utf8Path;
use std::sync::Mutex;

/// What one node is, as `status`, `graph` and `explain` show it.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeState {
    Fresh,
    NeverBuilt,
    /// Its last run failed.
    Failed,
    /// Built before, but something it depends on changed.
    Stale(DirtyReason),
    /// It cannot be built as the project stands (a missing input, say), or
    /// something it needs cannot.
    Broken(String),
    /// Its request waits in this provider batch (as recorded when it was
    /// submitted; a target edited since then is sent again).
    Pending(String),
}

impl NodeState {
    fn from_reason(reason: &DirtyReason) -> NodeState {
        match reason {
            DirtyReason::NeverBuilt => NodeState::NeverBuilt,
            DirtyReason::PreviousRunFailed => NodeState::Failed,
            r => NodeState::Stale(r.clone()),
        }
    }

    /// One word for the state: `fresh`, `stale`, `never-built`, `failed`,
    /// `broken` (stable: part of the JSON outputs).
    pub fn word(&self) -> &'static str {
        match self {
            NodeState::Fresh => "fresh",
            NodeState::NeverBuilt => "never-built",
            NodeState::Failed => "failed",
            NodeState::Stale(_) => "stale",
            NodeState::Broken(_) => "broken",
            NodeState::Pending(_) => "pending",
        }
    }

    /// Why the node is not fresh, in words; `None` when fresh.
    pub fn reason(&self) -> Option<String> {
        match self {
            NodeState::Fresh => None,
            NodeState::NeverBuilt => Some(DirtyReason::NeverBuilt.to_string()),
            NodeState::Failed => Some(DirtyReason::PreviousRunFailed.to_string()),
            NodeState::Stale(r) => Some(r.to_string()),
            NodeState::Broken(e) => Some(e.clone()),
            NodeState::Pending(id) => Some(format!("pending in batch {id}")),
        }
    }

    pub fn is_fresh(&self) -> bool {
        *self == NodeState::Fresh
    }
}

/// The state of every selected node.
#[derive(Debug, Default)]
pub struct StatusReport {
    /// Selected nodes.
    pub total: usize,
    /// Nodes that are not fresh, in build order, with their state.
    pub not_fresh: Vec<(String, NodeState)>,
    /// Every node's state in build order; empty when the no-op check
    /// showed at once that nothing changed (then all are fresh).
    pub nodes: Vec<(String, NodeState)>,
    /// What the model calls of the targets that would run may cost (see
    /// `estimate.rs`); empty when none would call an `openai` or
    /// `anthropic` model.
    pub estimate: crate::estimate::Estimate,
}

impl StatusReport {
    pub fn all_fresh(&self) -> bool {
        self.not_fresh.is_empty()
    }

    /// The state of node `key` (fresh when nothing was reported about it).
    pub fn state_of(&self, key: &str) -> NodeState {
        self.nodes
            .iter()
            .find(|(k, _)| k == key)
            .map_or(NodeState::Fresh, |(_, s)| s.clone())
    }
}

/// The state of the selected targets (all when `targets` is empty) of the
/// project at `root`, without running, locking or writing anything.
pub fn status(root: &Utf8Path, targets: &[String]) -> Result<StatusReport> {
    let opts = BuildOptions {
        targets: targets.to_vec(),
        dry_run: true,
        keep_going: true,
        estimate: true,
        ..Default::default()
    };
    let nodes = Mutex::new(Vec::new());
    let rep = build(root, &opts, &|e| {
        if let Event::Finished {
            key,
            outcome,
            reason,
            ..
        } = e
        {
            let state = match (outcome, reason) {
                (Outcome::Fresh, _) => NodeState::Fresh,
                (Outcome::Failed { error }, _) => NodeState::Broken(error.to_string()),
                (Outcome::Skipped { because }, _) => NodeState::Broken(because.clone()),
                (_, Some(r)) => NodeState::from_reason(r),
                (_, None) => NodeState::Stale(DirtyReason::Forced),
            };
            nodes.lock().unwrap().push((key.to_string(), state));
        }
    })?;
    let mut nodes = nodes.into_inner().unwrap();
    mark_pending(root, &mut nodes);
    let estimate = rep.estimate.unwrap_or_default();
    let not_fresh = nodes
        .iter()
        .filter(|(_, s)| !s.is_fresh())
        .cloned()
        .collect();
    Ok(StatusReport {
        total: rep.total,
        not_fresh,
        nodes,
        estimate,
    })
}

/// Marks the nodes that are not fresh and whose request waits in a
/// recorded, uncancelled batch.
fn mark_pending(root: &Utf8Path, nodes: &mut [(String, NodeState)]) {
    let dir = crate::batch::records_dir(&root.join(crate::layout::STORE_DIR));
    let records = crate::batch::record::read_all(&dir).records;
    let pending: rustc_hash::FxHashMap<&str, &str> = (records.iter())
        .filter(|r| !r.cancelled)
        .flat_map(|r| {
            r.requests
                .iter()
                .map(move |m| (m.target.as_str(), r.name()))
        })
        .collect();
    if pending.is_empty() {
        return;
    }
    for (key, state) in nodes.iter_mut() {
        if let (false, Some(id)) = (state.is_fresh(), pending.get(key.as_str())) {
            *state = NodeState::Pending(id.to_string());
        }
    }
}
