//! `mkt clean`: parses its flags and prints what the library's clean did.

use camino::Utf8Path;
use clap::Args;
use markitect::clean::{CleanOptions, LeftAlone, clean};
use std::io::Write;

#[derive(Args)]
pub struct CleanArgs {
    /// Only the outputs of targets that are no longer in the project (a
    /// removed target, a deleted `foreach` file); also forgets them.
    #[arg(long)]
    stale: bool,
    /// Print what would be removed; change nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Fail at once if another mkt holds the project lock.
    #[arg(long)]
    no_wait: bool,
}

pub fn run(root: &Utf8Path, args: CleanArgs) -> i32 {
    let opts = CleanOptions {
        stale: args.stale,
        dry_run: args.dry_run,
        wait_for_lock: !args.no_wait,
    };
    let on_wait = || eprintln!("mkt: waiting for another mkt build of this project to finish...");
    let rep = match clean(root, &opts, &on_wait) {
        Ok(r) => r,
        Err(e) => return super::report_error(&e),
    };
    let verb = if opts.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut out = std::io::stdout().lock();
    for p in &rep.removed {
        if writeln!(out, "{verb} {p}").is_err() {
            break; // a closed pipe (`| head`)
        }
    }
    for p in &rep.temps {
        if writeln!(out, "{verb} {p} (left by an interrupted write)").is_err() {
            break;
        }
    }
    for (p, why) in &rep.left_alone {
        let why = match why {
            LeftAlone::Edited => "edited since mkt wrote it",
            LeftAlone::NotRecorded => "its last run failed, so mkt has no record of its content",
            LeftAlone::NotAFile => "not a regular file inside the project",
        };
        eprintln!("left alone {p}: {why}");
    }
    let n = rep.removed.len();
    let what = match (opts.stale, n == 1) {
        (true, true) => "output of a removed target",
        (true, false) => "outputs of removed targets",
        (false, true) => "output",
        (false, false) => "outputs",
    };
    let mut s = format!("{verb} {n} {what}");
    if !rep.left_alone.is_empty() {
        s.push_str(&format!(", left {} alone", rep.left_alone.len()));
    }
    if opts.stale && rep.records_dropped > 0 {
        let verb = if opts.dry_run {
            "would forget"
        } else {
            "forgot"
        };
        let n = rep.records_dropped;
        let what = if n == 1 { "target" } else { "targets" };
        s.push_str(&format!("; {verb} {n} removed {what}"));
    }
    eprintln!("{s}");
    0
}
