//! `mkt runs`: the run history, newest first.

use camino::Utf8Path;
use clap::Args;
use markitect::history::{RunsFilter, runs};
use markitect::store::STORE_DIR;

#[derive(Args)]
pub struct RunsArgs {
    /// Only runs of these targets (a name covers all its `foreach` nodes).
    targets: Vec<String>,
    /// Only failed runs.
    #[arg(long)]
    failed: bool,
    /// Show at most N runs.
    #[arg(
        short = 'n',
        long,
        value_name = "N",
        default_value_t = 50,
        conflicts_with = "all"
    )]
    limit: usize,
    /// Show every run on record.
    #[arg(long)]
    all: bool,
    /// Print JSON (schema `mkt.runs/1`: the history lines, newest first).
    #[arg(long)]
    json: bool,
}

pub fn run(root: &Utf8Path, args: RunsArgs) -> i32 {
    let filter = RunsFilter {
        targets: args.targets,
        failed_only: args.failed,
        limit: (!args.all).then_some(args.limit),
    };
    if let Err(e) = markitect::store::check_store_dir(root) {
        return super::report_error(&e);
    }
    let dir = root.join(STORE_DIR);
    let (entries, total) = match runs(&dir, &filter) {
        Ok(r) => r,
        Err(e) => {
            return super::report_error(&markitect::error::Error::io(
                "read",
                dir.join(markitect::history::HISTORY_FILE),
                e,
            ));
        }
    };
    if args.json {
        let v = serde_json::json!({ "schema": "mkt.runs/1", "runs": entries });
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
        return 0;
    }
    if entries.is_empty() {
        eprintln!("no runs on record");
        return 0;
    }
    let rows: Vec<[String; 9]> = entries
        .iter()
        .map(|e| {
            [
                e.time.replace('T', " ").chars().take(19).collect(),
                // a result served from the remote cache says so, and one
                // a provider batch answered
                if e.remote {
                    "remote".to_string()
                } else if e.batch.is_some() {
                    format!("{} (batch)", e.status.as_str())
                } else {
                    e.status.as_str().to_string()
                },
                e.target.clone(),
                e.input_bundle_hash.map_or("-".into(), |d| d.short()),
                if e.model.is_empty() {
                    "-".into()
                } else {
                    e.model.clone()
                },
                format_ms(e.duration_ms),
                e.usage.as_ref().map_or("-".into(), |u| {
                    format!("{}+{}", u.input_tokens, u.output_tokens)
                }),
                e.cost_usd.map_or("-".into(), markitect::build::format_usd),
                if e.run_id.is_empty() {
                    "-".into()
                } else {
                    e.run_id.clone()
                },
            ]
        })
        .collect();
    let header = [
        "WHEN (UTC)",
        "STATUS",
        "TARGET",
        "BUNDLE",
        "MODEL",
        "DURATION",
        "TOKENS",
        "COST",
        "RUN",
    ];
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else if (5..=7).contains(&i) {
                s.push_str(&format!("{c:>w$}  "));
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s
    };
    say!("{}", line(header.to_vec()));
    for r in &rows {
        say!("{}", line(r.iter().map(String::as_str).collect()));
    }
    if total > entries.len() {
        eprintln!(
            "{} of {total} runs shown; `--all` shows every one",
            entries.len()
        );
    }
    0
}

fn format_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}
