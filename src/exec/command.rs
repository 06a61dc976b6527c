//! `provider = "command"`: runs `command = [prog, args...]` in the project
//! root with the compiled prompt on stdin (`stdin = "text"`, the default:
//! the prompt as text, see `CompiledPrompt::to_text`; or `stdin = "json"`:
//! `{"messages":[...]}`) and takes stdout as the output. A non-zero exit,
//! a signal or `timeout_s` running out is a failed run showing the end of
//! stderr. The program runs in its own process group so a timeout kills
//! everything it started.

use super::{ModelAdapter, ModelError, ModelResponse};
use crate::config::ModelConfig;
use crate::template::CompiledPrompt;
use camino::Utf8Path;
use rustc_hash::FxHashMap as HashMap;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

pub struct Command {
    argv: Vec<String>,
    json: bool,
    timeout: Option<Duration>,
}

impl Command {
    pub fn new(m: &ModelConfig) -> Command {
        Command {
            argv: m.settings.command.clone().unwrap_or_default(),
            json: m.settings.stdin.as_deref() == Some("json"),
            timeout: m.settings.timeout_s.map(Duration::from_secs),
        }
    }
}

/// Where each bare program name (`cat`, not `./x` or `/bin/x`) was found
/// on `PATH` in this build. Left to the spawn, the lookup tries every
/// `PATH` entry with an `execve` each, in the child, every time (nine
/// failed `execve`s before `/usr/bin/cat` on this project's machines): the
/// same spawns with the path found once were 3-4% faster (`cargo run
/// --release --example spawn_floor -- 5000 2 cat` against `/usr/bin/cat`).
static FOUND: Mutex<Option<HashMap<String, Option<PathBuf>>>> = Mutex::new(None);

pub(super) fn forget_found() {
    *FOUND.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The file `execvp` would run for `prog`: the first executable regular
/// file named `prog` in a `PATH` directory. `None` when `prog` has a `/`,
/// when the search would reach a relative `PATH` entry (which the child
/// resolves from its own working directory), or when nothing is found:
/// then the spawn searches, as before, and reports what it finds.
fn find_on_path(prog: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if prog.is_empty() || prog.contains('/') {
        return None;
    }
    let mut found = FOUND.lock().unwrap_or_else(|e| e.into_inner());
    let cache = found.get_or_insert_with(HashMap::default);
    if let Some(hit) = cache.get(prog) {
        return hit.clone();
    }
    let hit = search(
        std::env::var_os("PATH").unwrap_or_default().as_bytes(),
        prog,
    );
    cache.insert(prog.to_string(), hit.clone());
    hit
}

/// [`find_on_path`]'s search of one `PATH` value.
fn search(path_var: &[u8], prog: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    for dir in path_var.split(|&b| b == b':') {
        if dir.first() != Some(&b'/') {
            return None; // relative (or empty: the working directory)
        }
        let candidate = Path::new(std::ffi::OsStr::from_bytes(dir)).join(prog);
        let c = std::ffi::CString::new(candidate.as_os_str().as_bytes()).ok()?;
        // SAFETY: `c` is a valid NUL-terminated path; access(2) only reads it.
        let runnable = unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0;
        if runnable && candidate.is_file() {
            return Some(candidate);
        }
    }
    None
}

/// How much of the end of a program's stderr is kept: one that writes
/// megabytes of it must not put them all in memory, on the terminal and
/// into the failed run's manifest.
const STDERR_KEPT: usize = 64 * 1024;

/// Lines of stderr shown for a failed run, at most.
const STDERR_LINES: usize = 20;

/// The end of a program's stderr, and how many bytes came before it.
#[derive(Default)]
struct Tail {
    kept: Vec<u8>,
    cut: u64,
}

/// Reads `r` to its end (so the program never blocks on a full pipe),
/// keeping only the last [`STDERR_KEPT`] bytes.
fn read_tail(mut r: impl std::io::Read) -> Tail {
    let mut t = Tail::default();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => t.kept.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        // drained in halves, not per read: each byte moves at most twice
        if t.kept.len() > 2 * STDERR_KEPT {
            t.drop_front(t.kept.len() - STDERR_KEPT);
        }
    }
    t.drop_front(t.kept.len().saturating_sub(STDERR_KEPT));
    t
}

