//! `mkt status`: what is not fresh, and why.

use camino::Utf8Path;
use clap::Args;
use markitect::status::{NodeState, status};

#[derive(Args)]
pub struct StatusArgs {
    /// Targets to check (and what they need); all when none are given.
    targets: Vec<String>,
    /// Print JSON (schema `mkt.status/1`, see README) instead of text.
    #[arg(long)]
    json: bool,
    /// List the outputs made by other snapshots than the newest one seen
    /// for their model (exit code 1 when there are any).
    #[arg(long)]
    drift: bool,
}

/// `mkt status --drift`: one line per output made by another snapshot
/// than its model's newest; with `--json`, schema `mkt.drift/1`.
fn run_drift(root: &Utf8Path, args: &StatusArgs) -> i32 {
    let snap = match markitect::provenance::Snapshot::load(root) {
        Ok(s) => s,
        Err(e) => return super::report_error(&e),
    };
    let mut drifted = markitect::drift::drifted(&snap.project, &snap.graph, &snap.records);
    if !args.targets.is_empty() {
        let mut wanted = std::collections::HashSet::new();
        for t in &args.targets {
            match snap.nodes_named(t) {
                Ok(nodes) => wanted.extend(nodes.into_iter().map(|i| snap.node(i).key.clone())),
                Err(e) => return super::report_error(&e),
            }
        }
        drifted.retain(|d| wanted.contains(&d.target));
    }
    if args.json {
        let v = serde_json::json!({ "schema": "mkt.drift/1", "drifted": drifted });
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
    } else {
        let width = (drifted.iter().map(|d| d.target.chars().count()))
            .max()
            .unwrap_or(0);
        for d in &drifted {
            say!(
                "{:width$}  made by `{}`; model `{}` answers as `{}`",
                d.target,
                d.made_by,
                d.model,
                d.newest
            );
        }
        match drifted.len() {
            0 => eprintln!("every output was made by the newest snapshot seen for its model"),
            1 => eprintln!("1 output was made by another snapshot than the newest of its model"),
            n => eprintln!(
                "{} outputs were made by other snapshots than the newest of their model",
                markitect::build::format_count(n)
            ),
        }
    }
    i32::from(!drifted.is_empty())
}

/// Exit code 0 when everything is fresh, 1 when something is not, 2 when
/// the project is invalid.
pub fn run(root: &Utf8Path, args: StatusArgs) -> i32 {
    if args.drift {
        return run_drift(root, &args);
    }
    let rep = match status(root, &args.targets) {
        Ok(r) => r,
        Err(e) => return super::report_error(&e),
    };
    if args.json {
        #[derive(serde::Serialize)]
        struct Target<'a> {
            target: &'a str,
            state: &'static str,
            reason: Option<String>,
            cause: Option<&'a markitect::state::DirtyReason>,
            #[serde(skip_serializing_if = "Option::is_none")]
            estimate: Option<super::estimate::TargetJson>,
        }
        #[derive(serde::Serialize)]
        struct Status<'a> {
            schema: &'static str,
            total: usize,
            fresh: usize,
            targets: Vec<Target<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            estimate: Option<super::estimate::TotalJson>,
        }
        let est = &rep.estimate;
        let by_key: std::collections::HashMap<&str, _> =
            est.targets.iter().map(|e| (e.target.as_str(), e)).collect();
        let estimate_of = |key: &str| by_key.get(key).map(|e| super::estimate::target_json(e));
        let v = Status {
            schema: "mkt.status/1",
            total: rep.total,
            fresh: rep.total - rep.not_fresh.len(),
            targets: rep
                .not_fresh
                .iter()
                .map(|(key, st)| Target {
                    target: key,
                    state: st.word(),
                    reason: st.reason(),
                    cause: match st {
                        NodeState::Stale(r) => Some(r),
                        _ => None,
                    },
                    estimate: estimate_of(key),
                })
                .collect(),
            estimate: (!est.targets.is_empty()).then(|| super::estimate::total_json(est)),
        };
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
    } else {
        let width = rep
            .not_fresh
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (key, st) in &rep.not_fresh {
            let reason = match st {
                NodeState::Broken(e) => format!("cannot be built: {e}"),
                st => st.reason().unwrap_or_default(),
            };
            say!("{key:width$}  {reason}");
        }
        if !rep.estimate.targets.is_empty() {
            for l in super::estimate::table(&rep.estimate) {
                say!("{l}");
            }
        }
        if rep.all_fresh() {
            match rep.total {
                1 => eprintln!("the 1 target is fresh"),
                n => eprintln!("all {n} targets are fresh"),
            }
        } else {
            eprintln!(
                "{} of {} targets are not fresh",
                rep.not_fresh.len(),
                rep.total
            );
        }
    }
    if rep.all_fresh() { 0 } else { 1 }
}
