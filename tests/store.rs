//! Integration tests of the store's life cycle: `mkt init`, `mkt gc`,
//! `mkt clean`, and the store's behaviour under faults (truncated files,
//! a held lock, a full disk).

mod support;

use support::{Project, files_under, hold_lock_with_slow_build, project};

/// A built `command` fixture: outline -> summary -> final, plus `side`.
fn built_command_project() -> Project {
    let p = project().fixture("command").build();
    p.mkt(&["build"])
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
    p
}

/// `topic.txt` edited and rebuilt `n` times: each cycle re-runs outline,
/// summary and final (their prompts contain the topic), never `side`.
fn edit_cycles(p: &Project, n: usize) {
    for i in 0..n {
        p.append("topic.txt", format!("edit {i}\n"));
        p.mkt(&["build"])
            .success()
            .summary("3 ran, 0 cached, 1 up to date");
    }
}

fn count(p: &Project, rel: &str) -> usize {
    files_under(p, rel).len()
}

/// Distinct action-cache entries in the store's packs.
fn entries(p: &Project) -> usize {
    let keys: std::collections::HashSet<String> =
        p.store_entries().into_iter().map(|r| r.key).collect();
    keys.len()
}

/// Distinct objects in the store's packs.
fn objects(p: &Project) -> usize {
    let keys: std::collections::HashSet<String> =
        p.store_objects().into_iter().map(|r| r.key).collect();
    keys.len()
}

// ---------------------------------------------------------------------------
// mkt init

#[test]
fn init_makes_a_project_that_builds_at_once_offline() {
    let p = project().build();
    p.mkt(&["init"]).success().stderr_eq(
        "created prompts.toml\n\
         created templates/summarize.md\n\
         created docs/welcome.md\n\
         created .gitignore (ignores .mkt/)\n\
         next: `mkt build` (offline, with the mock model)\n",
    );
    assert_eq!(
        p.read(".gitignore"),
        "# mkt's store (build cache and run history)\n.mkt/\n"
    );
    p.mkt(&["build"])
        .success()
        .ran(&["summary[docs/welcome.md] (never built)"])
        .summary("1 ran, 0 cached, 0 up to date");
    assert!(
        p.read("out/welcome.md")
            .contains("This is the first document")
    );
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 1 up to date\n");
}

#[test]
fn init_in_a_new_directory_keeps_existing_files_and_gitignore_lines() {
    let p = project()
        .file("new/docs/welcome.md", "My own notes.\n")
        .file("new/.gitignore", "target/")
        .build();
    p.mkt(&["init", "new"]).success().stderr_eq(
        "created prompts.toml\n\
         created templates/summarize.md\n\
         left alone docs/welcome.md: it exists already\n\
         added .mkt/ to .gitignore\n\
         next: `cd new && mkt build` (offline, with the mock model)\n",
    );
    assert_eq!(p.read("new/docs/welcome.md"), "My own notes.\n");
    assert_eq!(
        p.read("new/.gitignore"),
        "target/\n# mkt's store (build cache and run history)\n.mkt/\n"
    );
    p.mkt_in("new", &["build"])
        .success()
        .summary("1 ran, 0 cached, 0 up to date");
    assert!(p.read("new/out/welcome.md").contains("My own notes."));
}

#[test]
fn init_refuses_an_existing_project() {
    let p = project().file("prompts.toml", "# mine\n").build();
    p.mkt(&["init"]).code(2).stderr_eq(&format!(
        "error: `{}/prompts.toml` already exists: this is a project already\n  \
         help: `mkt build` builds it; `mkt init DIR` starts a new project in another directory\n",
        p.root().display()
    ));
    assert_eq!(p.read("prompts.toml"), "# mine\n");
    assert!(!p.exists("templates") && !p.exists(".gitignore"));
}

// ---------------------------------------------------------------------------
// mkt gc

