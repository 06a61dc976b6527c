//! Integration tests of `mkt build`: incrementality, early cutoff, caching,
//! restoring outputs, failure handling and every invalid-project error.
//!
//! Most tests use the fixtures in `fixtures/`, whose `command` model echoes
//! its prompt and appends the prompt's first line (`# NAME`) to `calls.log`,
//! so `p.calls()` tells exactly which nodes called the model.

mod support;

use support::{
    Project, failing_side_project, files_under, hold_lock_with_slow_build, project, repo_dir,
};

/// The fixtures' logging echo model (see `fixtures/command/prompts.toml`).
/// Inline projects put it last so that the line numbers of the targets
/// above it are easy to count.
const LOG_MODEL: &str = r#"
[models.default]
provider = "command"
command = ["sh", "-c", 'IFS= read -r first; printf "%s\n" "$first" >> calls.log; printf "%s\n" "$first"; cat']
"#;

/// A built `command` fixture: outline -> summary -> final, plus `side`.
fn built_command_project() -> Project {
    let p = project().fixture("command").build();
    p.mkt(&["build"])
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
    assert_eq!(
        sorted(p.calls()),
        ["# final", "# outline", "# side", "# summary"]
    );
    p
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Incrementality

/// Incremental builds read the state's records one by one and append to
/// its journal; many of them in a row must stay minimal through the
/// journal's compaction into a new snapshot, and leave a state that a
/// build without the no-op stamp (which reads everything) agrees with.
#[test]
fn many_incremental_builds_stay_minimal_through_state_compaction() {
    let p = built_command_project();
    let first = std::fs::read(p.path(".mkt/state")).unwrap();
    let mut builds = 0;
    let mut compacted_at = None;
    // the journal is compacted when it passes 32 KiB (about 80 builds
    // here); go on for a few builds after that
    while compacted_at.is_none_or(|at| builds < at + 5) {
        assert!(builds < 300, "the journal was never compacted");
        builds += 1;
        p.write("aside.txt", format!("edit {builds}\n"));
        p.mkt(&["build"])
            .success()
            .ran(&["side (input `aside.txt` changed)"])
            .summary("1 ran, 0 cached, 3 up to date");
        if compacted_at.is_none() && std::fs::read(p.path(".mkt/state")).unwrap() != first {
            compacted_at = Some(builds);
        }
    }
    assert_eq!(p.calls().len(), 4 + builds);
    p.remove(".mkt/noop");
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 0 cached, 4 up to date");
    p.write("notes.txt", "be thorough\n");
    p.mkt(&["build"])
        .success()
        .summary("2 ran, 0 cached, 2 up to date");
}

/// An incremental build whose graph cache turns out unreadable reads the
/// whole state after all, and still runs only what changed.
#[test]
fn an_unreadable_graph_cache_costs_a_full_read_not_a_rebuild() {
    let p = built_command_project();
    std::fs::write(p.path(".mkt/graph"), "not a graph").unwrap();
    p.write("aside.txt", "changed\n");
    p.mkt(&["build"])
        .success()
        .ran(&["side (input `aside.txt` changed)"])
        .summary("1 ran, 0 cached, 3 up to date");
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 0 cached, 4 up to date");
}

#[test]
fn first_build_runs_every_target_in_dependency_order() {
    let p = project().fixture("command").build();
    p.mkt(&["build"])
        .success()
        .stdout_eq("")
        .ran(&[
            "outline (never built)",
            "summary (never built)",
            "final (never built)",
            "side (never built)",
        ])
        .summary("4 ran, 0 cached, 0 up to date");
    // the chain ran in order: each prompt contains its upstream's output
    let calls = p.calls();
    let pos = |c: &str| calls.iter().position(|x| x == c).unwrap();
    assert!(
        pos("# outline") < pos("# summary") && pos("# summary") < pos("# final"),
        "{calls:?}"
    );
    assert_eq!(p.read("out/outline.md"), "# outline\nOutline: caching\n\n");
    assert_eq!(
        p.read("out/final.md"),
        "# final\n# summary\nNotes: keep it short\n\n# outline\nOutline: caching\n\n"
    );
}

#[test]
fn second_build_runs_nothing() {
    let p = built_command_project();
    p.mkt(&["build"])
        .success()
        .stdout_eq("")
        .stderr_eq("0 ran, 0 cached, 4 up to date\n");
    assert_eq!(p.calls().len(), 4, "no model call on a no-op build");
    // and again, now that the stat cache has settled
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 4 up to date\n");
    assert_eq!(p.calls().len(), 4);
}

#[test]
fn edited_input_reruns_exactly_its_downstream_cone() {
    let p = built_command_project();

    // notes.txt feeds summary, which feeds final; outline and side stay
    p.write("notes.txt", "be thorough\n");
    p.mkt(&["build"])
        .success()
        .ran(&[
            "summary (input `notes.txt` changed)",
            "final (upstream `summary` output changed)",
        ])
        .summary("2 ran, 0 cached, 2 up to date");
    assert_eq!(&p.calls()[4..], ["# summary", "# final"]);
    assert!(p.read("out/final.md").contains("Notes: be thorough\n"));

    // topic.txt is at the top of the chain
    p.write("topic.txt", "provenance\n");
    p.mkt(&["build"])
        .success()
        .ran(&[
            "outline (input `topic.txt` changed)",
            "summary (upstream `outline` output changed)",
            "final (upstream `summary` output changed)",
        ])
        .summary("3 ran, 0 cached, 1 up to date");
    assert_eq!(&p.calls()[6..], ["# outline", "# summary", "# final"]);

    // the independent target alone
    p.write("aside.txt", "still unrelated\n");
    p.mkt(&["build"])
        .success()
        .ran(&["side (input `aside.txt` changed)"])
        .summary("1 ran, 0 cached, 3 up to date");
    assert_eq!(&p.calls()[9..], ["# side"]);

    // a template edit re-runs its target and what depends on it
    p.append("templates/summary.md", "\nThe end.\n");
    p.mkt(&["build"])
        .success()
        .ran(&[
            "summary (template `templates/summary.md` changed)",
            "final (upstream `summary` output changed)",
        ])
        .summary("2 ran, 0 cached, 2 up to date");
    assert_eq!(p.calls().len(), 12);
}

#[test]
fn upstream_with_unchanged_output_does_not_rerun_downstream() {
    // `outline` uses a model that answers with the prompt's first line only,
    // so its output does not depend on `topic.txt`.
    let p = project().fixture("command").build();
    p.append(
        "prompts.toml",
        r#"
[models.first-line]
provider = "command"
command = ["sh", "-c", 'IFS= read -r first; printf "%s\n" "$first" >> calls.log; printf "%s\n" "$first"; cat >/dev/null']
"#,
    );
    p.replace(
        "prompts.toml",
        "output = \"out/outline.md\"\n",
        "output = \"out/outline.md\"\nmodel = \"first-line\"\n",
    );
    p.mkt(&["build"])
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
    assert_eq!(p.read("out/outline.md"), "# outline\n");

    p.write("topic.txt", "something else entirely\n");
    p.mkt(&["build"])
        .success()
        .ran(&["outline (input `topic.txt` changed)"])
        .summary("1 ran, 0 cached, 3 up to date");
    assert_eq!(
        &p.calls()[4..],
        ["# outline"],
        "the upstream ran, nothing downstream did"
    );
    assert_eq!(p.read("out/outline.md"), "# outline\n");

    // and the next build is a no-op: the new upstream record was saved
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 4 up to date\n");
    assert_eq!(p.calls().len(), 5);
}

#[test]
fn reverted_edit_is_served_from_the_cache() {
    let p = built_command_project();
    let original = p.read("out/final.md");
    p.write("notes.txt", "be thorough\n");
    p.mkt(&["build"])
        .success()
        .summary("2 ran, 0 cached, 2 up to date");
    assert_eq!(p.calls().len(), 6);

    p.write("notes.txt", "keep it short\n");
    p.mkt(&["build"])
        .success()
        .ran(&[])
        .restored(&[])
        .cached(&[
            "summary (input `notes.txt` changed)",
            "final (upstream `summary` output changed)",
        ])
        .summary("0 ran, 2 cached, 2 up to date");
    assert_eq!(p.calls().len(), 6, "no model call for a reverted edit");
    assert_eq!(p.read("out/final.md"), original);
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 4 up to date\n");
}

#[test]
fn changed_model_parameters_rerun_the_target() {
    let p = built_command_project();
    // `timeout_s` does not change what a model answers: not a reason to run
    p.replace(
        "prompts.toml",
        "provider = \"command\"\n",
        "provider = \"command\"\ntimeout_s = 60\n",
    );
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 4 up to date\n");
    // a different command does
    p.replace("prompts.toml", "; cat']", "; cat; echo done']");
    p.mkt(&["build"])
        .success()
        .ran_keys(&["outline", "summary", "final", "side"])
        .stderr_contains("ran side (model parameters changed)\n")
        .summary("4 ran, 0 cached, 0 up to date");
    assert_eq!(p.read("out/side.md"), "# side\nAside: unrelated\n\ndone\n");
}

#[test]
fn moved_output_is_restored_without_a_model_call() {
    let p = built_command_project();
    let side = p.read("out/side.md");
    p.replace(
        "prompts.toml",
        "output = \"out/side.md\"",
        "output = \"out/aside.md\"",
    );
    p.mkt(&["build"])
        .success()
        .restored(&["side (output `out/aside.md` missing)"])
        .summary("0 ran, 1 cached, 3 up to date");
    assert_eq!(p.read("out/aside.md"), side);
    assert_eq!(p.calls().len(), 4);
}

#[test]
fn building_one_target_builds_what_it_needs_only() {
    let p = project().fixture("command").build();
    p.mkt(&["build", "summary"])
        .success()
        .ran(&["outline (never built)", "summary (never built)"])
        .summary("2 ran, 0 cached, 0 up to date");
    assert!(!p.exists("out/final.md") && !p.exists("out/side.md"));
    p.mkt(&["build", "out/final.md"])
        .success()
        .ran(&["final (never built)"])
        .summary("1 ran, 0 cached, 2 up to date");
    p.mkt(&["build", "nope"]).code(2).stderr_eq(
        "error: unknown target `nope`\n  help: known targets: final, outline, side, summary\n",
    );
}

// ---------------------------------------------------------------------------
// foreach

#[test]
fn foreach_adds_and_removes_nodes_as_files_come_and_go() {
    let p = project().fixture("foreach").build();
    p.mkt(&["build"])
        .success()
        .ran(&[
            "summary[docs/a.md] (never built)",
            "summary[docs/b.md] (never built)",
            "index (never built)",
        ])
        .summary("3 ran, 0 cached, 0 up to date");
    assert_eq!(
        p.read("out/summaries/a.md"),
        "# summary a.md\nAlpha notes.\n"
    );
    assert_eq!(
        p.read("out/index.md"),
        "# index\n\n== a\n# summary a.md\nAlpha notes.\n\n== b\n# summary b.md\nBeta notes.\n\n"
    );

    // a new file: one new node, and the fan-in
    p.write("docs/c.md", "Gamma notes.\n");
    p.mkt(&["build"])
        .success()
        .ran_keys(&["summary[docs/c.md]", "index"])
        .stderr_contains("ran summary[docs/c.md] (never built)\n")
        .summary("2 ran, 0 cached, 2 up to date");
    assert_eq!(
        sorted(p.calls()[3..].to_vec()),
        ["# index", "# summary c.md"]
    );
    assert_eq!(
        p.read("out/summaries/c.md"),
        "# summary c.md\nGamma notes.\n"
    );
    assert!(p.read("out/index.md").contains("== c\n"));

    // an edited item re-runs its node and the fan-in only
    p.write("docs/b.md", "Beta notes, revised.\n");
    p.mkt(&["build"])
        .success()
        .ran(&[
            "summary[docs/b.md] (foreach file `docs/b.md` changed)",
            "index (upstream `summary[docs/b.md]` output changed)",
        ])
        .summary("2 ran, 0 cached, 2 up to date");

    // a vanished file: its node is gone, the fan-in re-runs without it
    p.remove("docs/a.md");
    p.mkt(&["build"])
        .success()
        .ran_keys(&["index"])
        .summary("1 ran, 0 cached, 2 up to date");
    assert!(!p.read("out/index.md").contains("== a\n"));
    assert_eq!(p.calls().len(), 8);
    // (a build that analyses the project again also says that the removed
    // node's output is left over; whether this one does depends on timing)
    p.mkt(&["build"])
        .success()
        .nothing_ran()
        .summary("0 ran, 0 cached, 3 up to date");

    // the same file back: its node is still up to date, the index comes
    // from the action cache
    p.write("docs/a.md", "Alpha notes.\n");
    p.mkt(&["build"])
        .success()
        .ran(&[])
        .restored(&[])
        .cached_keys(&["index"])
        .summary("0 ran, 1 cached, 3 up to date");
    assert_eq!(p.calls().len(), 8);

    // no files at all: the fan-in sees an empty list
    p.remove("docs");
    p.mkt(&["build"])
        .success()
        .ran_keys(&["index"])
        .summary("1 ran, 0 cached, 0 up to date");
    assert_eq!(p.read("out/index.md"), "# index\n\n");
}

#[test]
fn foreach_fan_in_reason_names_the_added_node_not_prompts_toml() {
    let p = project().fixture("foreach").build();
    p.mkt(&["build"]).success();
    p.write("docs/c.md", "Gamma notes.\n");
    // today: `ran index (target definition in `prompts.toml` changed)`,
    // though prompts.toml is untouched
    p.mkt(&["build"])
        .success()
        .ran_keys(&["summary[docs/c.md]", "index"])
        .stderr_lacks("prompts.toml");
    p.remove("docs/a.md");
    p.mkt(&["build"])
        .success()
        .ran_keys(&["index"])
        .stderr_lacks("prompts.toml");
}

#[test]
fn foreach_glob_matching_its_own_outputs_is_refused() {
    let p = project().fixture("foreach").build();
    p.replace(
        "prompts.toml",
        "output = \"out/summaries/{stem}.md\"",
        "output = \"docs/{stem}-sum.md\"",
    );
    // refused before the first build: the outputs would be foreach files of
    // the next build, one level deeper every time
    p.mkt(&["build"]).code(2).nothing_ran().stderr_eq(
        "error: prompts.toml:9:11: foreach glob `docs/a-sum.md` of `summary` is the output of `summary[docs/a.md]`\n  \
         help: narrow the glob or write the outputs elsewhere\n",
    );
    assert!(!p.exists("docs/a-sum.md"));
}

// ---------------------------------------------------------------------------
// Command-line options

#[test]
fn force_reruns_everything_and_bypasses_the_cache() {
    let p = built_command_project();
    p.mkt(&["build", "--force"])
        .success()
        .ran(&[
            "outline (forced)",
            "summary (forced)",
            "final (forced)",
            "side (forced)",
        ])
        .summary("4 ran, 0 cached, 0 up to date");
    assert_eq!(p.calls().len(), 8, "every node called the model again");
    // forcing a target forces it alone: what it needs is only checked
    p.mkt(&["build", "--force", "summary"])
        .success()
        .ran(&["summary (forced)"])
        .summary("1 ran, 0 cached, 1 up to date");
    assert_eq!(p.calls().len(), 9);
}

#[test]
fn dry_run_lists_what_would_run_and_runs_nothing() {
    let p = project().fixture("command").build();
    for flag in ["--dry-run", "-n"] {
        p.mkt(&["build", flag])
            .success()
            .would_run(&[
                "outline (never built)",
                "summary (never built)",
                "final (never built)",
                "side (never built)",
            ])
            .summary("4 of 4 targets would run");
    }
    assert!(!p.exists("out"), "a dry run writes no output");
    assert_eq!(p.calls(), Vec::<String>::new());

    p.mkt(&["build"])
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
    p.write("notes.txt", "be thorough\n");
    p.remove("out/side.md");
    let before = p.read("out/final.md");
    p.mkt(&["build", "-n"])
        .success()
        .would_run(&[
            "summary (input `notes.txt` changed)",
            "final (upstream `summary` is out of date)",
            "side (output `out/side.md` missing)",
        ])
        .summary("3 of 4 targets would run");
    assert!(!p.exists("out/side.md"));
    assert_eq!(p.read("out/final.md"), before);
    assert_eq!(p.calls().len(), 4);

    // the dry run left the state alone: the real build does the same work
    p.mkt(&["build"])
        .success()
        .ran(&[
            "summary (input `notes.txt` changed)",
            "final (upstream `summary` output changed)",
        ])
        .restored(&["side (output `out/side.md` missing)"])
        .summary("2 ran, 1 cached, 1 up to date");
    p.mkt(&["build", "-n"])
        .success()
        .stderr_eq("0 of 4 targets would run\n");
}

const SIDE_FAILURE: &str =
    "error: `side` failed (never built):\n  `sh` exited with code 3:\n  side: model exploded\n";

#[test]
fn failing_command_stderr_keeps_a_bounded_tail() {
    // 25 short lines, then one line of 5,000,000 bytes, then one more
    let p = project()
        .file(
            "prompts.toml",
            "[models.default]\nprovider = \"command\"\ncommand = [\"sh\", \"-c\", \
             'for i in $(seq 1 25); do echo line $i; done >&2; head -c 5000000 /dev/zero | tr \"\\\\0\" x >&2; \
             echo >&2; echo last line >&2; exit 3']\n\n\
             [targets.a]\ntemplate = \"a.md\"\noutput = \"out/a.md\"\n",
        )
        .file("a.md", "a\n")
        .build();
    // the last 64 KiB: the end of the long line and the line after it
    let run = p.mkt(&["build"]);
    run.code(1).stderr_contains(&format!(
        "error: `a` failed (never built):\n  `sh` exited with code 3:\n  \
         [4934666 earlier bytes of stderr not shown]\n  {}\n  last line\n",
        "x".repeat(65536 - "\nlast line\n".len())
    ));
    assert!(run.stderr.len() < 70_000, "{} bytes", run.stderr.len());
    // and the failed run's manifest (like everything in `.mkt/`) is small
    let store = files_under(&p, ".mkt");
    assert!(!store.is_empty());
    for (f, len) in store {
        assert!(len < 100_000, "`{f}` has {len} bytes");
    }
}

#[test]
fn failure_stops_the_build_without_keep_going() {
    let p = failing_side_project();
    // `side` goes first; `outline`, queued behind it, is not started, and
    // what depends on it says why it was not built (not that `side` failed)
    p.mkt(&["build", "-j", "1"])
        .code(1)
        .stderr_contains(SIDE_FAILURE)
        .ran(&[])
        .skipped(&[
            "outline: the build stopped after a failure (use `--keep-going` to go on)",
            "summary: the build stopped after a failure (use `--keep-going` to go on)",
            "final: the build stopped after a failure (use `--keep-going` to go on)",
        ])
        .summary("0 ran, 0 cached, 0 up to date, 1 failed, 3 skipped");
    assert_eq!(p.calls(), Vec::<String>::new());
    assert!(!p.exists("out/side.md") && !p.exists("out/summary.md") && !p.exists("out/final.md"));
}

#[test]
fn keep_going_builds_everything_that_does_not_need_the_failure() {
    for flag in ["--keep-going", "-k"] {
        let p = failing_side_project();
        p.mkt(&["build", flag])
            .code(1)
            .stderr_contains(SIDE_FAILURE)
            .ran(&[
                "outline (never built)",
                "summary (never built)",
                "final (never built)",
            ])
            .skipped(&[])
            .summary("3 ran, 0 cached, 0 up to date, 1 failed");
        assert_eq!(sorted(p.calls()), ["# final", "# outline", "# summary"]);
        assert!(!p.exists("out/side.md"));

        // a failed target is retried by the next build; the rest is done
        p.mkt(&["build", flag])
            .code(1)
            .stderr_contains(
                "error: `side` failed (previous run failed):\n  `sh` exited with code 3:\n",
            )
            .ran(&[])
            .summary("0 ran, 0 cached, 3 up to date, 1 failed");
    }
}

#[test]
fn failure_downstream_of_a_failure_is_skipped_with_keep_going() {
    let p = project().fixture("command").build();
    p.replace(
        "templates/outline.md",
        "# outline\n",
        "# outline\n{{ undefined_thing }}\n",
    );
    p.mkt(&["build", "-k"])
        .code(1)
        .stderr_contains(
            "error: `outline` failed (never built):\n  templates/outline.md:2:4: undefined value",
        )
        .ran(&["side (never built)"])
        .skipped(&["summary: `outline` failed", "final: `outline` failed"])
        .summary("1 ran, 0 cached, 0 up to date, 1 failed, 2 skipped");
}

/// Twelve independent targets whose model fails (or, with `sleep`, hangs)
/// and logs each call: the scheduler queues all twelve at once.
fn twelve_independent_targets(model: &str) -> Project {
    let mut b = project()
        .file(
            "prompts.toml",
            format!(
                "[models.default]\nprovider = \"command\"\ncommand = [\"sh\", \"-c\", '{model}']\n\n\
                 [targets.each]\nforeach = \"docs/*.txt\"\ntemplate = \"t.md\"\noutput = \"out/{{stem}}.md\"\n"
            ),
        )
        .file("t.md", "# {{ item.stem }}\n");
    for i in 0..12 {
        b = b.file(&format!("docs/d{i:02}.txt"), "doc\n");
    }
    b.build()
}

#[test]
fn failure_stops_targets_already_queued_without_keep_going() {
    let failing = "IFS= read -r first; printf \"%s\\n\" \"$first\" >> calls.log; exit 3";
    let p = twelve_independent_targets(failing);
    // one call fails; the eleven queued behind it are not started
    p.mkt(&["build", "-j", "1"])
        .code(1)
        .stderr_contains("the build stopped after a failure (use `--keep-going` to go on)")
        .summary("0 ran, 0 cached, 0 up to date, 1 failed, 11 skipped");
    assert_eq!(p.calls().len(), 1, "{:?}", p.calls());
    std::fs::remove_file(p.path("calls.log")).unwrap();
    p.mkt(&["build", "-j", "1", "-k"])
        .code(1)
        .summary("0 ran, 0 cached, 0 up to date, 12 failed");
    assert_eq!(p.calls().len(), 12, "{:?}", p.calls());
}

#[test]
fn ctrl_c_starts_none_of_the_targets_already_queued() {
    let hanging = "cat >/dev/null; echo called >> calls.log; exec sleep 30";
    let p = twelve_independent_targets(hanging);
    let child = p.spawn_mkt_piped(&["build", "-j", "1"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p.calls().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(p.calls().len(), 1, "the first call started");
    // SAFETY: sending SIGINT to the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    // the running call was stopped; the eleven queued were not started
    // (they used to be, each killed as it started, and each a failure)
    assert!(
        stderr.contains("0 ran, 0 cached, 0 up to date, 1 failed, 11 skipped"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("skipped each[").count(), 11, "{stderr}");
    assert_eq!(p.calls(), ["called"]);
}

#[test]
fn skip_reason_does_not_call_a_skipped_upstream_failed() {
    let p = failing_side_project();
    // `summary` was skipped (the build stopped), it did not fail
    p.mkt(&["build", "-j", "1"])
        .code(1)
        .stderr_lacks("skipped final: `summary` failed");
}

// ---------------------------------------------------------------------------
// Outputs and the store

#[test]
fn deleted_output_is_restored_from_the_store() {
    let p = built_command_project();
    let final_md = p.read("out/final.md");
    p.remove("out/final.md");
    p.mkt(&["build"]).success().stderr_eq(
        "restored final (output `out/final.md` missing)\n0 ran, 1 cached, 3 up to date\n",
    );
    assert_eq!(p.read("out/final.md"), final_md);
    assert_eq!(p.calls().len(), 4, "no model call");
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 4 up to date\n");
}

#[test]
fn hand_edited_output_is_restored_from_the_store() {
    let p = built_command_project();
    let summary = p.read("out/summary.md");
    p.write("out/summary.md", "I know better.\n");
    p.mkt(&["build"])
        .success()
        .stderr_eq("restored summary (output `out/summary.md` edited since it was built)\n0 ran, 1 cached, 3 up to date\n");
    assert_eq!(p.read("out/summary.md"), summary);
    assert_eq!(p.calls().len(), 4, "no model call");

    // an edit of the same size as the original is noticed too
    let same_size: String = summary
        .chars()
        .map(|c| if c == 'k' { 'K' } else { c })
        .collect();
    assert_ne!(same_size, summary);
    p.write("out/summary.md", &same_size);
    p.mkt(&["build"])
        .success()
        .stderr_eq("restored summary (output `out/summary.md` edited since it was built)\n0 ran, 1 cached, 3 up to date\n");
    assert_eq!(p.read("out/summary.md"), summary);
}

#[test]
fn corrupt_store_object_is_detected_and_rebuilt() {
    let p = built_command_project();
    let final_md = p.read("out/final.md");
    let object = p.store_object_for("out/final.md");
    let short = &object.key[..12];
    p.corrupt_record(&object, b"not what was stored");
    p.remove("out/final.md");
    p.mkt(&["build"]).success().stderr_eq(&format!(
        "warning: store object {short} (output of `final`) was corrupt and has been set aside; rebuilding\n\
         ran final (output `out/final.md` missing)\n\
         1 ran, 0 cached, 3 up to date\n"
    ));
    assert_eq!(p.read("out/final.md"), final_md);
    assert_eq!(&p.calls()[4..], ["# final"]);
    let copies: Vec<_> = p
        .store_objects()
        .into_iter()
        .filter(|r| r.key == object.key)
        .map(|r| (r.pack, r.payload))
        .collect();
    assert_eq!(
        copies.len(),
        2,
        "the corrupt copy and a new one: {copies:?}"
    );
    assert!(copies[0].1.is_empty(), "the corrupt copy does not verify");
    assert_ne!(copies[0].0, copies[1].0, "stored again in a newer pack");
    assert_eq!(
        copies[1].1,
        final_md.as_bytes(),
        "the object was stored again"
    );
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 4 up to date\n");
}

#[test]
fn store_is_marked_as_a_cache() {
    let p = built_command_project();
    assert_eq!(p.read(".mkt/VERSION"), "2\n");
    assert_eq!(p.read(".mkt/.gitignore"), "*\n");
    assert!(
        p.read(".mkt/CACHEDIR.TAG")
            .starts_with("Signature: 8a477f597d28d172789f06886806bc55\n")
    );
}

// ---------------------------------------------------------------------------
// Templates

#[test]
fn undefined_variable_fails_the_target_with_file_and_line() {
    let p = project()
        .file(
            "prompts.toml",
            format!("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n{LOG_MODEL}"),
        )
        .file("t/a.md", "# a\n\nHello {{ name }}!\n")
        .build();
    p.mkt(&["build"]).code(1).stderr_eq(
        "error: `a` failed (never built):\n  \
         t/a.md:3:10: undefined value: `name` is not defined\n    \
         help: every name must be defined; guard optional values with `is defined` or `| default(...)`\n\
         0 ran, 0 cached, 0 up to date, 1 failed\n",
    );
    assert_eq!(p.calls(), Vec::<String>::new(), "the model was not called");
    assert!(!p.exists("out/a.md"));
    // guarded, it builds
    p.write("t/a.md", "# a\n\nHello {{ name | default(\"world\") }}!\n");
    p.mkt(&["build"])
        .success()
        .ran(&["a (previous run failed)"]);
    assert_eq!(p.read("out/a.md"), "# a\n\nHello world!\n");
}

#[test]
fn undefined_variable_error_names_the_variable() {
    let p = project()
        .file(
            "prompts.toml",
            format!("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n{LOG_MODEL}"),
        )
        .file("t/a.md", "# a\n\nHello {{ name }}!\n")
        .build();
    let run = p.mkt(&["build"]);
    run.code(1);
    // today: `t/a.md:3:10: undefined value: template error`
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("t/a.md:3:10: undefined value"))
        .unwrap_or("");
    assert!(
        line.contains("`name`"),
        "the message should name `name`: {:?}",
        run.stderr
    );
}

#[test]
fn chat_roles_become_messages() {
    let p = project()
        .file(
            "prompts.toml",
            r#"[models.echo-json]
provider = "command"
command = ["cat"]
stdin = "json"

[models.echo-text]
provider = "command"
command = ["cat"]

[targets.json]
template = "t/chat.md"
inputs = { question = "question.txt" }
output = "out/chat.json"
model = "echo-json"

[targets.text]
template = "t/chat.md"
inputs = { question = "question.txt" }
output = "out/chat.txt"
model = "echo-text"
"#,
        )
        .file(
            "t/chat.md",
            "system:\nYou answer in one word.\n\nuser:\n{{ inputs.question }}\nassistant:\n",
        )
        // a role line inside data is text, not a message boundary
        .file("question.txt", "user:\nWhat colour is the sky?\n")
        .build();
    p.mkt(&["build"])
        .success()
        .summary("2 ran, 0 cached, 0 up to date");
    assert_eq!(
        p.read("out/chat.json"),
        r#"{"messages":[{"role":"system","content":"You answer in one word."},{"role":"user","content":"user:\nWhat colour is the sky?"}]}"#
    );
    assert_eq!(
        p.read("out/chat.txt"),
        "system:\nYou answer in one word.\n\nuser:\nuser:\nWhat colour is the sky?\n"
    );
}

#[test]
fn template_without_roles_is_sent_byte_for_byte() {
    let p = project()
        .file(
            "prompts.toml",
            "[models.m]\nprovider = \"command\"\ncommand = [\"cat\"]\n\n\
             [targets.a]\ntemplate = \"t/a.md\"\ninputs = { x = \"x.txt\" }\noutput = \"out/a.md\"\nmodel = \"m\"\n",
        )
        .file("t/a.md", "  Leading spaces, {{ inputs.x }} and trailing blank lines.\n\n\n")
        .file("x.txt", "data")
        .build();
    p.mkt(&["build"]).success();
    assert_eq!(
        p.read("out/a.md"),
        "  Leading spaces, data and trailing blank lines.\n\n\n"
    );
}

#[test]
fn partials_and_verbatim_files_are_dependencies() {
    let p = project()
        .file(
            "prompts.toml",
            format!("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n{LOG_MODEL}"),
        )
        .file(
            "t/a.md",
            "# a\n{% include \"t/style.md\" %}\n{{ verbatim(\"raw.txt\") }}\n",
        )
        .file("t/style.md", "Be brief.")
        .file("raw.txt", "{{ not a template }}")
        .build();
    p.mkt(&["build"]).success().ran(&["a (never built)"]);
    assert_eq!(p.read("out/a.md"), "# a\nBe brief.\n{{ not a template }}\n");
    p.write("t/style.md", "Be thorough.");
    p.mkt(&["build"])
        .success()
        .ran(&["a (partial `t/style.md` changed)"]);
    p.write("raw.txt", "{{ still not }}");
    p.mkt(&["build"])
        .success()
        .ran(&["a (verbatim file `raw.txt` changed)"]);
    assert_eq!(p.read("out/a.md"), "# a\nBe thorough.\n{{ still not }}\n");
    assert_eq!(p.calls().len(), 3);
}

// ---------------------------------------------------------------------------
// Invalid projects: exit code 2, the exact message, nothing runs

/// A project whose `prompts.toml` is `targets` followed by [`LOG_MODEL`],
/// with a template `t/a.md` and an input `in.txt`.
fn inline(targets: &str) -> support::ProjectBuilder {
    project()
        .file("prompts.toml", format!("{targets}{LOG_MODEL}"))
        .file("t/a.md", "# a\n")
        .file("t/b.md", "# b\n")
        .file("in.txt", "input\n")
}

/// `mkt build` fails with exit code 2, prints exactly `error: {message}`,
/// and neither calls a model nor writes an output.
#[track_caller]
fn assert_invalid(p: &Project, message: &str) {
    p.mkt(&["build"])
        .code(2)
        .stdout_eq("")
        .stderr_eq(&format!("error: {message}\n"));
    assert_eq!(p.calls(), Vec::<String>::new(), "no model call");
    assert!(!p.exists("out"), "no output");
    // a dry run reports the same error
    p.mkt(&["build", "-n"])
        .code(2)
        .stdout_eq("")
        .stderr_eq(&format!("error: {message}\n"));
}

#[test]
fn invalid_unknown_key() {
    let p =
        inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\ntemplat = \"t/b.md\"\n")
            .build();
    assert_invalid(
        &p,
        "prompts.toml:4:1: unknown field `templat`, expected one of `template`, `inputs`, `output`, `model`, `params`, `foreach`\n  \
         help: remove or rename the key; see the `prompts.toml` reference in README.md",
    );
}

#[test]
fn invalid_unknown_model_setting() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n\n[models.x]\nprovider = \"mock\"\ntemprature = 0.2\n")
        .build();
    assert_invalid(
        &p,
        "prompts.toml:7:1: unknown field `temprature`, expected one of `provider`, `latency_ms`, `command`, `stdin`, `timeout_s`, \
         `model`, `base_url`, `api_key_env`, `temperature`, `top_p`, `max_tokens`, `seed`, `stop`, `format`, `response_format`, `schema`, `sample`, \
         `connect_timeout_s`, `max_retries`, `max_concurrency`, `requests_per_minute`, `tokens_per_minute`, `rate_limit_wait_s`, \
         `price_input_per_mtok`, `price_output_per_mtok`, `batch`, `batch_discount`, `price_cached_input_per_mtok`, \
         `prompt_cache`, `prompt_cache_ttl`, `pin`
  \
         help: remove or rename the key; see the `prompts.toml` reference in README.md",
    );
}

