//! The remote cache (`[cache] remote`, `mkt cache`): two copies of a
//! project with separate `.mkt/` share one remote, and the second builds
//! without a model call; what the remote returns is verified; a remote
//! that is down or hangs costs one warning, never the build.
//!
//! The `file://` backend needs no server and is always tested. The S3 and
//! WebDAV tests use real servers on 127.0.0.1 that `.ci/run` starts (moto
//! and nginx) and names in `MKT_TEST_S3_ENDPOINT` and
//! `MKT_TEST_WEBDAV_URL`. Without them those tests print a skip message,
//! unless `MKT_REQUIRE_SERVERS` is set (as in CI): then they fail.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::fake_api::{FakeApi, Reply};
use support::{Project, Run, files_under, project};

/// Fake credentials for the S3 tests: moto accepts any, and no trace of
/// them may reach `.mkt/`, an output, stdout or stderr.
const KEY_ID: &str = "AKIAMKTTESTKEYID7777";
const SECRET: &str = "mkt-test-secret-d0n0tl3ak";

fn s3_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_REGION", "us-east-1"),
        // no profile or config file of the developer's own
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ]
}

/// A unique name for this test process and call (buckets, prefixes).
fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The server named by `var`, or `None` with a skip message; a failure
/// when `MKT_REQUIRE_SERVERS` is set.
fn server(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var_os("MKT_REQUIRE_SERVERS").is_some() => panic!(
            "`{var}` is not set but `MKT_REQUIRE_SERVERS` is: the {what} tests need the server \
             that `.ci/run` starts"
        ),
        _ => {
            eprintln!(
                "SKIPPED: `{var}` is not set, so the {what} remote-cache test did not run \
                 (`.ci/run` starts the server and sets it)"
            );
            None
        }
    }
}

/// One plain HTTP/1.1 request to a loopback server; returns the status.
fn http(method: &str, url: &str) -> u16 {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = TcpStream::connect(host).expect("connect to the test server");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The `command` fixture with a `[cache]` table appended.
fn with_cache(cache: &str) -> Project {
    let p = project().fixture("command").build();
    p.append("prompts.toml", format!("\n[cache]\n{cache}\n"));
    p
}

/// A directory for a `file://` remote, deleted when dropped.
fn remote_dir() -> (tempfile::TempDir, String) {
    let d = tempfile::Builder::new()
        .prefix("mkt-remote-")
        .tempdir()
        .unwrap();
    let url = format!("file://{}", d.path().display());
    (d, url)
}

fn out_files(p: &Project) -> Vec<(String, Vec<u8>)> {
    files_under(p, "out")
        .into_iter()
        .map(|(f, _)| {
            let b = p.read_bytes(&f);
            (f, b)
        })
        .collect()
}

/// Machine A builds and publishes; machine B, a copy with an empty
/// `.mkt/`, gets every target from the remote: no model call, the same
/// bytes, and history lines that say where each result came from.
fn second_machine_makes_no_model_call(cache: &str, env: &[(&str, &str)]) -> (Project, Project) {
    let a = with_cache(cache);
    a.mkt_env(&["build"], env)
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
    let b = with_cache(cache);
    let run = b.mkt_env(&["build"], env);
    run.success()
        .summary("0 ran, 4 cached, 0 up to date, 4 from the remote cache")
        .stderr_lacks("warning");
    let lines = run.lines_after("cached ");
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines.iter().all(|l| l.ends_with(" from the remote cache")),
        "{lines:?}"
    );
    assert_eq!(
        b.calls(),
        Vec::<String>::new(),
        "no model call on machine B"
    );
    assert_eq!(out_files(&a), out_files(&b), "byte-identical outputs");
    // the history says remote, with A's run ids and host
    let history = b.read(".mkt/history.jsonl");
    let a_history = a.read(".mkt/history.jsonl");
    for line in history.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["status"], "cached", "{line}");
        assert_eq!(v["remote"], true, "{line}");
        assert!(v["host"].is_string(), "{line}");
        let run_id = v["run_id"].as_str().unwrap();
        assert!(a_history.contains(run_id), "{run_id} is A's run");
    }
    // `mkt runs` marks where they came from
    let runs = b.mkt(&["runs"]);
    runs.success();
    assert_eq!(
        runs.stdout
            .lines()
            .skip(1)
            .filter(|l| l.contains(" remote "))
            .count(),
        4,
        "{}",
        runs.stdout
    );
    // B's local store now serves it: a copy of B's outputs deleted comes
    // back from B's own store
    b.remove("out/side.md");
    b.mkt_env(&["build"], env)
        .success()
        .summary("0 ran, 1 cached, 3 up to date");
    (a, b)
}

