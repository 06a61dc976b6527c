//! The providers' batch APIs: many requests submitted at once, answered
//! within a day at a discount (half the price of ordinary calls at OpenAI
//! and Anthropic). The build engine sees only [`BatchApi`]; each HTTP
//! provider implements it in its own file next to its ordinary wire
//! format, and each request's body is exactly what the ordinary call
//! would send, so that a batch answer is the same result as an ordinary
//! one and is filed under the same InputBundleHash.
//!
//! A batch lives at the provider, across process exits: what the build
//! keeps of it (`.mkt/batches/`) is the id [`BatchApi::submit`] returned,
//! and everything it needs to finish the answers when they come.

mod anthropic;
mod openai;

pub use anthropic::AnthropicBatch;
pub use openai::OpenaiBatch;

use super::{ModelError, ModelResponse};
use crate::config::{ModelConfig, Provider};
use crate::template::CompiledPrompt;
use std::collections::HashSet;

/// One request of a batch. `custom_id` is the request's InputBundleHash in
/// hex (64 characters), which the provider echoes with its answer.
#[derive(Debug, Clone)]
pub struct BatchRequest {
    pub custom_id: String,
    pub prompt: CompiledPrompt,
}

/// Where a batch is in its life at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPhase {
    /// Accepted and not yet ended (validating, in progress, finalizing).
    Running,
    /// Being cancelled: answers so far may still come.
    Cancelling,
    /// Ended: [`BatchApi::results`] gives the answers and errors (also
    /// after a cancellation or an expiry, where the requests that did not
    /// run have a [`ModelError::BatchRequestNotRun`] each, as far as the
    /// provider lists them: see [`with_unanswered`]).
    Ended,
    /// The batch as a whole failed (validation, say): no answer will
    /// come; `BatchProgress::status` says the provider's reason.
    /// [`BatchApi::results`] still gives the per-request errors the
    /// provider kept (OpenAI's error file).
    Failed,
}

/// A batch's state at one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchProgress {
    pub phase: BatchPhase,
    /// The provider's own word for the state (`in_progress`, `ended`,
    /// `failed: <reason>`), for display.
    pub status: String,
    /// Requests in the batch, and of them those ended (answered or
    /// failed) and those failed, as far as the provider tells.
    pub total: u64,
    pub done: u64,
    pub failed: u64,
}

/// A provider's batch API for one model.
pub trait BatchApi: Send + Sync {
    /// Submits `requests` (all for this model, within [`BatchApi::limits`])
    /// as one batch and returns its id. `tag` is unique to this
    /// submission; where the provider keeps metadata with a batch it is
    /// stored there, so that [`BatchApi::find`] can recover the id of a
    /// batch whose submission was cut short before its id was recorded.
    fn submit(&self, requests: &[BatchRequest], tag: &str) -> Result<String, ModelError>;

    /// The id of a batch submitted with `tag`, if the provider can tell
    /// (`Ok(None)`: not found, or the provider keeps no metadata).
    fn find(&self, tag: &str) -> Result<Option<String>, ModelError>;

    /// The batch's state now.
    fn poll(&self, id: &str) -> Result<BatchProgress, ModelError>;

    /// The answers of an ended (or failed) batch, by `custom_id`, in no
    /// particular order: answers and per-request errors alike (OpenAI's
    /// output and error files both; Anthropic's succeeded, errored,
    /// canceled and expired results). An answer is parsed exactly as the
    /// ordinary call's would be; `format = "json"` is checked by the
    /// caller ([`super::check_answer`]). A request's error is the one the
    /// ordinary call would give for the same answer (an HTTP status and
    /// the API's message), or [`ModelError::BatchRequestNotRun`] (expired,
    /// cancelled), or [`ModelError::BatchRequestRefused`].
    ///
    /// Only what the provider returned is listed: a request it says
    /// nothing about is absent. The caller, who knows what it submitted,
    /// passes the list through [`with_unanswered`] so that none vanishes.
    /// A batch still running or cancelling is
    /// [`ModelError::BatchNotEnded`].
    fn results(&self, id: &str) -> Result<Vec<Outcome>, ModelError>;

    /// Asks the provider to cancel the batch.
    fn cancel(&self, id: &str) -> Result<(), ModelError>;

    /// The most requests and body bytes (of the uploaded JSONL, or the
    /// JSON body) one batch may hold. [`BatchApi::submit`] refuses a batch
    /// beyond them ([`ModelError::BatchTooLarge`]) without sending it.
    fn limits(&self) -> BatchLimits;

