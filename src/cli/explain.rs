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
        NodeState::Fresh => println!("`{key}` is fresh"),
        NodeState::NeverBuilt => println!("`{key}` has never been built"),
        NodeState::Failed => println!("`{key}` failed in its last run"),
        NodeState::Stale(r) => println!("`{key}` is stale: {r}"),
        NodeState::Broken(e) => println!("`{key}` cannot be built as the project stands: {e}"),
    }
    match &ex.run {
        RunLookup::Found(m) => {
            let what = if m.error.is_some() {
                "last run"
            } else {
                "built by run"
            };
            println!(
                "{what} {} at {}: InputBundleHash {}, model `{}` ({})",
                m.run_id,
                m.timing.finished_at,
                m.input_bundle_hash.0.short(),
                m.model.name,
                m.model.provider
            );
            if let Some(e) = &m.error {
                println!("error: {}", e.lines().next().unwrap_or(""));
            }
        }
        RunLookup::Gone { run_id, why } if !run_id.is_empty() => {
            println!("built by run {run_id}, whose manifest is gone: {why}")
        }
        RunLookup::Gone { why, .. } => println!("its last run {why}"),
        RunLookup::Unknown => {}
    }
    if !ex.changes.is_empty() {
        println!("\nchanged since that run:");
        for c in &ex.changes {
            let old = c.old.as_deref().unwrap_or("(none)");
            let new = c.new.as_deref().unwrap_or("(none)");
            println!("  {}: {old} -> {new}", c.what);
            if let Some(d) = &c.diff {
                for l in d.lines() {
                    println!("    {l}");
                }
            }
        }
    } else if matches!(ex.run, RunLookup::Found(_)) && !ex.state.is_fresh() {
        println!("\nnothing it reads changed since that run");
    }
    if let (Some(old), Some(new)) = ex.bundle
        && old != new
    {
        println!("\nInputBundleHash: {} -> {}", old.0.short(), new.0.short());
    }
    if let Some(d) = &ex.prompt_diff {
        println!("\ncompiled prompt:");
        for l in d.lines() {
            println!("  {l}");
        }
    }
    for n in &ex.notes {
        println!("note: {n}");
    }
    0
}