#[test]
fn file_remote_serves_a_second_machine() {
    let (dir, url) = remote_dir();
    second_machine_makes_no_model_call(&format!("remote = {url:?}"), &[]);
    // the layout mirrors the local store: 4 entries, 8 objects (prompt
    // and output of each run), nothing else but the temp directory
    let p = dir.path();
    let count = |sub: &str| walk(&p.join(sub)).len();
    assert_eq!((count("ac"), count("objects")), (4, 8));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Asserts that no credential reached the project's files or a command's
/// output.
fn assert_no_secret(p: &Project, runs: &[&Run]) {
    for (f, _) in files_under(p, "") {
        let b = p.read_bytes(&f);
        let text = String::from_utf8_lossy(&b);
        for s in [KEY_ID, SECRET] {
            assert!(!text.contains(s), "`{f}` contains a credential");
        }
    }
    for r in runs {
        for s in [KEY_ID, SECRET] {
            assert!(!r.stdout.contains(s) && !r.stderr.contains(s));
        }
    }
}

#[test]
fn s3_remote_serves_a_second_machine_and_keeps_credentials_out() {
    let Some(endpoint) = server("MKT_TEST_S3_ENDPOINT", "S3 (moto)") else {
        return;
    };
    let bucket = unique("mkt-test");
    let status = http("PUT", &format!("{endpoint}/{bucket}"));
    assert!(status == 200, "creating bucket `{bucket}`: HTTP {status}");
    let cache = format!("remote = \"s3://{bucket}/team/cache\"\nendpoint = {endpoint:?}");
    let env = s3_env();
    let (a, b) = second_machine_makes_no_model_call(&cache, &env);
    let stats = b.mkt_env(&["cache", "stats"], &env);
    stats.success();
    assert!(
        stats.stdout.contains(": 4 entries, 8 objects,"),
        "{}",
        stats.stdout
    );
    let again = a.mkt_env(&["build", "--force"], &env);
    again.success();
    for p in [&a, &b] {
        assert_no_secret(p, &[&stats, &again]);
    }
}

#[test]
fn webdav_remote_serves_a_second_machine() {
    let Some(url) = server("MKT_TEST_WEBDAV_URL", "WebDAV (nginx)") else {
        return;
    };
    let base = url
        .trim_end_matches('/')
        .replacen("http://", "webdav+http://", 1);
    let cache = format!("remote = \"{base}/{}\"", unique("team"));
    let (_, b) = second_machine_makes_no_model_call(&cache, &[]);
    let stats = b.mkt(&["cache", "stats"]);
    stats.success();
    assert!(
        stats.stdout.contains(": 4 entries, 8 objects,"),
        "{}",
        stats.stdout
    );
}

#[test]
fn read_only_mode_publishes_nothing() {
    let (dir, url) = remote_dir();
    let a = with_cache(&format!("remote = {url:?}\nmode = \"read-only\""));
    a.mkt(&["build"])
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
    assert_eq!(walk(dir.path()), Vec::<std::path::PathBuf>::new());
    a.mkt(&["cache", "push"])
        .code(1)
        .stderr_contains("is read-only");
}

#[test]
fn remote_cache_off_and_the_environment_variable() {
    let (dir, url) = remote_dir();
    let (env_dir, env_url) = remote_dir();
    let a = with_cache(&format!("remote = {url:?}"));
    a.mkt(&["build", "--remote-cache", "off"])
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
    assert!(walk(dir.path()).is_empty(), "off: nothing published");
    // MKT_REMOTE_CACHE wins over prompts.toml
    let b = with_cache(&format!("remote = {url:?}"));
    b.mkt_env(&["build"], &[("MKT_REMOTE_CACHE", &env_url)])
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
    assert!(walk(dir.path()).is_empty());
    assert_eq!(walk(&env_dir.path().join("ac")).len(), 4);
    // and a third machine with the remote switched off runs everything
    let c = with_cache(&format!("remote = {env_url:?}"));
    c.mkt(&["build", "--remote-cache", "off"])
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
    let d = with_cache(&format!("remote = {env_url:?}"));
    d.mkt(&["build"])
        .success()
        .summary("0 ran, 4 cached, 0 up to date, 4 from the remote cache");
}

/// The file of a `file://` remote (in `dir`) holding the object with
/// the bytes of `a`'s output `rel`.
fn remote_object(dir: &std::path::Path, a: &Project, rel: &str) -> std::path::PathBuf {
    let want = a.read_bytes(rel);
    walk(&dir.join("objects"))
        .into_iter()
        .find(|p| std::fs::read(p).unwrap() == want)
        .expect("the output's object is on the remote")
}

/// The file of a `file://` remote (in `dir`) holding `target`'s manifest.
fn remote_manifest(dir: &std::path::Path, target: &str) -> std::path::PathBuf {
    walk(&dir.join("ac"))
        .into_iter()
        .find(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            v["target"] == target
        })
        .expect("the target's manifest is on the remote")
}

