//! Integration tests of `mkt watch`: each test starts the real binary on a
//! project in a temporary directory, edits files the way editors do and
//! reads what the watcher prints, line by line, as a user would.
//!
//! Every wait is bounded; a test that times out prints every line the
//! watcher printed so far (with the time it arrived) and the project.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};
use support::{Project, project, strip_timing};

/// How long any one expected line may take to arrive.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long "nothing happens" is watched for.
const QUIET: Duration = Duration::from_millis(400);

struct Line {
    at: Instant,
    stream: &'static str,
    text: String,
}

/// A running `mkt watch --debounce-ms 30`, stopped (SIGINT, then SIGKILL)
/// when dropped.
struct Watcher {
    child: Child,
    rx: Receiver<Line>,
    seen: Vec<Line>,
    /// The first build's lines.
    first: Build,
    started: Instant,
    root: PathBuf,
    cmdline: String,
    status: Option<ExitStatus>,
}

/// `N ran, N cached, N up to date...`: the line that ends every build.
fn is_summary(line: &str) -> bool {
    let mut rest = line;
    for word in [" ran, ", " cached, ", " up to date"] {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || !rest[digits..].starts_with(word) {
            return false;
        }
        rest = &rest[digits + word.len()..];
    }
    true
}

impl Watcher {
    /// Starts `mkt watch --debounce-ms 30 ARGS...` in the project and waits
    /// for the first build's summary line (its lines are in `w.first`).
    fn start(p: &Project, args: &[&str]) -> Watcher {
        let mut w = Watcher::spawn(p, args);
        w.first = w.next_build();
        w
    }

    /// Starts the watcher without waiting for anything.
    fn spawn(p: &Project, args: &[&str]) -> Watcher {
        let mut all = vec!["watch", "--debounce-ms", "30"];
        all.extend_from_slice(args);
        let mut child = Command::new(support::mkt_bin())
            .args(&all)
            .current_dir(p.root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_BACKTRACE")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", support::mkt_bin()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (stream, pipe) in [
            ("stdout", Box::new(out) as Box<dyn std::io::Read + Send>),
            ("stderr", Box::new(err)),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for text in BufReader::new(pipe).lines() {
                    let Ok(text) = text else { break };
                    let line = Line {
                        at: Instant::now(),
                        stream,
                        text,
                    };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Watcher {
            child,
            rx,
            seen: Vec::new(),
            first: Build { lines: Vec::new() },
            started: Instant::now(),
            root: p.root().to_path_buf(),
            cmdline: format!("mkt {}", all.join(" ")),
            status: None,
        }
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    #[track_caller]
    fn fail(&self, what: &str) -> ! {
        let mut lines = String::new();
        for l in &self.seen {
            let t = l.at.duration_since(self.started).as_secs_f64();
            lines.push_str(&format!("  {t:7.3} s  {}: {}\n", l.stream, l.text));
        }
        if lines.is_empty() {
            lines.push_str("  (none)\n");
        }
        panic!(
            "\n{what}\n\ncommand: {}    (in {})\nafter {:.3} s; every line seen so far:\n{lines}\nproject (without .mkt/):\n{}",
            self.cmdline,
            self.root.display(),
            self.started.elapsed().as_secs_f64(),
            support::listing(&self.root),
        )
    }

    /// The next line, or `None` after `timeout`; panics if the watcher
    /// exited.
    #[track_caller]
    fn next_line(&mut self, timeout: Duration) -> Option<String> {
        match self.rx.recv_timeout(timeout) {
            Ok(line) => {
                let text = line.text.clone();
                self.seen.push(line);
                Some(text)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                self.fail(&format!("the watcher exited ({status:?})"))
            }
        }
    }

    /// Waits for a line matching `pred` (skipping others) and returns it.
    #[track_caller]
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some(line) if pred(&line) => return line,
                Some(_) => {}
                None => self.fail(&format!("no line {what} within {} s", TIMEOUT.as_secs())),
            }
        }
    }

    /// The next build's summary line.
    #[track_caller]
    fn next_summary(&mut self) -> String {
        self.wait_for("matching `N ran, N cached, N up to date`", is_summary)
    }

    /// The lines of the next build, up to and including its summary line.
    #[track_caller]
    fn next_build(&mut self) -> Build {
        let from = self.seen.len();
        self.next_summary();
        Build {
            lines: self.seen[from..].iter().map(|l| l.text.clone()).collect(),
        }
    }

    /// The next lines are exactly `expected` (the first may be preceded
    /// by others).
    #[track_caller]
    fn expect_lines(&mut self, expected: &[&str]) {
        let first = expected[0];
        self.wait_for(&format!("equal to `{first}`"), |l| l == first);
        for want in &expected[1..] {
            match self.next_line(TIMEOUT) {
                Some(got) if got == *want => {}
                _ => self.fail(&format!(
                    "expected these lines in a row:\n{}",
                    expected.join("\n")
                )),
            }
        }
    }

    /// No line arrives within `dur`.
    #[track_caller]
    fn assert_quiet(&mut self, dur: Duration) {
        if let Some(line) = self.next_line(dur) {
            self.fail(&format!(
                "expected no output for {} ms, got `{line}`",
                dur.as_millis()
            ));
        }
    }

    /// Every line until nothing arrives for `quiet` (bounded).
    #[track_caller]
    fn settle(&mut self, quiet: Duration) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut got = Vec::new();
        while let Some(line) = self.next_line(quiet) {
            got.push(line);
            if Instant::now() > deadline {
                self.fail("the watcher never went quiet");
            }
        }
        got
    }

