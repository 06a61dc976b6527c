//! Test support for `mkt` integration tests, in the style of
//! cargo-test-support and ripgrep's `TestCommand`:
//!
//! ```ignore
//! let p = project().fixture("chain").file("topic.txt", "other\n").build();
//! p.mkt(&["build"]).success().summary("3 ran, 0 cached, 0 up to date");
//! ```
//!
//! Every assertion that fails panics with the command line, the exit code,
//! a recursive listing of the project (without `.mkt/`), stdout and stderr.

#![allow(dead_code)] // each test file uses a different subset

pub mod fake_api;
pub mod llmock;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `mkt` binary under test. The package's binary target is named after
/// the crate (`markitect`) unless Cargo.toml names it `mkt`; accept either.
pub fn mkt_bin() -> &'static str {
    option_env!("CARGO_BIN_EXE_mkt")
        .or(option_env!("CARGO_BIN_EXE_markitect"))
        .expect("cargo sets CARGO_BIN_EXE_<name> for the package's binary")
}

/// `fixtures/` at the root of the repository.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The repository root (for tests that use the repository's own files).
pub fn repo_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

enum Step {
    Copy { from: PathBuf, to: String },
    File { path: String, contents: Vec<u8> },
    Symlink { link: String, target: PathBuf },
}

/// Collects files for a [`Project`]; steps apply in order, so a `.file()`
/// after a `.fixture()` overrides the fixture's file.
#[must_use]
pub struct ProjectBuilder {
    steps: Vec<Step>,
}

/// Starts a project in a fresh temporary directory.
pub fn project() -> ProjectBuilder {
    ProjectBuilder { steps: Vec::new() }
}

impl ProjectBuilder {
    /// Copies `fixtures/<name>/` into the project root.
    pub fn fixture(self, name: &str) -> Self {
        let from = fixtures_dir().join(name);
        assert!(from.is_dir(), "no fixture `{}`", from.display());
        self.copy(from, "")
    }

    /// Copies a file or directory (recursively) to `to`, relative to the
    /// project root (`""` for the root itself).
    pub fn copy(mut self, from: impl Into<PathBuf>, to: &str) -> Self {
        self.steps.push(Step::Copy {
            from: from.into(),
            to: to.to_string(),
        });
        self
    }

    /// Writes a file, creating its parent directories.
    pub fn file(mut self, path: &str, contents: impl AsRef<[u8]>) -> Self {
        self.steps.push(Step::File {
            path: path.to_string(),
            contents: contents.as_ref().to_vec(),
        });
        self
    }

    /// Creates a symlink at `link` (relative to the root) pointing to `target`
    /// (taken as is: absolute, or relative to the link's directory).
    pub fn symlink(mut self, link: &str, target: impl Into<PathBuf>) -> Self {
        self.steps.push(Step::Symlink {
            link: link.to_string(),
            target: target.into(),
        });
        self
    }

    pub fn build(self) -> Project {
        let dir = tempfile::Builder::new()
            .prefix("mkt-test-")
            .tempdir()
            .expect("create a temp dir");
        let p = Project { dir };
        for step in self.steps {
            match step {
                Step::Copy { from, to } => copy_recursive(&from, &p.path(&to)),
                Step::File { path, contents } => p.write(&path, contents),
                Step::Symlink { link, target } => p.symlink(&link, target),
            }
        }
        p
    }
}

fn copy_recursive(from: &Path, to: &Path) {
    let meta =
        std::fs::symlink_metadata(from).unwrap_or_else(|e| panic!("stat {}: {e}", from.display()));
    if meta.is_dir() {
        std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
        let mut entries: Vec<_> = std::fs::read_dir(from)
            .unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
            .map(|e| e.expect("dir entry").file_name())
            .collect();
        entries.sort();
        for name in entries {
            copy_recursive(&from.join(&name), &to.join(&name));
        }
    } else if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from).expect("read link");
        std::os::unix::fs::symlink(target, to)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", to.display()));
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).expect("create parent dir");
        }
        std::fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    }
}

