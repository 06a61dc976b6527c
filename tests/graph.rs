//! `mkt graph`: the pipeline and provenance pictures, rendered by the real
//! Graphviz `dot`. CI installs it and sets `MKT_REQUIRE_DOT=1`, so there a
//! missing `dot` fails the tests. On a machine without it (a newcomer's
//! `cargo test`) the render step is skipped with a warning and the
//! assertions run on the DOT text, which carries the same labels.

mod support;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use support::*;

/// Whether Graphviz `dot` can be run here.
fn have_dot() -> bool {
    Command::new("dot").arg("-V").output().is_ok()
}

/// Renders DOT with the real `dot -Tsvg` and returns the SVG; panics when
/// `dot` rejects the input. Without `dot` (and outside CI, see the module
/// docs) returns the DOT text itself.
#[track_caller]
fn svg(dot_text: &str) -> String {
    if !have_dot() && std::env::var_os("MKT_REQUIRE_DOT").is_none() {
        eprintln!(
            "warning: Graphviz `dot` is not installed, so the DOT output is not rendered \
             (`apt-get install graphviz`; CI installs it)"
        );
        return dot_text.to_string();
    }
    let mut child = match Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run Graphviz `dot` ({e}): the `mkt graph` tests need it to check \
             that the DOT output renders. Install it (`apt-get install graphviz`); \
             `.ci/run` does so in CI."
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dot_text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "`dot -Tsvg` rejected the output of `mkt graph`:\n{}\n--- DOT\n{dot_text}",
        String::from_utf8_lossy(&out.stderr)
    );
    // dot writes `-` as `&#45;` in SVG text
    String::from_utf8(out.stdout).unwrap().replace("&#45;", "-")
}

/// Every file under `.mkt/` with its size and modification time.
fn store_listing(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(&path, out);
            } else {
                out.push(format!(
                    "{} {} {:?}",
                    path.display(),
                    meta.len(),
                    meta.modified().unwrap()
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root.join(".mkt"), &mut out);
    out.sort();
    out
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", run.stdout))
}

fn node<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("no node `{id}` in\n{v:#}"))
}

fn edge<'a>(v: &'a Value, from: &str, to: &str) -> &'a Value {
    v["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["from"] == from && e["to"] == to)
        .unwrap_or_else(|| panic!("no edge `{from}` -> `{to}` in\n{v:#}"))
}

fn node_ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .filter(|id| id.starts_with("target:"))
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_never_built_project_renders_with_its_states_and_writes_nothing() {
    let p = project().fixture("chain").build();
    let run = p.mkt(&["graph"]);
    run.success();
    let out = svg(&run.stdout);
    for name in [
        "outline",
        "summary",
        "final",
        "never-built",
        "templates/final.md",
    ] {
        assert!(out.contains(name), "the SVG lacks `{name}`:\n{out}");
    }
    // each kind of node has its own shape
    assert!(run.stdout.contains("shape=note"), "{}", run.stdout);
    assert!(run.stdout.contains("shape=folder"), "{}", run.stdout);
    for args in [
        &["graph", "--json"][..],
        &["graph", "--mermaid"],
        &["graph", "--provenance"],
        &["graph", "--provenance", "--json"],
    ] {
        p.mkt(args).success();
    }
    assert!(!p.exists(".mkt"), "`mkt graph` created `.mkt/`");
    assert!(!p.exists("out"), "`mkt graph` wrote outputs");
}

#[test]
fn graph_reads_the_store_without_changing_it() {
    let p = project().fixture("chain").build();
    p.mkt(&["build"]).success();
    p.append("audience.txt", "and more\n");
    let before = store_listing(p.root());
    for args in [
        &["graph"][..],
        &["graph", "--json"],
        &["graph", "--mermaid"],
        &["graph", "--provenance"],
        &["graph", "--provenance", "--json"],
        &["graph", "--provenance", "--mermaid"],
        &["graph", "final", "--downstream"],
    ] {
        p.mkt(args).success();
    }
    assert_eq!(store_listing(p.root()), before);
}