    /// The bytes `request` takes of [`BatchLimits::max_bytes`], exactly:
    /// its line of the JSONL file (OpenAI), its entry in the JSON body
    /// (Anthropic), separator included.
    fn request_bytes(&self, request: &BatchRequest) -> usize;
}

/// Whether `requests` of `bytes` in all fit `limits`, else the error.
fn check_limits(limits: BatchLimits, requests: usize, bytes: usize) -> Result<(), ModelError> {
    if requests <= limits.max_requests && bytes <= limits.max_bytes {
        return Ok(());
    }
    Err(ModelError::BatchTooLarge {
        requests,
        bytes,
        max_requests: limits.max_requests,
        max_bytes: limits.max_bytes,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_requests: usize,
    pub max_bytes: usize,
}

/// One request's result in a batch: its `custom_id` and its answer or
/// error.
pub type Outcome = (String, Result<ModelResponse, ModelError>);

/// `results` of batch `batch`, with a [`ModelError::BatchRequestNotRun`]
/// added for each of `submitted` (the batch's `custom_id`s) that they do
/// not mention. A provider lists every request of an ended batch, in
/// principle; one that does not (a truncated file, a server that drops
/// the requests a cancellation stopped, as llmock does) must not make a
/// request vanish without a word.
pub fn with_unanswered<'a>(
    batch: &str,
    submitted: impl IntoIterator<Item = &'a str>,
    mut results: Vec<Outcome>,
) -> Vec<Outcome> {
    let seen: HashSet<&str> = results.iter().map(|(id, _)| id.as_str()).collect();
    let missing: Vec<Outcome> = submitted
        .into_iter()
        .filter(|id| !seen.contains(id))
        .map(|id| {
            let e = ModelError::BatchRequestNotRun {
                batch: batch.to_string(),
                reason: "the provider returned no result for it".to_string(),
            };
            (id.to_string(), Err(e))
        })
        .collect();
    results.extend(missing);
    results
}

/// A provider's reading of its batch object: its progress, or why the
/// answer is not one.
type ReadProgress = fn(&serde_json::Value, &str) -> Result<BatchProgress, ModelError>;

/// The batch object at `path` of `api`, with its progress as `read` finds it.
fn fetch(
    api: &super::http::Endpoint,
    path: &str,
    read: ReadProgress,
) -> Result<(serde_json::Value, BatchProgress), ModelError> {
    let batch = api.json(super::http::Method::Get, path, None)?;
    let p = read(&batch, &api.url(path))?;
    Ok((batch, p))
}

/// The batch object `id` at `path` once it has results to read: ended, or
/// failed as a whole; `BatchNotEnded` while it runs or is being cancelled.
fn ended(
    api: &super::http::Endpoint,
    id: &str,
    path: &str,
    read: ReadProgress,
) -> Result<serde_json::Value, ModelError> {
    let (batch, p) = fetch(api, path, read)?;
    if matches!(p.phase, BatchPhase::Running | BatchPhase::Cancelling) {
        return Err(ModelError::BatchNotEnded {
            batch: id.to_string(),
            status: p.status,
        });
    }
    Ok(batch)
}

/// The batch API of `model`'s provider, if it has one. Its requests go to
/// the model's base URL (`base_url`, `OPENAI_BASE_URL`,
/// `ANTHROPIC_BASE_URL`) with its key, as the ordinary calls do.
pub fn batch_api_for(model: &ModelConfig) -> Option<Box<dyn BatchApi>> {
    match model.provider {
        Provider::Mock | Provider::Command => None,
        Provider::Openai => Some(Box::new(OpenaiBatch::new(model))),
        Provider::Anthropic => Some(Box::new(AnthropicBatch::new(model))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_the_provider_says_nothing_about_are_reported_not_run() {
        let answered = ModelResponse::unnamed(b"x".to_vec());
        let got = with_unanswered(
            "b1",
            ["a", "b", "c"],
            vec![("b".to_string(), Ok(answered.clone()))],
        );
        let not_run = Err(ModelError::BatchRequestNotRun {
            batch: "b1".into(),
            reason: "the provider returned no result for it".into(),
        });
        assert_eq!(
            got,
            vec![
                ("b".to_string(), Ok(answered)),
                ("a".to_string(), not_run.clone()),
                ("c".to_string(), not_run),
            ]
        );
    }
}