/// A project in a temporary directory, deleted when dropped.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// An absolute path in the project.
    pub fn path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root().to_path_buf()
        } else {
            self.root().join(rel)
        }
    }

    /// Runs `mkt ARGS...` in the project root.
    pub fn mkt(&self, args: &[&str]) -> Run {
        self.mkt_in("", args)
    }

    /// Runs `mkt ARGS...` in a directory of the project.
    pub fn mkt_in(&self, subdir: &str, args: &[&str]) -> Run {
        self.mkt_in_env(subdir, args, None)
    }

    /// Runs `mkt ARGS...` in the project root with `envs` set for the child
    /// only (API keys in tests). Proxy settings and real API keys of the
    /// test's own environment are removed, so a test can only reach its
    /// local fake server.
    pub fn mkt_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Run {
        self.mkt_in_env("", args, Some(envs))
    }

    fn mkt_in_env(&self, subdir: &str, args: &[&str], envs: Option<&[(&str, &str)]>) -> Run {
        let cwd = self.path(subdir);
        let mut cmd = Command::new(mkt_bin());
        cmd.args(args)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .env_remove("RUST_BACKTRACE")
            // a developer's own remote cache must not serve the tests
            .env_remove("MKT_REMOTE_CACHE");
        if let Some(envs) = envs {
            for var in [
                "http_proxy",
                "HTTP_PROXY",
                "https_proxy",
                "HTTPS_PROXY",
                "all_proxy",
                "ALL_PROXY",
                "OPENAI_API_KEY",
                "ANTHROPIC_API_KEY",
                "OPENAI_BASE_URL",
                "ANTHROPIC_BASE_URL",
            ] {
                cmd.env_remove(var);
            }
            cmd.envs(envs.iter().copied());
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", mkt_bin()));
        let mut cmdline = String::from("mkt");
        for a in args {
            cmdline.push(' ');
            cmdline.push_str(&shell_quote(a));
        }
        let _ = write!(cmdline, "    (in {})", cwd.display());
        Run {
            cmdline,
            root: self.root().to_path_buf(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn exists(&self, rel: &str) -> bool {
        std::fs::symlink_metadata(self.path(rel)).is_ok()
    }

    pub fn read(&self, rel: &str) -> String {
        match std::fs::read_to_string(self.path(rel)) {
            Ok(s) => s,
            Err(e) => panic!(
                "cannot read `{rel}`: {e}\n\nproject {}:\n{}",
                self.root().display(),
                listing(self.root())
            ),
        }
    }

    pub fn read_bytes(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap_or_else(|e| panic!("cannot read `{rel}`: {e}"))
    }

    /// Writes a file (creating parent directories), replacing it.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent dir");
        }
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("cannot write `{rel}`: {e}"));
    }

    pub fn append(&self, rel: &str, contents: impl AsRef<[u8]>) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path(rel))
            .unwrap_or_else(|e| panic!("cannot open `{rel}`: {e}"));
        f.write_all(contents.as_ref())
            .unwrap_or_else(|e| panic!("cannot append to `{rel}`: {e}"));
    }

    /// Replaces the one occurrence of `from` in a file by `to`.
    pub fn replace(&self, rel: &str, from: &str, to: &str) {
        let text = self.read(rel);
        assert_eq!(
            text.matches(from).count(),
            1,
            "`{from}` must occur exactly once in `{rel}`:\n{text}"
        );
        self.write(rel, text.replacen(from, to, 1));
    }

    /// Removes a file, symlink or directory tree.
    pub fn remove(&self, rel: &str) {
        let path = self.path(rel);
        let meta = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("cannot remove `{rel}`: {e}"));
        if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .unwrap_or_else(|e| panic!("cannot remove `{rel}`: {e}"));
    }

    pub fn symlink(&self, link: &str, target: impl AsRef<Path>) {
        let path = self.path(link);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent dir");
        }
        std::os::unix::fs::symlink(target.as_ref(), &path)
            .unwrap_or_else(|e| panic!("cannot create `{link}`: {e}"));
    }

    /// The lines of `calls.log`: the fixtures' command models append the
    /// first line of every prompt they receive to it.
    pub fn calls(&self) -> Vec<String> {
        match std::fs::read_to_string(self.path("calls.log")) {
            Ok(s) => s.lines().map(str::to_string).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Every record in the store's packs, oldest pack first.
    pub fn store_records(&self) -> Vec<StoreRecord> {
        use markitect::pack::{Pack, RECORD_HEADER, RecordKind};
        let dir = self.path(".mkt/packs");
        let mut packs: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(d) => d.map(|e| e.expect("dir entry").path()).collect(),
            Err(_) => Vec::new(),
        };
        packs.retain(|p| p.extension().is_some_and(|e| e == "pack"));
        packs.sort();
        let mut out = Vec::new();
        for path in packs {
            let pack =
                Pack::open(std::fs::File::open(&path).expect("open pack")).expect("read pack");
            let rel = path
                .strip_prefix(self.root())
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            for e in pack.entries() {
                out.push(StoreRecord {
                    pack: rel.clone(),
                    entry: e.kind == RecordKind::AcEntry,
                    key: markitect::hash::Digest(e.key).to_hex(),
                    payload_at: e.offset + RECORD_HEADER as u64,
                    payload: pack.read(&e).unwrap_or_default(),
                });
            }
        }
        out
    }

    /// The action-cache entries in the store's packs.
    pub fn store_entries(&self) -> Vec<StoreRecord> {
        self.store_records()
            .into_iter()
            .filter(|r| r.entry)
            .collect()
    }

    /// The objects in the store's packs.
    pub fn store_objects(&self) -> Vec<StoreRecord> {
        self.store_records()
            .into_iter()
            .filter(|r| !r.entry)
            .collect()
    }

    /// The stored object whose bytes equal the project file `rel`
    /// (relative to the root).
    pub fn store_object_for(&self, rel: &str) -> StoreRecord {
        let want = self.read_bytes(rel);
        let mut found: Vec<StoreRecord> = self
            .store_objects()
            .into_iter()
            .filter(|r| r.payload == want)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one store object holding `{rel}`, found {found:?}"
        );
        found.remove(0)
    }

    /// Overwrites a stored record's payload in place from its start with
    /// `bytes` (at most its length), as a disk error would.
    pub fn corrupt_record(&self, r: &StoreRecord, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        assert!(bytes.len() <= r.payload.len(), "longer than the record");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path(&r.pack))
            .expect("open pack");
        f.write_all_at(bytes, r.payload_at).expect("write pack");
    }

    /// Files an action-cache entry under the InputBundleHash `key` (hex)
    /// with `payload`, in a pack of its own newer than any other: a
    /// record whose checksum holds, as a forger would write it.
    pub fn forge_entry(&self, key: &str, payload: &[u8]) {
        use markitect::pack::{PackWriter, RecordKind};
        let dir = self.path(".mkt/packs");
        let next = std::fs::read_dir(&dir)
            .expect("read .mkt/packs")
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(".pack")?, 16).ok()
            })
            .max()
            .unwrap_or(0)
            + 1;
        let path = dir.join(format!("{next:016x}.pack"));
        let file = std::fs::File::create_new(&path).expect("create pack");
        let mut w = PackWriter::start(file).expect("write pack");
        let key = markitect::hash::Digest::from_hex(key).expect("a digest in hex");
        w.append(RecordKind::AcEntry, &key.0, payload)
            .expect("write pack");
        w.seal().expect("seal pack");
    }

    /// Starts `mkt ARGS` in the project without waiting for it, its
    /// standard streams closed (for tests that race or kill a build).
    pub fn spawn_mkt(&self, args: &[&str]) -> std::process::Child {
        self.spawn_mkt_with(args, Stdio::null())
    }

    /// As [`Project::spawn_mkt`], with standard error piped, for the test
    /// to read from `wait_with_output`.
    pub fn spawn_mkt_piped(&self, args: &[&str]) -> std::process::Child {
        self.spawn_mkt_with(args, Stdio::piped())
    }

    fn spawn_mkt_with(&self, args: &[&str], stderr: Stdio) -> std::process::Child {
        Command::new(mkt_bin())
            .args(args)
            .current_dir(self.root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mkt {args:?}: {e}"))
    }

    /// The project's files, recursively, without `.mkt/`.
    pub fn listing(&self) -> String {
        listing(self.root())
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=[]".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A recursive listing of `root` without `.mkt/`: one path per line,
/// directories with a trailing `/`, files with their size, symlinks with
/// their target.
pub fn listing(root: &Path) -> String {
    fn walk(root: &Path, dir: &Path, out: &mut String) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            let _ = writeln!(out, "  (cannot read {})", dir.display());
            return;
        };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for path in entries {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            if rel == ".mkt" {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                let _ = writeln!(out, "  {rel} -> {target}");
            } else if meta.is_dir() {
                let _ = writeln!(out, "  {rel}/");
                walk(root, &path, out);
            } else {
                let _ = writeln!(out, "  {rel} ({} bytes)", meta.len());
            }
        }
    }
    let mut out = String::new();
    walk(root, root, &mut out);
    if out.is_empty() {
        out.push_str("  (empty)\n");
    }
    out
}