/// The remote's objects and manifests are checked before they are
/// believed: a corrupt or truncated object and a forged manifest are each
/// reported once and rebuilt locally; nothing of them reaches the store.
#[test]
fn corrupt_objects_and_forged_manifests_are_rebuilt() {
    let (dir, url) = remote_dir();
    let cache = format!("remote = {url:?}");
    let a = with_cache(&cache);
    a.mkt(&["build"]).success();
    let remote_object = |rel: &str| remote_object(dir.path(), &a, rel);
    // side: one byte flipped; outline: truncated
    let side = remote_object("out/side.md");
    let mut bytes = std::fs::read(&side).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&side, &bytes).unwrap();
    let outline = remote_object("out/outline.md");
    let len = std::fs::metadata(&outline).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&outline)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // summary: its manifest replaced by side's (a valid manifest filed
    // under another InputBundleHash)
    let manifest_of = |target: &str| remote_manifest(dir.path(), target);
    std::fs::copy(manifest_of("side"), manifest_of("summary")).unwrap();

    let b = with_cache(&cache);
    let run = b.mkt(&["build"]);
    run.success()
        .summary("3 ran, 1 cached, 0 up to date, 1 from the remote cache");
    let warnings: Vec<_> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 3, "one warning each: {warnings:#?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("does not hash to its name") && w.contains("`side`"))
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("does not hash to its name") && w.contains("`outline`"))
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("describes another run") && w.contains("`summary`"))
    );
    // `final` was served: its inputs did not change
    assert_eq!(
        {
            let mut c = b.calls();
            c.sort();
            c
        },
        ["# outline", "# side", "# summary"]
    );
    assert_eq!(out_files(&a), out_files(&b), "rebuilt to the same bytes");
    // the corrupt bytes never reached B's store
    for r in b.store_objects() {
        assert_ne!(r.payload, bytes, "{r:?} is the corrupt object");
    }
}

/// An object or an entry grown to 2 GiB on the remote (sparse files, so
/// the test costs no disk) is rejected from its length alone: the build
/// reads none of it, stays small, and runs those targets itself.
#[test]
fn oversized_remote_objects_and_manifests_are_not_read() {
    let (dir, url) = remote_dir();
    let cache = format!("remote = {url:?}");
    let a = with_cache(&cache);
    a.mkt(&["build"]).success();
    let want = a.read_bytes("out/side.md");
    let side = remote_object(dir.path(), &a, "out/side.md");
    let grow = |p: &std::path::Path| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.set_len(2 << 30).unwrap();
    };
    grow(&side);
    grow(&remote_manifest(dir.path(), "summary"));

    let b = with_cache(&cache);
    let started = Instant::now();
    let run = b.mkt(&["build"]);
    let took = started.elapsed();
    run.success()
        .summary("2 ran, 2 cached, 0 up to date, 2 from the remote cache");
    let hex = side.file_name().unwrap().to_str().unwrap();
    run.stderr_contains(&format!(
        "warning: the remote cache `{url}`: object `objects/{}/{hex}` has 2147483648 bytes, not the {} its entry says (not read); not used for `side`, running the model\n",
        &hex[..2],
        want.len()
    ));
    run.stderr_contains("has 2147483648 bytes, more than a run manifest may have (16777216); not used for `summary`, running the model\n");
    assert_eq!(b.read_bytes("out/side.md"), want);
    // reading either whole took 17 s and 4 GB; the build itself needs a
    // few MB (every child of this test process counts: all are small)
    let max_rss_kib = {
        // SAFETY: getrusage fills the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
        u.ru_maxrss
    };
    assert!(max_rss_kib < 256 << 10, "a child used {max_rss_kib} KiB");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// A closed port: the build finishes locally with one warning, and no
