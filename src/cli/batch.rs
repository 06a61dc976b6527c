//! `mkt batch status|cancel`: the batches a build submitted that no build
//! has collected yet (the library's `batch` module).

use super::build::{batch_progress_line, plural};
use camino::Utf8Path;
use clap::{Args, Subcommand};
use markitect::batch::BatchInfo;

#[derive(Args)]
pub struct BatchArgs {
    #[command(subcommand)]
    command: BatchCommand,
}

#[derive(Subcommand)]
enum BatchCommand {
    /// List the pending batches: the provider's progress, age and what
    /// each costs at most.
    Status,
    /// Ask the provider to cancel a pending batch (all when none is
    /// named): its requests are no longer pending, so the next build sends
    /// them again; answers that came before are still collected.
    Cancel {
        /// The batch id, as `mkt batch status` shows it.
        id: Option<String>,
        /// Fail at once if another mkt holds the project lock.
        #[arg(long)]
        no_wait: bool,
    },
}

pub fn run(root: &Utf8Path, args: BatchArgs) -> i32 {
    match args.command {
        BatchCommand::Status => match markitect::batch::list(root) {
            Ok(list) if list.is_empty() => {
                say!("no pending batches");
                0
            }
            Ok(list) => {
                list.iter().for_each(|b| say!("{}", status_line(b)));
                0
            }
            Err(e) => super::report_error(&e),
        },
        BatchCommand::Cancel { id, no_wait } => {
            let on_wait =
                || eprintln!("mkt: waiting for another mkt build of this project to finish...");
            match markitect::batch::cancel(root, id.as_deref(), !no_wait, &on_wait) {
                Ok(asked) => {
                    let mut code = 0;
                    for (id, r) in asked {
                        match r {
                            Ok(()) => say!(
                                "cancelled batch {id}: its requests are no longer pending; what it answered is collected by the next build"
                            ),
                            Err(why) => {
                                eprintln!("error: batch {id}: {}", super::shown(&why));
                                code = 1;
                            }
                        }
                    }
                    code
                }
                Err(e) => super::report_error(&e),
            }
        }
    }
}

/// `batch_abc (model `gpt`): in_progress, 2/3 done; 3 requests, submitted 5 min ago, at most $0.0021`.
fn status_line(b: &BatchInfo) -> String {
    let rec = &b.record;
    let head = match &b.progress {
        Ok(p) => batch_progress_line(rec.name(), &rec.model, p),
        Err(why) => format!("batch {} (model `{}`): {why}", rec.name(), rec.model),
    };
    let age = humantime::parse_rfc3339(&rec.submitted_at)
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|d| {
            let d = std::time::Duration::from_secs(d.as_secs() / 60 * 60);
            if d.is_zero() {
                "just now".to_string()
            } else {
                format!("{} ago", humantime::format_duration(d))
            }
        })
        .unwrap_or_else(|| rec.submitted_at.clone());
    let mut s = format!(
        "{head}; {}, submitted {age}",
        plural(rec.requests.len(), "request")
    );
    if let Some(c) = b.cost_bound_usd {
        s.push_str(&format!(", at most {}", markitect::build::format_usd(c)));
    }
    if rec.cancelled {
        s.push_str(" (cancelled)");
    }
    s
}
