//! `mkt cache push|pull|stats`: moves results to and from the remote cache
//! explicitly and says what it holds (the library's `remote.rs`).

use camino::Utf8Path;
use clap::{Args, Subcommand};
use markitect::build::{BuildOptions, Event, build};
use markitect::config::Project;
use markitect::gc::human_bytes;

#[derive(Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Upload the run of every current output (manifest, prompt and
    /// output objects) that the remote does not have yet.
    Push,
    /// Fetch from the remote the results of the targets (all when none are
    /// named) that are not in the local store, and write their outputs;
    /// never calls a model.
    Pull {
        /// Target names, `NAME[item/path]`, or output paths.
        targets: Vec<String>,
    },
    /// Print what the remote holds under its prefix: entries, objects,
    /// bytes.
    Stats,
}

fn open(root: &Utf8Path) -> Result<markitect::remote::Remote, i32> {
    let project = Project::parse(
        root,
        Project::read_source(root).map_err(|e| super::report_error(&e))?,
    )
    .map_err(|e| super::report_error(&e))?;
    markitect::remote::open_required(&project).map_err(|e| super::report_error(&e))
}

pub fn run(root: &Utf8Path, args: CacheArgs) -> i32 {
    match args.command {
        CacheCommand::Push => {
            let remote = match open(root) {
                Ok(r) => r,
                Err(code) => return code,
            };
            match markitect::remote::push(root, &remote) {
                Ok(r) => {
                    let mut s = format!(
                        "pushed {} runs to `{}`; {} were there already",
                        r.pushed,
                        remote.display(),
                        r.present
                    );
                    if r.missing > 0 {
                        s.push_str(&format!(
                            "; {} outputs have no complete run in the local store (run `mkt build`)",
                            r.missing
                        ));
                    }
                    println!("{s}");
                    0
                }
                Err(e) => super::report_error(&e),
            }
        }
        CacheCommand::Stats => {
            let remote = match open(root) {
                Ok(r) => r,
                Err(code) => return code,
            };
            match remote.stats() {
                Ok(s) => {
                    println!(
                        "remote cache `{}`: {} entries, {} objects, {}",
                        remote.display(),
                        s.entries,
                        s.objects,
                        human_bytes(s.bytes)
                    );
                    0
                }
                Err(e) => {
                    eprintln!(
                        "error: {e}\n  help: check the URL, that the server is up, and the credentials in the environment"
                    );
                    1
                }
            }
        }
        CacheCommand::Pull { targets } => {
            // fail early, with the usual message, when there is no remote
            if let Err(code) = open(root) {
                return code;
            }
            let opts = BuildOptions {
                targets,
                fetch_only: true,
                ..Default::default()
            };
            let result = build(root, &opts, &|e| {
                if let Event::Warning(w) = e {
                    eprintln!("warning: {w}");
                }
            });
            match result {
                Ok(r) => {
                    let local = r.cached + r.restored - r.remote;
                    println!(
                        "pulled {} targets from the remote cache; {} were in the local store, {} up to date, {} not in the remote cache",
                        r.remote, local, r.fresh, r.skipped
                    );
                    0
                }
                Err(e) => super::report_error(&e),
            }
        }
    }
}