/// credential appears in what it says.
#[test]
fn a_remote_that_is_down_costs_one_warning() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: connections are refused
    let p = with_cache(&format!(
        "remote = \"s3://bucket/prefix\"\nendpoint = \"http://127.0.0.1:{port}\"\ntimeout_s = 2"
    ));
    let started = Instant::now();
    let run = p.mkt_env(&["build"], &s3_env());
    run.success()
        .summary("4 ran, 0 cached, 0 up to date")
        .stderr_contains("warning: the remote cache `s3://bucket/prefix` failed while");
    assert_eq!(run.stderr.matches("warning:").count(), 1, "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_no_secret(&p, &[&run]);
}

/// A remote that cannot even be opened here (a directory that cannot be
/// created) is a warning too, not a failed build.
#[test]
fn a_remote_that_cannot_be_opened_costs_one_warning() {
    let p = with_cache("remote = \"file:///proc/no-such-dir/cache\"");
    let run = p.mkt(&["build"]);
    run.success()
        .summary("4 ran, 0 cached, 0 up to date")
        .stderr_contains("warning: the remote cache `file:///proc/no-such-dir/cache` (from `prompts.toml`) cannot be opened");
    assert_eq!(run.stderr.matches("warning:").count(), 1, "{}", run.stderr);
    // an explicit `mkt cache` command fails instead
    p.mkt(&["cache", "stats"])
        .code(1)
        .stderr_contains("cannot be opened");
}

/// A server that accepts connections and never answers: the build waits
/// for the bounded timeout once, then goes on locally.
#[test]
fn a_remote_that_hangs_costs_one_timeout_and_one_warning() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        // bounded: stops accepting after 200 connections
        for s in listener.incoming().take(200).flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let p = with_cache(&format!(
        "remote = \"webdav+http://127.0.0.1:{port}/cache\"\ntimeout_s = 1"
    ));
    let started = Instant::now();
    let run = p.mkt(&["build"]);
    let took = started.elapsed();
    run.success()
        .summary("4 ran, 0 cached, 0 up to date")
        .stderr_contains("warning: the remote cache `webdav+http://127.0.0.1:");
    assert_eq!(run.stderr.matches("warning:").count(), 1, "{}", run.stderr);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(!held.lock().unwrap().is_empty(), "mkt did try the server");
}

#[test]
fn cache_push_pull_and_stats() {
    let (_dir, url) = remote_dir();
    let cache = format!("remote = {url:?}");
    let a = with_cache(&cache);
    a.mkt(&["build", "--remote-cache", "off"]).success();
    a.mkt(&["cache", "push"])
        .success()
        .stdout_eq(&format!("pushed 4 runs to `{url}`; 0 were there already\n"));
    a.mkt(&["cache", "push"])
        .success()
        .stdout_eq(&format!("pushed 0 runs to `{url}`; 4 were there already\n"));
    let stats = a.mkt(&["cache", "stats"]);
    stats.success();
    assert!(
        stats
            .stdout
            .starts_with(&format!("remote cache `{url}`: 4 entries, 8 objects, ")),
        "{}",
        stats.stdout
    );

    // pull of one target fetches that one only
    let b = with_cache(&cache);
    b.mkt(&["cache", "pull", "side"]).success().stdout_eq(
        "pulled 1 targets from the remote cache; 0 were in the local store, 0 up to date, 0 not in the remote cache\n",
    );
    assert_eq!(b.read("out/side.md"), a.read("out/side.md"));
    assert!(!b.exists("out/outline.md"));
    b.mkt(&["cache", "pull"]).success();
    assert_eq!(out_files(&a), out_files(&b));
    assert!(b.calls().is_empty());
    b.mkt(&["build", "--remote-cache", "off"])
        .success()
        .summary("0 ran, 0 cached, 4 up to date");

    // a project whose inputs changed: pull fetches nothing for it and
    // never calls the model
    let c = with_cache(&cache);
    c.append("aside.txt", "changed\n");
    c.mkt(&["cache", "pull"]).success().stdout_eq(
        "pulled 3 targets from the remote cache; 0 were in the local store, 0 up to date, 1 not in the remote cache\n",
    );
    assert!(c.calls().is_empty());
}

