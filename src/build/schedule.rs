//! The scheduler: the ready queue, what each node came to, and the pool of
//! workers the stale nodes' jobs run on.

use super::report::{BuildReport, Event, Outcome};
use crate::graph::Graph;
use crate::hash::Digest;
use crate::state::DirtyReason;
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;

#[derive(Clone)]
pub(super) struct Done {
    /// Up to date without any work (the output did not change).
    pub(super) fresh: bool,
    pub(super) output_digest: Digest,
    /// The run that made the output; empty for a fresh node (see
    /// [`Done::fresh`]).
    pub(super) run_id: String,
    /// For a node that failed or was skipped: why its dependants cannot run.
    pub(super) blame: Option<Blame>,
    /// `--dry-run`: would run, so its output may still change.
    pub(super) pending: bool,
}

impl Done {
    pub(super) fn ok(output_digest: Digest, run_id: String) -> Done {
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
            ..Done::ok(output_digest, String::new())
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
            run_id: String::new(),
            blame: Some(blame),
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
}

impl Blame {
    pub(super) fn because(&self) -> String {
        match self {
            Blame::Failed(key) => format!("`{key}` failed"),
            Blame::NotRun(why) => why.clone(),
        }
    }
}

/// The scheduler's bookkeeping: what each node came to, what is ready to
/// go, the counts for the summary.
pub(super) struct Progress<'g> {
    pub(super) graph: &'g Graph,
    pub(super) downstream: Vec<Vec<usize>>,
    /// Unfinished upstream nodes of each node.
    pub(super) waiting: Vec<usize>,
    pub(super) ready: VecDeque<usize>,
    pub(super) results: Vec<Option<Done>>,
    pub(super) reasons: HashMap<usize, DirtyReason>,
    pub(super) rep: BuildReport,
    pub(super) done: usize,
}

impl<'g> Progress<'g> {
    pub(super) fn new(graph: &'g Graph, selected: &[bool], total: usize) -> Progress<'g> {
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
        let rep = &mut self.rep;
        match &outcome {
            Outcome::Fresh => rep.fresh += 1,
            Outcome::Restored => rep.restored += 1,
            Outcome::Cached { remote, .. } => {
                rep.cached += 1;
                rep.remote += usize::from(*remote);
            }
            Outcome::Ran { .. } => rep.ran += 1,
            Outcome::Failed { .. } => rep.failed += 1,
            Outcome::Skipped { .. } => rep.skipped += 1,
            Outcome::WouldRun => {}
        }
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
