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
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
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

fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    lines[start..].join("\n")
}

impl ModelAdapter for Command {
    fn call(&self, prompt: &CompiledPrompt, root: &Utf8Path) -> Result<ModelResponse, ModelError> {
        let input = if self.json {
            prompt.canonical_json()
        } else {
            prompt.to_text().into_bytes()
        };
        let prog = &self.argv[0];
        let mut child = std::process::Command::new(prog)
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
            let err = tail(&out.stderr);
            let mut msg = format!("`{prog}` {how}");
            if !err.is_empty() {
                msg.push_str(":\n");
                msg.push_str(&err);
            }
            return Err(ModelError::new(msg));
        }
        Ok(ModelResponse {
            output: out.stdout,
            usage: None,
        })
    }
}
