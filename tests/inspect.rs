//! Integration tests of the inspection commands: `mkt status`, `mkt explain`,
//! `mkt show` and `mkt runs`. None of them runs a model or writes a byte;
//! each test is a user session: build, change something, ask why.
//!
//! Most tests use `fixtures/command` (outline -> summary -> final, and an
//! independent `side`), whose `command` model echoes its prompt, so an
//! output shows exactly what was sent.

mod support;

use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;
use support::{Project, failing_side_project, project};

/// A built `command` fixture: outline -> summary -> final, plus `side`.
fn built_command_project() -> Project {
    let p = project().fixture("command").build();
    p.mkt(&["build"])
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
    p
}

/// `mkt runs --all --json ARGS...`: checks the schema and returns the runs,
/// newest first.
#[track_caller]
fn runs_json(p: &Project, args: &[&str]) -> Vec<Value> {
    let mut argv = vec!["runs", "--all", "--json"];
    argv.extend_from_slice(args);
    let run = p.mkt(&argv);
    run.success();
    let v: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("`mkt runs --json` is not JSON: {e}\n{}", run.stdout));
    assert_eq!(v["schema"], "mkt.runs/1", "{v:#}");
    v["runs"].as_array().expect("`runs` is an array").clone()
}

/// The run ids of `target`'s history entries, newest first.
#[track_caller]
fn run_ids(p: &Project, target: &str) -> Vec<String> {
    runs_json(p, &[target])
        .iter()
        .map(|r| r["run_id"].as_str().expect("run_id").to_string())
        .collect()
}

/// `(status, target)` of every history entry, newest first.
#[track_caller]
fn history(p: &Project) -> Vec<(String, String)> {
    runs_json(p, &[])
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap().to_string(),
                r["target"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `mkt show SPEC --manifest`, parsed.
#[track_caller]
fn manifest(p: &Project, spec: &str) -> Value {
    let run = p.mkt(&["show", spec, "--manifest"]);
    run.success();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "`mkt show {spec} --manifest` is not JSON: {e}\n{}",
            run.stdout
        )
    })
}

/// The first 12 hex digits of a digest in a JSON value, as `mkt` shows it.
#[track_caller]
fn short(v: &Value) -> String {
    let s = v.as_str().unwrap_or_else(|| panic!("not a digest: {v}"));
    assert_eq!(s.len(), 64, "a full digest: {s}");
    s[..12].to_string()
}

/// Every file and directory under `.mkt/` with its size and mtime (to the
/// nanosecond), so that any write shows up in a comparison.
fn store_listing(p: &Project) -> String {
    fn walk(root: &Path, dir: &Path, out: &mut String) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let mtime = meta
                .modified()
                .expect("mtime")
                .duration_since(std::time::UNIX_EPOCH)
                .expect("mtime after 1970")
                .as_nanos();
            let _ = writeln!(out, "{rel} {} bytes, mtime {mtime}", meta.len());
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let root = p.path(".mkt");
    assert!(root.is_dir(), "no .mkt/ in\n{}", p.listing());
    let mut out = String::new();
    walk(&root, &root, &mut out);
    out
}

// ---------------------------------------------------------------------------
// mkt status

#[test]
fn status_of_a_never_built_project_lists_every_target_and_creates_no_store() {
    let p = project().fixture("command").build();
    p.mkt(&["status"])
        .code(1)
        .stdout_eq(
            "side     never built\n\
             outline  never built\n\
             summary  never built\n\
             final    never built\n",
        )
        .stderr_eq("4 of 4 targets are not fresh\n");
    assert!(!p.exists(".mkt"), "status created .mkt/:\n{}", p.listing());
    p.mkt(&["status", "--json"]).code(1);
    assert!(!p.exists(".mkt"), "status --json created .mkt/");
    assert!(!p.exists("out"), "status wrote an output");
}

#[test]
fn status_after_a_build_is_all_fresh() {
    let p = built_command_project();
    p.mkt(&["status"])
        .success()
        .stdout_eq("")
        .stderr_eq("all 4 targets are fresh\n");
}

/// One edit of a built command fixture, and what `mkt status` says then.
struct Case {
    what: &'static str,
    edit: fn(&Project),
    stdout: &'static str,
    stderr: &'static str,
}

