//! `mkt watch`: prints each rebuild as `mkt build` would.

use super::build::{Printer, install_interrupt_handler, summary_line};
use camino::Utf8Path;
use clap::Args;
use markitect::build::BuildOptions;
use markitect::watch::{WatchEvent, WatchOptions, watch};

#[derive(Args)]
pub struct WatchArgs {
    /// Targets to keep built (and what they need); all when none are given.
    targets: Vec<String>,
    /// Quiet time, per file, before a change is acted on.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    debounce_ms: u64,
    /// Concurrent model calls.
    #[arg(short = 'j', long = "jobs", default_value_t = 16)]
    jobs: usize,
    /// Build every target that does not depend on a failed one.
    #[arg(short, long)]
    keep_going: bool,
    /// Print only what changed, errors and each build's summary line.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(root: &Utf8Path, args: WatchArgs) -> i32 {
    let opts = WatchOptions {
        build: BuildOptions {
            targets: args.targets,
            jobs: args.jobs.max(1),
            keep_going: args.keep_going,
            ..Default::default()
        },
        debounce: std::time::Duration::from_millis(args.debounce_ms),
    };
    let printer = Printer::new(args.quiet);
    install_interrupt_handler();
    let result = watch(root, &opts, &|e| match e {
        WatchEvent::Rebuilding {
            changes, rescan, ..
        } => {
            if rescan {
                printer.line("mkt watch: file events were lost; checking every file");
            } else if !changes.is_empty() {
                let mut shown: Vec<String> =
                    changes.iter().take(3).map(|c| format!("`{c}`")).collect();
                if changes.len() > 3 {
                    shown.push(format!("{} more", changes.len() - 3));
                }
                printer.line(&format!("mkt watch: changed {}", shown.join(", ")));
            }
        }
        WatchEvent::Build(ev) => printer.event(ev),
        WatchEvent::Built {
            result,
            elapsed,
            verify,
        } => {
            printer.status(true, String::new);
            match result {
                // a check after new watches: silent unless it did something
                Ok(r) if verify && r.fresh == r.total => {}
                Ok(r) => printer.line(&summary_line(r, elapsed)),
                Err(e) => printer.line(&format!("error: {e}")),
            }
        }
        WatchEvent::Idle { dirs } => printer.status(true, || {
            format!(
                "watching {dirs} director{} (Ctrl-C to stop)",
                if dirs == 1 { "y" } else { "ies" }
            )
        }),
        WatchEvent::Warning(w) => printer.line(&format!("warning: {w}")),
    });
    printer.status(true, String::new);
    match result {
        Ok(()) => 130, // only an interrupt ends watching
        Err(e) => super::report_error(&e),
    }
}