#[test]
fn invalid_setting_of_another_provider() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n\n[models.x]\nprovider = \"mock\"\ntemperature = 0.2\n")
        .build();
    assert_invalid(
        &p,
        "prompts.toml:5:1: model `x`: `temperature` is not a setting of the `mock` provider\n  help: remove `temperature`",
    );
}

#[test]
fn invalid_wrong_type() {
    let p = inline("[targets.a]\ntemplate = 3\noutput = \"out/a.md\"\n").build();
    assert_invalid(
        &p,
        "prompts.toml:2:12: invalid type: integer `3`, expected a string",
    );
}

#[test]
fn invalid_missing_template_file() {
    let p = inline("[targets.a]\ntemplate = \"t/missing.md\"\noutput = \"out/a.md\"\n").build();
    assert_invalid(
        &p,
        "prompts.toml:2:12: template `t/missing.md` not found\n  help: create the file or fix the `template` path",
    );
}

#[test]
fn invalid_missing_partial() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n")
        .file("t/a.md", "# a\n\n{% include \"t/gone.md\" %}\n")
        .build();
    assert_invalid(
        &p,
        "t/a.md:3:1: partial `t/gone.md` not found\n  help: partial names are paths relative to the project root",
    );
}

#[test]
fn invalid_missing_input_file() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\ninputs = { doc = \"missing.txt\" }\noutput = \"out/a.md\"\n")
        .file("t/a.md", "# a\n{{ inputs.doc }}\n")
        .build();
    assert_invalid(
        &p,
        "prompts.toml:3:18: input `doc` of target `a`: `missing.txt` not found\n  help: create the file or fix the path",
    );
}