#[test]
fn empty_temp_files_left_by_a_sigkill_are_removed() {
    let p = built_command_project();
    // what a SIGKILL between creating a temp file and renaming it leaves
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let left = |rel: &str| {
        p.write(rel, "");
        let f = std::fs::File::options()
            .write(true)
            .open(p.path(rel))
            .unwrap();
        f.set_modified(an_hour_ago).unwrap();
    };
    left("out/.mkt-tmp-Ab3xY9");
    // not mkt's names: left alone
    p.write("out/.mkt-tmp-notes.txt", "mine\n");
    p.write("out/.mkt-tmp-ab", "");
    // a build that writes into `out/` removes the stale one
    p.append("topic.txt", "edit\n");
    p.mkt(&["build"])
        .success()
        .summary("3 ran, 0 cached, 1 up to date");
    assert!(!p.exists("out/.mkt-tmp-Ab3xY9"));
    assert!(p.exists("out/.mkt-tmp-notes.txt") && p.exists("out/.mkt-tmp-ab"));
    // and so does `mkt clean`, saying so
    left("out/.mkt-tmp-Zz0000");
    let temp_lines = |args: &[&str]| -> Vec<String> {
        let run = p.mkt(args);
        run.success();
        let lines = run.stdout.lines().filter(|l| l.contains(".mkt-tmp-"));
        lines.map(str::to_string).collect()
    };
    assert_eq!(
        temp_lines(&["clean", "-n"]),
        ["would remove out/.mkt-tmp-Zz0000 (left by an interrupted write)"]
    );
    assert!(p.exists("out/.mkt-tmp-Zz0000"));
    assert_eq!(
        temp_lines(&["clean"]),
        ["removed out/.mkt-tmp-Zz0000 (left by an interrupted write)"]
    );
    assert!(!p.exists("out/.mkt-tmp-Zz0000"));
    assert!(p.exists("out/.mkt-tmp-notes.txt") && p.exists("out/.mkt-tmp-ab"));
}

#[test]
fn gc_keeps_the_last_runs_and_what_the_current_outputs_need() {
    let p = built_command_project();
    edit_cycles(&p, 3);
    assert_eq!(entries(&p), 4 + 3 * 3);
    let calls = p.calls().len();

    // a dry run lists what would go and changes nothing
    let before = files_under(&p, ".mkt");
    let run = p.mkt(&["gc", "--dry-run", "--keep-runs", "2"]);
    run.success()
        .stderr_contains("would remove 18 files, ")
        .stderr_contains(" KiB: 12 objects, 6 run manifests (ac/)\n")
        .stderr_contains(
            "kept the 4 runs of the current outputs and 3 recent runs (last 2 per target); history 13 -> 7 lines\n",
        );
    assert_eq!(run.stdout.lines().count(), 18, "{}", run.stdout);
    assert!(
        run.stdout
            .lines()
            .all(|l| l.starts_with("would remove .mkt/"))
    );
    assert_eq!(files_under(&p, ".mkt"), before);

    // the last 2 runs of outline, summary and final, the one of side
    p.mkt(&["gc", "--keep-runs", "2"])
        .success()
        .stderr_contains("removed 18 files, ");
    assert_eq!(entries(&p), 7);
    assert_eq!(p.read(".mkt/history.jsonl").lines().count(), 7);
    p.mkt(&["runs", "outline"]).success();

    // only what the current outputs need
    p.mkt(&["gc", "--keep-runs", "0"]).success();
    assert_eq!(entries(&p), 4);
    // each run: its compiled prompt and its output
    assert_eq!(objects(&p), 8);

    // nothing changed: still a no-op, with or without the stamp
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 4 up to date\n");
    p.remove(".mkt/noop");
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 4 up to date\n");
    // every current output can be restored from the store
    p.remove("out/final.md");
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 1 cached, 3 up to date");
    p.remove("out");
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 4 cached, 0 up to date");
    // and `mkt show` still finds each current run
    p.mkt(&["show", "final", "--manifest"]).success();
    assert_eq!(p.calls().len(), calls, "no model call after gc");
}

