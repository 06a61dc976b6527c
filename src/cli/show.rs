//! `mkt show`: a target's or a run's prompt, output or manifest.

use camino::Utf8Path;
use clap::Args;
use markitect::show::{PromptSource, manifest, output, prompt};
use std::io::Write;

#[derive(Args)]
#[command(group = clap::ArgGroup::new("what").args(["prompt", "output", "manifest"]))]
pub struct ShowArgs {
    /// A target (a name that means one node, `NAME[item/path]`, or an
    /// output path) or a run id from `mkt runs`.
    spec: String,
    /// The compiled prompt, as sent (fresh target, run id) or as it would
    /// be sent now (stale target).
    #[arg(long)]
    prompt: bool,
    /// The output as the run produced it (the default).
    #[arg(long)]
    output: bool,
    /// The RunManifest, as JSON.
    #[arg(long)]
    manifest: bool,
    /// With `--prompt`: the messages as JSON, exactly as hashed.
    #[arg(long, requires = "prompt")]
    json: bool,
}

pub fn run(root: &Utf8Path, args: ShowArgs) -> i32 {
    let mut out = std::io::stdout().lock();
    let result = if args.prompt {
        prompt(root, &args.spec).map(|(p, source)| {
            match source {
                PromptSource::Sent { run_id } => eprintln!("prompt sent by run {run_id}"),
                PromptSource::WouldSend => {
                    eprintln!("prompt as the next build would send it (the target is not fresh)")
                }
            }
            if args.json {
                let v: serde_json::Value =
                    serde_json::from_slice(&p.canonical_json()).expect("prompt JSON");
                let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v).expect("JSON"));
            } else {
                for (i, m) in p.messages.iter().enumerate() {
                    if i > 0 {
                        let _ = writeln!(out);
                    }
                    let _ = writeln!(out, "--- {}", m.role);
                    let _ = write!(out, "{}", m.content);
                    if !m.content.ends_with('\n') {
                        let _ = writeln!(out);
                    }
                }
            }
        })
    } else if args.manifest {
        manifest(root, &args.spec).map(|m| {
            let _ = out.write_all(&m.to_json());
        })
    } else {
        output(root, &args.spec).map(|b| {
            let _ = out.write_all(&b);
        })
    };
    match result {
        Ok(()) => 0,
        Err(e) => super::report_error(&e),
    }
}
