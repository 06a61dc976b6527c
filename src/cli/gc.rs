//! `mkt gc`: parses its flags and prints what the library's gc did.

use camino::Utf8Path;
use clap::Args;
use markitect::gc::{GcOptions, Kind, StoreStats, Why, gc, human_bytes, parse_size, stats};
use std::io::Write;

#[derive(Args)]
pub struct GcArgs {
    /// Keep the last K runs of each target besides the runs that produced
    /// the current outputs.
    #[arg(long, value_name = "K", default_value_t = markitect::gc::DEFAULT_KEEP_RUNS)]
    keep_runs: usize,
    /// Then evict the least recently used of those recent runs until the
    /// store fits in SIZE (e.g. `500M`, `2G`; binary units).
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    max_size: Option<u64>,
    /// Print what would be removed and the bytes freed; change nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Delete the whole store (also one of a format this mkt cannot read);
    /// the next build runs everything again.
    #[arg(long, conflicts_with_all = ["keep_runs", "max_size"])]
    all: bool,
    /// Print the store's files and bytes by kind; change nothing.
    #[arg(long, conflicts_with_all = ["keep_runs", "max_size", "dry_run", "all"])]
    stats: bool,
    /// Fail at once if another mkt holds the project lock.
    #[arg(long)]
    no_wait: bool,
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("`{s}` is not a size such as `500M`, `2G` or `4096`"))
}

// stdout may be a pipe closed early (`| head`): stop quietly, no panic
fn print_stats(st: &StoreStats) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{:<22} {:>8} {:>12}", "KIND", "FILES", "BYTES");
    for (k, n, b) in &st.kinds {
        let _ = writeln!(out, "{:<22} {n:>8} {:>12}", k.label(), human_bytes(*b));
    }
    let _ = writeln!(
        out,
        "{:<22} {:>8} {:>12}",
        "total",
        st.files,
        human_bytes(st.bytes)
    );
}

pub fn run(root: &Utf8Path, args: GcArgs) -> i32 {
    if args.stats {
        return match stats(root) {
            Ok(st) => {
                print_stats(&st);
                0
            }
            Err(e) => super::report_error(&e),
        };
    }
    let opts = GcOptions {
        keep_runs: args.keep_runs,
        max_size: args.max_size,
        dry_run: args.dry_run,
        all: args.all,
        wait_for_lock: !args.no_wait,
    };
    let on_wait = || eprintln!("mkt: waiting for another mkt build of this project to finish...");
    let rep = match gc(root, &opts, &on_wait) {
        Ok(r) => r,
        Err(e) => return super::report_error(&e),
    };
    if opts.dry_run {
        let mut out = std::io::stdout().lock();
        for r in &rep.removed {
            let why = match r.why {
                Why::Unreferenced => "unreferenced",
                Why::Evicted => "evicted to fit --max-size",
                Why::StrayTemp => "temp file of a crashed write",
                Why::All => "--all",
            };
            let line = format!("would remove {} ({}, {why})", r.path, human_bytes(r.bytes));
            if writeln!(out, "{line}").is_err() {
                break;
            }
        }
    }
    let verb = if opts.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut kinds = Vec::new();
    for k in Kind::ALL {
        let n = rep.removed.iter().filter(|r| r.kind == k).count();
        if n > 0 {
            kinds.push(format!("{n} {}", k.label()));
        }
    }
    let what = if kinds.is_empty() {
        String::new()
    } else {
        format!(": {}", kinds.join(", "))
    };
    let n = rep.removed.len();
    let files = if n == 1 { "file" } else { "files" };
    eprintln!("{verb} {n} {files}, {}{what}", human_bytes(rep.freed()));
    for p in &rep.left_alone {
        eprintln!("left `{p}`: not a file mkt writes (remove it by hand if it is yours to delete)");
    }
    for p in &rep.pending_batches {
        eprintln!(
            "kept `{p}`: a batch not yet collected (`mkt build` collects it; `mkt batch cancel` gives it up)"
        );
    }
    if !opts.all {
        let runs = |n: usize| if n == 1 { "run" } else { "runs" };
        eprintln!(
            "kept the {} {} of the current outputs and {} recent {} (last {} per target); history {} -> {} lines",
            rep.pinned_runs,
            runs(rep.pinned_runs),
            rep.recent_runs,
            runs(rep.recent_runs),
            opts.keep_runs,
            rep.history_lines.0,
            rep.history_lines.1
        );
    }
    if rep.evicted_runs > 0 {
        let s = if rep.evicted_runs == 1 { "" } else { "s" };
        eprintln!(
            "evicted {} recent run{s} to fit --max-size",
            rep.evicted_runs
        );
    }
    eprintln!(
        "store: {} -> {}",
        human_bytes(rep.size_before),
        human_bytes(rep.size_after)
    );
    if rep.fits == Some(false) {
        eprintln!(
            "warning: the store is still larger than --max-size: the runs of the current outputs alone take more (they are never evicted)"
        );
    }
    0
}
