//! Every file of `.mkt/` damaged in every way a disk, a crash or a user can
//! damage it: deleted, cut short, a byte flipped. Whatever is left, a build
//! must give the outputs a build from an empty store gives, and nothing may
//! be called fresh that is not: a damaged store costs time, never a stale
//! output.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use support::{mkt_bin, project};

/// A `foreach` layer, a target that reads its outputs and the same files
/// again as a glob input, and one more layer on top (the pipeline of the
/// report that found a stale output after `.mkt/state.log` was lost).
const PROJECT: &str = r#"
[targets.s]
foreach = "docs/*.md"
template = "t/s.md"
output = "out/s/{stem}.md"

[targets.all]
template = "t/all.md"
inputs = { notes = "docs/*.md" }
output = "out/all.md"

[targets.top]
template = "t/top.md"
output = "out/top.md"
"#;

const ALL: &str = "{% for p in targets.s %}{{ p.content }}\n{% endfor %}\
                   {% for n in inputs.notes %}{{ n.path }}\n{% endfor %}";

/// What the user does after the store was damaged.
#[derive(Clone, Copy, Debug)]
enum Next {
    /// Deletes an output (the stamp then sees only that change).
    RemoveOutput,
    /// Edits a document.
    EditInput,
}

impl Next {
    fn apply(self, root: &Path) {
        match self {
            Next::RemoveOutput => std::fs::remove_file(root.join("out/all.md")).unwrap(),
            Next::EditInput => std::fs::write(root.join("docs/d1.md"), "doc 1 v3\n").unwrap(),
        }
    }
}

/// How a file is damaged.
#[derive(Clone, Copy, Debug)]
enum Damage {
    Delete,
    CutAt(usize),
    FlipAt(usize),
}

impl Damage {
    fn apply(self, file: &Path) {
        match self {
            Damage::Delete => std::fs::remove_file(file).unwrap(),
            Damage::CutAt(n) => {
                let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
                f.set_len(n as u64).unwrap();
            }
            Damage::FlipAt(i) => {
                let mut b = std::fs::read(file).unwrap();
                let i = i.min(b.len() - 1);
                b[i] ^= 0x5a;
                std::fs::write(file, b).unwrap();
            }
        }
    }
}

/// Every cut of a small file, and of the journal every cut that ends in
/// another place (its header, each record's first, second and last byte:
/// a record cut anywhere inside is dropped whole); of a larger file, 48
/// spread over it and its last 8 bytes. Flips at 16 places and the last 2.
fn damages(file: &str, bytes: &[u8]) -> Vec<Damage> {
    let len = bytes.len();
    let spread = |n: usize, tail: usize| -> Vec<usize> {
        let mut at: Vec<usize> = (0..n.min(len)).map(|k| k * len / n.min(len)).collect();
        at.extend(len.saturating_sub(tail)..len);
        at
    };
    let mut cuts = match file {
        "state.log" => journal_cuts(bytes),
        _ if len <= 1024 => (0..len).collect(),
        _ => spread(48, 8),
    };
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = vec![Damage::Delete];
    out.extend(cuts.into_iter().map(Damage::CutAt));
    out.extend(spread(16, 2).into_iter().map(Damage::FlipAt));
    out
}

/// `state.log` := magic (8) | snapshot checksum (32) | (u64 len | delta | 32-byte sum)*
fn journal_cuts(log: &[u8]) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..=40.min(log.len())).collect();
    let mut at = 40;
    while at + 8 <= log.len() {
        let len = u64::from_le_bytes(log[at..at + 8].try_into().unwrap()) as usize;
        let end = at + 8 + len + 32;
        cuts.extend([at + 1, at + 8, at + 9, end - 1, end]);
        at = end;
    }
    assert_eq!(at, log.len(), "the journal parses");
    cuts.retain(|&c| c < log.len());
    cuts
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn mkt(root: &Path, args: &[&str]) -> Out {
    let out = Command::new(mkt_bin())
        .args(args)
        .current_dir(root)
        .stdin(Stdio::null())
        .env_remove("MKT_REMOTE_CACHE")
        .output()
        .unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The project after three builds and two edits: its state is a snapshot
/// and a journal of later records, its stamp that of the last build.
fn edited_project() -> support::Project {
    let p = project()
        .file("prompts.toml", PROJECT)
        .file("t/s.md", "Summarise: {{ item.content }}\n")
        .file("t/all.md", ALL)
        .file("t/top.md", "Brief: {{ targets.all }}\n")
        .file("docs/d1.md", "doc 1 v1\n")
        .file("docs/d2.md", "doc 2 v1\n")
        .file("docs/d3.md", "doc 3 v1\n")
        .build();
    let settle = || std::thread::sleep(std::time::Duration::from_millis(60));
    p.mkt(&["build"]).success();
    settle();
    p.write("docs/d1.md", "doc 1 v2\n");
    p.mkt(&["build"]).success();
    settle();
    p.write("docs/d2.md", "doc 2 v2\n");
    p.mkt(&["build"]).success();
    settle();
    assert!(p.exists(".mkt/state.log"), "the state has a journal");
    p
}

/// Every file under `dir`, sorted, with its contents.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The outputs a build from an empty store makes after `next`.
fn expected_outputs(edited: &Path, next: Next) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    copy_with_times(edited, dir.path());
    std::fs::remove_dir_all(dir.path().join(".mkt")).unwrap();
    next.apply(dir.path());
    std::fs::remove_dir_all(dir.path().join("out")).unwrap();
    assert_eq!(mkt(dir.path(), &["build"]).code, Some(0));
    tree(&dir.path().join("out"))
}