#[test]
fn invalid_duplicate_outputs() {
    let p = inline(
        "[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/same.md\"\n\n\
         [targets.b]\ntemplate = \"t/b.md\"\noutput = \"out/same.md\"\n",
    )
    .build();
    assert_invalid(
        &p,
        "prompts.toml:7:10: `b` and `a` both write `out/same.md`\n  help: give every target its own output path",
    );
}

#[test]
fn invalid_input_that_is_another_targets_output() {
    let p = inline(
        "[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n\n\
         [targets.b]\ntemplate = \"t/b.md\"\ninputs = { a = \"out/a.md\" }\noutput = \"out/b.md\"\n",
    )
    .build();
    assert_invalid(
        &p,
        "prompts.toml:7:16: input `out/a.md` of `b` is the output of `a`\n  \
         help: use `targets.a` in the template instead, so mkt knows the order",
    );
}

const GLOB_INPUT_PROJECT: &str = "[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n\n\
     [targets.b]\ntemplate = \"t/b.md\"\ninputs = { all = \"out/*.md\" }\noutput = \"b.md\"\n";

const GLOB_INPUT_ERROR: &str = "prompts.toml:7:18: input `out/a.md` of `b` is the output of `a`\n  \
     help: use `targets.a` in the template instead, so mkt knows the order";

#[test]
fn invalid_glob_input_matching_an_existing_output() {
    let p = inline(GLOB_INPUT_PROJECT)
        .file("t/b.md", "# b\n{{ inputs.all | length }} files\n")
        .file("out/a.md", "an output from an earlier build\n")
        .build();
    p.mkt(&["build"])
        .code(2)
        .stderr_eq(&format!("error: {GLOB_INPUT_ERROR}\n"));
    assert_eq!(p.calls(), Vec::<String>::new());
}