#[test]
fn status_names_the_reason_of_every_kind_of_change() {
    let cases = [
        Case {
            what: "an input changed",
            edit: |p| p.write("notes.txt", "be thorough\n"),
            stdout: "summary  input `notes.txt` changed\n\
                     final    upstream `summary` is out of date\n",
            stderr: "2 of 4 targets are not fresh\n",
        },
        Case {
            what: "an input at the top of the chain changed: everything below is out of date",
            edit: |p| p.write("topic.txt", "provenance\n"),
            stdout: "outline  input `topic.txt` changed\n\
                     summary  upstream `outline` is out of date\n\
                     final    upstream `summary` is out of date\n",
            stderr: "3 of 4 targets are not fresh\n",
        },
        Case {
            what: "a template changed",
            edit: |p| p.append("templates/summary.md", "\nThe end.\n"),
            stdout: "summary  template `templates/summary.md` changed\n\
                     final    upstream `summary` is out of date\n",
            stderr: "2 of 4 targets are not fresh\n",
        },
        Case {
            what: "a hashed model parameter changed",
            edit: |p| p.replace("prompts.toml", "; cat']", "; cat; echo done']"),
            stdout: "side     model parameters changed\n\
                     outline  model parameters changed\n\
                     summary  model parameters changed\n\
                     final    model parameters changed\n",
            stderr: "4 of 4 targets are not fresh\n",
        },
        Case {
            what: "a parameter that is not hashed changed",
            edit: |p| {
                p.replace(
                    "prompts.toml",
                    "provider = \"command\"\n",
                    "provider = \"command\"\ntimeout_s = 60\n",
                )
            },
            stdout: "",
            stderr: "all 4 targets are fresh\n",
        },
        Case {
            what: "a target's `params` changed",
            // `[targets.side]` is the last table of the fixture
            edit: |p| p.append("prompts.toml", "params = { stdin = \"json\" }\n"),
            stdout: "side  model parameters changed\n",
            stderr: "1 of 4 targets are not fresh\n",
        },
        Case {
            what: "an output is missing",
            edit: |p| p.remove("out/side.md"),
            stdout: "side  output `out/side.md` missing\n",
            stderr: "1 of 4 targets are not fresh\n",
        },
        Case {
            what: "an output was edited by hand",
            edit: |p| p.write("out/side.md", "I know better.\n"),
            stdout: "side  output `out/side.md` edited since it was built\n",
            stderr: "1 of 4 targets are not fresh\n",
        },
        Case {
            what: "a target definition changed (same bytes read from another file)",
            edit: |p| {
                p.write("aside-copy.txt", p.read("aside.txt"));
                p.replace("prompts.toml", "\"aside.txt\"", "\"aside-copy.txt\"");
            },
            stdout: "side  target definition in `prompts.toml` changed\n",
            stderr: "1 of 4 targets are not fresh\n",
        },
    ];
    for case in cases {
        let p = built_command_project();
        (case.edit)(&p);
        let run = p.mkt(&["status"]);
        assert_eq!(
            (run.code, run.stdout.as_str(), run.stderr.as_str()),
            (
                Some(if case.stdout.is_empty() { 0 } else { 1 }),
                case.stdout,
                case.stderr
            ),
            "mkt status after: {}\n(code, stdout, stderr) differ",
            case.what
        );
        assert_eq!(p.calls().len(), 4, "status called a model: {}", case.what);
    }
}

#[test]
fn status_names_a_changed_partial() {
    let p = project()
        .fixture("command")
        .file(
            "templates/side.md",
            "# side\n{% include \"templates/style.md\" %}\nAside: {{ inputs.aside }}\n",
        )
        .file("templates/style.md", "Be brief.")
        .build();
    p.mkt(&["build"]).success();
    p.mkt(&["status"])
        .success()
        .stderr_eq("all 4 targets are fresh\n");
    p.write("templates/style.md", "Be thorough.");
    p.mkt(&["status"])
        .code(1)
        .stdout_eq("side  partial `templates/style.md` changed\n")
        .stderr_eq("1 of 4 targets are not fresh\n");
}

#[test]
fn status_after_building_only_the_upstream_says_its_output_changed() {
    let p = built_command_project();
    p.write("topic.txt", "provenance\n");
    p.mkt(&["build", "outline"])
        .success()
        .ran(&["outline (input `topic.txt` changed)"]);
    p.mkt(&["status"])
        .code(1)
        .stdout_eq(
            "summary  upstream `outline` output changed\n\
             final    upstream `summary` is out of date\n",
        )
        .stderr_eq("2 of 4 targets are not fresh\n");
    // and the build does exactly what status said
    p.mkt(&["build"]).success().ran(&[
        "summary (upstream `outline` output changed)",
        "final (upstream `summary` output changed)",
    ]);
    p.mkt(&["status"])
        .success()
        .stderr_eq("all 4 targets are fresh\n");
}

#[test]
fn status_reports_a_failed_previous_run() {
    let p = failing_side_project();
    p.mkt(&["build", "-k"])
        .code(1)
        .summary("3 ran, 0 cached, 0 up to date, 1 failed");
    p.mkt(&["status"])
        .code(1)
        .stdout_eq("side  previous run failed\n")
        .stderr_eq("1 of 4 targets are not fresh\n");
}

#[test]
fn status_of_named_targets_checks_them_and_what_they_need() {
    let p = built_command_project();
    p.write("topic.txt", "provenance\n");
    // `summary` needs `outline`; `final` and `side` are not looked at
    p.mkt(&["status", "summary"])
        .code(1)
        .stdout_eq(
            "outline  input `topic.txt` changed\n\
             summary  upstream `outline` is out of date\n",
        )
        .stderr_eq("2 of 2 targets are not fresh\n");
    p.mkt(&["status", "out/side.md"])
        .success()
        .stdout_eq("")
        .stderr_eq("the 1 target is fresh\n");
    p.mkt(&["status", "nope"]).code(2).stdout_eq("").stderr_eq(
        "error: unknown target `nope`\n  help: known targets: final, outline, side, summary\n",
    );
}

#[test]
fn status_of_foreach_nodes() {
    let p = project().fixture("foreach").build();
    p.mkt(&["build"])
        .success()
        .summary("3 ran, 0 cached, 0 up to date");
    p.write("docs/b.md", "Beta notes, revised.\n");
    p.mkt(&["status"])
        .code(1)
        .stdout_eq(
            "summary[docs/b.md]  foreach file `docs/b.md` changed\n\
             index               upstream `summary[docs/b.md]` is out of date\n",
        )
        .stderr_eq("2 of 3 targets are not fresh\n");
    // a target name covers all its nodes, a key one node
    p.mkt(&["status", "summary"])
        .code(1)
        .stdout_eq("summary[docs/b.md]  foreach file `docs/b.md` changed\n")
        .stderr_eq("1 of 2 targets are not fresh\n");
    p.mkt(&["status", "summary[docs/a.md]"])
        .success()
        .stderr_eq("the 1 target is fresh\n");
}

#[test]
fn status_of_an_invalid_project_exits_2() {
    let p = built_command_project();
    p.append("prompts.toml", "bogus = 1\n");
    p.mkt(&["status"]).code(2).stdout_eq("").stderr_eq(
        "error: prompts.toml:29:1: unknown field `bogus`, expected one of `template`, `inputs`, `output`, `model`, `params`, `foreach`\n  \
         help: remove or rename the key; see the `prompts.toml` reference in README.md\n",
    );
    p.mkt(&["status", "--json"]).code(2).stdout_eq("");
}

