//! `mkt explain TARGET`: what changed since the run that built it.

use camino::Utf8Path;
use clap::Args;
use markitect::explain::explain;
use markitect::provenance::RunLookup;
use markitect::status::NodeState;

#[derive(Args)]
pub struct ExplainArgs {
    /// The target: a name that means one node, `NAME[item/path]`, or an
    /// output path.
    target: String,
}

pub fn run(root: &Utf8Path, args: ExplainArgs) -> i32 {
    let ex = match explain(root, &args.target) {
        Ok(e) => e,
        Err(e) => return super::report_error(&e),
    };
    let key = &ex.key;
    match &ex.state {
        NodeState::Fresh => say!("`{key}` is fresh"),
        NodeState::NeverBuilt => say!("`{key}` has never been built"),
        NodeState::Failed => say!("`{key}` failed in its last run"),
        NodeState::Stale(r) => say!("`{key}` is stale: {r}"),
        NodeState::Broken(e) => say!("`{key}` cannot be built as the project stands: {e}"),
        NodeState::Pending(id) => say!("`{key}` is pending in batch {id}"),
    }
    match &ex.run {
        RunLookup::Found(m) => {
            let what = if m.error.is_some() {
                "last run"
            } else {
                "built by run"
            };
            say!(
                "{what} {} at {}: InputBundleHash {}, model `{}` ({})",
                m.run_id,
                m.timing.finished_at,
                m.input_bundle_hash.0.short(),
                m.model.name,
                m.model.provider
            );
            if let Some(e) = &m.error {
                say!("error: {}", e.lines().next().unwrap_or(""));
            }
        }
        RunLookup::Gone { run_id, why } if !run_id.is_empty() => {
            say!("built by run {run_id}, whose manifest is gone: {why}")
        }
        RunLookup::Gone { why, .. } => say!("its last run {why}"),
        RunLookup::Unknown => {}
    }
    if !ex.changes.is_empty() {
        say!("\nchanged since that run:");
        for c in &ex.changes {
            let old = c.old.as_deref().unwrap_or("(none)");
            let new = c.new.as_deref().unwrap_or("(none)");
            say!("  {}: {old} -> {new}", c.what);
            if let Some(d) = &c.diff {
                for l in d.lines() {
                    say!("    {l}");
                }
            }
        }
    } else if matches!(ex.run, RunLookup::Found(_)) && !ex.state.is_fresh() {
        say!("\nnothing it reads changed since that run");
    }
    if let (Some(old), Some(new)) = ex.bundle
        && old != new
    {
        say!("\nInputBundleHash: {} -> {}", old.0.short(), new.0.short());
    }
    if let Some(d) = &ex.prompt_diff {
        say!("\ncompiled prompt:");
        for l in d.lines() {
            say!("  {l}");
        }
    }
    for n in &ex.notes {
        say!("note: {n}");
    }
    0
}