#[test]
fn invalid_glob_input_matching_an_output_on_a_clean_build() {
    let p = inline(GLOB_INPUT_PROJECT)
        .file("t/b.md", "# b\n{{ inputs.all | length }} files\n")
        .build();
    // today the clean build succeeds (`b` is built from 0 files, in parallel
    // with `a`) and only the next build fails with this error
    assert_invalid(&p, GLOB_INPUT_ERROR);
}

#[test]
fn invalid_unknown_target_in_template() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n\n[targets.b]\ntemplate = \"t/b.md\"\noutput = \"out/b.md\"\n")
        .file("t/b.md", "# b\n\nBased on {{ targets.outline }}\n")
        .build();
    assert_invalid(
        &p,
        "t/b.md:3:1: `targets.outline` names no target in `prompts.toml`\n  help: known targets: a, b",
    );
}

#[test]
fn invalid_computed_target_name() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n")
        .file("t/a.md", "# a\n{% for t in targets %}{{ t }}{% endfor %}\n")
        .build();
    assert_invalid(
        &p,
        "t/a.md:2:13: `targets` must be used as `targets.NAME` so the dependency is known before the build\n  \
         help: name the upstream target literally, e.g. `{{ targets.outline }}`",
    );
}

#[test]
fn invalid_unknown_model() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\nmodel = \"fast\"\n")
        .build();
    assert_invalid(
        &p,
        "prompts.toml:4:9: target `a` uses unknown model `fast`\n  help: define `[models.fast]` or use one of: default",
    );
}

const PATH_HELP: &str =
    "\n  help: paths in `prompts.toml` are relative to the project root and must stay inside it";

#[test]
fn invalid_dotdot_paths() {
    let p = inline("[targets.a]\ntemplate = \"../t/a.md\"\noutput = \"out/a.md\"\n").build();
    assert_invalid(
        &p,
        &format!("prompts.toml:2:12: template `../t/a.md` leaves the project (`..`){PATH_HELP}"),
    );

    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/../../a.md\"\n").build();
    assert_invalid(
        &p,
        &format!("prompts.toml:3:10: output `out/../../a.md` leaves the project (`..`){PATH_HELP}"),
    );

    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\ninputs = { doc = \"t/../../in.txt\" }\noutput = \"out/a.md\"\n")
        .build();
    assert_invalid(
        &p,
        &format!("prompts.toml:3:18: input `t/../../in.txt` leaves the project (`..`){PATH_HELP}"),
    );

    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n")
        .file("t/a.md", "# a\n{% include \"../t/b.md\" %}\n")
        .build();
    assert_invalid(
        &p,
        "t/a.md:2:1: partial `../t/b.md` leaves the project (`..`)\n  \
         help: paths in templates are relative to the project root and must stay inside it",
    );
}

#[test]
fn invalid_absolute_paths() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\ninputs = { doc = \"/etc/hostname\" }\noutput = \"out/a.md\"\n")
        .build();
    assert_invalid(
        &p,
        &format!("prompts.toml:3:18: input `/etc/hostname` is absolute{PATH_HELP}"),
    );

    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"/tmp/a.md\"\n").build();
    assert_invalid(
        &p,
        &format!("prompts.toml:3:10: output `/tmp/a.md` is absolute{PATH_HELP}"),
    );

    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \".mkt/objects/x\"\n").build();
    assert_invalid(
        &p,
        &format!(
            "prompts.toml:3:10: output `.mkt/objects/x` is inside mkt's store `.mkt/`{PATH_HELP}"
        ),
    );
}

#[test]
fn invalid_symlink_leading_outside_the_project() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "secret\n").unwrap();
    let toml = "[targets.a]\ntemplate = \"t/a.md\"\ninputs = { doc = \"in.txt\" }\noutput = \"out/a.md\"\n";

    let refused =
        |toml: String, template: &str, (link, to): (&str, std::path::PathBuf), message: &str| {
            let p = project()
                .file("prompts.toml", format!("{toml}{LOG_MODEL}"))
                .file("t/a.md", template)
                .symlink(link, to)
                .build();
            assert_invalid(
                &p,
                &format!(
                    "{message} leads outside the project through a symlink\n  \
                 help: every file a target uses must be a regular file inside the project"
                ),
            );
        };
    // a symlinked file
    refused(
        toml.to_string(),
        "# a\n{{ inputs.doc }}\n",
        ("in.txt", outside.path().join("secret.txt")),
        "prompts.toml:3:18: `in.txt`",
    );
    // a file in a symlinked directory
    refused(
        toml.replace("\"in.txt\"", "\"linked/secret.txt\""),
        "# a\n{{ inputs.doc }}\n",
        ("linked", outside.path().to_owned()),
        "prompts.toml:3:18: `linked/secret.txt`",
    );
    // a `foreach` over a symlinked directory: refused before anything runs
    // (it used to fail at run time, as a failed target)
    refused(
        toml.replace(
            "inputs = { doc = \"in.txt\" }\noutput = \"out/a.md\"",
            "foreach = \"linked/*.txt\"\noutput = \"out/{stem}.md\"",
        ),
        "# a\n{{ item.content }}\n",
        ("linked", outside.path().to_owned()),
        "prompts.toml:3:11: `linked/secret.txt`",
    );

    // a symlink that stays inside the project is fine
    let p = project()
        .file("prompts.toml", format!("{toml}{LOG_MODEL}"))
        .file("t/a.md", "# a\n{{ inputs.doc }}\n")
        .file("data/real.txt", "real\n")
        .symlink("in.txt", "data/real.txt")
        .build();
    p.mkt(&["build"]).success();
    assert_eq!(p.read("out/a.md"), "# a\nreal\n\n");
}

/// A dangling symlink among a `foreach` glob's files is named before
/// anything runs, not met as a failed target.
#[test]
fn invalid_dangling_symlink_in_a_foreach_directory() {
    let p = inline(
        "[targets.a]\ntemplate = \"t/item.md\"\nforeach = \"docs/*.md\"\noutput = \"out/{stem}.md\"\n",
    )
    .file("t/item.md", "# a\n{{ item.content }}\n")
    .file("docs/real.md", "real\n")
    .symlink("docs/gone.md", "nowhere.md")
    .build();
    assert_invalid(
        &p,
        "prompts.toml:3:11: `docs/gone.md` matched the `foreach` glob but cannot be read: \
         a symlink that leads nowhere, or removed since\n  \
         help: fix or remove the symlink, or run the build again",
    );
}

#[test]
fn invalid_symlinked_template_leading_outside_the_project() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("t.md"), "# stolen\n").unwrap();
    let p = inline("[targets.a]\ntemplate = \"t/link.md\"\noutput = \"out/a.md\"\n")
        .symlink("t/link.md", outside.path().join("t.md"))
        .build();
    let run = p.mkt(&["build"]);
    run.code(2)
        .stderr_contains("error: prompts.toml:2:12: template `t/link.md`")
        .stderr_contains("leads outside the project through a symlink\n");
    assert_eq!(p.calls(), Vec::<String>::new());
}

#[test]
fn symlinked_template_error_names_the_path_once() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("t.md"), "# stolen\n").unwrap();
    let p = inline("[targets.a]\ntemplate = \"t/link.md\"\noutput = \"out/a.md\"\n")
        .symlink("t/link.md", outside.path().join("t.md"))
        .build();
    // once: "template `t/link.md` `t/link.md` leads outside ..." with the
    // help "create the file or fix the `template` path"
    let run = p.mkt(&["build"]);
    run.code(2).stderr_contains(
        "prompts.toml:2:12: template `t/link.md` leads outside the project through a symlink",
    );
}

const CYCLE_HELP: &str = "\n  help: a target cannot depend on its own output; remove one of these `targets.NAME` references\n";

#[test]
fn invalid_dependency_cycle() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n\n[targets.b]\ntemplate = \"t/b.md\"\noutput = \"out/b.md\"\n")
        .file("t/a.md", "# a\n{{ targets.b }}\n")
        .file("t/b.md", "# b\n{{ targets.a }}\n")
        .build();
    let run = p.mkt(&["build"]);
    run.code(2)
        .stdout_eq("")
        .stderr_contains("error: dependency cycle: ")
        .stderr_contains(CYCLE_HELP);
    assert_eq!(run.stderr.lines().count(), 2, "{}", run.stderr);
    assert_eq!(p.calls(), Vec::<String>::new());
    assert!(!p.exists("out"));
}

#[test]
fn invalid_self_reference() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n")
        .file("t/a.md", "# a\n{{ targets.a }}\n")
        .build();
    p.mkt(&["build"])
        .code(2)
        .stderr_eq(&format!("error: dependency cycle: a -> a{CYCLE_HELP}"));
    assert_eq!(p.calls(), Vec::<String>::new());
}

#[test]
fn dependency_cycle_message_closes_the_cycle() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n\n[targets.b]\ntemplate = \"t/b.md\"\noutput = \"out/b.md\"\n")
        .file("t/a.md", "# a\n{{ targets.b }}\n")
        .file("t/b.md", "# b\n{{ targets.a }}\n")
        .build();
    let run = p.mkt(&["build"]);
    run.code(2);
    let ok = [
        format!("error: dependency cycle: a -> b -> a{CYCLE_HELP}"),
        format!("error: dependency cycle: b -> a -> b{CYCLE_HELP}"),
    ];
    assert!(ok.contains(&run.stderr), "today: {:?}", run.stderr);

    // three targets: every one of them appears, the first and last are the same
    let p = inline(
        "[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n\n\
         [targets.b]\ntemplate = \"t/b.md\"\noutput = \"out/b.md\"\n\n\
         [targets.c]\ntemplate = \"t/c.md\"\noutput = \"out/c.md\"\n",
    )
    .file("t/a.md", "# a\n{{ targets.c }}\n")
    .file("t/b.md", "# b\n{{ targets.a }}\n")
    .file("t/c.md", "# c\n{{ targets.b }}\n")
    .build();
    let run = p.mkt(&["build"]);
    let line = run
        .stderr
        .lines()
        .next()
        .unwrap()
        .strip_prefix("error: dependency cycle: ")
        .unwrap();
    let names: Vec<&str> = line.split(" -> ").collect();
    assert_eq!(names.len(), 4, "{line}");
    assert_eq!(names[0], names[3], "{line}");
    assert_eq!(
        sorted(names[..3].iter().map(|s| s.to_string()).collect()),
        ["a", "b", "c"],
        "{line}"
    );
}

#[test]
fn invalid_template_syntax() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\ninputs = { doc = \"in.txt\" }\noutput = \"out/a.md\"\n")
        .file("t/a.md", "# a\nHello {{ inputs.doc }\n")
        .build();
    assert_invalid(
        &p,
        "t/a.md:2:21: syntax error: unexpected `}`, expected end of variable block\n  \
         help: see the template reference in README.md; literal `{{` can be written `{{ \"{{\" }}` or kept in a `verbatim(...)` file",
    );
}

#[test]
fn invalid_undeclared_input() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\ninputs = { doc = \"in.txt\" }\noutput = \"out/a.md\"\n")
        .file("t/a.md", "# a\n{{ inputs.doc }}\n\n{{ inputs.extra }}\n")
        .build();
    assert_invalid(
        &p,
        "t/a.md:4:1: `inputs.extra` is not declared for target `a`\n  \
         help: add `extra = \"path\"` to `inputs` of `[targets.a]` in `prompts.toml`",
    );
}

#[test]
fn invalid_item_without_foreach() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n")
        .file("t/a.md", "# a\n{{ item.content }}\n")
        .build();
    assert_invalid(
        &p,
        "t/a.md:1:1: the template of `a` uses `item`, but the target has no `foreach`\n  \
         help: add `foreach = \"GLOB\"` to the target, or remove `item`",
    );
}

#[test]
fn invalid_project_is_reported_before_anything_runs() {
    // one valid target and one broken one: the valid one does not run either
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n\n[targets.b]\ntemplate = \"t/b.md\"\noutput = \"out/b.md\"\n")
        .file("t/b.md", "# b\n{{ inputs.missing }}\n")
        .build();
    assert_invalid(
        &p,
        "t/b.md:2:1: `inputs.missing` is not declared for target `b`\n  \
         help: add `missing = \"path\"` to `inputs` of `[targets.b]` in `prompts.toml`",
    );
}