#[test]
fn gc_max_size_evicts_recent_runs_but_never_the_current_ones() {
    let p = built_command_project();
    edit_cycles(&p, 2);
    let calls = p.calls().len();
    p.mkt(&["gc", "--max-size", "1"])
        .success()
        .stderr_contains("evicted 6 recent runs to fit --max-size\n")
        .stderr_contains("warning: the store is still larger than --max-size");
    assert_eq!(entries(&p), 4);
    p.remove("out");
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 4 cached, 0 up to date");
    // a limit the store fits evicts nothing
    edit_cycles(&p, 1);
    let calls_now = p.calls().len();
    p.mkt(&["gc", "--max-size", "1G"])
        .success()
        .stderr_lacks("evicted");
    assert_eq!(entries(&p), 7);
    p.mkt(&["gc", "--max-size", "12Q"])
        .code(2)
        .stderr_contains("`12Q` is not a size such as `500M`");
    assert_eq!(calls_now, calls + 3);
}

#[test]
fn gc_drops_failed_runs_that_nothing_needs() {
    let p = project()
        .file("t.md", "Hello\n")
        .file(
            "prompts.toml",
            "[models.bad]\nprovider = \"command\"\ncommand = [\"sh\", \"-c\", \"echo no >&2; exit 3\"]\n\n\
             [targets.a]\ntemplate = \"t.md\"\noutput = \"out/a.md\"\nmodel = \"bad\"\n",
        )
        .build();
    p.mkt(&["build"]).code(1);
    p.mkt(&["build"]).code(1);
    assert_eq!(count(&p, ".mkt/runs"), 2);
    p.mkt(&["gc", "--keep-runs", "1"]).success();
    assert_eq!(count(&p, ".mkt/runs"), 1, "the last run is kept");
    let failed = p.mkt(&["runs", "--failed", "--json"]);
    failed.success();
    assert_eq!(failed.stdout.matches("\"status\": \"failed\"").count(), 1);
    // a failed record pins nothing
    p.mkt(&["gc", "--keep-runs", "0"]).success();
    assert_eq!(count(&p, ".mkt/runs"), 0);
    assert_eq!(objects(&p), 0);
}

