//! Processing: the model adapters. Each provider is one file implementing
//! [`ModelAdapter`]; the build engine only sees the trait.

mod anthropic;
pub mod batch;
pub mod cache;
mod command;
mod error;
mod http;
mod limiter;
mod mock;
mod openai;

pub use error::{HttpError, ModelError, TransportKind};
pub use limiter::{rate_limit_wait_left, rate_limit_waited};

/// Clears what the adapters remember between calls (HTTP pools, quota,
/// where commands were found on `PATH`): a new build may find the quota
/// topped up, the limits changed or a program installed.
pub fn begin_build() {
    http::begin_build();
    limiter::begin_build();
    command::forget_found();
}

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
    /// The model the provider says answered (`model` in OpenAI's and
    /// Anthropic's answers): for an alias, the dated snapshot behind it.
    pub model: Option<String>,
    /// OpenAI's `system_fingerprint`, the backend configuration.
    pub system_fingerprint: Option<String>,
}

impl ModelResponse {
    /// An answer that names no model (mock, command).
    pub fn unnamed(output: Vec<u8>) -> ModelResponse {
        ModelResponse {
            output,
            usage: None,
            model: None,
            system_fingerprint: None,
        }
    }
}

/// How a call went besides its result, for the manifest: the attempts it
/// took (0 for providers that never retry) and the time it waited for
/// rate limits (the model's limiter and the waits 429 and 529 answers
/// asked for).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CallStats {
    pub attempts: u32,
    pub rate_limit_wait: std::time::Duration,
}

pub trait ModelAdapter: Send + Sync {
    /// Sends the compiled prompt; `root` is the project root (the working
    /// directory of commands).
    fn call(&self, prompt: &CompiledPrompt, root: &Utf8Path) -> Result<ModelResponse, ModelError>;

    /// [`ModelAdapter::call`], also telling how it went; providers that
    /// retry or wait override it.
    fn call_counted(
        &self,
        prompt: &CompiledPrompt,
        root: &Utf8Path,
        _stats: &mut CallStats,
    ) -> Result<ModelResponse, ModelError> {
        self.call(prompt, root)
    }
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
        Provider::Openai => Box::new(http::Http::new(model, &openai::WIRE)),
        Provider::Anthropic => Box::new(http::Http::new(model, &anthropic::WIRE)),
    }
}

/// Runs `model` on `prompt` and checks the answer against `format`: with
/// `format = "json"` an output that is not JSON, or does not match
/// `schema`, is a failed run (whatever the provider promised).
pub fn call(
    model: &ModelConfig,
    prompt: &CompiledPrompt,
    root: &Utf8Path,
    stats: &mut CallStats,
) -> Result<ModelResponse, ModelError> {
    let resp = adapter_for(model).call_counted(prompt, root, stats)?;
    check_answer(model, resp)
}

/// The check every answer passes, however it came (an ordinary call, a
/// batch): with `format = "json"`, an output that is not JSON, or does not
/// match `schema`, is a failed run.
pub fn check_answer(model: &ModelConfig, resp: ModelResponse) -> Result<ModelResponse, ModelError> {
    if model.settings.format.as_deref() == Some("json")
        && let Err(why) = check_json(&resp.output, model.settings.schema.as_ref())
    {
        return Err(ModelError::NotJson {
            model: model.name.clone(),
            why,
            usage: resp.usage,
        });
    }
    Ok(resp)
}

/// Why `output` is not JSON matching `schema`, if it is not. Validation
/// is the `jsonschema` crate's (draft detected from `$schema`, default
/// 2020-12).
fn check_json(output: &[u8], schema: Option<&serde_json::Value>) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_slice(output).map_err(|e| {
        let text = String::from_utf8_lossy(output);
        let start: String = text.chars().take(200).collect();
        format!("the output is not JSON ({e}): {start}")
    })?;
    let Some(schema) = schema else {
        return Ok(());
    };
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| format!("`schema` is not a valid JSON Schema: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .take(5)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("at `{}`: {e}", if at.is_empty() { "/" } else { &at })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the output does not match `schema`:\n{}",
            errors.join("\n")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_output_is_checked_against_the_schema() {
        let schema = json!({
            "type": "object",
            "required": ["title", "tags"],
            "properties": {"title": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}}
        });
        assert!(check_json(br#"{"title": "a", "tags": ["x"]}"#, Some(&schema)).is_ok());
        assert!(check_json(br#"{"anything": 1}"#, None).is_ok());
        let e = check_json(b"Sure! Here is the JSON:", None).unwrap_err();
        assert!(e.starts_with("the output is not JSON"), "{e}");
        let e = check_json(br#"{"title": 3}"#, Some(&schema)).unwrap_err();
        assert!(e.contains("does not match `schema`"), "{e}");
        assert!(e.contains("\"tags\" is a required property"), "{e}");
        assert!(e.contains("at `/title`"), "{e}");
    }
}
