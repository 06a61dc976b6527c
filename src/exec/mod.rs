//! Processing: the model adapters. Each provider is one file implementing
//! [`ModelAdapter`]; the build engine only sees the trait.

mod command;
mod mock;

use crate::config::{ModelConfig, Provider};
use crate::manifest::Usage;
use crate::template::CompiledPrompt;
use camino::Utf8Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a model returned.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelResponse {
    pub output: Vec<u8>,
    pub usage: Option<Usage>,
}

/// A failed model call, with the text to show the user.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

pub trait ModelAdapter: Send + Sync {
    /// Sends the compiled prompt; `root` is the project root (the working
    /// directory of commands).
    fn call(&self, prompt: &CompiledPrompt, root: &Utf8Path) -> Result<ModelResponse, ModelError>;
}

/// Interruption (Ctrl-C, SIGTERM): the CLI's signal handler calls
/// [`interrupt`]; running `command` models are killed with their process
/// group (they run in their own group, so the terminal's signal does not
/// reach them), and the build stops dispatching work, saves what finished
/// and returns.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static RUNNING: Mutex<Vec<i32>> = Mutex::new(Vec::new());

pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    for &pgid in RUNNING.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        // SAFETY: kill(2) on a process group we started; no memory involved.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A running child's process group, killed by [`interrupt`] until dropped.
pub(crate) struct RunningGroup(i32);

impl RunningGroup {
    pub(crate) fn register(pgid: i32) -> RunningGroup {
        RUNNING.lock().unwrap_or_else(|e| e.into_inner()).push(pgid);
        if interrupted() {
            // SAFETY: as in `interrupt`.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
        }
        RunningGroup(pgid)
    }
}

impl Drop for RunningGroup {
    fn drop(&mut self) {
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&p| p != self.0);
    }
}

pub fn adapter_for(model: &ModelConfig) -> Box<dyn ModelAdapter> {
    match model.provider {
        Provider::Mock => Box::new(mock::Mock::new(model)),
        Provider::Command => Box::new(command::Command::new(model)),
    }
}