#[test]
fn gc_stats_counts_files_and_bytes_by_kind() {
    let p = built_command_project();
    let run = p.mkt(&["gc", "--stats"]);
    run.success();
    let line = |kind: &str| {
        run.stdout
            .lines()
            .find(|l| l.starts_with(kind))
            .unwrap_or_else(|| panic!("no `{kind}` line in\n{}", run.stdout))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(line("objects")[1], "8");
    assert_eq!(line("run manifests (ac/)")[3], "4");
    assert_eq!(line("failed runs (runs/)")[3], "0");
    assert_eq!(line("history")[1], "1");
    assert!(run.stdout.starts_with("KIND "));
    assert!(run.stdout.lines().last().unwrap().starts_with("total "));
}

#[test]
fn a_damaged_or_empty_store_version_says_so() {
    let p = built_command_project();
    p.remove(".mkt/noop");
    let dir = p.path(".mkt");
    for (bytes, damage) in [
        (&b""[..], "is empty"),
        (b"\n", "is empty"),
        (b"\xff\xfe\x00garbage", "holds no version number"),
        (b"2\x1b[31m", "holds no version number"),
    ] {
        p.write(".mkt/VERSION", bytes);
        p.mkt(&["build"]).code(2).stderr_eq(&format!(
            "error: the store `{}` is damaged: its `VERSION` file {damage} (this mkt reads version 2)\n  \
             help: run `mkt gc --all` to delete the store and start over (the next build runs everything again)\n",
            dir.display()
        ));
    }
}

#[test]
fn an_unknown_store_version_is_refused_with_a_way_out() {
    let p = built_command_project();
    p.write(".mkt/VERSION", "99\n");
    p.remove(".mkt/noop");
    p.mkt(&["build"])
        .code(2)
        .stderr_contains("has format version 99, this mkt reads version 2\n  help: upgrade mkt to the version that wrote it, or run `mkt gc --all`");
    p.mkt(&["gc"]).code(2).stderr_contains("mkt gc --all");
    p.mkt(&["gc", "--stats"]).code(2);
    p.mkt(&["gc", "--all", "--dry-run"])
        .success()
        .stderr_contains("would remove ");
    assert_eq!(p.read(".mkt/VERSION"), "99\n");
    p.mkt(&["gc", "--all"]).success();
    assert_eq!(p.read(".mkt/VERSION"), "2\n");
    assert!(p.exists(".mkt/CACHEDIR.TAG"));
    assert_eq!(objects(&p) + entries(&p), 0);
    // the next build starts fresh
    p.mkt(&["build"])
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
}

#[test]
fn gc_waits_for_the_lock_or_fails_with_no_wait() {
    let p = project().file("t.md", "Hello\n").build();
    let mut first = hold_lock_with_slow_build(&p, 2500);
    p.mkt(&["gc", "--no-wait"])
        .code(1)
        .stderr_contains("error: another `mkt` holds the lock on `");
    p.mkt(&["clean", "--no-wait"])
        .code(1)
        .stderr_contains("error: another `mkt` holds the lock on `");
    let run = p.mkt(&["gc", "--keep-runs", "0"]);
    run.success()
        .stderr_contains("mkt: waiting for another mkt build of this project to finish...\n");
    assert!(first.wait().unwrap().success());
    // gc ran after the build had saved its run: the current one is kept
    assert_eq!(entries(&p), 1);
    p.remove("out");
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 1 cached, 0 up to date");
}

// ---------------------------------------------------------------------------
// mkt clean

#[test]
fn clean_removes_outputs_mkt_wrote_and_leaves_edited_ones() {
    let p = built_command_project();
    p.append("out/side.md", "my own line\n");
    p.write("out/mine.md", "not mkt's\n");
    let before = p.listing();
    p.mkt(&["clean", "--dry-run"])
        .success()
        .stdout_eq(
            "would remove out/final.md\nwould remove out/outline.md\nwould remove out/summary.md\n",
        )
        .stderr_eq(
            "left alone out/side.md: edited since mkt wrote it\n\
             would remove 3 outputs, left 1 alone\n",
        );
    assert_eq!(p.listing(), before);
    p.mkt(&["clean"])
        .success()
        .stderr_contains("removed 3 outputs, left 1 alone\n");
    assert!(!p.exists("out/final.md") && !p.exists("out/outline.md"));
    assert_eq!(p.read("out/mine.md"), "not mkt's\n");
    assert!(p.read("out/side.md").ends_with("my own line\n"));
    let calls = p.calls().len();
    // the store still has them: the next build restores without a model
    // call (and, as always, puts the edited output back as built)
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 4 cached, 0 up to date");
    assert_eq!(p.calls().len(), calls);
}

#[test]
fn clean_stale_removes_outputs_of_removed_targets_only() {
    let p = project().fixture("foreach").build();
    p.mkt(&["build"]).success();
    p.remove("docs/a.md");
    p.mkt(&["build"])
        .success()
        .stderr_contains("1 output of a removed target remains; `mkt clean --stale` removes it\n")
        .summary("1 ran, 0 cached, 1 up to date");
    p.mkt(&["clean", "--stale", "--dry-run"])
        .success()
        .stdout_eq("would remove out/summaries/a.md\n")
        .stderr_eq("would remove 1 output of a removed target; would forget 1 removed target\n");
    assert!(p.exists("out/summaries/a.md"));
    p.mkt(&["clean", "--stale"])
        .success()
        .stderr_eq("removed 1 output of a removed target; forgot 1 removed target\n");
    assert!(!p.exists("out/summaries/a.md"));
    assert!(p.exists("out/summaries/b.md") && p.exists("out/index.md"));
    p.remove(".mkt/noop");
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 2 up to date\n");
    // once forgotten, gc can drop its runs
    p.mkt(&["gc", "--keep-runs", "0"]).success();
    assert_eq!(entries(&p), 2);
}

#[test]
fn clean_stale_leaves_an_edited_leftover_and_a_path_a_new_target_writes() {
    let p = project().fixture("foreach").build();
    p.mkt(&["build"]).success();
    p.append("out/summaries/a.md", "mine\n");
    p.remove("docs/a.md");
    // `summary[docs/b.md]` is gone too, but a new target writes its path
    p.remove("docs/b.md");
    p.append(
        "prompts.toml",
        "\n[targets.b]\ntemplate = \"templates/index.md\"\noutput = \"out/summaries/b.md\"\n",
    );
    p.mkt(&["build"])
        .success()
        .stderr_contains("1 output of a removed target remains");
    p.mkt(&["clean", "--stale"]).success().stderr_eq(
        "left alone out/summaries/a.md: edited since mkt wrote it\n\
         removed 0 outputs of removed targets, left 1 alone; forgot 2 removed targets\n",
    );
    assert!(p.exists("out/summaries/a.md") && p.exists("out/summaries/b.md"));
}

// ---------------------------------------------------------------------------
// Faults

#[test]
fn a_truncated_action_cache_entry_and_object_are_rebuilt_with_a_warning() {
    let p = built_command_project();
    let outline = p.read("out/outline.md");
    let final_md = p.read("out/final.md");
    let calls = p.calls().len();
    // cut outline's output object and final's manifest in half
    let object = p.store_object_for("out/outline.md");
    p.corrupt_record(&object, &vec![0; object.payload.len() / 2]);
    let entry = p
        .store_entries()
        .into_iter()
        .find(|r| String::from_utf8_lossy(&r.payload).contains("\"target\":\"final\""))
        .unwrap();
    p.corrupt_record(&entry, &vec![b' '; entry.payload.len() / 2]);
    // without the state every target is compiled and looked up
    p.remove(".mkt/state");
    let _ = std::fs::remove_file(p.path(".mkt/state.log"));
    p.remove(".mkt/noop");
    p.remove("out");
    let run = p.mkt(&["build"]);
    run.success()
        .stderr_contains(
            "(output of `outline`) was corrupt and has been set aside; running the model again",
        )
        .stderr_contains(
            "(for `final`) was corrupt and has been set aside; running the model again",
        )
        .cached_keys(&["summary", "side"])
        .summary("2 ran, 2 cached, 0 up to date");
    assert_eq!(p.calls().len(), calls + 2);
    assert_eq!(p.read("out/outline.md"), outline);
    assert_eq!(p.read("out/final.md"), final_md);
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 4 up to date\n");
}

/// A tmpfs mounted on a directory for the test's life; unmounted on drop,
/// also when the test panics.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None` (with a printed reason) where the test cannot mount one.
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        let uid = std::process::Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!("skipped: `mount -t tmpfs` failed here (no CAP_SYS_ADMIN?)");
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A project on a 1 MB tmpfs whose target `a` renders `big.txt`; `None`
/// where no tmpfs can be mounted.
fn project_on_a_small_disk() -> Option<(Project, Tmpfs)> {
    let p = project().build();
    let tmpfs = Tmpfs::mount(p.root(), "1m")?;
    p.write(
        "prompts.toml",
        "[targets.a]\ntemplate = \"t.md\"\ninputs = { big = \"big.txt\" }\noutput = \"out/a.md\"\n",
    );
    p.write("t.md", "{{ inputs.big }}\n");
    Some((p, tmpfs))
}

#[test]
fn a_full_disk_fails_the_build_clearly_and_the_store_stays_consistent() {
    let Some((p, _tmpfs)) = project_on_a_small_disk() else {
        return;
    };
    // the prompt object, the output object and the output: three copies
    // of 400 KB do not fit in 1 MB
    p.write("big.txt", "x".repeat(400 * 1024));
    let run = p.mkt(&["build"]);
    run.code(1)
        .stderr_contains("No space left on device")
        .stderr_contains(&format!("cannot write `{}/", p.root().display()));
    // no temp file is left behind, and what the store holds is whole
    let check_store = || {
        for (f, _) in files_under(&p, ".mkt") {
            assert!(!f.contains(".mkt-tmp-"), "temp file left: {f}");
        }
        for r in p.store_objects() {
            let d = markitect::hash::Digest::of(&r.payload);
            assert_eq!(d.to_hex(), r.key, "object {r:?} is not what its name says");
        }
    };
    check_store();
    // space freed: the next build succeeds, and then has nothing to do
    p.write("big.txt", "x".repeat(100 * 1024));
    p.mkt(&["build"])
        .success()
        .summary("1 ran, 0 cached, 0 up to date");
    check_store();
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 1 up to date\n");
    p.mkt(&["gc", "--keep-runs", "0"]).success();
    p.remove("out");
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 1 cached, 0 up to date");
}

#[test]
fn a_disk_full_build_prints_its_summary_and_leaves_no_empty_pack() {
    let Some((p, _tmpfs)) = project_on_a_small_disk() else {
        return;
    };
    p.write("big.txt", "one\n");
    p.mkt(&["build"]).success();
    p.write("big.txt", "two\n");
    let packs = || files_under(&p, ".mkt/packs");
    let before = packs();
    // fill the disk to the last byte
    {
        use std::io::Write;
        let mut f = std::fs::File::create(p.path("fill")).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..1]).is_ok() {}
    }
    let run = p.mkt(&["build"]);
    run.code(1)
        .stderr_contains("No space left on device")
        .summary("0 ran, 0 cached, 0 up to date, 1 failed");
    assert_eq!(packs(), before, "no new pack, empty or not");
    // space freed: the next build runs the edit
    p.remove("fill");
    p.mkt(&["build"])
        .success()
        .summary("1 ran, 0 cached, 0 up to date");
    assert!(p.read("out/a.md").ends_with("\ntwo\n\n"));
}