#[test]
fn no_project_file() {
    let p = project().file("notes.txt", "no project here\n").build();
    if p.root()
        .ancestors()
        .any(|d| d.join("prompts.toml").is_file())
    {
        eprintln!(
            "skipped: a directory above {} has a prompts.toml",
            p.root().display()
        );
        return;
    }
    let run = p.mkt(&["build"]);
    run.code(2)
        .stderr_contains("error: no `prompts.toml` in `")
        .stderr_contains(
            "` or any parent directory\n  help: run mkt inside a project, pass `-C DIR`, or create a `prompts.toml` (see README.md)\n",
        );
    assert!(!p.exists(".mkt"));
}

#[test]
fn an_unknown_target_on_the_command_line_lists_the_known_ones() {
    let p = project().fixture("chain").build();
    p.mkt(&["build", "nope"]).code(2).stderr_eq(
        "error: unknown target `nope`\n  help: known targets: final, outline, summary\n",
    );
    let p = project().file("prompts.toml", "").build();
    p.mkt(&["build", "nope"])
        .code(2)
        .stderr_eq("error: unknown target `nope`\n  help: `prompts.toml` defines no targets yet\n");
}

#[test]
fn project_is_found_from_a_subdirectory() {
    let p = project().fixture("command").build();
    p.mkt_in("templates", &["build"])
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
    assert!(p.exists("out/final.md") && !p.exists("templates/out"));
}

// ---------------------------------------------------------------------------
// Stable outputs (snapshots)

#[test]
fn chain_on_the_mock_model() {
    let p = project().fixture("chain").build();
    let run = p.mkt(&["build"]);
    run.success();
    // a linear chain runs in one order whatever the parallelism
    insta::assert_snapshot!("chain_first_build_stderr", run.stderr_normalized());
    insta::assert_snapshot!("chain_final_output", p.read("out/final.md"));
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 3 up to date\n");

    p.write("audience.txt", "the on-call engineers\n");
    let run = p.mkt(&["build", "-n"]);
    run.success();
    insta::assert_snapshot!(
        "chain_dry_run_after_edit",
        format!(
            "--- stdout\n{}--- stderr\n{}",
            run.stdout,
            run.stderr_normalized()
        )
    );
}

#[test]
fn repository_example_builds_and_then_is_up_to_date() {
    let p = project()
        .copy(repo_dir().join("prompts.toml"), "prompts.toml")
        .copy(repo_dir().join("example"), "example")
        .build();
    if p.exists("example/out") {
        p.remove("example/out"); // built outputs, git-ignored
    }
    p.mkt(&["build"])
        .success()
        .ran(&[
            "summary[example/docs/caching.md] (never built)",
            "summary[example/docs/early-cutoff.md] (never built)",
            "summary[example/docs/provenance.md] (never built)",
            "outline (never built)",
            "briefing (never built)",
        ])
        .summary("5 ran, 0 cached, 0 up to date");
    for out in [
        "example/out/briefing.md",
        "example/out/outline.md",
        "example/out/summaries/caching.md",
        "example/out/summaries/early-cutoff.md",
        "example/out/summaries/provenance.md",
    ] {
        assert!(
            p.read(out).starts_with("[mock `default` | prompt "),
            "{out}"
        );
    }
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 5 up to date\n");
}

// ---------------------------------------------------------------------------
// The no-op stamp (`.mkt/noop`): a build of everything whose files all have
// the stats recorded after the last complete build answers from the stamp
// alone. These tests check that nothing a full check would catch slips past it.

/// Builds, then waits out the racy window and builds again, so the stamp
/// gets written (entries seen within 50 ms of their mtime never are).
/// A build that is a no-op from the stamp alone (no analysis).
fn no_op_without_analysis(p: &Project) {
    p.mkt(&["build", "--timings"])
        .success()
        .nothing_ran()
        .stderr_lacks("analyse");
}

/// The `foreach` fixture with `docs` a symlink to `docs-real`, built and
/// stamped.
fn foreach_over_symlinked_docs() -> Project {
    let p = project().fixture("foreach").build();
    std::fs::rename(p.path("docs"), p.path("docs-real")).unwrap();
    p.symlink("docs", "docs-real");
    p.mkt(&["build"]).success();
    stamped(&p);
    p
}

fn stamped(p: &Project) {
    std::thread::sleep(std::time::Duration::from_millis(120));
    p.mkt(&["build"]).success().nothing_ran();
    assert!(
        p.exists(".mkt/noop"),
        "the stamp is written once files are old enough"
    );
}

#[test]
fn noop_stamp_answers_and_every_kind_of_change_gets_past_it() {
    let p = project().fixture("foreach").build();
    p.mkt(&["build"]).success();
    stamped(&p);
    let calls = p.calls().len();
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 3 up to date\n");
    assert_eq!(p.calls().len(), calls);

    // a new file in a globbed directory
    p.write("docs/c.md", "Gamma notes.\n");
    p.mkt(&["build"])
        .success()
        .ran_keys(&["summary[docs/c.md]", "index"]);
    stamped(&p);

    // an edited input
    p.append("docs/a.md", "More.\n");
    p.mkt(&["build"])
        .success()
        .ran_keys(&["summary[docs/a.md]", "index"]);
    stamped(&p);

    // a deleted output
    p.remove("out/index.md");
    p.mkt(&["build"])
        .success()
        .restored(&["index (output `out/index.md` missing)"]);
    stamped(&p);

    // a touched file whose bytes did not change: the full check runs, finds
    // nothing to do, and the stamp comes back
    let text = p.read("templates/index.md");
    p.write("templates/index.md", text);
    p.mkt(&["build"]).success().nothing_ran();
    stamped(&p);

    // an edited prompts.toml
    p.write("templates/extra.md", "# extra\n");
    p.append(
        "prompts.toml",
        "\n[targets.extra]\ntemplate = \"templates/extra.md\"\noutput = \"out/extra.md\"\n",
    );
    p.mkt(&["build"]).success().ran_keys(&["extra"]);
    stamped(&p);

    // a removed globbed file
    p.remove("docs/c.md");
    p.mkt(&["build"]).success().ran_keys(&["index"]);
}

/// After an edit of `prompts.toml` the graph is analysed again, but the
/// stamp still vouches for the files it saw unchanged: never for one it saw
/// change, whatever the new project asks of it.
#[test]
fn a_structural_change_takes_the_stamps_word_only_for_unchanged_files() {
    let p = project().fixture("command").build();
    p.mkt(&["build"]).success();
    stamped(&p);
    // in one step: a new target that asks what `side` asks (a cache hit),
    // `outline` pointed at a file the stamp saw unchanged, and an edit
    p.append(
        "prompts.toml",
        "\n[targets.extra]\ntemplate = \"templates/side.md\"\n\
         inputs = { aside = \"aside.txt\" }\noutput = \"out/extra.md\"\n",
    );
    p.replace(
        "prompts.toml",
        "topic = \"topic.txt\"",
        "topic = \"aside.txt\"",
    );
    p.append("notes.txt", "More notes.\n");
    p.mkt(&["build"])
        .success()
        .ran_keys(&["outline", "summary", "final"])
        .cached_keys(&["extra"]);
    let aside = p.read("aside.txt");
    assert!(
        p.read("out/outline.md")
            .contains(&format!("Outline: {aside}"))
    );
    assert_eq!(p.read("out/extra.md"), p.read("out/side.md"));
    p.mkt(&["build"]).success().nothing_ran();
    // a structural change and an input swapped for a symlink out of the
    // project, together: the symlink is seen, not the stamp's old entry
    stamped(&p);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("aside.txt"), "secret\n").unwrap();
    p.remove("aside.txt");
    p.symlink("aside.txt", outside.path().join("aside.txt"));
    p.append(
        "prompts.toml",
        "\n# a comment is an edit of prompts.toml too\n",
    );
    p.mkt(&["build"])
        .code(2)
        .stderr_contains("leads outside the project");
}

/// An edit's build writes what it changed of a large stamp beside it
/// (`.mkt/noop.patch`) instead of the whole stamp again; the stamp and its
/// patch answer the next build as one, and a damaged patch costs the full
/// check, never a wrong answer.
#[test]
fn an_edit_patches_the_stamp_and_a_damaged_patch_only_costs_time() {
    let mut b = project().fixture("foreach");
    for i in 0..40 {
        b = b.file(&format!("docs/d{i:02}.md"), format!("Document {i}.\n"));
    }
    let p = b.build();
    p.mkt(&["build"]).success();
    stamped(&p);
    let stamp = std::fs::read(p.path(".mkt/noop")).unwrap();

    p.append("docs/d07.md", "More.\n");
    p.mkt(&["build"])
        .success()
        .ran_keys(&["summary[docs/d07.md]", "index"]);
    assert!(
        p.exists(".mkt/noop.patch"),
        "a few entries changed: a patch"
    );
    assert_eq!(std::fs::read(p.path(".mkt/noop")).unwrap(), stamp);
    stamped(&p);
    no_op_without_analysis(&p);

    // a damaged patch is not applied: the stamp alone, older than the
    // edit, sees `d07.md` changed, and the full check finds it built
    let mut patch = std::fs::read(p.path(".mkt/noop.patch")).unwrap();
    let at = patch.len() / 2;
    patch[at] ^= 1;
    p.write(".mkt/noop.patch", &patch);
    p.mkt(&["build"]).success().nothing_ran();
    p.append("docs/d21.md", "More.\n");
    p.mkt(&["build"])
        .success()
        .ran_keys(&["summary[docs/d21.md]", "index"]);
    stamped(&p);
    no_op_without_analysis(&p);

    // a build of named targets that runs one removes both
    p.mkt(&["build", "--force", "index"]).success();
    assert!(!p.exists(".mkt/noop") && !p.exists(".mkt/noop.patch"));

    // a patch that cannot be written is an error naming it; the outputs
    // and records are saved before it, so the next build runs nothing
    p.mkt(&["build"]).success();
    stamped(&p);
    std::fs::create_dir_all(p.path(".mkt/noop.patch/in-the-way")).unwrap();
    p.append("docs/d30.md", "More.\n");
    p.mkt(&["build"])
        .code(1)
        .ran_keys(&["summary[docs/d30.md]", "index"])
        .stderr_contains(&format!(
            "error: cannot write `{}`: Is a directory",
            p.path(".mkt/noop.patch").display()
        ));
    std::fs::remove_dir_all(p.path(".mkt/noop.patch")).unwrap();
    p.mkt(&["build"]).success().nothing_ran();
}

#[test]
fn noop_stamp_is_not_used_for_named_targets_or_force() {
    let p = project().fixture("foreach").build();
    p.mkt(&["build"]).success();
    stamped(&p);
    p.mkt(&["build", "--force", "index"])
        .success()
        .ran_keys(&["index"]);
    assert!(!p.exists(".mkt/noop"), "a partial build removes the stamp");
    p.mkt(&["build"]).success().nothing_ran();
}

/// A build of named targets takes the stamp's word for what did not
/// change, as a build of everything does, and runs exactly the stale part
/// of what it was asked for; only a build of everything writes a stamp.
#[test]
fn named_targets_are_built_from_what_the_stamp_saw_change() {
    let p = project().fixture("command").build();
    p.mkt(&["build"]).success();
    stamped(&p);
    p.append("aside.txt", "More aside.\n");
    p.append("notes.txt", "More notes.\n");
    p.mkt(&["build", "outline"]).success().nothing_ran();
    assert!(p.exists(".mkt/noop"), "nothing ran: the stamp still holds");
    p.mkt(&["build", "final"]).success().ran(&[
        "summary (input `notes.txt` changed)",
        "final (upstream `summary` output changed)",
    ]);
    assert!(!p.exists(".mkt/noop"), "a partial build removes the stamp");
    p.mkt(&["build"])
        .success()
        .ran(&["side (input `aside.txt` changed)"]);
}

/// A build of `outline` alone saves its new record; if it then fails (here
/// its history cannot be appended to), the stamp must already be gone: its
/// word that `summary` reads nothing that changed would hide that
/// `summary` was built from the old `outline`.
#[test]
fn a_build_that_fails_after_saving_its_records_leaves_no_stamp_to_hide_them() {
    let p = project().fixture("command").build();
    p.mkt(&["build"]).success();
    stamped(&p);
    p.append("topic.txt", "More topic.\n");
    p.remove(".mkt/history.jsonl");
    std::fs::create_dir(p.path(".mkt/history.jsonl")).unwrap();
    let run = p.mkt(&["build", "outline"]);
    run.code(1).ran_keys(&["outline"]);
    assert!(!p.exists(".mkt/noop"), "{}", run.stderr);
    std::fs::remove_dir(p.path(".mkt/history.jsonl")).unwrap();
    p.mkt(&["build"]).success().ran(&[
        "summary (upstream `outline` output changed)",
        "final (upstream `summary` output changed)",
    ]);
}