/// Drops the timing from the summary line: `3 ran, ... (0.01 s)` becomes
/// `3 ran, ...`.
pub fn strip_timing(line: &str) -> &str {
    if line.ends_with(" s)")
        && line.contains(" ran, ")
        && let Some(i) = line.rfind(" (")
    {
        return &line[..i];
    }
    line
}

/// The finished run of one `mkt` command, with chainable assertions.
pub struct Run {
    cmdline: String,
    root: PathBuf,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    fn fail(&self, what: &str) -> ! {
        panic!(
            "\n{what}\n\n\
             command:   {}\n\
             exit code: {}\n\n\
             project {} (without .mkt/):\n{}\n\
             --- stdout\n{}\n\
             --- stderr\n{}\n---\n",
            self.cmdline,
            self.code
                .map_or("none (killed by a signal)".to_string(), |c| c.to_string()),
            self.root.display(),
            listing(&self.root),
            self.stdout,
            self.stderr,
        )
    }

    /// stderr with the summary line's timing removed.
    pub fn stderr_normalized(&self) -> String {
        let mut s = String::new();
        for line in self.stderr.lines() {
            s.push_str(strip_timing(line));
            s.push('\n');
        }
        s
    }

    #[track_caller]
    pub fn success(&self) -> &Self {
        self.code(0)
    }