#[test]
fn status_json_has_the_state_reason_and_cause_of_each_target() {
    let p = failing_side_project();
    p.mkt(&["build", "-k"]).code(1);
    // a target added after the build, one missing output, one edited input
    p.append(
        "prompts.toml",
        "\n[targets.later]\ntemplate = \"templates/outline.md\"\n\
         inputs = { topic = \"topic.txt\" }\noutput = \"out/later.md\"\n",
    );
    p.remove("out/outline.md");
    p.write("notes.txt", "be thorough\n");
    let run = p.mkt(&["status", "--json"]);
    run.code(1);
    let v: Value = serde_json::from_str(&run.stdout).expect("status --json is JSON");
    assert_eq!(v["schema"], "mkt.status/1");
    assert_eq!(
        (v["total"].as_u64(), v["fresh"].as_u64()),
        (Some(5), Some(0))
    );
    insta::assert_snapshot!("status_json", run.stdout);

    // the text form says the same
    p.mkt(&["status"])
        .code(1)
        .stdout_eq(
            "side     previous run failed\n\
             outline  output `out/outline.md` missing\n\
             later    never built\n\
             summary  input `notes.txt` changed\n\
             final    upstream `summary` is out of date\n",
        )
        .stderr_eq("5 of 5 targets are not fresh\n");
}

#[test]
fn status_json_when_all_fresh() {
    let p = built_command_project();
    let run = p.mkt(&["status", "--json"]);
    run.success();
    let v: Value = serde_json::from_str(&run.stdout).expect("status --json is JSON");
    assert_eq!(
        v,
        serde_json::json!({"schema": "mkt.status/1", "total": 4, "fresh": 4, "targets": []})
    );
}

#[test]
fn status_writes_nothing() {
    let p = built_command_project();
    // wait out the racy window so the next build writes the no-op stamp,
    // and status takes its fast path too
    std::thread::sleep(std::time::Duration::from_millis(120));
    p.mkt(&["build"]).success().nothing_ran();
    assert!(p.exists(".mkt/noop"));

    let before = store_listing(&p);
    p.mkt(&["status"]).success();
    p.mkt(&["status", "--json"]).success();
    assert_eq!(store_listing(&p), before, "`mkt status` (all fresh) wrote");

    // with changes of every kind: a source, an output, prompts.toml
    p.write("notes.txt", "be thorough\n");
    p.remove("out/side.md");
    p.replace("prompts.toml", "; cat']", "; cat; echo done']");
    p.write("new-file.txt", "not read by anything\n");
    p.mkt(&["status"]).code(1);
    p.mkt(&["status", "summary"]).code(1);
    p.mkt(&["status", "--json"]).code(1);
    assert_eq!(store_listing(&p), before, "`mkt status` (stale) wrote");
    assert!(!p.exists("out/side.md"), "status restored an output");
    assert_eq!(p.calls().len(), 4);
}

#[test]
fn explain_show_and_runs_write_nothing() {
    let p = built_command_project();
    let final_run = run_ids(&p, "final").remove(0);
    p.write("notes.txt", "be thorough\n");
    p.remove("out/side.md");
    p.replace("prompts.toml", "; cat']", "; cat; echo done']");
    let before = store_listing(&p);
    let listing = p.listing();
    p.mkt(&["explain", "summary"]).success();
    p.mkt(&["explain", "side"]).success();
    p.mkt(&["show", "summary", "--prompt"]).success();
    p.mkt(&["show", "summary", "--manifest"]).success();
    p.mkt(&["show", "side"]).success();
    p.mkt(&["show", &final_run, "--prompt"]).success();
    p.mkt(&["runs"]).success();
    p.mkt(&["runs", "--json"]).success();
    assert_eq!(store_listing(&p), before, ".mkt/ changed");
    assert_eq!(p.listing(), listing, "the project changed");
}

// ---------------------------------------------------------------------------
// mkt explain

#[test]
fn explain_a_stale_target_names_the_changed_input_and_diffs_the_prompt() {
    let p = built_command_project();
    let then = manifest(&p, "summary");
    assert_eq!(
        then["run_id"].as_str(),
        Some(run_ids(&p, "summary")[0].as_str())
    );

    p.write("notes.txt", "be thorough\n");
    let run = p.mkt(&["explain", "summary"]);
    run.success().stderr_eq("");

    // build, to learn the new digests from the next run's manifest
    p.mkt(&["build"]).success();
    let now = manifest(&p, "summary");
    assert_eq!(then["inputs"][0]["path"], "notes.txt");
    assert_eq!(now["inputs"][0]["path"], "notes.txt");
    let run_id = then["run_id"].as_str().unwrap();
    let old_ibh = short(&then["input_bundle_hash"]);
    assert_eq!(
        run.stdout,
        [
            "`summary` is stale: input `notes.txt` changed".to_string(),
            format!(
                "built by run {run_id} at {}: InputBundleHash {old_ibh}, model `default` (command)",
                then["timing"]["finished_at"].as_str().unwrap()
            ),
            String::new(),
            "changed since that run:".into(),
            format!(
                "  input `notes` (`notes.txt`): {} -> {}",
                short(&then["inputs"][0]["digest"]),
                short(&now["inputs"][0]["digest"])
            ),
            String::new(),
            format!(
                "InputBundleHash: {old_ibh} -> {}",
                short(&now["input_bundle_hash"])
            ),
            String::new(),
            "compiled prompt:".into(),
            format!("  --- prompt sent by run {run_id}"),
            "  +++ prompt as it would be sent now".into(),
            "  @@ -1,4 +1,4 @@".into(),
            "   # summary".into(),
            "  -Notes: keep it short".into(),
            "  +Notes: be thorough".into(),
            "   ".into(),
            "   # outline".into(),
            String::new(),
        ]
        .join("\n"),
        "mkt explain summary"
    );
}

