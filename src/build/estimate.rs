//! The build's side of the estimate (`estimate.rs` counts and prices):
//! compiling the prompts of the targets a dry run would run, and the upper
//! bound of one call about to be made, for the cost cap.
//!
//! A target below one that would run first is compiled with that
//! upstream's previous output (none when it never ran: empty text), so
//! its count is marked approximate.

use super::compile::{Sources, compile_node_with, node_model, upstream_text};
use super::job::{Ctx, PreparedCall};
use crate::estimate::{Estimate, OutputBound, TargetEstimate, count_prompt};
use crate::hash::{Digest, InputBundleHash};
use crate::manifest::UpstreamRecord;
use crate::state::TargetRecords;
use crate::store::AcRead;
use std::cell::Cell;

/// A node a dry run would run, with what its upstream nodes came to (a
/// default digest for one that would run too).
pub(super) struct Wanted {
    pub(super) node: usize,
    pub(super) upstream: Vec<UpstreamRecord>,
}

/// The estimate of every wanted node, compiled in parallel; a node whose
/// prompt does not compile is left out (its build fails before any call).
/// A node whose request waits in a provider batch is left out too: what
/// it costs was settled when the batch was sent (`mkt batch status`).
pub(super) fn estimate_nodes(ctx: &Ctx<'_>, wanted: &[Wanted]) -> Estimate {
    use rayon::prelude::*;
    let records = crate::batch::record::read_all(&crate::batch::records_dir(ctx.src.store.dir()));
    let pending: rustc_hash::FxHashSet<InputBundleHash> = (records.records.iter())
        .filter(|r| !r.cancelled)
        .flat_map(|r| r.requests.iter().map(|m| m.input_bundle_hash))
        .collect();
    let targets = (wanted.par_iter())
        .filter_map(|w| estimate_node(ctx, w, &pending))
        .collect();
    Estimate { targets }
}

fn estimate_node(
    ctx: &Ctx<'_>,
    w: &Wanted,
    pending: &rustc_hash::FxHashSet<InputBundleHash>,
) -> Option<TargetEstimate> {
    let src = &ctx.src;
    let node = &src.graph.nodes[w.node];
    // (the target's model, with a `.prompty` file's parameters applied)
    let model = node_model(src, node, &Default::default()).ok()?;
    let guessed = Cell::new(false);
    let text_of = |un: &crate::graph::Node, d: Digest| {
        if d != Digest::default() {
            return upstream_text(src, un, d);
        }
        guessed.set(true);
        match ctx.old.get(&un.key) {
            Some(rec) if !rec.failed => upstream_text(src, un, rec.output_digest),
            _ => Ok(String::new()),
        }
    };
    let prompt = compile_node_with(src, node, &Default::default(), &w.upstream, &text_of).ok()?;
    if !pending.is_empty() {
        let digest = Digest::of(&prompt.canonical_json());
        let params = model.hashed_params();
        let ibh = InputBundleHash::compute(digest, model.provider.as_str(), &params);
        if pending.contains(&ibh) {
            return None;
        }
    }
    let mut input = count_prompt(&model, &prompt);
    input.exact &= !guessed.get();
    let output = output_bound(src, ctx.old, &node.key, model.settings.max_tokens);
    Some(TargetEstimate::new(node.key.clone(), &model, input, output))
}

/// The output tokens to expect of `key`: its last recorded run's, else up
/// to `max_tokens`.
fn output_bound(
    src: &Sources<'_>,
    old: &TargetRecords,
    key: &str,
    max_tokens: Option<u64>,
) -> OutputBound {
    let last = old.get(key).filter(|r| !r.failed).and_then(|r| {
        match src.store.ac_get(&InputBundleHash(r.ibh)) {
            AcRead::Found(m) => m.usage.map(|u| u.output_tokens),
            _ => None,
        }
    });
    OutputBound::new(last, max_tokens)
}

/// The most `call` may cost (0 for a model without prices; `None`: no
/// bound).
pub(super) fn call_high_cost(ctx: &Ctx<'_>, call: &PreparedCall) -> Option<f64> {
    let src = &ctx.src;
    let n = &src.graph.nodes[call.job.node];
    // (the target's model, with a `.prompty` file's parameters applied)
    let model = &call.model;
    let input = count_prompt(model, &call.prompt);
    let output = output_bound(src, ctx.old, &n.key, model.settings.max_tokens);
    TargetEstimate::new(n.key.clone(), model, input, output).cost_high()
}