/// A build killed outright (SIGKILL: no handler runs, nothing is flushed
/// or sealed) loses nothing it stored: the next build reads the dead
/// build's pack by scanning it, serves what finished from it as a cache
/// hit, and seals it.
#[test]
fn a_killed_build_keeps_what_it_stored_and_the_next_build_seals_its_pack() {
    let p = project()
        .file(
            "prompts.toml",
            "[models.slow]\nprovider = \"command\"\ncommand = [\"sh\", \"-c\", \"cat >/dev/null; echo $$ > pid.txt; exec sleep 30\"]\n\n\
             [targets.quick]\ntemplate = \"q.md\"\noutput = \"out/q.md\"\n\n\
             [targets.slow]\ntemplate = \"s.md\"\noutput = \"out/s.md\"\nmodel = \"slow\"\n",
        )
        .file("q.md", "quick\n")
        .file("s.md", "slow\n")
        .build();
    let mut child = p.spawn_mkt(&["build", "-j", "2"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(p.exists("pid.txt") && p.exists("out/q.md")) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(p.exists("out/q.md"), "quick finished before the kill");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let pid: i32 = p.read("pid.txt").trim().parse().unwrap();
    // SAFETY: killing the model command the killed build left running.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let packs = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(p.path(".mkt/packs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let sealed = |f: &std::path::Path| {
        markitect::pack::is_sealed(&std::fs::File::open(f).unwrap())
            .unwrap()
            .0
    };
    assert_eq!(packs().len(), 1);
    assert!(!sealed(&packs()[0]), "a killed build seals nothing");
    p.remove("out/q.md");
    p.replace("prompts.toml", "exec sleep 30", "cat s.md");
    p.mkt(&["build"])
        .success()
        .cached_keys(&["quick"])
        .ran_keys(&["slow"])
        .summary("1 ran, 1 cached, 0 up to date");
    assert!(!p.read("out/q.md").is_empty());
    assert!(packs().iter().all(|f| sealed(f)), "{:?}", packs());
    p.mkt(&["build"])
        .success()
        .stderr_eq("0 ran, 0 cached, 2 up to date\n");
}

/// A store from before packs (version 1: a loose file per object and per
/// action-cache entry) keeps working: its files are served, the first
/// new record makes it version 2, and gc collects loose files and packed
/// records alike.
#[test]
fn a_version_1_store_of_loose_files_is_served_and_collected() {
    let p = built_command_project();
    edit_cycles(&p, 1);
    // every record as a loose file, as a version 1 store held it
    for r in p.store_records() {
        let rel = if r.entry {
            format!(".mkt/ac/{}/{}.json", &r.key[..2], r.key)
        } else {
            format!(".mkt/objects/{}/{}", &r.key[..2], r.key)
        };
        std::fs::create_dir_all(p.path(&rel).parent().unwrap()).unwrap();
        std::fs::write(p.path(&rel), &r.payload).unwrap();
    }
    std::fs::remove_dir_all(p.path(".mkt/packs")).unwrap();
    p.write(".mkt/VERSION", "1\n");
    p.remove("out");
    p.remove(".mkt/noop");
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 4 cached, 0 up to date");
    assert_eq!(p.read(".mkt/VERSION"), "1\n", "nothing new was stored");
    edit_cycles(&p, 1);
    assert_eq!(p.read(".mkt/VERSION"), "2\n");
    assert_eq!(entries(&p), 3, "the new runs, packed");
    assert_eq!(count(&p, ".mkt/ac"), 7, "the old ones, loose");
    // only what the current outputs need stays, loose or packed
    p.mkt(&["gc", "--keep-runs", "0"]).success();
    assert_eq!(count(&p, ".mkt/ac") + entries(&p), 4);
    p.remove("out");
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 4 cached, 0 up to date");
}

// ---------------------------------------------------------------------------
// A store mkt did not make: never written through, never emptied

/// A project beside `victim/`, a directory of someone's files.
fn project_beside_a_victim() -> (Project, std::path::PathBuf) {
    let p = project()
        .file(
            "project/prompts.toml",
            "[targets.t]\ntemplate = \"t.md\"\noutput = \"out/t.md\"\n",
        )
        .file("project/t.md", "hi\n")
        .file("victim/important.txt", "keep\n")
        .file("victim/sub/f.txt", "keep too\n")
        .build();
    let victim = p.path("victim");
    (p, victim)
}

fn victim_listing(victim: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![victim.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            let rel = path.strip_prefix(victim).unwrap().display().to_string();
            out.push((rel, std::fs::metadata(&path).unwrap().len()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_dot_mkt_that_is_a_symlink_is_refused_and_nothing_is_written_or_deleted_where_it_leads() {
    let (p, victim) = project_beside_a_victim();
    let before = victim_listing(&victim);
    p.symlink("project/.mkt", "../victim");
    let dot_mkt = p.path("project/.mkt").display().to_string();
    let refusal = format!(
        "error: `{dot_mkt}` is a symlink to `../victim`, not a directory: mkt keeps its store in a directory of the project's own and never writes through a link\n  \
         help: remove it (`rm {dot_mkt}`) and the next build makes a new store there; to keep the store elsewhere, move or link the whole project instead\n"
    );
    for args in [
        &["build"][..],
        &["gc", "--all"],
        &["gc"],
        &["gc", "--stats"],
        &["clean"],
        &["status"],
        &["explain", "t"],
        &["show", "t"],
        &["runs"],
    ] {
        p.mkt_in("project", args).code(2).stderr_eq(&refusal);
    }
    assert_eq!(
        victim_listing(&victim),
        before,
        "nothing changed in `victim/`"
    );
    assert!(!p.exists("project/out"), "nothing was built");
    // as the help says
    p.remove("project/.mkt");
    p.mkt_in("project", &["build"])
        .success()
        .summary("1 ran, 0 cached, 0 up to date");
}

#[test]
fn a_store_directory_that_is_a_symlink_is_refused() {
    let (p, victim) = project_beside_a_victim();
    p.mkt_in("project", &["build"]).success();
    let before = victim_listing(&victim);
    p.remove("project/.mkt/runs");
    p.symlink("project/.mkt/runs", "../../victim");
    let runs = p.path("project/.mkt/runs").display().to_string();
    for args in [&["build", "--force"][..], &["gc", "--all"]] {
        p.mkt_in("project", args).code(2).stderr_contains(&format!(
            "error: `{runs}` is a symlink to `../../victim`, not a directory"
        ));
    }
    assert_eq!(victim_listing(&victim), before);
}

#[test]
fn a_store_file_that_is_a_symlink_is_not_written_through() {
    for file in ["history.jsonl", "state.log", "lock"] {
        let (p, _) = project_beside_a_victim();
        p.mkt_in("project", &["build"]).success();
        p.write("project/t.md", "once more\n"); // (a journal from now on)
        p.mkt_in("project", &["build"]).success();
        assert!(p.exists(&format!("project/.mkt/{file}")));
        p.write("project/t.md", "edited\n"); // so the next build appends
        p.remove(&format!("project/.mkt/{file}"));
        p.symlink(
            &format!("project/.mkt/{file}"),
            "../../victim/important.txt",
        );
        let path = p
            .path(&format!("project/.mkt/{file}"))
            .display()
            .to_string();
        p.mkt_in("project", &["build"]).code(2).stderr_contains(&format!(
            "error: `{path}` is a symlink: mkt writes the files of its store in place, never through a link\n  \
             help: remove it (`rm {path}`); the store then costs a full build at most\n"
        ));
        assert_eq!(p.read("victim/important.txt"), "keep\n", "{file}");
        // as the help says; nothing is lost
        p.remove(&format!("project/.mkt/{file}"));
        p.mkt_in("project", &["build"]).success();
        assert!(p.read("project/out/t.md").contains("edited"), "{file}");
        p.mkt_in("project", &["status"]).success();
    }
}

#[test]
fn gc_all_deletes_nothing_in_a_dot_mkt_that_mkt_did_not_create() {
    let p = project()
        .file(
            "prompts.toml",
            "[targets.t]\ntemplate = \"t.md\"\noutput = \"out/t.md\"\n",
        )
        .file("t.md", "hi\n")
        .file(".mkt/notes.txt", "mine\n")
        .file(".mkt/state", "not mkt's\n")
        .build();
    let dot_mkt = p.path(".mkt").display().to_string();
    p.mkt(&["gc", "--all"]).code(2).stderr_eq(&format!(
        "error: `{dot_mkt}` is not a store mkt created (it has no `CACHEDIR.TAG` of mkt's), so `mkt gc --all` deletes nothing in it\n  \
         help: look at what it holds; if it is yours to delete, remove it by hand\n"
    ));
    assert_eq!(p.read(".mkt/notes.txt"), "mine\n");
    assert_eq!(p.read(".mkt/state"), "not mkt's\n");
}

#[test]
fn gc_all_removes_only_the_files_mkt_names_and_says_what_it_left() {
    let p = built_command_project();
    p.write(".mkt/notes.txt", "mine\n");
    p.write(".mkt/packs/mine.txt", "mine too\n");
    p.write(".mkt/runs/sub/deep.json", "{}\n");
    let run = p.mkt(&["gc", "--all"]);
    run.success();
    assert_eq!(
        run.lines_after("left "),
        [
            "`.mkt/notes.txt`: not a file mkt writes (remove it by hand if it is yours to delete)",
            "`.mkt/packs/mine.txt`: not a file mkt writes (remove it by hand if it is yours to delete)",
            "`.mkt/runs/sub/deep.json`: not a file mkt writes (remove it by hand if it is yours to delete)",
        ]
    );
    assert_eq!(p.read(".mkt/notes.txt"), "mine\n");
    assert_eq!(p.read(".mkt/packs/mine.txt"), "mine too\n");
    assert_eq!(p.read(".mkt/runs/sub/deep.json"), "{}\n");
    assert_eq!(objects(&p) + entries(&p), 0, "mkt's own files are gone");
    assert!(!p.exists(".mkt/history.jsonl") && !p.exists(".mkt/state"));
    assert_eq!(p.read(".mkt/VERSION"), "2\n");
    p.mkt(&["build"])
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
}