/// Copies `from` to `to` with every file's and directory's mtime: a fresh
/// mtime would make each entry racy (`state/mod.rs`), verified by content
/// rather than vouched for by its stat.
fn copy_with_times(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_with_times(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
            set_mtime(&src, &dst);
        }
    }
    set_mtime(from, to);
}

fn set_mtime(from: &Path, to: &Path) {
    let mtime = std::fs::metadata(from).unwrap().modified().unwrap();
    let f = std::fs::File::open(to).unwrap();
    f.set_modified(mtime).unwrap();
}

/// A copy of the project whose no-op stamp holds for the copy: a copy has
/// other inodes, so one more build stamps it (and journals the new
/// stats), as a user's next build would. Then a document is touched and
/// built again, which changes one entry of the stamp: that build writes
/// it as a patch (`.mkt/noop.patch`), so the patch is damaged too.
fn copy_of(edited: &Path, to: &Path) {
    copy_with_times(edited, to);
    let restamp = mkt(to, &["build"]);
    assert!(
        restamp.stderr.starts_with("0 ran, 0 cached, 5 up to date"),
        "{}",
        restamp.stderr
    );
    assert!(to.join(".mkt/noop").exists());
    let doc = std::fs::File::options()
        .write(true)
        .open(to.join("docs/d3.md"))
        .unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    doc.set_modified(an_hour_ago).unwrap();
    let touched = mkt(to, &["build"]);
    assert!(
        touched.stderr.starts_with("0 ran, 0 cached, 5 up to date"),
        "{}",
        touched.stderr
    );
    assert!(to.join(".mkt/noop.patch").exists());
}

/// One damaged copy: `None` when all is well, else what went wrong.
fn check(
    edited: &Path,
    file: &str,
    damage: Damage,
    next: Next,
    want: &[(PathBuf, Vec<u8>)],
) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    copy_of(edited, root);
    damage.apply(&root.join(".mkt").join(file));
    next.apply(root);
    let case = format!("`.mkt/{file}` {damage:?}, then {next:?}");
    let status = mkt(root, &["status"]);
    let build = mkt(root, &["build"]);
    if build.code == Some(2) && build.stderr.contains("the store") && file == "VERSION" {
        // refused, naming the store and what to do: nothing was built
        return (status.code != Some(2)).then(|| format!("{case}: status did not refuse too"));
    }
    if status.stdout.contains("are fresh") || status.code == Some(0) {
        return Some(format!(
            "{case}: status called a stale project fresh:\n{}",
            status.stdout
        ));
    }
    if build.code != Some(0) {
        return Some(format!(
            "{case}: build failed ({:?}):\n{}",
            build.code, build.stderr
        ));
    }
    let got = tree(&root.join("out"));
    if got != want {
        let names = |t: &[(PathBuf, Vec<u8>)]| {
            t.iter()
                .map(|(p, b)| format!("{}: {:?}", p.display(), String::from_utf8_lossy(b)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        return Some(format!(
            "{case}: outputs differ from an empty store's build\n{}\n--- got ---\n{}\n--- want ---\n{}",
            build.stderr,
            names(&got),
            names(want)
        ));
    }
    let after = mkt(root, &["status"]);
    (after.code != Some(0)).then(|| format!("{case}: not fresh after the build:\n{}", after.stdout))
}

#[test]
fn every_damage_to_every_store_file_costs_time_never_a_stale_output() {
    let p = edited_project();
    let edited = p.root();
    let wants = [Next::RemoveOutput, Next::EditInput].map(|n| expected_outputs(edited, n));
    // (the files as each copy has them, once stamped)
    let sample = tempfile::tempdir().unwrap();
    copy_of(edited, sample.path());
    let mut cases = Vec::new();
    for (rel, bytes) in tree(&sample.path().join(".mkt")) {
        let rel = rel.to_str().unwrap().to_string();
        for d in damages(&rel, &bytes) {
            cases.push((rel.clone(), d));
        }
    }
    assert!(cases.iter().any(|(f, _)| f == "state.log"));
    assert!(cases.iter().any(|(f, _)| f == "noop.patch"));
    assert!(cases.iter().any(|(f, _)| f.starts_with("packs/")));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut bad = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((file, damage)) = cases.get(i) else {
                            break;
                        };
                        let (then, want) = if i.is_multiple_of(2) {
                            (Next::RemoveOutput, &wants[0])
                        } else {
                            (Next::EditInput, &wants[1])
                        };
                        bad.extend(check(edited, file, *damage, then, want));
                    }
                    bad
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} damaged stores went wrong; the first:\n{}",
        failures.len(),
        cases.len(),
        failures
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}