/// Once its files are a moment old, a build leaves a no-op stamp, and
/// `status` and `explain` of named targets, `show` and `graph` answer from
/// it and the graph cache. Whatever changed since, they must say exactly
/// what they say without it.
#[test]
fn named_status_explain_show_and_graph_say_the_same_with_the_stamp_or_without() {
    let p = built_command_project();
    std::thread::sleep(std::time::Duration::from_millis(120));
    p.mkt(&["build"]).success().nothing_ran();
    assert!(p.exists(".mkt/noop"), "the stamp is written");
    let stamp = p.read_bytes(".mkt/noop");
    let commands: [&[&str]; 7] = [
        &["status", "summary"],
        &["status", "side"],
        &["explain", "summary"],
        &["explain", "final"],
        &["explain", "side"],
        &["show", "final"],
        &["graph", "--dot"],
    ];
    let answers = |p: &Project| -> Vec<(Option<i32>, String, String)> {
        commands
            .iter()
            .map(|c| {
                let r = p.mkt(c);
                (r.code, r.stdout.clone(), r.stderr.clone())
            })
            .collect()
    };
    let compare = |p: &Project, what: &str| -> Vec<(Option<i32>, String, String)> {
        p.write(".mkt/noop", &stamp);
        let with = answers(p);
        assert_eq!(p.read_bytes(".mkt/noop"), stamp, "read, never written");
        p.remove(".mkt/noop");
        let without = answers(p);
        for (c, (w, wo)) in commands.iter().zip(with.iter().zip(&without)) {
            assert_eq!(w, wo, "`mkt {}` after {what}", c.join(" "));
        }
        with
    };
    let fresh = compare(&p, "no change");
    assert_eq!(fresh[0].2, "all 2 targets are fresh\n");
    // an input of `summary`, and so the cone below it
    p.write("notes.txt", "be thorough\n");
    let edited = compare(&p, "an input edit");
    assert_eq!(edited[0].1, "summary  input `notes.txt` changed\n");
    assert_eq!(edited[1].2, "the 1 target is fresh\n");
    assert!(
        edited[3]
            .1
            .contains("`final` is stale: upstream `summary` is out of date")
    );
    // a hand-edited output
    p.write("out/side.md", "by hand\n");
    let by_hand = compare(&p, "an output edit");
    assert_ne!(by_hand[4], edited[4], "`explain side` sees the output edit");
    // and a change of prompts.toml on top: nothing is taken from the stamp
    p.append("prompts.toml", "\n# a comment\n");
    compare(&p, "an edit of prompts.toml");
}

#[test]
fn explain_a_template_change_shows_it_in_the_prompt_diff() {
    let p = built_command_project();
    p.replace("templates/side.md", "Aside:", "By the way:");
    let run = p.mkt(&["explain", "side"]);
    run.success();
    let out = &run.stdout;
    assert!(
        out.starts_with("`side` is stale: template `templates/side.md` changed\n"),
        "{out}"
    );
    assert!(
        out.contains("\nchanged since that run:\n  template `templates/side.md`: "),
        "{out}"
    );
    assert!(
        out.contains("\n  -Aside: unrelated\n  +By the way: unrelated\n"),
        "{out}"
    );
}

#[test]
fn explain_a_fresh_target_names_the_run_that_built_it() {
    let p = built_command_project();
    let id = run_ids(&p, "final").remove(0);
    let run = p.mkt(&["explain", "final"]);
    run.success().stderr_eq("");
    assert!(
        run.stdout
            .starts_with(&format!("`final` is fresh\nbuilt by run {id} at ")),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("changed since"), "{}", run.stdout);
    // an output path names the same node
    p.mkt(&["explain", "out/final.md"])
        .success()
        .stdout_eq(&run.stdout);

    // after a rebuild, the new run
    p.write("notes.txt", "be thorough\n");
    p.mkt(&["build"]).success();
    let new_id = run_ids(&p, "final").remove(0);
    assert_ne!(new_id, id);
    let run = p.mkt(&["explain", "final"]);
    run.success();
    assert!(
        run.stdout
            .starts_with(&format!("`final` is fresh\nbuilt by run {new_id} at ")),
        "{}",
        run.stdout
    );
}

#[test]
fn explain_and_show_after_a_cache_hit_name_the_run_that_produced_the_output() {
    let p = built_command_project();
    let original = run_ids(&p, "summary").remove(0);
    p.write("notes.txt", "be thorough\n");
    p.mkt(&["build"]).success();
    p.write("notes.txt", "keep it short\n");
    p.mkt(&["build"])
        .success()
        .cached_keys(&["summary", "final"]);
    // the newest entry is the cache hit; it names the run that produced
    // the output, and so do explain and show
    let entry = runs_json(&p, &["summary"]).remove(0);
    assert_eq!(entry["status"], "cached");
    assert_eq!(entry["run_id"].as_str(), Some(original.as_str()));
    let built_by = format!("`summary` is fresh\nbuilt by run {original} at ");
    let run = p.mkt(&["explain", "summary"]);
    run.success();
    assert!(run.stdout.starts_with(&built_by), "{}", run.stdout);
    p.mkt(&["show", "summary", "--prompt"])
        .success()
        .stdout_eq("--- user\n# summary\nNotes: keep it short\n\n# outline\nOutline: caching\n\n")
        .stderr_eq(&format!("prompt sent by run {original}\n"));

    // the same after the output is restored from the store
    p.remove("out/summary.md");
    p.mkt(&["build"])
        .success()
        .restored(&["summary (output `out/summary.md` missing)"]);
    let entry = runs_json(&p, &["summary"]).remove(0);
    assert_eq!(entry["status"], "restored");
    assert_eq!(entry["run_id"].as_str(), Some(original.as_str()));
    let run = p.mkt(&["explain", "summary"]);
    run.success();
    assert!(run.stdout.starts_with(&built_by), "{}", run.stdout);
    assert_eq!(
        manifest(&p, "summary")["run_id"].as_str(),
        Some(original.as_str())
    );
}