/// An input that is a symlink to a file inside the project: the stamp
/// checks the file it leads to, so a no-op build stays a stat per file (it
/// used to see the link's own stat as a change, on every build), an edit
/// of that file is seen, and a link led out of the project is refused.
#[test]
fn a_symlinked_input_keeps_the_no_op_fast_path_and_its_changes_are_seen() {
    let p = project().fixture("command").build();
    std::fs::rename(p.path("aside.txt"), p.path("aside-real.txt")).unwrap();
    p.symlink("aside.txt", "aside-real.txt");
    p.mkt(&["build"]).success();
    stamped(&p);
    let noop = p.mkt(&["build", "--timings"]);
    noop.success().nothing_ran().stderr_lacks("analyse");
    p.append("aside-real.txt", "More aside.\n");
    p.mkt(&["build"])
        .success()
        .ran(&["side (input `aside.txt` changed)"]);
    stamped(&p);
    // the same bytes somewhere else in the project: another file, seen
    p.write("aside-copy.txt", p.read("aside-real.txt"));
    p.remove("aside.txt");
    p.symlink("aside.txt", "aside-copy.txt");
    p.mkt(&["build"])
        .success()
        .stderr_contains("0 ran, 0 cached, 4 up to date");
    stamped(&p);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("aside.txt"), p.read("aside-copy.txt")).unwrap();
    p.remove("aside.txt");
    p.symlink("aside.txt", outside.path().join("aside.txt"));
    p.mkt(&["build"])
        .code(2)
        .stderr_contains("leads outside the project");
}

/// A `foreach` over a directory that is a symlink inside the project: the
/// stamp records the directory listed (the one the link leads to), so a
/// no-op build stays a stat per file and a file added there is seen.
#[test]
fn a_foreach_over_a_symlinked_directory_keeps_the_no_op_fast_path() {
    let p = foreach_over_symlinked_docs();
    no_op_without_analysis(&p);
    p.write("docs-real/c.md", "Gamma notes.\n");
    p.mkt(&["build"])
        .success()
        .ran_keys(&["summary[docs/c.md]", "index"]);
}

/// The output directory swapped for a symlink out of the project after the
/// graph was cached: only outputs changed by their stat, but the stamp saw
/// `out` resolve elsewhere, so the project is analysed again and refused
/// before anything runs, and nothing is written through the symlink.
#[test]
fn an_output_directory_swapped_for_a_symlink_out_is_not_written_through() {
    let p = project().fixture("command").build();
    p.mkt(&["build"]).success();
    stamped(&p);
    let outside = tempfile::tempdir().unwrap();
    std::fs::remove_dir_all(p.path("out")).unwrap();
    p.symlink("out", outside.path());
    let refused = "error: prompts.toml:23:10: output `out/final.md` of `final` would be written \
                   outside the project (through a symlinked directory) or into `.mkt/`\n  \
                   help: write outputs to a directory inside the project\n";
    p.mkt(&["build"]).code(2).nothing_ran().stderr_eq(refused);
    let written: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
    assert!(written.is_empty(), "{written:?}");
    p.mkt(&["build", "side"]).code(2).stderr_eq(refused);
}

/// A build that read the stamp and then waited for the lock must not use
/// it once the build that held the lock has changed outputs and records.
#[test]
fn a_build_that_waited_for_the_lock_does_not_trust_the_stamp_it_read_before() {
    let p = project().fixture("command").build();
    // the model takes a second while the file `slow` exists
    p.replace(
        "prompts.toml",
        ">> calls.log;",
        ">> calls.log; if [ -f slow ]; then sleep 1; fi;",
    );
    p.mkt(&["build"]).success();
    stamped(&p);
    p.append("topic.txt", "More topic.\n");
    p.write("slow", "");
    let calls = p.calls().len();
    let first = p.spawn_mkt(&["build", "-q", "outline"]);
    // `outline` is running, so the first build holds the lock
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p.calls().len() == calls && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let second = p.mkt(&["build"]);
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success());
    // (on a loaded machine the second build may only get this far once
    // the first is done: then it does not wait, and reads no stale stamp)
    second
        .success()
        // (the stamp it read had `out/outline.md` as it was before: taken
        // at its word, that file looked edited since its new record)
        .restored(&[])
        .ran(&[
            "summary (upstream `outline` output changed)",
            "final (upstream `summary` output changed)",
        ]);
}

#[test]
fn stamp_with_only_content_changes_reuses_the_graph_and_stays_exact() {
    let p = project().fixture("command").build();
    p.mkt(&["build"]).success();
    stamped(&p);
    assert!(p.exists(".mkt/graph"), "the analysed graph is cached");
    // an input edit: the graph comes from the cache; exactly the cone runs
    p.append("topic.txt", "More topic.\n");
    p.mkt(&["build"]).success().ran(&[
        "outline (input `topic.txt` changed)",
        "summary (upstream `outline` output changed)",
        "final (upstream `summary` output changed)",
    ]);
    // the stamp written after that build holds at once (racy entries are
    // checked by content)
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 4 up to date\n");
    // an input that disappears is still reported by analysis, exit code 2
    stamped(&p);
    p.remove("aside.txt");
    p.mkt(&["build"])
        .code(2)
        .stderr_contains("input `aside` of target `side`: `aside.txt` not found");
    // and an input replaced by a symlink out of the project is refused
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("aside.txt"), "secret\n").unwrap();
    p.symlink("aside.txt", outside.path().join("aside.txt"));
    p.mkt(&["build"])
        .code(2)
        .stderr_contains("leads outside the project");
}

// ---------------------------------------------------------------------------
// The project lock, and a state or action cache that cannot be believed

#[test]
fn a_second_build_waits_for_the_lock_or_fails_with_no_wait() {
    let p = project().file("t.md", "Hello\n").build();
    let mut first = hold_lock_with_slow_build(&p, 2500);
    let run = p.mkt(&["build", "--no-wait"]);
    run.code(1)
        .stderr_contains("error: another `mkt` holds the lock on `");
    let run = p.mkt(&["build"]);
    run.success()
        .stderr_contains("mkt: waiting for another mkt build of this project to finish...\n")
        .stderr_contains("0 ran, 0 cached, 1 up to date");
    assert!(first.wait().unwrap().success());
}

#[test]
fn a_corrupt_state_costs_time_but_no_model_call() {
    let p = built_command_project();
    let calls = p.calls().len();
    let mut state = p.read_bytes(".mkt/state");
    let mid = state.len() / 2;
    state[mid] ^= 0xff;
    p.write(".mkt/state", state);
    p.remove(".mkt/noop");
    p.mkt(&["build"])
        .success()
        .cached_keys(&["outline", "summary", "final", "side"])
        .summary("0 ran, 4 cached, 0 up to date");
    assert_eq!(p.calls().len(), calls, "served from the action cache");
    // a truncated state is no different
    let state = p.read_bytes(".mkt/state");
    p.write(".mkt/state", &state[..state.len() - 1]);
    p.remove(".mkt/noop");
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 4 cached, 0 up to date");
}

#[test]
fn a_forged_action_cache_entry_is_refused_and_rebuilt() {
    let p = built_command_project();
    let calls = p.calls().len();
    // side's manifest filed under every other entry's hash, with a valid
    // checksum: valid JSON, wrong InputBundleHash
    let entries = p.store_entries();
    assert_eq!(entries.len(), 4);
    let side = entries
        .iter()
        .find(|e| String::from_utf8_lossy(&e.payload).contains("\"target\":\"side\""))
        .unwrap();
    for e in &entries {
        if e.key != side.key {
            p.forge_entry(&e.key, &side.payload);
        }
    }
    let outline = p.read("out/outline.md");
    p.remove("out");
    p.remove(".mkt/state");
    let _ = std::fs::remove_file(p.path(".mkt/state.log"));
    let run = p.mkt(&["build"]);
    run.success()
        .stderr_contains("was corrupt and has been set aside; running the model again")
        .summary("3 ran, 1 cached, 0 up to date");
    assert_eq!(p.calls().len(), calls + 3);
    assert_eq!(p.read("out/outline.md"), outline);
}

#[test]
fn an_input_edited_during_the_build_is_not_recorded_as_the_old_one() {
    // `a`'s model rewrites `x.txt`, which `b` reads, after mkt hashed it
    let p = project()
        .file(
            "prompts.toml",
            "[models.editor]\nprovider = \"command\"\ncommand = [\"sh\", \"-c\", \"cat; echo edited > x.txt\"]\n\n\
             [targets.a]\ntemplate = \"a.md\"\noutput = \"out/a.md\"\nmodel = \"editor\"\n\n\
             [targets.b]\ntemplate = \"b.md\"\ninputs = { x = \"x.txt\" }\noutput = \"out/b.md\"\n",
        )
        .file("a.md", "A\n")
        .file("b.md", "{{ targets.a }}x: {{ inputs.x }}")
        .file("x.txt", "original\n")
        .build();
    p.mkt(&["build"]).code(1).stderr_contains(
        "error: `b` failed (never built):\n  `x.txt` changed while the build was running; run `mkt build` again\n",
    );
    p.mkt(&["build"])
        .success()
        .ran(&["b (previous run failed)"]);
    assert!(
        p.read("out/b.md").ends_with("x: edited\n"),
        "{}",
        p.read("out/b.md")
    );
}

// ---------------------------------------------------------------------------
// Found in review

#[test]
fn outputs_are_not_written_through_a_symlinked_directory() {
    let outside = tempfile::tempdir().unwrap();
    let p = inline("[targets.a]\ntemplate = \"t.md\"\noutput = \"gen/sub/a.md\"\n")
        .file("t.md", "A\n")
        .symlink("gen", outside.path())
        .build();
    assert_invalid(
        &p,
        "prompts.toml:3:10: output `gen/sub/a.md` of `a` would be written outside the project (through a symlinked directory) or into `.mkt/`\n  help: write outputs to a directory inside the project",
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn a_dry_run_of_a_new_project_writes_nothing() {
    let p = project().fixture("chain").build();
    p.mkt(&["build", "--dry-run"]).success();
    assert!(!p.exists(".mkt"), "no store is created");
    assert!(!p.exists("out"));
}

#[test]
fn outputs_get_the_usual_file_mode() {
    use std::os::unix::fs::PermissionsExt;
    let p = project().fixture("chain").build();
    p.mkt(&["build"]).success();
    let mode = std::fs::metadata(p.path("out/final.md"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    // 0666 less the umask: at least readable by the group and others when
    // the umask allows (the common 022 gives 0644)
    // SAFETY: reading the umask by setting it and putting it back.
    let umask = unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m
    };
    assert_eq!(mode, 0o666 & !(umask as u32), "mode {mode:o}");
}

#[test]
fn sources_that_are_outputs_are_refused() {
    let p = inline(
        "[targets.a]\ntemplate = \"t/a.md\"\noutput = \"gen/b.md\"\n\n\
         [targets.b]\ntemplate = \"gen/b.md\"\noutput = \"out/b.md\"\n",
    )
    .file("t/a.md", "A\n")
    .build();
    assert_invalid(
        &p,
        "prompts.toml:6:12: template `gen/b.md` of `b` is the output of `a`\n  help: a template must be a source file; mkt does not generate templates",
    );
    let p = inline(
        "[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.txt\"\n\n\
         [targets.c]\ntemplate = \"t/c.md\"\noutput = \"out/c.md\"\n",
    )
    .file("t/a.md", "A\n")
    .file("t/c.md", "C\n{{ verbatim(\"out/a.txt\") }}\n")
    .build();
    assert_invalid(
        &p,
        "t/c.md:2:1: verbatim file `out/a.txt` is the output of `a`\n  help: use `targets.a` instead, so mkt knows the order",
    );
}

#[test]
fn output_that_is_the_project_file_is_refused() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"prompts.toml\"\n").build();
    let before = p.read("prompts.toml");
    assert_invalid(
        &p,
        "prompts.toml:3:10: output `prompts.toml` of `a` is the project file\n  help: write outputs to a directory inside the project, such as `out/`",
    );
    assert_eq!(p.read("prompts.toml"), before);
    // also when a `foreach` expansion yields it
    let p = inline(
        "[targets.a]\nforeach = \"docs/*.md\"\ntemplate = \"t/a.md\"\noutput = \"{stem}.toml\"\n",
    )
    .file("docs/prompts.md", "doc\n")
    .build();
    assert_invalid(
        &p,
        "prompts.toml:4:10: output `prompts.toml` of `a[docs/prompts.md]` is the project file\n  help: write outputs to a directory inside the project, such as `out/`",
    );
}

#[test]
fn template_that_includes_itself_is_refused() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n")
        .file("t/a.md", "# a\n{% include \"t/a.md\" %}\n")
        .build();
    assert_invalid(
        &p,
        "t/a.md:2:1: partial `t/a.md` includes itself: `t/a.md` → `t/a.md`\n  \
         help: a template cannot include itself, directly or through other partials; for recursion, use a macro that calls itself",
    );
}