    /// Waits until the watcher has an inotify watch on each of `dirs`
    /// (relative to the project root; `""` for the root). The summary line
    /// is printed before the directories of a build are watched, so an edit
    /// made the moment it appears could be missed; this waits for the
    /// watches themselves, read from `/proc/PID/fdinfo`.
    #[track_caller]
    fn watching(&mut self, dirs: &[&str]) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let watched = self.watched_inodes();
            let missing: Vec<&str> = dirs
                .iter()
                .copied()
                .filter(|d| !watched.contains(&self.inode(d)))
                .collect();
            if missing.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!("directories never watched: {missing:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the watcher has watches on `dirs`, then for 300 ms
    /// without output: a build it starts on its own after adding watches
    /// (if any) has had time to end. Then an edit gets a build of its own.
    #[track_caller]
    fn ready(&mut self, dirs: &[&str]) {
        self.watching(dirs);
        self.assert_quiet(Duration::from_millis(300));
    }

    /// Whether the watcher has an inotify watch on `dir` now.
    fn is_watching(&self, dir: &str) -> bool {
        self.watched_inodes().contains(&self.inode(dir))
    }

    fn inode(&self, dir: &str) -> u64 {
        let path = if dir.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir)
        };
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .ino()
    }

    /// The inodes of every directory the process has an inotify watch on.
    fn watched_inodes(&self) -> Vec<u64> {
        let mut inodes = Vec::new();
        let Ok(rd) = std::fs::read_dir(format!("/proc/{}/fdinfo", self.pid())) else {
            return inodes;
        };
        for entry in rd.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            for line in text.lines().filter(|l| l.starts_with("inotify wd:")) {
                if let Some(ino) = line
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("ino:"))
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                {
                    inodes.push(ino);
                }
            }
        }
        inodes
    }

    /// Sends SIGINT and waits (bounded) for the exit: the exit status and
    /// how long it took.
    #[track_caller]
    fn interrupt(&mut self) -> (ExitStatus, Duration) {
        let sent = Instant::now();
        unsafe { libc::kill(self.pid(), libc::SIGINT) };
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the watcher") {
                self.status = Some(status);
                // collect what it printed last
                while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(2)) {
                    self.seen.push(line);
                }
                return (status, sent.elapsed());
            }
            if sent.elapsed() > TIMEOUT {
                self.fail("the watcher did not exit after SIGINT");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        unsafe { libc::kill(self.pid(), libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of one build, up to its summary.
struct Build {
    lines: Vec<String>,
}

impl Build {
    /// The rest of every line starting with `prefix`, sorted.
    fn after(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .lines
            .iter()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    /// The `ran` lines, `NODE (REASON)`, sorted.
    fn ran(&self) -> Vec<String> {
        self.after("ran ")
    }

    /// The nodes of the `ran` lines, sorted.
    fn ran_keys(&self) -> Vec<String> {
        self.ran()
            .iter()
            .map(|l| l.split(" (").next().unwrap().to_string())
            .collect()
    }

    /// The `mkt watch: changed ...` lines.
    fn changed(&self) -> Vec<String> {
        self.after("mkt watch: changed ")
    }

    /// The summary line without its timing.
    fn summary(&self) -> &str {
        strip_timing(self.lines.last().unwrap())
    }
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The command fixture (outline -> summary -> final, and side) under
/// `mkt watch`, after its first build, with the directories it edits
/// watched.
fn watched_command_project() -> (Project, Watcher) {
    let p = project().fixture("command").build();
    let mut w = Watcher::start(&p, &[]);
    let first = &w.first;
    assert_eq!(
        first.ran(),
        sorted(&[
            "outline (never built)",
            "summary (never built)",
            "final (never built)",
            "side (never built)",
        ])
    );
    assert_eq!(first.summary(), "4 ran, 0 cached, 0 up to date");
    w.ready(&["", "templates", "out"]);
    (p, w)
}

/// Writes `contents` to a temporary file next to `rel` and renames it over
/// `rel`, as editors that save atomically do.
fn atomic_save(p: &Project, rel: &str, contents: &str) {
    let tmp = format!("{rel}.tmp");
    p.write(&tmp, contents);
    std::fs::rename(p.path(&tmp), p.path(rel)).unwrap();
}

/// Every `.mkt-tmp-*` file in the project, `.mkt/` included.
fn temp_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(path);
            } else if entry.file_name().to_string_lossy().starts_with(".mkt-tmp-") {
                found.push(path);
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------

#[test]
fn in_place_write_rebuilds_the_affected_targets_and_its_writes_do_not_loop() {
    let (p, mut w) = watched_command_project();
    let before = p.read("out/final.md");

    // an in-place write (truncate and write, same inode)
    p.write("notes.txt", "be thorough\n");
    let b = w.next_build();
    assert_eq!(b.changed(), ["`notes.txt`"]);
    assert_eq!(
        b.ran(),
        sorted(&[
            "summary (input `notes.txt` changed)",
            "final (upstream `summary` output changed)",
        ])
    );
    assert_eq!(b.summary(), "2 ran, 0 cached, 2 up to date");
    let after = p.read("out/final.md");
    assert_ne!(after, before);
    assert!(after.contains("Notes: be thorough\n"), "{after}");

    // the outputs it wrote (and the model's log) trigger nothing
    w.assert_quiet(QUIET);
    assert_eq!(p.calls().len(), 6);
}

#[test]
fn atomic_save_is_seen_and_rebuilt() {
    let (p, mut w) = watched_command_project();
    atomic_save(&p, "topic.txt", "provenance\n");
    let b = w.next_build();
    assert_eq!(b.changed(), ["`topic.txt`"]);
    assert_eq!(
        b.ran(),
        sorted(&[
            "outline (input `topic.txt` changed)",
            "summary (upstream `outline` output changed)",
            "final (upstream `summary` output changed)",
        ])
    );
    assert_eq!(b.summary(), "3 ran, 0 cached, 1 up to date");
    assert!(p.read("out/outline.md").contains("Outline: provenance\n"));
    w.assert_quiet(QUIET);

    // and again on the renamed-in file (a new inode each save)
    atomic_save(&p, "topic.txt", "provenance, twice\n");
    let b = w.next_build();
    assert_eq!(b.changed(), ["`topic.txt`"]);
    assert_eq!(b.ran_keys(), sorted(&["outline", "summary", "final"]));
    assert!(
        p.read("out/final.md")
            .contains("Outline: provenance, twice\n")
    );
    w.assert_quiet(QUIET);
}

#[test]
fn touch_and_save_without_edit_run_nothing() {
    let (p, mut w) = watched_command_project();
    let outputs = || {
        [
            "out/outline.md",
            "out/summary.md",
            "out/final.md",
            "out/side.md",
        ]
        .map(|o| p.read(o))
    };
    let before = outputs();

    // every line after such an event: at most `changed` and a no-op summary
    let check = |w: &mut Watcher, what: &str| {
        let lines = w.settle(QUIET);
        for l in &lines {
            let ok = l.starts_with("mkt watch: changed ")
                || (is_summary(l) && strip_timing(l) == "0 ran, 0 cached, 4 up to date");
            if !ok {
                w.fail(&format!("{what}: unexpected line `{l}`"));
            }
        }
    };

    // `touch`: mtime forward, same bytes
    let f = std::fs::File::options()
        .write(true)
        .open(p.path("notes.txt"))
        .unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    check(&mut w, "touch");

    // save without an edit: the same bytes written over themselves. (Not
    // `p.write`: it truncates first, and a build that starts between the
    // truncation and the write rightly runs `outline` on an empty topic.)
    std::fs::File::options()
        .write(true)
        .open(p.path("topic.txt"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"caching\n"))
        .unwrap();
    check(&mut w, "save without edit");
    let t = std::fs::File::options()
        .write(true)
        .open(p.path("templates/side.md"))
        .unwrap();
    t.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(t);
    check(&mut w, "touch of a template");

    assert_eq!(outputs(), before);
    assert_eq!(p.calls().len(), 4, "no model call");

    // still watching: a real edit rebuilds
    p.write("aside.txt", "changed\n");
    let b = w.next_build();
    assert_eq!(b.ran(), ["side (input `aside.txt` changed)"]);
}

#[test]
fn foreach_files_removed_and_added() {
    let p = project().fixture("foreach").build();
    let mut w = Watcher::start(&p, &[]);
    let first = &w.first;
    assert_eq!(first.summary(), "3 ran, 0 cached, 0 up to date");
    w.ready(&["", "docs"]);

    p.remove("docs/a.md");
    let b = w.next_build();
    assert_eq!(b.changed(), ["`docs/a.md`"]);
    let ran = b.ran();
    let cached = b.after("cached ");
    let index: Vec<&String> = ran.iter().chain(&cached).collect();
    assert_eq!(index.len(), 1, "{:?}", b.lines);
    assert!(
        index[0].starts_with("index (") && index[0].ends_with(" removed)"),
        "{:?}",
        b.lines
    );
    assert!(index[0].contains("docs/a.md"), "{:?}", b.lines);
    assert_eq!(b.summary(), "1 ran, 0 cached, 1 up to date");
    assert!(!p.read("out/index.md").contains("== a\n"));
    w.assert_quiet(QUIET);

    p.write("docs/c.md", "Gamma notes.\n");
    let b = w.next_build();
    assert_eq!(b.changed(), ["`docs/c.md`"]);
    assert_eq!(b.ran_keys(), sorted(&["summary[docs/c.md]", "index"]));
    assert!(
        b.lines
            .contains(&"ran summary[docs/c.md] (never built)".to_string()),
        "{:?}",
        b.lines
    );
    assert_eq!(b.summary(), "2 ran, 0 cached, 1 up to date");
    assert_eq!(
        p.read("out/summaries/c.md"),
        "# summary c.md\nGamma notes.\n"
    );
    assert!(p.read("out/index.md").contains("== c\n"));
    w.assert_quiet(QUIET);
}

#[test]
fn editor_temp_files_the_store_and_unread_directories_trigger_nothing() {
    let (p, mut w) = watched_command_project();
    // vim: swap file, the `4913` probe, a backup; emacs: lock and autosave
    for f in [
        ".notes.txt.swp",
        "4913",
        "notes.txt~",
        ".#notes.txt",
        "#notes.txt#",
        "templates/.summary.md.swp",
        "templates/4913",
        "templates/summary.md~",
    ] {
        p.write(f, "x\n");
    }
    p.remove("4913");
    p.remove("templates/4913");
    // the store
    p.write(".mkt/junk", "x\n");
    // a directory nothing reads, and a file nothing reads in a watched one
    p.write("drafts/idea.md", "x\n");
    p.write("templates/unused.md", "x\n");
    w.assert_quiet(QUIET);
    assert!(!w.is_watching("drafts"), "`drafts/` costs no watch");
    assert!(!w.is_watching(".mkt"), "`.mkt/` costs no watch");
    assert_eq!(p.calls().len(), 4);

    // still watching: a real edit rebuilds
    p.write("notes.txt", "again\n");
    let b = w.next_build();
    assert_eq!(b.changed(), ["`notes.txt`"]);
    assert_eq!(b.ran_keys(), sorted(&["summary", "final"]));
}

/// What `mkt build` prints, line by line, for the command fixture with
/// `edit` applied (the same error the watcher must print).
fn build_error_lines(edit: impl Fn(&Project)) -> Vec<String> {
    let twin = project().fixture("command").build();
    edit(&twin);
    let run = twin.mkt(&["build"]);
    run.code(2).stdout_eq("");
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    run.stderr.lines().map(str::to_string).collect()
}

#[test]
fn invalid_prompts_toml_is_reported_and_fixing_it_recovers() {
    let (p, mut w) = watched_command_project();
    let good = p.read("prompts.toml");
    let break_it = |p: &Project| p.append("prompts.toml", "\n[targets.broken\n");
    let expected = build_error_lines(break_it);
    assert!(
        expected[0].starts_with("error: prompts.toml:"),
        "{expected:?}"
    );

    break_it(&p);
    w.wait_for("naming the change", |l| {
        l == "mkt watch: changed `prompts.toml`"
    });
    let lines: Vec<&str> = expected.iter().map(String::as_str).collect();
    w.expect_lines(&lines);
    w.assert_quiet(QUIET);

    // fixed: back to what was built, so everything is fresh
    p.write("prompts.toml", &good);
    let b = w.next_build();
    assert_eq!(b.changed(), ["`prompts.toml`"]);
    assert_eq!(b.summary(), "0 ran, 0 cached, 4 up to date");
    w.assert_quiet(QUIET);

    // and it goes on watching the inputs
    p.write("aside.txt", "after the fix\n");
    let b = w.next_build();
    assert_eq!(b.ran(), ["side (input `aside.txt` changed)"]);
}

#[test]
fn template_syntax_error_is_reported_and_fixing_it_recovers() {
    let (p, mut w) = watched_command_project();
    let break_it = |p: &Project| {
        p.write(
            "templates/summary.md",
            "# summary\nNotes: {{ inputs.notes }\n",
        )
    };
    let expected = build_error_lines(break_it);
    assert!(
        expected[0].starts_with("error: templates/summary.md:2:"),
        "{expected:?}"
    );

    break_it(&p);
    w.wait_for("naming the change", |l| {
        l == "mkt watch: changed `templates/summary.md`"
    });
    let lines: Vec<&str> = expected.iter().map(String::as_str).collect();
    w.expect_lines(&lines);
    w.assert_quiet(QUIET);

    p.write(
        "templates/summary.md",
        "# summary\nNotes: {{ inputs.notes }}\nFixed.\n{{ targets.outline }}",
    );
    let b = w.next_build();
    assert_eq!(b.changed(), ["`templates/summary.md`"]);
    assert_eq!(
        b.ran(),
        sorted(&[
            "summary (template `templates/summary.md` changed)",
            "final (upstream `summary` output changed)",
        ])
    );
    assert_eq!(b.summary(), "2 ran, 0 cached, 2 up to date");
    assert!(p.read("out/final.md").contains("Fixed.\n"));
    w.assert_quiet(QUIET);
}

#[test]
fn failing_model_is_reported_and_fixing_the_input_recovers() {
    let p = project().fixture("command").build();
    // `[targets.side]` is the last table of the fixture: its model refuses
    // any prompt with `FAIL` in it
    p.append(
        "prompts.toml",
        "model = \"picky\"\n\n[models.picky]\nprovider = \"command\"\n\
         command = [\"sh\", \"-c\", 'p=$(cat); case \"$p\" in *FAIL*) echo \"side: refused\" >&2; exit 3;; esac; printf \"%s\\n\" \"$p\"']\n",
    );
    let mut w = Watcher::start(&p, &[]);
    assert_eq!(w.first.summary(), "4 ran, 0 cached, 0 up to date");
    w.ready(&["", "templates", "out"]);
    let good = p.read("out/side.md");

    p.write("aside.txt", "FAIL on purpose\n");
    let b = w.next_build();
    assert_eq!(b.changed(), ["`aside.txt`"]);
    let i = b
        .lines
        .iter()
        .position(|l| l == "error: `side` failed (input `aside.txt` changed):")
        .unwrap_or_else(|| w.fail("no `error: `side` failed` line"));
    assert_eq!(
        b.lines[i + 1..i + 3],
        ["  `sh` exited with code 3:", "  side: refused"]
    );
    assert!(b.ran().is_empty(), "{:?}", b.lines);
    assert_eq!(b.summary(), "0 ran, 0 cached, 3 up to date, 1 failed");
    assert_eq!(p.read("out/side.md"), good, "a failed run writes nothing");
    w.assert_quiet(QUIET);

    p.write("aside.txt", "fine now\n");
    let b = w.next_build();
    assert_eq!(b.changed(), ["`aside.txt`"]);
    assert_eq!(b.ran_keys(), ["side"]);
    assert_eq!(b.summary(), "1 ran, 0 cached, 3 up to date");
    assert!(p.read("out/side.md").contains("Aside: fine now\n"));
    w.assert_quiet(QUIET);
}

#[test]
fn a_partial_in_a_new_directory_is_watched_after_the_rebuild_that_finds_it() {
    let (p, mut w) = watched_command_project();
    // a new directory nothing reads yet: no rebuild
    p.write("partials2/style.md", "Be brief.\n");
    w.assert_quiet(QUIET);

    p.write(
        "templates/side.md",
        "# side\n{% include \"partials2/style.md\" %}Aside: {{ inputs.aside }}\n",
    );
    let b = w.next_build();
    assert_eq!(b.changed(), ["`templates/side.md`"]);
    assert_eq!(b.ran(), ["side (template `templates/side.md` changed)"]);
    assert!(p.read("out/side.md").contains("Be brief.\n"));

    w.ready(&["partials2"]);
    p.write("partials2/style.md", "Be very brief.\n");
    let b = w.next_build();
    assert_eq!(b.changed(), ["`partials2/style.md`"]);
    assert_eq!(b.ran(), ["side (partial `partials2/style.md` changed)"]);
    assert_eq!(b.summary(), "1 ran, 0 cached, 3 up to date");
    assert!(p.read("out/side.md").contains("Be very brief.\n"));
    w.assert_quiet(QUIET);
}

/// Three independent targets on the mock model; `a`'s model is a command
/// that creates `a.running` when it starts and then takes 1.5 s.
fn three_targets() -> Project {
    project()
        .file(
            "prompts.toml",
            r#"
[models.default]
provider = "mock"

[models.slow]
provider = "command"
command = ["sh", "-c", 'echo > a.running; sleep 1.5; cat']

[targets.a]
template = "t/a.md"
inputs = { doc = "a.txt" }
output = "out/a.md"
model = "slow"

[targets.b]
template = "t/b.md"
inputs = { doc = "b.txt" }
output = "out/b.md"

[targets.c]
template = "t/c.md"
inputs = { doc = "c.txt" }
output = "out/c.md"
"#,
        )
        .file("t/a.md", "# a\n{{ inputs.doc }}")
        .file("t/b.md", "# b\n{{ inputs.doc }}")
        .file("t/c.md", "# c\n{{ inputs.doc }}")
        .file("a.txt", "alpha\n")
        .file("b.txt", "beta\n")
        .file("c.txt", "gamma\n")
        .build()
}

/// Waits (bounded) until `rel` exists.
#[track_caller]
fn wait_for_file(w: &Watcher, p: &Project, rel: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !p.exists(rel) {
        if Instant::now() > deadline {
            w.fail(&format!("`{rel}` never appeared"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn changes_during_a_build_are_taken_together_into_one_follow_up_build() {
    let p = three_targets();
    let mut w = Watcher::start(&p, &[]);
    assert_eq!(w.first.summary(), "3 ran, 0 cached, 0 up to date");
    w.ready(&["", "t", "out"]);
    p.remove("a.running");

    p.write("a.txt", "alpha, revised\n");
    w.wait_for("naming the change", |l| l == "mkt watch: changed `a.txt`");
    // `a`'s model is running: `b` and `c` were found up to date
    wait_for_file(&w, &p, "a.running");
    p.write("b.txt", "beta, revised\n");
    p.write("c.txt", "gamma, revised\n");

    let b = w.next_build();
    assert_eq!(b.ran(), ["a (input `a.txt` changed)"]);
    assert_eq!(b.summary(), "1 ran, 0 cached, 2 up to date");

    let b = w.next_build();
    assert_eq!(b.changed(), ["`b.txt`, `c.txt`"], "{:?}", b.lines);
    assert_eq!(
        b.ran(),
        sorted(&["b (input `b.txt` changed)", "c (input `c.txt` changed)"])
    );
    assert_eq!(b.summary(), "2 ran, 0 cached, 1 up to date");
    assert!(p.read("out/b.md").contains("beta, revised\n"));
    assert!(p.read("out/c.md").contains("gamma, revised\n"));
    w.assert_quiet(QUIET);
}

#[test]
fn ctrl_c_during_a_build_exits_130_and_leaves_no_half_written_output() {
    let p = project().fixture("command").build();
    // `side`'s model is slow while `slow` exists
    p.append(
        "prompts.toml",
        "model = \"slow\"\n\n[models.slow]\nprovider = \"command\"\n\
         command = [\"sh\", \"-c\", 'echo > side.running; if [ -e slow ]; then sleep 5; fi; cat']\n",
    );
    let mut w = Watcher::start(&p, &[]);
    assert_eq!(w.first.summary(), "4 ran, 0 cached, 0 up to date");
    w.ready(&["", "templates", "out"]);
    let old = p.read("out/side.md");
    p.remove("side.running");
    p.write("slow", "");

    p.write("aside.txt", "interrupted\n");
    w.wait_for("naming the change", |l| {
        l == "mkt watch: changed `aside.txt`"
    });
    wait_for_file(&w, &p, "side.running");
    let (status, took) = w.interrupt();
    if status.code() != Some(130) || took > Duration::from_secs(2) {
        w.fail(&format!(
            "expected exit code 130 within 2 s, got {status:?} after {took:?}"
        ));
    }
    let left = temp_files(p.root());
    assert!(left.is_empty(), "temp files left: {left:?}");
    let side = p.read("out/side.md");
    assert!(
        side == old || side == "# side\nAside: interrupted\n\n",
        "half-written output: {side:?}"
    );

    // a following build completes what did not finish
    p.remove("slow");
    p.mkt(&["build"])
        .success()
        .ran_keys(&["side"])
        .summary("1 ran, 0 cached, 3 up to date");
    assert_eq!(p.read("out/side.md"), "# side\nAside: interrupted\n\n");
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 0 cached, 4 up to date");
}

#[test]
fn watching_a_target_ignores_what_only_other_targets_read() {
    let p = project().fixture("command").build();
    let mut w = Watcher::start(&p, &["side"]);
    let first = &w.first;
    assert_eq!(first.ran(), ["side (never built)"]);
    assert_eq!(first.summary(), "1 ran, 0 cached, 0 up to date");
    w.ready(&["", "templates"]);

    // inputs and templates only other targets read
    p.write("notes.txt", "be thorough\n");
    p.write("topic.txt", "provenance\n");
    p.write("templates/summary.md", "# summary\nchanged\n");
    w.assert_quiet(QUIET);
    assert!(!p.exists("out/summary.md"));

    p.write("aside.txt", "watched\n");
    let b = w.next_build();
    assert_eq!(b.changed(), ["`aside.txt`"]);
    assert_eq!(b.ran(), ["side (input `aside.txt` changed)"]);
    assert_eq!(b.summary(), "1 ran, 0 cached, 0 up to date");
    w.assert_quiet(QUIET);
}

/// Found by this file: the first build runs before any directory is
/// watched, so an input saved while it runs (after it was read) is never
/// seen: the output stays stale and the watcher sits idle.
#[test]
fn an_edit_made_while_the_first_build_runs_is_not_lost() {
    let p = three_targets();
    let mut w = Watcher::spawn(&p, &[]);
    // `a`'s model is running: `b.txt` was already read
    wait_for_file(&w, &p, "a.running");
    p.write("b.txt", "beta, revised\n");
    assert_eq!(w.next_build().summary(), "3 ran, 0 cached, 0 up to date");
    // the follow-up build (however it names its cause) runs `b` again
    let b = w.next_build();
    assert_eq!(b.ran_keys(), ["b"]);
    assert!(p.read("out/b.md").contains("beta, revised\n"));
}

/// Found by this file: the summary line is printed before the build's
/// directories are watched, so an edit made as soon as it appears is often
/// missed (the other tests wait for the watches in `/proc` instead).
#[test]
fn an_edit_right_after_the_summary_is_not_lost() {
    // the summary line is all a user (or a script) sees of a finished build
    for i in 0..5 {
        let p = project().fixture("command").build();
        let mut w = Watcher::start(&p, &[]);
        p.write(
            "templates/side.md",
            format!("# side {i}\n{{{{ inputs.aside }}}}\n"),
        );
        // The edit may be caught by the check that follows the new
        // watches, or by the event it raises. `write` truncates the file
        // and then writes it, so a build can also start in between and
        // build `side` from the empty template (what the file held then),
        // or read it in the middle of the write (that target then fails
        // with "changed while the build was running", never a wrong
        // output); the write's own event then brings a build that runs it
        // again. Not lost means: within a few builds `side` is built from
        // the new template, and nothing else is ever run.
        let want = format!("# side {i}\n");
        for builds in 1.. {
            let b = w.next_build();
            let ran = b.ran_keys();
            if !(ran.is_empty() || ran == ["side"]) {
                w.fail(&format!("edit {i}: a build ran more than `side`"));
            }
            if ran == ["side"] && p.read("out/side.md").starts_with(&want) {
                break;
            }
            if builds == 3 {
                w.fail(&format!(
                    "edit {i}: `side` was not built from the new template"
                ));
            }
        }
    }
}