    #[track_caller]
    pub fn code(&self, expected: i32) -> &Self {
        if self.code != Some(expected) {
            self.fail(&format!("expected exit code {expected}"));
        }
        self
    }

    #[track_caller]
    pub fn stdout_eq(&self, expected: &str) -> &Self {
        if self.stdout != expected {
            self.fail(&format!("expected stdout to be exactly:\n{expected}"));
        }
        self
    }

    #[track_caller]
    pub fn stdout_contains(&self, needle: &str) -> &Self {
        if !self.stdout.contains(needle) {
            self.fail(&format!("expected stdout to contain:\n{needle}"));
        }
        self
    }

    #[track_caller]
    pub fn stdout_lacks(&self, needle: &str) -> &Self {
        if self.stdout.contains(needle) {
            self.fail(&format!("expected stdout not to contain:\n{needle}"));
        }
        self
    }

    #[track_caller]
    pub fn stderr_contains(&self, needle: &str) -> &Self {
        if !self.stderr.contains(needle) {
            self.fail(&format!("expected stderr to contain:\n{needle}"));
        }
        self
    }

    #[track_caller]
    pub fn stderr_lacks(&self, needle: &str) -> &Self {
        if self.stderr.contains(needle) {
            self.fail(&format!("expected stderr not to contain:\n{needle}"));
        }
        self
    }

    /// stderr, with the summary line's timing removed, is exactly `expected`.
    #[track_caller]
    pub fn stderr_eq(&self, expected: &str) -> &Self {
        let got = self.stderr_normalized();
        if got != expected {
            self.fail(&format!(
                "expected stderr (timing removed) to be exactly:\n{expected}\ngot:\n{got}"
            ));
        }
        self
    }

    /// The last stderr line, without its timing, is `expected`
    /// (e.g. `0 ran, 0 cached, 3 up to date`).
    #[track_caller]
    pub fn summary(&self, expected: &str) -> &Self {
        let last = self.stderr.lines().last().map(strip_timing);
        if last != Some(expected) {
            self.fail(&format!("expected the summary line `{expected}`"));
        }
        self
    }

    /// The rest of every stderr line starting with `prefix`, sorted.
    pub fn lines_after(&self, prefix: &str) -> Vec<String> {
        Self::lines_after_in(&self.stderr, prefix)
    }