#[test]
fn include_cycle_of_two_files_is_refused() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n")
        .file("t/a.md", "{% include \"t/p.md\" %}\n")
        .file("t/p.md", "p\n{% include \"t/q.md\" %}\n")
        .file("t/q.md", "q\n\n{% include \"t/p.md\" %}\n")
        .build();
    assert_invalid(
        &p,
        "t/q.md:3:1: partial `t/p.md` includes itself: `t/p.md` → `t/q.md` → `t/p.md`\n  \
         help: a template cannot include itself, directly or through other partials; for recursion, use a macro that calls itself",
    );
}

/// `t/0.md` includes `t/1.md`, which includes `t/2.md`... `t/{depth}.md`.
fn include_chain(depth: usize, wrap: (&str, &str)) -> Project {
    let mut b = inline("[targets.a]\ntemplate = \"t/0.md\"\noutput = \"out/a.md\"\n");
    for i in 0..depth {
        let (open, close) = wrap;
        let text = format!("{i} {open}{{% include \"t/{}.md\" %}}{close}", i + 1);
        b = b.file(&format!("t/{i}.md"), text);
    }
    b.file(&format!("t/{depth}.md"), "end\n").build()
}

#[test]
fn thousand_deep_include_chain_says_which_limit_it_hit() {
    let p = include_chain(1000, ("", ""));
    assert_invalid(
        &p,
        "t/49.md:1:1: includes nest more than 49 levels deep from `t/0.md`, the most templates may nest\n  \
         help: include the partials of a long chain from one file instead of each from the one before",
    );
    // the deepest chain allowed renders
    let p = include_chain(49, ("", ""));
    p.mkt(&["build"]).success();
    assert!(
        p.read("out/a.md").starts_with("0 1 2 "),
        "{}",
        p.read("out/a.md")
    );
    // loops count towards minijinja's limit too: the render names it and
    // the file where it was hit, not only the outermost include
    let p = include_chain(47, ("{% for x in [1] %}", "{% endfor %}"));
    p.mkt(&["build"]).code(1).stderr_contains(
        "error: `a` failed (never built):\n  t/46.md:1:25: recursion limit exceeded\n    \
         help: includes, macro calls and loops nest too deeply (includes at most 49 levels, fewer inside loops or macros); flatten the nesting\n",
    );
}

#[test]
fn non_utf8_prompts_toml_is_refused_with_its_position() {
    let p = project()
        .file(
            "prompts.toml",
            b"[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/\xff.md\"\n".as_slice(),
        )
        .file("t/a.md", "a\n")
        .build();
    assert_invalid(
        &p,
        "prompts.toml:3:15: `prompts.toml` is not UTF-8 text (byte 46)\n  \
         help: TOML files are UTF-8: save it in that encoding",
    );
}

#[test]
fn nul_in_output_is_refused_at_load() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a\\u0000.md\"\n").build();
    assert_invalid(
        &p,
        "prompts.toml:3:10: output `out/a\\u{0}.md` contains a NUL character\n  \
         help: paths in `prompts.toml` are relative to the project root and must stay inside it",
    );
}

#[test]
fn output_naming_a_directory_is_refused() {
    for output in ["out/", "out/."] {
        let p = inline(&format!(
            "[targets.a]\ntemplate = \"t/a.md\"\noutput = \"{output}\"\n"
        ))
        .build();
        assert_invalid(
            &p,
            &format!(
                "prompts.toml:3:10: output `{output}` names a directory\n  \
                 help: name the file to write, for example `out/a.md`"
            ),
        );
    }
}

#[test]
fn non_finite_temperature_is_refused_at_load() {
    for (value, shown) in [("nan", "NaN"), ("inf", "inf"), ("-inf", "-inf")] {
        let p = project()
            .file(
                "prompts.toml",
                format!(
                    "[models.default]\nprovider = \"openai\"\nmodel = \"m\"\ntemperature = {value}\n\n\
                     [targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n"
                ),
            )
            .file("t/a.md", "a\n")
            .build();
        assert_invalid(
            &p,
            &format!(
                "prompts.toml:1:1: model `default`: `temperature` is {shown}, not a finite number\n  \
                 help: give `temperature` a finite value, or remove it"
            ),
        );
    }
}

#[test]
fn huge_latency_ms_is_refused_at_load() {
    let p = project()
        .file(
            "prompts.toml",
            "[models.default]\nprovider = \"mock\"\nlatency_ms = 18446744073709551615\n\n\
             [targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n",
        )
        .file("t/a.md", "a\n")
        .build();
    assert_invalid(
        &p,
        "prompts.toml:1:1: model `default`: `latency_ms` is more than 3600000 (an hour)\n  \
         help: the mock's latency simulates a model: use milliseconds to seconds",
    );
}

/// A `foreach` target `s` over `glob`, rendering `t.md` with `model`
/// (a `[models.default]` body).
fn foreach_over(glob: &str, model: &str, template: &str) -> support::ProjectBuilder {
    project()
        .file(
            "prompts.toml",
            format!(
                "[models.default]\n{model}\n\n\
                 [targets.s]\nforeach = \"{glob}\"\ntemplate = \"t.md\"\noutput = \"out/{{stem}}.md\"\n"
            ),
        )
        .file("t.md", template)
}

#[test]
fn terminal_escapes_in_file_names_are_not_printed_raw() {
    let p = foreach_over("docs/*.md", "provider = \"mock\"", "{{ item.content }}")
        .file("docs/\x1b[2J\x1b[31mred\r.md", "x\n")
        .build();
    let run = p.mkt(&["build"]);
    run.success()
        .stderr_contains("ran s[docs/\\u{1b}[2J\\u{1b}[31mred\\r.md] (never built)\n");
    assert!(!run.stderr.contains(['\x1b', '\r']), "{:?}", run.stderr);
    p.write("docs/\x1b[2J\x1b[31mred\r.md", "y\n");
    let run = p.mkt(&["status"]);
    run.code(1);
    assert!(
        run.stdout
            .starts_with("s[docs/\\u{1b}[2J\\u{1b}[31mred\\r.md]  "),
        "{:?}",
        run.stdout
    );
    let run = p.mkt(&["explain", "s[docs/\x1b[2J\x1b[31mred\r.md]"]);
    run.success();
    assert!(
        run.stdout
            .starts_with("`s[docs/\\u{1b}[2J\\u{1b}[31mred\\r.md]` is stale"),
        "{:?}",
        run.stdout
    );
    assert!(!run.stdout.contains(['\x1b', '\r']), "{:?}", run.stdout);
}

#[test]
fn foreach_over_a_missing_directory_warns() {
    let p = foreach_over("dcos/*.md", "provider = \"mock\"", "{{ item.name }}").build();
    p.mkt(&["build"]).success().stderr_eq(
        "warning: the `foreach` glob `dcos/*.md` of target `s` matches no file, so it builds nothing\n\
         0 ran, 0 cached, 0 up to date\n",
    );
}

#[test]
fn non_utf8_foreach_file_works_when_only_its_name_is_used() {
    let model = "provider = \"command\"\ncommand = [\"cat\"]";
    let p = foreach_over("img/*.png", model, "describe {{ item.name }}\n")
        .file("img/a.png", b"\x89PNG\r\n\x1a\n\xff\xfe".as_slice())
        .build();
    p.mkt(&["build"]).success();
    assert_eq!(p.read("out/a.md"), "describe a.png\n");
    // the content is still refused where it is used
    p.write("t.md", "describe {{ item.content }}\n");
    p.mkt(&["build"])
        .code(1)
        .stderr_contains("  t.md:1:13: `img/a.png` is not UTF-8 text\n");
}

#[test]
fn dot_slash_names_in_templates_work() {
    let p = inline("[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\n")
        .file(
            "t/a.md",
            "{% include \"./t/p.md\" %}{{ verbatim(\"./t/v.txt\") }}",
        )
        .file("t/p.md", "partial\n")
        .file("t/v.txt", "{{ raw }}\n")
        .build();
    p.mkt(&["build"]).success();
    assert!(
        p.read("out/a.md").ends_with("partial\n{{ raw }}\n"),
        "{}",
        p.read("out/a.md")
    );
}

#[test]
fn a_template_that_is_also_an_input_is_stamped_as_a_template() {
    // `audit` reads `sum`'s template as an input; an edit that adds a
    // reference must still be analysed, even with a no-op stamp in place
    let p = project()
        .file(
            "prompts.toml",
            "[targets.audit]\ntemplate = \"t/audit.md\"\ninputs = { prompt = \"t/sum.md\" }\noutput = \"out/audit.md\"\n\n\
             [targets.other]\ntemplate = \"t/other.md\"\noutput = \"out/other.md\"\n\n\
             [targets.sum]\ntemplate = \"t/sum.md\"\noutput = \"out/sum.md\"\n",
        )
        .file("t/audit.md", "Audit: {{ inputs.prompt }}")
        .file("t/other.md", "Other\n")
        .file("t/sum.md", "Summarise.\n")
        .build();
    p.mkt(&["build"]).success();
    stamped(&p);
    p.write("t/sum.md", "Summarise with {{ targets.other }}");
    p.mkt(&["build"]).success().ran_keys(&["sum", "audit"]);
    assert!(
        p.read("out/sum.md").contains("Summarise with"),
        "{}",
        p.read("out/sum.md")
    );
    assert!(
        p.read("out/sum.md").contains("Other"),
        "{}",
        p.read("out/sum.md")
    );
}

#[test]
fn a_fan_in_that_shows_output_paths_reruns_when_they_move() {
    let p = project().fixture("foreach").build();
    p.write(
        "templates/index.md",
        "# index\n{% for s in targets.summary %}- {{ s.path }}\n{% endfor %}",
    );
    p.mkt(&["build"]).success();
    p.replace(
        "prompts.toml",
        "output = \"out/summaries/{stem}.md\"",
        "output = \"out/s2/{stem}.md\"",
    );
    p.mkt(&["build"]).success().ran_keys(&["index"]);
    assert!(
        p.read("out/index.md").contains("out/s2/a.md"),
        "{}",
        p.read("out/index.md")
    );
}

#[test]
fn ctrl_c_stops_the_build_kills_model_commands_and_keeps_what_finished() {
    let p = project()
        .file(
            "prompts.toml",
            "[models.slow]\nprovider = \"command\"\ncommand = [\"sh\", \"-c\", \"cat >/dev/null; echo $$ > pid.txt; exec sleep 30\"]\n\n\
             [targets.quick]\ntemplate = \"q.md\"\noutput = \"out/q.md\"\n\n\
             [targets.slow]\ntemplate = \"s.md\"\noutput = \"out/s.md\"\nmodel = \"slow\"\n\n\
             [targets.after]\ntemplate = \"a.md\"\noutput = \"out/a.md\"\n",
        )
        .file("q.md", "quick\n")
        .file("s.md", "slow\n")
        .file("a.md", "after {{ targets.slow }}")
        .build();
    let child = p.spawn_mkt_piped(&["build", "-j", "2"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !p.exists("pid.txt") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let started = std::time::Instant::now();
    // SAFETY: sending SIGINT to the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "stopped promptly"
    );
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("mkt: interrupted; targets that finished are saved"),
        "{stderr}"
    );
    assert!(
        stderr.contains("skipped after: the build was interrupted"),
        "{stderr}"
    );
    let pid: i32 = p.read("pid.txt").trim().parse().unwrap();
    // SAFETY: signal 0 only checks whether the process exists.
    assert_ne!(
        unsafe { libc::kill(pid, 0) },
        0,
        "the model command was killed"
    );
    // what finished stays built; the next build runs the rest
    assert!(p.exists("out/q.md"));
    p.replace("prompts.toml", "exec sleep 30", "cat s.md");
    p.mkt(&["build"])
        .success()
        .ran_keys(&["slow", "after"])
        .summary("2 ran, 0 cached, 1 up to date");
}