impl Tail {
    fn drop_front(&mut self, n: usize) {
        self.kept.drain(..n);
        self.cut += n as u64;
    }

    /// The last [`STDERR_LINES`] lines, after a line saying how many bytes
    /// before them are not shown, if any.
    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.kept);
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(STDERR_LINES);
        let shown = lines[start..].join("\n");
        let hidden_lines: usize = lines[..start].iter().map(|l| l.len() + 1).sum();
        let hidden = self.cut + hidden_lines as u64;
        if hidden == 0 {
            return shown;
        }
        format!("[{hidden} earlier bytes of stderr not shown]\n{shown}")
    }
}

impl ModelAdapter for Command {
    fn call(&self, prompt: &CompiledPrompt, root: &Utf8Path) -> Result<ModelResponse, ModelError> {
        let input = if self.json {
            prompt.canonical_json()
        } else {
            prompt.to_text().into_bytes()
        };
        let prog = &self.argv[0];
        let mut command = match find_on_path(prog) {
            Some(file) => {
                let mut c = std::process::Command::new(file);
                c.arg0(prog); // the program sees the name it was given
                c
            }
            None => std::process::Command::new(prog),
        };
        let mut child = command
            .args(&self.argv[1..])
            .current_dir(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| ModelError::new(format!("cannot run `{prog}`: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped");
        // Small prompts fit the pipe buffer; larger ones are written from a
        // thread so a program that answers before reading all cannot deadlock.
        let writer = if input.len() <= 16 * 1024 {
            let _ = stdin.write_all(&input);
            drop(stdin);
            None
        } else {
            Some(std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            }))
        };
        let stderr = child.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || read_tail(stderr));
        let pid = child.id() as i32;
        let _group = super::RunningGroup::register(pid);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = self.timeout.map(|t| {
            std::thread::spawn(move || {
                if done_rx.recv_timeout(t).is_err() {
                    // SAFETY: kill(2) on the child's process group; no memory involved.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    return true;
                }
                false
            })
        });
        let out = child.wait_with_output();
        let _ = done_tx.send(());
        // `wait_with_output` read stdout and waited: stderr is at its end
        let stderr = stderr.join().unwrap_or_default();
        let timed_out = watchdog.is_some_and(|w| w.join().unwrap_or(false));
        if let Some(w) = writer {
            let _ = w.join();
        }
        let out = out.map_err(|e| ModelError::new(format!("`{prog}` failed: {e}")))?;
        if super::interrupted() {
            return Err(ModelError::new(format!(
                "`{prog}` was stopped: the build was interrupted"
            )));
        }
        if timed_out {
            return Err(ModelError::new(format!(
                "`{prog}` did not finish within {} s (`timeout_s`) and was killed",
                self.timeout.map_or(0, |t| t.as_secs())
            )));
        }
        if !out.status.success() {
            let how = match (out.status.code(), out.status.signal()) {
                (Some(c), _) => format!("exited with code {c}"),
                (None, Some(s)) => format!("was killed by signal {s}"),
                _ => "failed".to_string(),
            };
            let err = stderr.text();
            let mut msg = format!("`{prog}` {how}");
            if !err.is_empty() {
                msg.push_str(":\n");
                msg.push_str(&err);
            }
            return Err(ModelError::new(msg));
        }
        Ok(ModelResponse::unnamed(out.stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_path_search_finds_what_execvp_would_run() {
        let t = tempfile::tempdir().unwrap();
        let dir = |name: &str| {
            let d = t.path().join(name);
            std::fs::create_dir(&d).unwrap();
            d
        };
        let (plain, exec, sub) = (dir("plain"), dir("exec"), dir("sub"));
        // not executable, a directory, then the real one
        std::fs::write(plain.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::create_dir(sub.join("tool")).unwrap();
        std::fs::write(exec.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(exec.join("tool"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let var = format!("{}:{}:{}", plain.display(), sub.display(), exec.display());
        assert_eq!(search(var.as_bytes(), "tool"), Some(exec.join("tool")));
        assert_eq!(search(var.as_bytes(), "absent"), None);
        // a relative entry before it: left to the spawn, which resolves it
        // from the child's working directory
        let var = format!("{}:bin:{}", plain.display(), exec.display());
        assert_eq!(search(var.as_bytes(), "tool"), None);
        assert_eq!(find_on_path("./tool"), None, "a path is not searched");
    }
}