#[test]
fn states_are_fresh_after_a_build_and_stale_after_an_edit() {
    let p = project().fixture("chain").build();
    p.mkt(&["build"]).success();
    let v = json(&p.mkt(&["graph", "--json"]));
    assert_eq!(v["schema"], "mkt.graph/1");
    for key in ["outline", "summary", "final"] {
        assert_eq!(node(&v, &format!("target:{key}"))["state"], "fresh");
    }
    p.append("audience.txt", "and more\n");
    let run = p.mkt(&["graph", "--json"]);
    let v = json(&run);
    assert_eq!(node(&v, "target:outline")["state"], "fresh");
    let summary = node(&v, "target:summary");
    assert_eq!(summary["state"], "stale");
    assert_eq!(summary["reason"], "input `audience.txt` changed");
    assert_eq!(node(&v, "target:final")["state"], "stale");
    let dot = p.mkt(&["graph"]);
    let out = svg(&dot.stdout);
    assert!(out.contains("stale"), "{out}");
    assert!(out.contains("fresh"), "{out}");
}

#[test]
fn target_names_limit_the_picture_to_their_cone() {
    let p = project().fixture("chain").build();
    let up = json(&p.mkt(&["graph", "--json", "summary"]));
    assert_eq!(node_ids(&up), ["target:outline", "target:summary"]);
    let down = json(&p.mkt(&["graph", "--json", "--downstream", "summary"]));
    assert_eq!(node_ids(&down), ["target:final", "target:summary"]);
    // an output path names its target too
    let by_path = json(&p.mkt(&["graph", "--json", "out/outline.md"]));
    assert_eq!(node_ids(&by_path), ["target:outline"]);
    // what the cone leaves out has no edge either
    assert!(
        !up["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["to"] == "target:final"),
        "{up:#}"
    );
    p.mkt(&["graph", "nosuch"])
        .code(2)
        .stderr_contains("unknown target `nosuch`")
        .stderr_contains("known targets: final, outline, summary");
}

#[test]
fn only_one_output_format_at_a_time() {
    let p = project().fixture("chain").build();
    p.mkt(&["graph", "--json", "--mermaid"])
        .code(2)
        .stderr_contains("cannot be used with");
    p.mkt(&["graph", "--dot", "--json"])
        .code(2)
        .stderr_contains("cannot be used with");
}

/// A project with one `summary` node per each of `n` docs and an `index`
/// over them all (the built-in mock model).
fn fan_out(n: usize) -> Project {
    let mut b = project()
        .file(
            "prompts.toml",
            r#"
[targets.summary]
foreach = "docs/*.md"
template = "templates/summary.md"
output = "out/summaries/{stem}.md"

[targets.index]
template = "templates/index.md"
inputs = { all = "docs/*.md" }
output = "out/index.md"
"#,
        )
        .file("templates/summary.md", "Summarise {{ item.content }}\n")
        .file(
            "templates/index.md",
            "{% for s in targets.summary %}{{ s.content }}{% endfor %}{{ inputs.all | length }}\n",
        );
    for i in 0..n {
        b = b.file(&format!("docs/d{i:02}.md"), format!("Document {i}.\n"));
    }
    b.build()
}

#[test]
fn a_large_foreach_collapses_into_one_counted_node_in_a_cluster() {
    let p = fan_out(40);
    p.mkt(&["build"]).success();
    p.append("docs/d07.md", "changed\n");
    p.append("docs/d31.md", "changed\n");
    let run = p.mkt(&["graph"]);
    run.success();
    let dot = &run.stdout;
    assert!(dot.contains("subgraph cluster_"), "{dot}");
    let out = svg(dot);
    // one aggregate for the 38 fresh ones, the two stale ones alone
    assert!(out.contains("summary × 40: 38 fresh, 2 stale"), "{out}");
    assert!(out.contains("summary[docs/d07.md]"), "{out}");
    assert!(out.contains("summary[docs/d31.md]"), "{out}");
    assert!(!out.contains("summary[docs/d08.md]"), "{out}");
    // the glob input of `index` is one node too
    assert!(out.contains("docs/*.md (40 files)"), "{out}");
    let nodes = dot.matches(" [shape=").count();
    assert!(
        nodes < 15,
        "{nodes} nodes is not a readable picture:\n{dot}"
    );

    // --expand shows them all
    let run = p.mkt(&["graph", "--expand"]);
    let out = svg(&run.stdout);
    for i in 0..40 {
        let key = format!("summary[docs/d{i:02}.md]");
        assert!(out.contains(&key), "--expand lacks `{key}`");
    }
    // and so does JSON, always
    let v = json(&p.mkt(&["graph", "--json"]));
    assert_eq!(node_ids(&v).len(), 41);
    assert_eq!(v["clusters"][0]["target"], "summary");
    assert_eq!(v["clusters"][0]["members"], 40);
    assert_eq!(
        node(&v, "target:summary[docs/d07.md]")["cluster"],
        "summary"
    );
    // the fixture's small fan-out is drawn node by node
    let small = project().fixture("foreach").build();
    let out = svg(&small.mkt(&["graph"]).stdout);
    assert!(out.contains("summary[docs/a.md]"), "{out}");
    assert!(out.contains("summary[docs/b.md]"), "{out}");
}

#[test]
fn provenance_after_a_partial_rebuild_shows_mixed_ages_and_what_changed() {
    let p = project().fixture("chain").build();
    p.mkt(&["build"]).success();
    let first = json(&p.mkt(&["graph", "--provenance", "--json"]));
    assert_eq!(first["schema"], "mkt.provenance/1");
    // wait so the second build's times differ from the first's
    std::thread::sleep(std::time::Duration::from_millis(20));
    p.append("topic.txt", "A new angle.\n");
    p.mkt(&["build", "outline"])
        .success()
        .ran(&["outline (input `topic.txt` changed)"]);
    let run = p.mkt(&["graph", "--provenance", "--json"]);
    let v = json(&run);
    let outline = &node(&v, "target:outline")["run"];
    let summary = &node(&v, "target:summary")["run"];
    let old_outline = &node(&first, "target:outline")["run"];
    assert_ne!(outline["run_id"], old_outline["run_id"]);
    assert_ne!(outline["run_id"], summary["run_id"]);
    assert_ne!(outline["finished_at"], summary["finished_at"]);
    assert_eq!(summary, &node(&first, "target:summary")["run"]);
    assert_eq!(outline["input_bundle_hash"].as_str().unwrap().len(), 12);
    assert_eq!(outline["model"], "default");
    // summary consumed the old outline's output: changed since
    let e = edge(&v, "target:outline", "target:summary");
    assert_eq!(e["changed"], true);
    assert_eq!(e["run_id"], old_outline["run_id"]);
    assert_eq!(e["recorded"], old_outline["output_digest"]);
    assert_eq!(e["current"], outline["output_digest"]);
    // what still matches is not marked
    let e = edge(&v, "target:summary", "target:final");
    assert_eq!(e.get("changed"), None);
    assert_eq!(e["run_id"], summary["run_id"]);
    // the topic it read is the new one; the old record shows it changed
    let e = edge(&v, "file:topic.txt", "target:outline");
    assert_eq!(e.get("changed"), None);

    // an input edited and an output edited since their runs
    p.append("audience.txt", "and experts\n");
    p.write("out/final.md", "edited by hand\n");
    let v = json(&p.mkt(&["graph", "--provenance", "--json"]));
    let e = edge(&v, "file:audience.txt", "target:summary");
    assert_eq!(e["changed"], true);
    assert_ne!(e["recorded"], e["current"]);
    let fin = &node(&v, "target:final")["run"];
    assert_eq!(fin["output_changed"], true);
    p.remove("out/final.md");
    let v = json(&p.mkt(&["graph", "--provenance", "--json"]));
    assert_eq!(node(&v, "target:final")["run"]["output_now"], Value::Null);

    let run = p.mkt(&["graph", "--provenance"]);
    let out = svg(&run.stdout);
    assert!(out.contains("changed since"), "{out}");
    assert!(out.contains("missing since"), "{out}");
    let outline_id = outline["run_id"].as_str().unwrap();
    let summary_id = summary["run_id"].as_str().unwrap();
    assert!(
        out.contains(outline_id) && out.contains(summary_id),
        "{out}"
    );
    // changed edges are red and dashed
    assert!(run.stdout.contains("style=dashed"), "{}", run.stdout);
    let mermaid = p.mkt(&["graph", "--provenance", "--mermaid"]);
    assert!(mermaid.stdout.contains("-.->"), "{}", mermaid.stdout);
    assert!(mermaid.stdout.contains("linkStyle "), "{}", mermaid.stdout);
}

#[test]
fn a_failed_target_is_drawn_as_failed_with_its_run() {
    let p = project()
        .fixture("chain")
        .file(
            "prompts.toml",
            r#"
[models.default]
provider = "command"
command = ["sh", "-c", "echo model down >&2; exit 3"]

[targets.outline]
template = "templates/outline.md"
inputs = { topic = "topic.txt" }
output = "out/outline.md"
"#,
        )
        .build();
    p.mkt(&["build"]).code(1);
    let v = json(&p.mkt(&["graph", "--json"]));
    assert_eq!(node(&v, "target:outline")["state"], "failed");
    let v = json(&p.mkt(&["graph", "--provenance", "--json"]));
    assert_eq!(node(&v, "target:outline")["run"]["status"], "failed");
    let out = svg(&p.mkt(&["graph", "--provenance"]).stdout);
    assert!(out.contains("run failed"), "{out}");
}

const WEIRD: &str = "in puts/we\"ird \\ [x] {y} ü <z> #1 'q' & `b`.txt";

#[test]
fn any_file_name_survives_dot_mermaid_and_json() {
    let p = project()
        .file(
            "prompts.toml",
            "[targets.t]\nforeach = \"in puts/*.txt\"\ntemplate = \"t.md\"\n\
             output = \"out/{stem}.md\"\n",
        )
        .file("t.md", "{{ item.content }}\n")
        .file(WEIRD, "text\n")
        .build();
    p.mkt(&["build"]).success();
    let v = json(&p.mkt(&["graph", "--json"]));
    node(&v, &format!("file:{WEIRD}"));
    // the node key and output path carry the name too
    node(&v, &format!("target:t[{WEIRD}]"));
    let dot = p.mkt(&["graph"]);
    let out = svg(&dot.stdout);
    // the SVG is XML: the name comes back with its XML escapes (without
    // `dot`, `out` is the DOT text: quotes and backslashes escaped)
    let xml = if !have_dot() {
        WEIRD.replace('\\', "\\\\").replace('"', "\\\"")
    } else {
        WEIRD
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;")
    };
    assert!(out.contains(&xml), "the SVG lacks `{xml}`:\n{out}");
    let prov = p.mkt(&["graph", "--provenance"]);
    svg(&prov.stdout);
    let mermaid = p.mkt(&["graph", "--mermaid"]).stdout.clone();
    assert!(
        mermaid
            .contains("in puts/we#quot;ird \\ [x] {y} ü #lt;z#gt; #35;1 'q' #amp; #96;b#96;.txt"),
        "{mermaid}"
    );
    // no raw quote inside a label: every label is one "..." string
    for line in mermaid.lines().filter(|l| l.contains("puts")) {
        assert_eq!(line.matches('"').count(), 2, "{line}");
    }
}

/// Replaces what differs between runs (run ids, times, digests) so the
/// JSON's shape can be pinned.
fn normalise(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match k.as_str() {
                    "run_id" | "finished_at" => *x = Value::String(format!("<{k}>")),
                    "input_bundle_hash" | "output_digest" | "output_now" | "recorded"
                    | "current"
                        if x.is_string() =>
                    {
                        *x = Value::String("<digest>".into())
                    }
                    _ => normalise(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalise),
        _ => {}
    }
}

#[test]
fn json_schemas_are_pinned() {
    let p = project().fixture("foreach").build();
    p.mkt(&["build"]).success();
    p.append("docs/b.md", "more\n");
    let mut v = json(&p.mkt(&["graph", "--json"]));
    normalise(&mut v);
    insta::assert_snapshot!("graph_json", serde_json::to_string_pretty(&v).unwrap());
    let mut v = json(&p.mkt(&["graph", "--provenance", "--json"]));
    normalise(&mut v);
    insta::assert_snapshot!("provenance_json", serde_json::to_string_pretty(&v).unwrap());
}