    fn lines_after_in(text: &str, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    #[track_caller]
    fn event_lines(&self, word: &str, expected: &[&str]) -> &Self {
        // `--dry-run` prints its list (the command's product) on stdout,
        // progress goes to stderr
        let stream = if word == "would run" {
            &self.stdout
        } else {
            &self.stderr
        };
        let got = Self::lines_after_in(stream, &format!("{word} "));
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        if got != want {
            self.fail(&format!(
                "expected exactly these `{word} ...` lines (any order):\n{want:#?}\ngot:\n{got:#?}"
            ));
        }
        self
    }

    #[track_caller]
    fn event_keys(&self, word: &str, expected: &[&str]) -> &Self {
        let mut got: Vec<String> = self
            .lines_after(&format!("{word} "))
            .iter()
            .map(|l| {
                l.split(" (")
                    .next()
                    .unwrap_or(l)
                    .trim_end_matches(':')
                    .to_string()
            })
            .collect();
        got.sort();
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        if got != want {
            self.fail(&format!(
                "expected `{word}` for exactly these nodes (any order):\n{want:#?}\ngot:\n{got:#?}"
            ));
        }
        self
    }

    /// The `ran NODE (REASON)` lines are exactly `expected` (`NODE (REASON)`,
    /// any order).
    #[track_caller]
    pub fn ran(&self, expected: &[&str]) -> &Self {
        self.event_lines("ran", expected)
    }

    /// The nodes of the `ran` lines are exactly `expected`, whatever the reasons.
    #[track_caller]
    pub fn ran_keys(&self, expected: &[&str]) -> &Self {
        self.event_keys("ran", expected)
    }

    #[track_caller]
    pub fn cached(&self, expected: &[&str]) -> &Self {
        self.event_lines("cached", expected)
    }

    /// The nodes of the `cached` lines are exactly `expected`, whatever the reasons.
    #[track_caller]
    pub fn cached_keys(&self, expected: &[&str]) -> &Self {
        self.event_keys("cached", expected)
    }

    #[track_caller]
    pub fn restored(&self, expected: &[&str]) -> &Self {
        self.event_lines("restored", expected)
    }

    /// The `would run NODE (REASON)` lines on stdout are exactly `expected`.
    #[track_caller]
    pub fn would_run(&self, expected: &[&str]) -> &Self {
        self.event_lines("would run", expected)
    }

    #[track_caller]
    pub fn skipped(&self, expected: &[&str]) -> &Self {
        self.event_lines("skipped", expected)
    }

    /// No node ran, was served from the cache or restored.
    #[track_caller]
    pub fn nothing_ran(&self) -> &Self {
        self.event_lines("ran", &[])
            .event_lines("cached", &[])
            .event_lines("restored", &[])
    }
}

/// Starts `mkt build` in the background on a project (rewriting its
/// `prompts.toml`) whose one target `a` (template `t.md`) takes `ms`
/// milliseconds on the mock model, and returns once that build holds the
/// project lock. For tests of other commands that must wait for it.
pub fn hold_lock_with_slow_build(p: &Project, ms: u64) -> std::process::Child {
    p.write(
        "prompts.toml",
        format!("[models.default]\nprovider = \"mock\"\nlatency_ms = {ms}\n\n[targets.a]\ntemplate = \"t.md\"\noutput = \"out/a.md\"\n"),
    );
    let child = p.spawn_mkt(&["build", "-q"]);
    // the lock file appears once the build holds it; then give it a moment
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !p.exists(".mkt/lock") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    child
}

/// Every file under `rel` (recursively) with its length, sorted by path.
pub fn files_under(p: &Project, rel: &str) -> Vec<(String, u64)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let e = e.expect("dir entry");
            let m = e.metadata().expect("stat");
            if m.is_dir() {
                walk(&e.path(), root, out);
            } else {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.push((rel, m.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&p.path(rel), p.root(), &mut out);
    out.sort();
    out
}

/// The command fixture with `side` on a model that always fails. `-j 1`
/// makes the order deterministic: `side` and `outline` are both ready at the
/// start and the single worker takes `side` first, so its failure is known
/// before `outline` finishes and `summary` becomes ready.
pub fn failing_side_project() -> Project {
    let p = project().fixture("command").build();
    // `[targets.side]` is the last table of the fixture
    p.append(
        "prompts.toml",
        "model = \"broken\"\n\n[models.broken]\nprovider = \"command\"\n\
         command = [\"sh\", \"-c\", \"cat >/dev/null; echo 'side: model exploded' >&2; exit 3\"]\n",
    );
    p
}

/// One record in a store pack (see `src/pack.rs`).
#[derive(Debug, Clone)]
pub struct StoreRecord {
    /// The pack, relative to the project root.
    pub pack: String,
    /// An action-cache entry (else an object).
    pub entry: bool,
    /// The object's digest or the entry's InputBundleHash, in hex.
    pub key: String,
    /// Where the payload starts in the pack.
    pub payload_at: u64,
    /// The payload (empty if it does not verify).
    pub payload: Vec<u8>,
}
