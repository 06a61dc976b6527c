//! `mkt graph`: prints a picture of the pipeline (or of what produced the
//! current outputs) as DOT, Mermaid or JSON. Read-only.

use camino::Utf8Path;
use clap::Args;
use markitect::provenance::Snapshot;
use markitect::status::status;
use markitect::view::{self, Cone, ViewOptions};
use std::io::Write;

#[derive(Args)]
pub struct GraphArgs {
    /// Limit the picture to these targets (names, `NAME[item/path]` or
    /// output paths) and what they need. All targets when none are given.
    targets: Vec<String>,
    /// Graphviz DOT (the default): `mkt graph | dot -Tsvg > pipeline.svg`.
    #[arg(long, conflicts_with_all = ["json", "mermaid"])]
    dot: bool,
    /// JSON, schema `mkt.graph/1` (`mkt.provenance/1` with --provenance);
    /// always every node.
    #[arg(long, conflicts_with = "mermaid")]
    json: bool,
    /// A Mermaid flowchart, for pasting into Markdown.
    #[arg(long)]
    mermaid: bool,
    /// Draw what produced the current outputs, from their run manifests:
    /// run ids, InputBundleHashes, models, times, consumed digests, and
    /// what changed since.
    #[arg(long)]
    provenance: bool,
    /// With targets: show what they feed instead of what they need.
    #[arg(long)]
    downstream: bool,
    /// Show every node of large `foreach` targets and globs instead of one
    /// aggregate node each.
    #[arg(long)]
    expand: bool,
}

pub fn run(root: &Utf8Path, args: GraphArgs) -> i32 {
    match render(root, &args) {
        Ok(picture) => {
            // stdout may be a pipe closed early (`| head`): stop quietly
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let _ = if args.json {
                picture.write_json(&mut out)
            } else if args.mermaid {
                out.write_all(picture.to_mermaid().as_bytes())
            } else {
                out.write_all(picture.to_dot().as_bytes())
            }
            .and_then(|()| out.flush());
            0
        }
        Err(e) => super::report_error(&e),
    }
}

fn render(root: &Utf8Path, args: &GraphArgs) -> markitect::error::Result<view::View> {
    let snap = Snapshot::load(root)?;
    let cone = if args.downstream {
        Cone::Downstream
    } else {
        Cone::Upstream
    };
    let selected = view::select(&snap, &args.targets, cone)?;
    let report = status(root, &[])?;
    let opts = ViewOptions {
        // JSON is for programs: they get every node
        expand: args.expand || args.json,
        ..ViewOptions::default()
    };
    Ok(if args.provenance {
        view::provenance(&snap, &report, &selected, &opts)
    } else {
        view::pipeline(&snap, &report, &selected, &opts)
    })
}