#[test]
fn cache_commands_without_a_remote_say_how_to_set_one() {
    let p = project().fixture("command").build();
    p.mkt(&["cache", "stats"])
        .code(1)
        .stderr_contains("no remote cache is configured")
        .stderr_contains("help: add `[cache] remote");
}

#[test]
fn bad_cache_settings_are_project_errors() {
    let p = with_cache("remote = \"ftp://host/x\"");
    p.mkt(&["build"])
        .code(2)
        .stderr_contains("prompts.toml:")
        .stderr_contains("has scheme `ftp`");
    let p = with_cache("remote = \"webdav+https://bob:pw123@host/x\"");
    let run = p.mkt(&["build"]);
    run.code(2).stderr_contains("has credentials in it");
    assert!(!run.stderr.contains("pw123"), "{}", run.stderr);
    let p = with_cache("remote = \"file:///tmp/x\"\nmode = \"write-only\"");
    p.mkt(&["build"])
        .code(2)
        .stderr_contains("unknown cache mode `write-only`");
    let p = with_cache("remote = \"file:///tmp/x\"\nbucket = \"b\"");
    p.mkt(&["build"]).code(2).stderr_contains("unknown field");
}

/// What a remote hit saves is counted like a local hit: the tokens and
/// cost of the run that made it, at today's prices.
#[test]
fn remote_hits_count_in_what_the_cache_saved() {
    let api = FakeApi::start(|_, _| Reply::openai("ok", 1000, 200, 0));
    let (_dir, url) = remote_dir();
    let toml = format!(
        "[targets.t]\nforeach = \"docs/*.txt\"\ntemplate = \"t.md\"\noutput = \"out/{{stem}}.md\"\nmodel = \"m\"\n\n\
         [models.m]\nprovider = \"openai\"\nmodel = \"gpt-test\"\nbase_url = \"{}\"\napi_key_env = \"MKT_TEST_KEY\"\n\
         price_input_per_mtok = 1.0\nprice_output_per_mtok = 5.0\n\n[cache]\nremote = {url:?}\n",
        api.base_url()
    );
    let machine = || {
        project()
            .file("prompts.toml", &toml)
            .file("t.md", "user:\n{{ item.content }}\n")
            .file("docs/a.txt", "doc a\n")
            .file("docs/b.txt", "doc b\n")
            .build()
    };
    let env = [("MKT_TEST_KEY", "sk-test-remote")];
    machine()
        .mkt_env(&["build"], &env)
        .success()
        .summary("2 ran, 0 cached, 0 up to date; spent 2400 tokens, $0.004");
    machine().mkt_env(&["build"], &env).success().summary(
        "0 ran, 2 cached, 0 up to date, 2 from the remote cache; cache saved 2400 tokens, $0.004",
    );
    assert_eq!(api.requests().len(), 2, "machine B called no model");
}

/// Where the remote is and how it is used are not inputs: changing the
/// `[cache]` table (or switching it off) rebuilds nothing.
#[test]
fn the_cache_settings_are_not_part_of_any_input_bundle() {
    let (_dir, url) = remote_dir();
    let (_other, other_url) = remote_dir();
    let p = with_cache(&format!("remote = {url:?}"));
    p.mkt(&["build"])
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
    p.replace(
        "prompts.toml",
        &format!("remote = {url:?}"),
        &format!("remote = {other_url:?}\nmode = \"read-only\"\ntimeout_s = 3"),
    );
    p.mkt(&["build"])
        .success()
        .summary("0 ran, 0 cached, 4 up to date");
    p.mkt(&["build", "--remote-cache", "off", "--force"])
        .success()
        .summary("4 ran, 0 cached, 0 up to date");
    // the forced runs made the same prompts: the same bundles as before
    let ibhs = |p: &Project| {
        let mut v: Vec<String> = p
            .read(".mkt/history.jsonl")
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["input_bundle_hash"].as_str().unwrap().to_string()
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    assert_eq!(ibhs(&p).len(), 4);
}
