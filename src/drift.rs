//! Model drift: an alias (`gpt-4o-mini`, `claude-sonnet-4-5`) is answered
//! by a dated snapshot that the provider changes under the user. Every
//! answer names the snapshot (`model` in the OpenAI and Anthropic answer
//! bodies), which the run's manifest keeps as `answered_by`, and the
//! target's state record too ([`TargetRecord::answered_by`]), so that
//! which snapshots made the outputs is known from the records a build
//! already holds, without reading 10,000 manifests.
//!
//! A build that sees a model answer as another snapshot than the one
//! that made a target's output before (or makes a target's first output)
//! counts, once per model, the outputs other snapshots made and reports
//! them ([`ModelDrift`]); in a build where every target answered as
//! before, nothing is counted. With `pin = true` on the model, an answer
//! from another snapshot than the one the target's output (or, for a new
//! target, the model's newest output) was made by fails the target
//! instead ([`crate::exec::ModelError::SnapshotChanged`]). `mkt status
//! --drift` lists the outputs made by other snapshots than the newest one
//! seen for their model ([`drifted`]).

use crate::config::Project;
use crate::graph::Graph;
use crate::state::TargetRecord;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A model that answered as `now` in this build while `before` (snapshot,
/// outputs) still made outputs of its targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDrift {
    pub model: String,
    pub now: String,
    /// The other snapshots, each with how many outputs it made, most first.
    pub before: Vec<(String, usize)>,
}

/// The model name of node `i`.
pub(crate) fn model_of<'p>(project: &'p Project, graph: &Graph, i: usize) -> &'p str {
    &project.targets[graph.nodes[i].target].model.name
}

/// How many outputs of `model`'s nodes each snapshot made, and the run id
/// of the newest one it made, by the record `record_of` gives for a node.
pub(crate) fn census<'r>(
    project: &Project,
    graph: &Graph,
    model: &str,
    record_of: impl Fn(&str) -> Option<Cow<'r, TargetRecord>>,
) -> BTreeMap<String, (usize, String)> {
    let mut made: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if model_of(project, graph, i) != model {
            continue;
        }
        let Some(rec) = record_of(&node.key).filter(|r| !r.failed && !r.answered_by.is_empty())
        else {
            continue;
        };
        let e = made.entry(rec.answered_by.clone()).or_default();
        e.0 += 1;
        if rec.run_id > e.1 {
            e.1 = rec.run_id.clone();
        }
    }
    made
}

/// The snapshot that made `model`'s newest output, if any named one.
pub(crate) fn newest(made: &BTreeMap<String, (usize, String)>) -> Option<&str> {
    made.iter()
        .max_by(|a, b| a.1.1.cmp(&b.1.1))
        .map(|(s, _)| s.as_str())
}

/// What `model` answering as `now` means for the outputs `made` counts: a
/// drift when other snapshots made some.
pub(crate) fn drift_of(
    model: &str,
    now: &str,
    made: &BTreeMap<String, (usize, String)>,
) -> Option<ModelDrift> {
    let mut before: Vec<(String, usize)> = (made.iter())
        .filter(|(s, _)| *s != now)
        .map(|(s, (n, _))| (s.clone(), *n))
        .collect();
    before.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    (!before.is_empty()).then(|| ModelDrift {
        model: model.to_string(),
        now: now.to_string(),
        before,
    })
}

/// The snapshot each pinned model's newest output was made by, worked
/// out once per build and model (from every record of its targets), and
/// only for a pinned target that has no snapshot of its own on record.
#[derive(Default)]
pub(crate) struct Pins(std::sync::Mutex<BTreeMap<String, Option<String>>>);

impl Pins {
    pub(crate) fn newest(
        &self,
        model: &str,
        census: impl FnOnce() -> BTreeMap<String, (usize, String)>,
    ) -> Option<String> {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (known.entry(model.to_string()))
            .or_insert_with(|| newest(&census()).map(str::to_string))
            .clone()
    }
}

/// What this build's answers say of drift: for each model whose answer
/// (`answered`: node, snapshot, for the runs of this build) came from
/// another snapshot than the one that made that node's output before, or
/// made its first, the outputs (as they stand after the build: `new`
/// records, else `old`) that other snapshots made. A build whose answers
/// all came from the snapshots that made the outputs before counts nothing.
pub(crate) fn seen_in_build(
    project: &Project,
    graph: &Graph,
    old: &crate::state::TargetRecords,
    new: &crate::state::NewRecords,
    answered: &[(usize, String)],
) -> Vec<ModelDrift> {
    let mut now_of: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, now) in answered {
        let before = old
            .get(&graph.nodes[*i].key)
            .map(|r| r.answered_by.as_str());
        if before != Some(now.as_str()) {
            now_of.insert(model_of(project, graph, *i), now);
        }
    }
    (now_of.into_iter())
        .filter_map(|(model, now)| {
            let made = census(project, graph, model, |k| {
                (new.get(k).map(Cow::Owned)).or_else(|| old.get(k).map(Cow::Borrowed))
            });
            drift_of(model, now, &made)
        })
        .collect()
}

/// One output made by another snapshot than the newest one seen for its
/// model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drifted {
    pub target: String,
    pub model: String,
    pub made_by: String,
    pub newest: String,
}

/// The outputs of the project made by other snapshots than the newest one
/// seen for their model (by run id), by target.
pub fn drifted(
    project: &Project,
    graph: &Graph,
    records: &rustc_hash::FxHashMap<String, TargetRecord>,
) -> Vec<Drifted> {
    let mut newest_of: BTreeMap<&str, Option<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for i in 0..graph.nodes.len() {
        let model = model_of(project, graph, i);
        let newest = newest_of.entry(model).or_insert_with(|| {
            newest(&census(project, graph, model, |k| {
                records.get(k).map(Cow::Borrowed)
            }))
            .map(str::to_string)
        });
        let node = &graph.nodes[i];
        if let (Some(rec), Some(newest)) = (records.get(&node.key), newest.as_deref())
            && !rec.failed
            && !rec.answered_by.is_empty()
            && rec.answered_by != newest
        {
            out.push(Drifted {
                target: node.key.clone(),
                model: model.to_string(),
                made_by: rec.answered_by.clone(),
                newest: newest.to_string(),
            });
        }
    }
    out.sort_by(|a, b| a.target.cmp(&b.target));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made(v: &[(&str, usize, &str)]) -> BTreeMap<String, (usize, String)> {
        v.iter()
            .map(|(s, n, r)| (s.to_string(), (*n, r.to_string())))
            .collect()
    }

    #[test]
    fn the_newest_snapshot_is_the_one_of_the_latest_run() {
        let m = made(&[("b-old", 5, "2026-01"), ("a-new", 1, "2026-03")]);
        assert_eq!(newest(&m), Some("a-new"));
        assert_eq!(newest(&made(&[])), None);
    }

    #[test]
    fn a_drift_lists_the_other_snapshots_most_outputs_first() {
        let m = made(&[("x", 3, "1"), ("y", 7, "2"), ("now", 2, "3")]);
        assert_eq!(
            drift_of("gpt", "now", &m),
            Some(ModelDrift {
                model: "gpt".into(),
                now: "now".into(),
                before: vec![("y".into(), 7), ("x".into(), 3)],
            })
        );
        assert_eq!(drift_of("gpt", "now", &made(&[("now", 9, "1")])), None);
    }
}