#[test]
fn explain_an_upstream_output_change_diffs_that_output() {
    let p = built_command_project();
    let outline_then = manifest(&p, "outline");
    p.write("topic.txt", "provenance\n");
    p.mkt(&["build", "outline"]).success();
    let outline_now = manifest(&p, "outline");
    let run = p.mkt(&["explain", "summary"]);
    run.success();
    let out = &run.stdout;
    assert!(
        out.starts_with("`summary` is stale: upstream `outline` output changed\n"),
        "{out}"
    );
    let (old, new) = (
        short(&outline_then["outputs"][0]["digest"]),
        short(&outline_now["outputs"][0]["digest"]),
    );
    assert!(
        out.contains(&format!(
            "\nchanged since that run:\n  upstream `outline` output: {old} -> {new}\n"
        )),
        "{out}"
    );
    // the upstream's output, diffed
    assert!(
        out.contains(&format!("    --- output {old}\n    +++ output {new}\n")),
        "{out}"
    );
    assert!(
        out.contains("\n    -Outline: caching\n    +Outline: provenance\n"),
        "{out}"
    );
    // and the prompt this target would get
    assert!(
        out.contains("\n  -Outline: caching\n  +Outline: provenance\n"),
        "{out}"
    );
}

#[test]
fn explain_a_target_whose_upstream_is_out_of_date() {
    let p = built_command_project();
    p.write("notes.txt", "be thorough\n");
    let run = p.mkt(&["explain", "final"]);
    run.success();
    assert!(
        run.stdout
            .starts_with("`final` is stale: upstream `summary` is out of date\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn explain_a_hand_edited_output_diffs_it_against_the_built_one() {
    let p = built_command_project();
    p.write("out/side.md", "I know better.\n");
    let run = p.mkt(&["explain", "side"]);
    run.success();
    let out = &run.stdout;
    assert!(
        out.starts_with("`side` is stale: output `out/side.md` edited since it was built\n"),
        "{out}"
    );
    assert!(
        out.contains("  output `out/side.md`, edited since it was built: "),
        "{out}"
    );
    assert!(
        out.contains("\n    -Aside: unrelated\n") && out.contains("\n    +I know better.\n"),
        "{out}"
    );
}

#[test]
fn explain_a_model_parameter_change() {
    let p = built_command_project();
    p.append("prompts.toml", "params = { stdin = \"json\" }\n");
    let run = p.mkt(&["explain", "side"]);
    run.success();
    assert!(
        run.stdout
            .starts_with("`side` is stale: model parameters changed\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("\n  model parameter `stdin`: (none) -> \"json\"\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn explain_a_never_built_target() {
    let p = project().fixture("command").build();
    p.mkt(&["explain", "final"])
        .success()
        .stdout_eq("`final` has never been built\n")
        .stderr_eq("");
    assert!(!p.exists(".mkt"));
    // one built target, the one after it not yet
    p.mkt(&["build", "outline"]).success();
    p.mkt(&["explain", "summary"])
        .success()
        .stdout_eq("`summary` has never been built\n");
}

#[test]
fn explain_an_unknown_target_exits_2() {
    let p = built_command_project();
    p.mkt(&["explain", "nope"]).code(2).stdout_eq("").stderr_eq(
        "error: unknown target `nope`\n  help: known targets: final, outline, side, summary\n",
    );
}

#[test]
fn explain_a_failed_target_names_its_failed_run() {
    let p = failing_side_project();
    p.mkt(&["build", "-k"]).code(1);
    let id = run_ids(&p, "side").remove(0);
    let run = p.mkt(&["explain", "side"]);
    run.success();
    assert!(
        run.stdout
            .starts_with(&format!("`side` failed in its last run\nlast run {id} at ")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("\nerror: `sh` exited with code 3:\n"),
        "{}",
        run.stdout
    );
}

// ---------------------------------------------------------------------------
// mkt show

#[test]
fn show_output_prints_the_output_as_built() {
    let p = built_command_project();
    let summary = p.read("out/summary.md");
    for args in [
        &["show", "summary"][..],
        &["show", "summary", "--output"],
        &["show", "out/summary.md"],
    ] {
        p.mkt(args).success().stdout_eq(&summary).stderr_eq("");
    }
    // the output on record, not the file as edited since
    p.write("out/summary.md", "I know better.\n");
    p.mkt(&["show", "summary"]).success().stdout_eq(&summary);
    p.remove("out/summary.md");
    p.mkt(&["show", "summary"]).success().stdout_eq(&summary);
    // by run id, too
    let id = run_ids(&p, "summary").remove(0);
    p.mkt(&["show", &id]).success().stdout_eq(&summary);
}

#[test]
fn show_manifest_is_the_run_manifest_json() {
    let p = built_command_project();
    let id = run_ids(&p, "summary").remove(0);
    let m = manifest(&p, "summary");
    assert_eq!(m["schema"], "mkt.run-manifest/1");
    assert_eq!(m["target"], "summary");
    assert_eq!(m["run_id"].as_str(), Some(id.as_str()));
    assert_eq!(m["status"], "ok");
    assert_eq!(m["template"]["path"], "templates/summary.md");
    assert_eq!(m["inputs"][0]["name"], "notes");
    assert_eq!(m["upstream"][0]["target"], "outline");
    assert_eq!(m["outputs"][0]["path"], "out/summary.md");
    assert_eq!(m["model"]["name"], "default");
    // the same by output path and by run id
    assert_eq!(manifest(&p, "out/summary.md"), m);
    assert_eq!(manifest(&p, &id), m);
    // the run's bundle is the one `mkt runs` shows
    let entry = &runs_json(&p, &["summary"])[0];
    assert_eq!(entry["input_bundle_hash"], m["input_bundle_hash"]);
}

#[test]
fn show_prompt_of_a_fresh_target_is_the_prompt_sent() {
    let p = built_command_project();
    let id = run_ids(&p, "summary").remove(0);
    p.mkt(&["show", "summary", "--prompt"])
        .success()
        .stdout_eq("--- user\n# summary\nNotes: keep it short\n\n# outline\nOutline: caching\n\n")
        .stderr_eq(&format!("prompt sent by run {id}\n"));
    p.mkt(&["show", &id, "--prompt"])
        .success()
        .stderr_eq(&format!("prompt sent by run {id}\n"));
}

#[test]
fn show_prompt_of_a_stale_target_is_the_one_the_next_build_sends() {
    let p = built_command_project();
    p.write("notes.txt", "be thorough\n");
    p.mkt(&["show", "summary", "--prompt"])
        .success()
        .stdout_eq("--- user\n# summary\nNotes: be thorough\n\n# outline\nOutline: caching\n\n")
        .stderr_eq("prompt as the next build would send it (the target is not fresh)\n");
    // which is what the model then gets (the model echoes its prompt)
    p.mkt(&["build"]).success();
    assert_eq!(
        p.read("out/summary.md"),
        "# summary\nNotes: be thorough\n\n# outline\nOutline: caching\n\n"
    );
    let id = run_ids(&p, "summary").remove(0);
    p.mkt(&["show", "summary", "--prompt"])
        .success()
        .stderr_eq(&format!("prompt sent by run {id}\n"));
}

#[test]
fn show_prompt_has_a_header_per_message() {
    let p = project().fixture("chain").build();
    p.mkt(&["build"]).success();
    let run = p.mkt(&["show", "final", "--prompt"]);
    run.success();
    assert!(
        run.stdout
            .starts_with("--- system\nYou polish text.\n\n--- user\nPolish this summary:\n\n"),
        "{}",
        run.stdout
    );
    assert_eq!(run.stdout.matches("--- ").count(), 2, "{}", run.stdout);
    // `--json`: the messages exactly as hashed
    let run = p.mkt(&["show", "final", "--prompt", "--json"]);
    run.success();
    let v: Value = serde_json::from_str(&run.stdout).expect("JSON");
    let roles: Vec<&str> = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user"]);
    assert_eq!(v["messages"][0]["content"], "You polish text.");
}

#[test]
fn show_a_past_run_after_the_target_was_rebuilt() {
    let p = built_command_project();
    let old_id = run_ids(&p, "summary").remove(0);
    let old_output = p.read("out/summary.md");
    p.write("notes.txt", "be thorough\n");
    p.mkt(&["build"]).success();
    let new_id = run_ids(&p, "summary").remove(0);
    assert_ne!(new_id, old_id);

    // the target shows its new run
    let new_output = p.mkt(&["show", "summary"]).success().stdout.clone();
    assert!(new_output.contains("Notes: be thorough\n"), "{new_output}");
    // the old run id still shows what that run sent and produced
    p.mkt(&["show", &old_id]).success().stdout_eq(&old_output);
    p.mkt(&["show", &old_id, "--prompt"])
        .success()
        .stdout_eq("--- user\n# summary\nNotes: keep it short\n\n# outline\nOutline: caching\n\n")
        .stderr_eq(&format!("prompt sent by run {old_id}\n"));
    let m = manifest(&p, &old_id);
    assert_eq!(m["run_id"].as_str(), Some(old_id.as_str()));
    assert_ne!(
        m["input_bundle_hash"],
        manifest(&p, "summary")["input_bundle_hash"]
    );
}

#[test]
fn show_a_failed_run() {
    let p = failing_side_project();
    p.mkt(&["build", "-k"]).code(1);
    let failed: Vec<Value> = runs_json(&p, &["--failed"]);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["target"], "side");
    let id = failed[0]["run_id"].as_str().unwrap().to_string();

    let m = manifest(&p, &id);
    assert_eq!(m["schema"], "mkt.run-manifest/1");
    assert_eq!(m["target"], "side");
    assert_eq!(m["status"], "failed");
    assert_eq!(m["error"], "`sh` exited with code 3:\nside: model exploded");
    assert_eq!(m["outputs"], serde_json::json!([]));
    // the target's manifest is that of its failed run
    assert_eq!(manifest(&p, "side"), m);

    let run = p.mkt(&["show", &id]);
    run.code(1).stdout_eq("");
    run.stderr_contains(&format!(
        "error: run `{id}` of `side` failed and produced no output: `sh` exited with code 3:"
    ));
    // what it was sent is on record
    p.mkt(&["show", &id, "--prompt"])
        .success()
        .stdout_eq("--- user\n# side\nAside: unrelated\n\n")
        .stderr_eq(&format!("prompt sent by run {id}\n"));
}

#[test]
fn show_a_foreach_target_name_asks_for_one_node() {
    let p = project().fixture("foreach").build();
    p.mkt(&["build"]).success();
    let help = "error: unknown target `summary`\n  \
                help: `summary` is a `foreach` target with 2 nodes; name one, such as \
                `summary[docs/a.md]`, `summary[docs/b.md]`\n";
    for what in ["--output", "--prompt", "--manifest"] {
        p.mkt(&["show", "summary", what])
            .code(2)
            .stdout_eq("")
            .stderr_eq(help);
    }
    p.mkt(&["explain", "summary"]).code(2).stderr_eq(help);
    // a node key or its output path works
    p.mkt(&["show", "summary[docs/a.md]"])
        .success()
        .stdout_eq("# summary a.md\nAlpha notes.\n");
    p.mkt(&["show", "out/summaries/b.md", "--prompt"])
        .success()
        .stdout_eq("--- user\n# summary b.md\nBeta notes.\n");
}

#[test]
fn show_what_is_not_there() {
    let p = project().fixture("command").build();
    p.mkt(&["show", "final"])
        .code(1)
        .stdout_eq("")
        .stderr_eq(
            "error: `final` has never been built, so no run is on record\n  help: run `mkt build final`\n",
        );
    assert!(!p.exists(".mkt"));
    p.mkt(&["build"]).success();
    p.mkt(&["show", "nope"]).code(2).stdout_eq("").stderr_eq(
        "error: unknown target `nope`\n  help: known targets: final, outline, side, summary\n",
    );
    p.mkt(&["show", "20260101000000000-deadbeef"])
        .code(2)
        .stdout_eq("")
        .stderr_eq(
            "error: unknown target `20260101000000000-deadbeef`\n  help: it is not a run id in \
             the history either (`mkt runs` lists them); known targets: final, outline, side, \
             summary\n",
        );
}

// ---------------------------------------------------------------------------
// mkt runs

#[test]
fn runs_lists_the_history_newest_first_in_columns() {
    let p = built_command_project();
    p.write("notes.txt", "be thorough\n");
    p.mkt(&["build"]).success();
    let entries = runs_json(&p, &[]);
    assert_eq!(entries.len(), 6);
    // newest first: the last build's two runs come first, the first
    // build's four after (in the order they finished)
    let targets: Vec<&str> = entries
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets[..2], ["final", "summary"]);
    let mut first: Vec<&str> = targets[2..].to_vec();
    first.sort();
    assert_eq!(first, ["final", "outline", "side", "summary"]);

    let run = p.mkt(&["runs"]);
    run.success().stderr_eq("");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "WHEN (UTC)           STATUS  TARGET   BUNDLE        MODEL    DURATION  TOKENS  COST  RUN"
    );
    assert_eq!(lines.len(), 1 + entries.len(), "{}", run.stdout);
    for (line, e) in lines[1..].iter().zip(&entries) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // date, time, status, target, bundle, model, duration (2 words),
        // tokens, cost, run
        assert_eq!(cols.len(), 11, "{line}");
        let when = e["time"].as_str().unwrap().replace('T', " ");
        assert_eq!(format!("{} {}", cols[0], cols[1]), when[..19], "{line}");
        assert_eq!(cols[2], e["status"], "{line}");
        assert_eq!(cols[3], e["target"], "{line}");
        assert_eq!(cols[4], short(&e["input_bundle_hash"]), "{line}");
        assert_eq!(cols[5], "default", "{line}");
        assert_eq!(cols[7], "ms", "{line}");
        assert_eq!((cols[8], cols[9]), ("-", "-"), "{line}");
        assert_eq!(cols[10], e["run_id"], "{line}");
    }
}

#[test]
fn runs_records_ran_cached_restored_and_failed() {
    let p = failing_side_project();
    let pair = |s: &str, t: &str| (s.to_string(), t.to_string());
    // the entries a build added (newest first in the history), sorted: the
    // runs of one build finish in any order
    let mut seen = 0;
    let mut added = |p: &Project| {
        let h = history(p);
        let mut new = h[..h.len() - seen].to_vec();
        seen = h.len();
        new.sort();
        new
    };

    p.mkt(&["build", "-k"])
        .code(1)
        .summary("3 ran, 0 cached, 0 up to date, 1 failed");
    assert_eq!(
        added(&p),
        [
            pair("failed", "side"),
            pair("ran", "final"),
            pair("ran", "outline"),
            pair("ran", "summary"),
        ]
    );
    let summary_run = run_ids(&p, "summary").remove(0);

    // an edit, then the edit reverted: the second build comes from the cache
    p.write("notes.txt", "be thorough\n");
    p.mkt(&["build", "-k"]).code(1);
    assert_eq!(
        added(&p),
        [
            pair("failed", "side"),
            pair("ran", "final"),
            pair("ran", "summary"),
        ]
    );
    p.write("notes.txt", "keep it short\n");
    p.mkt(&["build", "-k"])
        .code(1)
        .cached_keys(&["summary", "final"]);
    assert_eq!(
        added(&p),
        [
            pair("cached", "final"),
            pair("cached", "summary"),
            pair("failed", "side"),
        ]
    );
    // a deleted output comes back from the store
    p.remove("out/outline.md");
    p.mkt(&["build", "-k"])
        .code(1)
        .restored(&["outline (output `out/outline.md` missing)"]);
    assert_eq!(
        added(&p),
        [pair("failed", "side"), pair("restored", "outline")]
    );

    let h = history(&p);
    assert_eq!(h.len(), 12, "{h:#?}");
    // a cached entry names the run that produced the result
    let summary_runs = run_ids(&p, "summary");
    assert_eq!(summary_runs.len(), 3);
    assert_eq!(summary_runs[0], summary_run, "cached: the original run");
    assert_ne!(summary_runs[1], summary_run, "ran: a new run");
    assert_eq!(summary_runs[2], summary_run);

    // the text table shows the same statuses
    let run = p.mkt(&["runs"]);
    run.success();
    let statuses: Vec<&str> = run
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    let want: Vec<&str> = h.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(statuses, want, "{}", run.stdout);
    assert!(
        run.stdout
            .lines()
            .next()
            .unwrap()
            .starts_with("WHEN (UTC)           STATUS    TARGET   BUNDLE  "),
        "{}",
        run.stdout
    );

    // --failed: the failures only
    let failed = runs_json(&p, &["--failed"]);
    assert_eq!(failed.len(), 4);
    assert!(
        failed
            .iter()
            .all(|e| e["status"] == "failed" && e["target"] == "side")
    );
    let run = p.mkt(&["runs", "--failed"]);
    run.success();
    assert_eq!(run.stdout.lines().count(), 5, "{}", run.stdout);
    assert!(
        run.stdout.lines().skip(1).all(|l| l.contains("  failed  ")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.lines().skip(1).all(|l| l.contains("  broken  ")),
        "the failing model's name: {}",
        run.stdout
    );
}

/// `time` is stamped by the worker when a job ends, but lines are appended
/// in the order the main thread collects the results, so parallel runs of
/// one build can come out of order by a few milliseconds. Several forced
/// builds of 40 parallel nodes show it most of the time.
#[test]
fn runs_are_newest_first_by_time_in_parallel_builds() {
    let mut b = project().fixture("foreach");
    for i in 0..40 {
        b = b.file(&format!("docs/d{i:02}.md"), format!("Doc {i}.\n"));
    }
    let p = b.build();
    p.mkt(&["build", "-j", "8"]).success();
    for _ in 0..9 {
        p.mkt(&["build", "-j", "8", "--force"]).success();
    }
    let entries = runs_json(&p, &[]);
    assert_eq!(entries.len(), 10 * 43);
    let times: Vec<&str> = entries
        .iter()
        .map(|e| e["time"].as_str().unwrap())
        .collect();
    for w in times.windows(2) {
        assert!(
            w[0] >= w[1],
            "`mkt runs --json` lists {} before the newer {}",
            w[0],
            w[1]
        );
    }
}

#[test]
fn runs_of_a_target_name_cover_its_foreach_nodes() {
    let p = project().fixture("foreach").build();
    p.mkt(&["build"]).success();
    p.write("docs/b.md", "Beta notes, revised.\n");
    p.mkt(&["build"]).success();

    let targets = |args: &[&str]| -> Vec<String> {
        runs_json(&p, args)
            .iter()
            .map(|e| e["target"].as_str().unwrap().to_string())
            .collect()
    };
    let mut summary = targets(&["summary"]);
    summary.sort();
    assert_eq!(
        summary,
        [
            "summary[docs/a.md]",
            "summary[docs/b.md]",
            "summary[docs/b.md]"
        ]
    );
    assert_eq!(targets(&["summary[docs/b.md]"]).len(), 2);
    assert_eq!(targets(&["summary[docs/a.md]"]), ["summary[docs/a.md]"]);
    assert_eq!(targets(&["index"]), ["index", "index"]);
    assert_eq!(targets(&["index", "summary[docs/a.md]"]).len(), 3);
    // a prefix of a name is not the name
    assert_eq!(targets(&["summ"]), Vec::<String>::new());

    let run = p.mkt(&["runs", "summary"]);
    run.success();
    assert_eq!(run.stdout.lines().count(), 4, "{}", run.stdout);
    assert!(
        run.stdout
            .lines()
            .skip(1)
            .all(|l| l.contains("  summary[docs/")),
        "{}",
        run.stdout
    );
}

#[test]
fn runs_limit_and_all() {
    let p = built_command_project();
    p.write("notes.txt", "be thorough\n");
    p.mkt(&["build"]).success();
    // 6 runs on record
    let run = p.mkt(&["runs", "-n", "2"]);
    run.success()
        .stderr_eq("2 of 6 runs shown; `--all` shows every one\n");
    assert_eq!(run.stdout.lines().count(), 3, "{}", run.stdout);
    let newest: Vec<String> = runs_json(&p, &[])
        .iter()
        .take(2)
        .map(|e| e["run_id"].as_str().unwrap().to_string())
        .collect();
    for (line, id) in run.stdout.lines().skip(1).zip(&newest) {
        assert!(line.ends_with(id.as_str()), "{line} is not run {id}");
    }
    p.mkt(&["runs", "--limit", "2"])
        .success()
        .stdout_eq(&run.stdout);

    let run = p.mkt(&["runs", "--all"]);
    run.success().stderr_eq("");
    assert_eq!(run.stdout.lines().count(), 7);
    p.mkt(&["runs"])
        .success()
        .stdout_eq(&run.stdout)
        .stderr_eq("");

    // JSON honours the limit too
    let run = p.mkt(&["runs", "-n", "1", "--json"]);
    run.success();
    let v: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(v["runs"].as_array().unwrap().len(), 1);
    assert_eq!(v["runs"][0]["run_id"].as_str(), Some(newest[0].as_str()));

    // `-n` and `--all` do not go together
    p.mkt(&["runs", "-n", "2", "--all"]).code(2);
}

#[test]
fn runs_of_a_never_built_project() {
    let p = project().fixture("command").build();
    p.mkt(&["runs"])
        .success()
        .stdout_eq("")
        .stderr_eq("no runs on record\n");
    assert_eq!(runs_json(&p, &[]), Vec::<Value>::new());
    assert!(!p.exists(".mkt"));
}

/// The inspection commands take no lock: they answer at once, read-only,
/// while a build holds the project (here, one whose model takes 3 s).
#[test]
fn inspection_commands_answer_during_a_build() {
    let p = project()
        .file(
            "prompts.toml",
            "[models.slow]\nprovider = \"mock\"\nlatency_ms = 3000\n\n\
             [targets.b]\ntemplate = \"b.md\"\noutput = \"out/b.md\"\n\n\
             [targets.a]\ntemplate = \"a.md\"\noutput = \"out/a.md\"\nmodel = \"slow\"\n",
        )
        .file("a.md", "A\n")
        .file("b.md", "B\n")
        .build();
    p.mkt(&["build", "b"]).success();
    let mut build = p.spawn_mkt(&["build", "-q"]);
    // the build holds the lock once its model is running
    std::thread::sleep(std::time::Duration::from_millis(700));
    let started = std::time::Instant::now();
    p.mkt(&["status"]).code(1).stdout_eq("a  never built\n");
    p.mkt(&["graph", "--json"]).success();
    p.mkt(&["explain", "b"]).success();
    p.mkt(&["show", "b"]).success();
    p.mkt(&["runs"]).success();
    let took = started.elapsed();
    assert!(
        build.try_wait().unwrap().is_none(),
        "the build was still running throughout"
    );
    assert!(
        took.as_millis() < 2000,
        "no command waited for the lock: {took:?}"
    );
    assert!(build.wait().unwrap().success());
    p.mkt(&["status"]).success();
}