/// A model command that exits without reading its stdin fails its run; the
/// closed pipe must not take mkt down with it (SIGPIPE), with a prompt that
/// fits the pipe buffer or not.
#[test]
fn a_command_that_does_not_read_its_prompt_fails_only_its_run() {
    for size in [10, 200_000] {
        let p = project()
            .file(
                "prompts.toml",
                r#"
[models.default]
provider = "command"
command = ["sh", "-c", "exit 3"]

[targets.t]
template = "t.md"
inputs = { doc = "doc.txt" }
output = "out/t.md"
"#,
            )
            .file("t.md", "{{ inputs.doc }}")
            .file("doc.txt", "x".repeat(size))
            .build();
        p.mkt(&["build"])
            .code(1)
            .stderr_contains("`sh` exited with code 3")
            .summary("0 ran, 0 cached, 0 up to date, 1 failed");
    }
}

/// `--timings` names each phase the build went through, before the
/// summary line, with a total: the no-op path ends at the stamp, an edit goes on
/// through the cached graph, the run and the saves.
#[test]
fn timings_list_the_phases_each_kind_of_build_went_through() {
    let p = built_command_project();
    let phases = |run: &support::Run| -> Vec<String> {
        let after = run
            .stderr
            .split_once("timings:\n")
            .unwrap_or_else(|| panic!("no timings in:\n{}", run.stderr))
            .1;
        // `   12.3 ms  phase` lines, up to the summary line, which stays last
        after
            .lines()
            .map_while(|l| {
                let (ms, name) = l.trim_start().split_once(" ms  ")?;
                ms.parse::<f64>().ok()?;
                Some(name.to_string())
            })
            .collect()
    };
    let noop = p.mkt(&["build", "--timings"]);
    noop.success().summary("0 ran, 0 cached, 4 up to date");
    assert_eq!(
        phases(&noop),
        [
            "read the no-op stamp",
            "stat the stamp's files",
            "finish",
            "in all"
        ]
    );
    p.write("aside.txt", "changed\n");
    let edit = p.mkt(&["build", "--timings", "-q"]);
    edit.success();
    assert_eq!(
        phases(&edit),
        [
            "read the no-op stamp",
            "stat the stamp's files",
            "open the store and lock",
            "read the project, state and graph",
            "analyse",
            "stat and hash",
            "schedule and run",
            "verify racy files",
            "save the state",
            "append the history, sync",
            "write the stamp and caches",
            "in all"
        ]
    );
    // then where the CPU went, mkt's own and its commands'
    let cpu = edit
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("cpu: mkt "))
        .unwrap_or_else(|| panic!("no cpu line in:\n{}", edit.stderr));
    let (own, rest) = cpu.split_once(" s (user ").unwrap();
    let (_, commands) = rest.split_once("), the commands it ran ").unwrap();
    for v in [own, commands.strip_suffix(" s").unwrap()] {
        assert!(v.parse::<f64>().is_ok_and(|v| v >= 0.0), "{cpu}");
    }
}

/// A directory moved out of the project and replaced by a symlink to where
/// it went keeps every file's stat (same inodes, same times). The stamp
/// records how each path resolved, so the next build, and `status`, check
/// again and refuse the project instead of calling it up to date; the same
/// for a directory that a symlink in the project leads through.
#[test]
fn a_directory_moved_out_and_linked_back_is_refused_not_called_up_to_date() {
    let p = project().fixture("command").build();
    p.mkt(&["build"]).success();
    stamped(&p);
    // beside the project, so the rename keeps the inodes
    let outside = tempfile::tempdir_in(p.root().parent().unwrap()).unwrap();
    std::fs::rename(p.path("templates"), outside.path().join("templates")).unwrap();
    p.symlink("templates", outside.path().join("templates"));
    p.mkt(&["status"])
        .code(2)
        .stderr_contains("leads outside the project through a symlink");
    p.mkt(&["build"])
        .code(2)
        .nothing_ran()
        .stderr_contains("leads outside the project through a symlink");
    p.remove("templates");
    std::fs::rename(outside.path().join("templates"), p.path("templates")).unwrap();
    p.mkt(&["build"]).success().nothing_ran();

    // through a symlink inside the project: `docs -> docs-real`, then
    // `docs-real` moved out and linked back
    let p = foreach_over_symlinked_docs();
    no_op_without_analysis(&p);
    let outside = tempfile::tempdir_in(p.root().parent().unwrap()).unwrap();
    std::fs::rename(p.path("docs-real"), outside.path().join("docs")).unwrap();
    p.symlink("docs-real", outside.path().join("docs"));
    p.mkt(&["build"]).code(2).nothing_ran().stderr_eq(
        "error: prompts.toml:9:11: `docs/a.md` leads outside the project through a symlink\n  \
         help: every file a target uses must be a regular file inside the project\n",
    );
}

/// The ways a path can come to lead out of the project while every file
/// keeps its stat, each refused by the build and `status` as analysis
/// refuses it: a directory a symlinked input leads through, and a plain
/// input directory, each moved out and linked back.
#[test]
fn a_path_led_out_through_a_moved_directory_is_refused_however_it_is_reached() {
    // `topic.txt -> vendor/topic.txt`, then `vendor` moved out
    let p = project().fixture("command").build();
    std::fs::create_dir(p.path("vendor")).unwrap();
    std::fs::rename(p.path("topic.txt"), p.path("vendor/topic.txt")).unwrap();
    p.symlink("topic.txt", "vendor/topic.txt");
    p.mkt(&["build"]).success();
    stamped(&p);
    let outside = tempfile::tempdir_in(p.root().parent().unwrap()).unwrap();
    std::fs::rename(p.path("vendor"), outside.path().join("vendor")).unwrap();
    p.symlink("vendor", outside.path().join("vendor"));
    let refused = "error: prompts.toml:13:20: `topic.txt` leads outside the project through a \
                   symlink\n  help: every file a target uses must be a regular file inside the \
                   project\n";
    p.mkt(&["status"]).code(2).stderr_eq(refused);
    p.mkt(&["build"]).code(2).nothing_ran().stderr_eq(refused);

    // `data/topic.txt`, then `data` moved out
    let p = project().fixture("command").build();
    p.replace("prompts.toml", "\"topic.txt\"", "\"data/topic.txt\"");
    std::fs::create_dir(p.path("data")).unwrap();
    std::fs::rename(p.path("topic.txt"), p.path("data/topic.txt")).unwrap();
    p.mkt(&["build"]).success();
    stamped(&p);
    let outside = tempfile::tempdir_in(p.root().parent().unwrap()).unwrap();
    std::fs::rename(p.path("data"), outside.path().join("data")).unwrap();
    p.symlink("data", outside.path().join("data"));
    let refused = refused.replace("`topic.txt`", "`data/topic.txt`");
    p.mkt(&["build"]).code(2).nothing_ran().stderr_eq(&refused);
}

/// An output replaced by a symlink to a copy inside the project: the stamp
/// the next builds write checks where that link leads, so once the copy's
/// directory is moved out and linked back, `status` says what it says with
/// no stamp at all.
#[test]
fn an_output_turned_symlink_is_checked_where_it_leads() {
    let p = project().fixture("command").build();
    p.mkt(&["build"]).success();
    stamped(&p);
    std::fs::create_dir(p.path("keep")).unwrap();
    p.write("keep/side.md", p.read("out/side.md"));
    p.remove("out/side.md");
    p.symlink("out/side.md", "../keep/side.md");
    stamped(&p);
    let outside = tempfile::tempdir_in(p.root().parent().unwrap()).unwrap();
    std::fs::rename(p.path("keep"), outside.path().join("keep")).unwrap();
    p.symlink("keep", outside.path().join("keep"));
    let with_stamp = p.mkt(&["status"]);
    assert!(p.exists(".mkt/noop"));
    p.remove(".mkt/noop");
    let without = p.mkt(&["status"]);
    assert_eq!(
        (with_stamp.code, &with_stamp.stdout, &with_stamp.stderr),
        (without.code, &without.stdout, &without.stderr)
    );
    without.code(1);
    assert!(without.stdout.contains("side"), "{}", without.stdout);
}

/// What the stamp keeps is relative to the project: a project moved
/// elsewhere (or reached through another mount) keeps the no-op path, with
/// a symlinked input and a symlinked `prompts.toml` too; and a glob under
/// a symlink that leads nowhere yet does not stop a stamp from being kept.
#[test]
fn a_moved_project_keeps_its_stamp_and_odd_symlinks_do_not_lose_it() {
    let p = project().fixture("command").build();
    std::fs::rename(p.path("aside.txt"), p.path("aside-real.txt")).unwrap();
    p.symlink("aside.txt", "aside-real.txt");
    std::fs::rename(p.path("prompts.toml"), p.path("project.toml")).unwrap();
    p.symlink("prompts.toml", "project.toml");
    p.mkt(&["build"]).success();
    stamped(&p);
    no_op_without_analysis(&p);
    let moved = p.root().with_extension("moved");
    std::fs::rename(p.root(), &moved).unwrap();
    let out = std::process::Command::new(support::mkt_bin())
        .args(["build", "--timings"])
        .current_dir(&moved)
        .output()
        .unwrap();
    std::fs::rename(&moved, p.root()).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("0 ran, 0 cached, 4 up to date") && !stderr.contains("analyse"),
        "{stderr}"
    );

    // `foreach = "gen/docs/*.md"` with `gen` a symlink to nothing yet
    let p = project().fixture("foreach").build();
    p.replace("prompts.toml", "\"docs/*.md\"", "\"gen/docs/*.md\"");
    p.symlink("gen", "not-yet-there");
    p.mkt(&["build"]).success();
    stamped(&p);
    no_op_without_analysis(&p);
    // and once it leads somewhere, the files there are seen
    std::fs::create_dir(p.path("not-yet-there")).unwrap();
    std::fs::rename(p.path("docs"), p.path("not-yet-there/docs")).unwrap();
    p.mkt(&["build"]).success().ran_keys(&[
        "summary[gen/docs/a.md]",
        "summary[gen/docs/b.md]",
        "index",
    ]);
}

/// A `foreach` file that no template reads is never opened: it may be a
/// symlink out of the project, as before analysis checked items.
#[test]
fn a_foreach_file_no_template_reads_may_be_anything() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("x.md"), "outside\n").unwrap();
    let p = inline(
        "[targets.a]\ntemplate = \"t/a.md\"\nforeach = \"docs/*.md\"\noutput = \"out/{stem}.md\"\n",
    )
    .file("docs/real.md", "real\n")
    .symlink("docs/x.md", outside.path().join("x.md"))
    .build();
    // (both compile to the same prompt: one may be served by the other's
    // action-cache entry, whichever finishes first)
    let run = p.mkt(&["build"]);
    run.success();
    let mut done = run.lines_after("ran ");
    done.extend(run.lines_after("cached "));
    done.sort();
    assert_eq!(
        done,
        [
            "a[docs/real.md] (never built)",
            "a[docs/x.md] (never built)"
        ]
    );
    assert_eq!(p.read("out/real.md"), p.read("out/x.md"));
}

#[test]
fn invalid_batch_discount_and_response_format() {
    let model = |setting: &str| {
        inline(&format!(
            "[targets.a]\ntemplate = \"t/a.md\"\noutput = \"out/a.md\"\nmodel = \"x\"\n\n\
             [models.x]\nprovider = \"openai\"\nmodel = \"gpt-4o-mini\"\n{setting}\n"
        ))
        .build()
    };
    assert_invalid(
        &model("batch_discount = 2.0"),
        "prompts.toml:6:1: model `x`: `batch_discount` is 2, not a fraction of the ordinary price\n  \
         help: give the batch price relative to the ordinary one, e.g. `batch_discount = 0.5` for half",
    );
    assert_invalid(
        &model("format = \"json\"\nresponse_format = \"xml\""),
        "prompts.toml:6:1: model `x`: `response_format` must be \"json_schema\" or \"json_object\", not \"xml\"\n  \
         help: `json_object` for servers that take the schema in JSON mode (llama-cpp-python)",
    );
    assert_invalid(
        &model("response_format = \"json_object\""),
        "prompts.toml:6:1: model `x`: `response_format` needs `format = \"json\"`\n  \
         help: add `format = \"json\"`, or remove `response_format`",
    );
}
