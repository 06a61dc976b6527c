//! Anthropic's Message Batches API for `provider = "anthropic"`, at the
//! model's base URL with the chat call's headers (`x-api-key`,
//! `anthropic-version`).
//!
//! What this relies on, from the Anthropic API reference (Create,
//! Retrieve, Cancel a Message Batch, Retrieve Message Batch results) and
//! the batch processing guide:
//! - `POST /v1/messages/batches` with `{"requests": [{"custom_id",
//!   "params"}]}`, `params` being a Messages API request body; at most
//!   100,000 requests or 256 MB, whichever comes first; `custom_id`
//!   matches `^[a-zA-Z0-9_-]{1,64}$` (an InputBundleHash in hex does);
//! - `GET /v1/messages/batches/{id}`: `processing_status` `in_progress`,
//!   `canceling` or `ended`; `request_counts` of `processing`,
//!   `succeeded`, `errored`, `canceled` and `expired`; `results_url` once
//!   it has ended; a batch expires 24 hours after its creation;
//! - `POST /v1/messages/batches/{id}/cancel`;
//! - the results, a JSONL file in no particular order, one line per
//!   request `{"custom_id", "result": {"type"}}` with `type` `succeeded`
//!   (and `message`, a Messages API answer), `errored` (and `error`, an
//!   API error), `canceled` or `expired`; kept 29 days after the batch's
//!   creation.
//!
//! Batches carry no metadata, so [`BatchApi::find`] cannot recover one.

use super::{
    BatchApi, BatchLimits, BatchPhase, BatchProgress, BatchRequest, Outcome, check_limits,
};
use crate::config::ModelConfig;
use crate::exec::anthropic::{WIRE, request_body};
use crate::exec::http::{Endpoint, Method};
use crate::exec::{ModelError, ModelResponse};
use serde_json::{Value, json};

pub struct AnthropicBatch {
    model: ModelConfig,
}

impl AnthropicBatch {
    pub fn new(model: &ModelConfig) -> AnthropicBatch {
        AnthropicBatch {
            model: model.clone(),
        }
    }

    fn api(&self) -> Result<Endpoint, ModelError> {
        Endpoint::new(&self.model, &WIRE)
    }
}

/// The body that creates the batch, each `params` exactly the ordinary
/// call's body.
pub fn create_body(model: &ModelConfig, requests: &[BatchRequest]) -> Value {
    let requests: Vec<Value> = requests.iter().map(|r| entry(model, r)).collect();
    json!({ "requests": requests })
}

fn entry(model: &ModelConfig, r: &BatchRequest) -> Value {
    json!({"custom_id": r.custom_id, "params": request_body(model, &r.prompt)})
}

fn unexpected(url: &str, why: String) -> ModelError {
    ModelError::BatchAnswer {
        url: url.to_string(),
        why,
    }
}

/// A Message Batch object's state.
pub fn progress(v: &Value, url: &str) -> Result<BatchProgress, ModelError> {
    let status = v
        .get("processing_status")
        .and_then(Value::as_str)
        .ok_or_else(|| unexpected(url, "no `processing_status` string".into()))?;
    let phase = match status {
        "in_progress" => BatchPhase::Running,
        "canceling" => BatchPhase::Cancelling,
        "ended" => BatchPhase::Ended,
        other => {
            return Err(unexpected(
                url,
                format!("unknown `processing_status` `{other}`"),
            ));
        }
    };
    let n = |k: &str| {
        v.pointer(&format!("/request_counts/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let failed = n("errored") + n("canceled") + n("expired");
    let done = n("succeeded") + failed;
    Ok(BatchProgress {
        phase,
        status: status.to_string(),
        total: done + n("processing"),
        done,
        failed,
    })
}

/// The HTTP status an API error type stands for (the API reference's
/// table of errors), for an errored result, which carries no status.
fn status_of(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// The lines of a results file.
pub fn read_results(
    api: &Endpoint,
    batch: &str,
    file: &[u8],
    url: &str,
    into: &mut Vec<Outcome>,
) -> Result<(), ModelError> {
    let chat_url = api.chat_url();
    for (i, line) in file.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad = |why: String| unexpected(url, format!("line {}: {why}", i + 1));
        let v: Value = serde_json::from_slice(line).map_err(|e| bad(format!("not JSON ({e})")))?;
        let id = v
            .get("custom_id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no `custom_id`".into()))?
            .to_string();
        let result = v.get("result").unwrap_or(&Value::Null);
        let kind = result.get("type").and_then(Value::as_str).unwrap_or("");
        let not_run = |reason: &str| ModelError::BatchRequestNotRun {
            batch: batch.to_string(),
            reason: reason.to_string(),
        };
        let outcome: Result<ModelResponse, ModelError> = match kind {
            "succeeded" => api.read_answer(result.get("message").unwrap_or(&Value::Null)),
            "errored" => Err(errored(api, result.get("error"), &chat_url)),
            "canceled" => Err(not_run("the batch was canceled before the request ran")),
            "expired" => Err(not_run(
                "the batch expired (24 hours after its creation) before the request ran",
            )),
            other => return Err(bad(format!("unknown `result.type` `{other}`"))),
        };
        into.push((id, outcome));
    }
    Ok(())
}

/// An errored result's error: `{"type": "error", "error": {"type",
/// "message"}}` as an ordinary answer's body, or the inner object alone.
fn errored(api: &Endpoint, error: Option<&Value>, chat_url: &str) -> ModelError {
    let error = error.cloned().unwrap_or(Value::Null);
    let body = if error.get("error").is_some() {
        error
    } else {
        json!({ "type": "error", "error": error })
    };
    let kind = body
        .pointer("/error/type")
        .and_then(Value::as_str)
        .unwrap_or("");
    api.answer_error(status_of(kind), &body, chat_url)
}

impl BatchApi for AnthropicBatch {
    fn submit(&self, requests: &[BatchRequest], _tag: &str) -> Result<String, ModelError> {
        let api = self.api()?;
        // not sent again when it may have arrived: with no metadata to
        // find it by, a second batch would run every request twice
        let body = create_body(&self.model, requests);
        let bytes = serde_json::to_vec(&body).expect("JSON").len();
        check_limits(self.limits(), requests.len(), bytes)?;
        let batch = api.create("/messages/batches", &body)?;
        batch
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| unexpected(&api.url("/messages/batches"), "no `id` string".into()))
    }

    /// No metadata on Message Batches: nothing to match a tag with.
    fn find(&self, _tag: &str) -> Result<Option<String>, ModelError> {
        Ok(None)
    }

    fn poll(&self, id: &str) -> Result<BatchProgress, ModelError> {
        Ok(super::fetch(&self.api()?, &format!("/messages/batches/{id}"), progress)?.1)
    }

    fn results(&self, id: &str) -> Result<Vec<Outcome>, ModelError> {
        let api = self.api()?;
        let batch = super::ended(&api, id, &format!("/messages/batches/{id}"), progress)?;
        let url = results_url(&api, id, batch.get("results_url").and_then(Value::as_str));
        let content = api.send(Method::Get, url.clone(), "", Vec::new())?;
        let mut out = Vec::new();
        read_results(&api, id, &content, &url, &mut out)?;
        Ok(out)
    }

    fn cancel(&self, id: &str) -> Result<(), ModelError> {
        let api = self.api()?;
        api.json(
            Method::Post,
            &format!("/messages/batches/{id}/cancel"),
            None,
        )?;
        Ok(())
    }

    fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_requests: 100_000,
            max_bytes: 256_000_000,
        }
    }

    /// Its entry and the comma after it (the body's own `{"requests":[]}`
    /// is left to the margin).
    fn request_bytes(&self, request: &BatchRequest) -> usize {
        serde_json::to_vec(&entry(&self.model, request))
            .expect("JSON")
            .len()
            + 1
    }
}

/// Where the results are read: the batch's `results_url` when it is on
/// the API's own origin (or a path on it), else the documented
/// `{base}/messages/batches/{id}/results`: the key is never sent to a
/// host other than the one the model is configured for.
fn results_url(api: &Endpoint, id: &str, given: Option<&str>) -> String {
    let documented = || api.url(&format!("/messages/batches/{id}/results"));
    match given {
        Some(u) if u.starts_with('/') => api.on_origin(u).unwrap_or_else(documented),
        Some(u) if api.same_origin(u) => u.to_string(),
        _ => documented(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelSettings, Provider};
    use crate::exec::HttpError;
    use crate::template::{CompiledPrompt, Message};

    fn model(base: &str) -> ModelConfig {
        ModelConfig {
            name: "c".into(),
            provider: Provider::Anthropic,
            settings: ModelSettings {
                model: Some("claude-x".into()),
                base_url: Some(base.into()),
                api_key_env: Some(String::new()),
                max_tokens: Some(50),
                ..Default::default()
            },
        }
    }

    #[test]
    fn each_request_carries_the_ordinary_body() {
        let m = model("http://127.0.0.1:9");
        let r = BatchRequest {
            custom_id: "a".repeat(64),
            prompt: CompiledPrompt {
                messages: vec![
                    Message {
                        role: "system".into(),
                        content: "Be brief.".into(),
                    },
                    Message {
                        role: "user".into(),
                        content: "Hi".into(),
                    },
                ],
                cache_breaks: Vec::new(),
            },
        };
        assert_eq!(
            create_body(&m, std::slice::from_ref(&r)),
            json!({"requests": [{"custom_id": r.custom_id, "params": request_body(&m, &r.prompt)}]})
        );
    }

    #[test]
    fn request_bytes_add_up_to_the_body() {
        let m = model("http://127.0.0.1:9");
        let api = AnthropicBatch::new(&m);
        let reqs: Vec<BatchRequest> = ["Hi", "a \"quoted\"\nline", "é"]
            .iter()
            .enumerate()
            .map(|(i, text)| BatchRequest {
                custom_id: format!("{i:064x}"),
                prompt: CompiledPrompt {
                    messages: vec![Message {
                        role: "user".into(),
                        content: text.to_string(),
                    }],
                    cache_breaks: Vec::new(),
                },
            })
            .collect();
        let body = serde_json::to_vec(&create_body(&m, &reqs)).unwrap().len();
        let sum: usize = reqs.iter().map(|r| api.request_bytes(r)).sum();
        // `{"requests":[` and `]}`, less the comma after the last entry
        assert_eq!(sum + r#"{"requests":[]}"#.len() - 1, body);
        assert_eq!(
            check_limits(api.limits(), 100_001, 10)
                .unwrap_err()
                .to_string(),
            "a batch of 100001 requests and 10 bytes is beyond the provider's limits (100000 requests, 256000000 bytes); nothing was sent\n\
             help: this is a bug in how mkt splits batches; `mkt build --no-batch` sends the requests one by one"
        );
        assert!(check_limits(api.limits(), 100_000, 256_000_000).is_ok());
        assert!(check_limits(api.limits(), 1, 256_000_001).is_err());
    }

    #[test]
    fn every_processing_status_maps_to_a_phase() {
        for (status, phase) in [
            ("in_progress", BatchPhase::Running),
            ("canceling", BatchPhase::Cancelling),
            ("ended", BatchPhase::Ended),
        ] {
            let v = json!({"processing_status": status, "request_counts":
                {"processing": 4, "succeeded": 3, "errored": 2, "canceled": 1, "expired": 1}});
            assert_eq!(
                progress(&v, "u").unwrap(),
                BatchProgress {
                    phase,
                    status: status.into(),
                    total: 11,
                    done: 7,
                    failed: 4
                }
            );
        }
        let e = progress(&json!({"processing_status": "archived"}), "u").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unexpected answer from `u`: unknown `processing_status` `archived`"
        );
    }

    #[test]
    fn results_of_every_type_whatever_the_order() {
        let api = Endpoint::new(&model("http://127.0.0.1:9"), &WIRE).unwrap();
        let message = json!({"type": "message", "content": [{"type": "text", "text": "Hello"}],
                             "usage": {"input_tokens": 9, "output_tokens": 1}});
        let file = [
            json!({"custom_id": "d", "result": {"type": "expired"}}),
            json!({"custom_id": "b", "result": {"type": "errored", "error":
                {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too large"}}}}),
            json!({"custom_id": "a", "result": {"type": "succeeded", "message": message}}),
            json!({"custom_id": "c", "result": {"type": "canceled"}}),
            json!({"custom_id": "e", "result": {"type": "errored", "error":
                {"type": "overloaded_error", "message": "Overloaded"}}}),
        ]
        .map(|v| v.to_string())
        .join("\n");
        let mut got = Vec::new();
        read_results(&api, "msgbatch_1", file.as_bytes(), "u", &mut got).unwrap();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got[0].0, "a");
        assert_eq!(got[0].1.as_ref().unwrap().output, b"Hello");
        let err = |i: usize| got[i].1.clone().unwrap_err();
        let http = |status: u16, message: &str| {
            ModelError::Http(HttpError {
                status,
                url: "http://127.0.0.1:9/v1/messages".into(),
                message: message.into(),
                retryable: false,
                attempts: 1,
                max_retries: 0,
                wait_asked: None,
            })
        };
        assert_eq!(
            err(1),
            http(400, "invalid_request_error: max_tokens: too large")
        );
        assert_eq!(err(4), http(529, "overloaded_error: Overloaded"));
        assert_eq!(
            err(2).to_string(),
            "not run in batch `msgbatch_1`: the batch was canceled before the request ran\n\
             help: nothing was stored for it; the next `mkt build` sends it again"
        );
        assert_eq!(
            err(3),
            ModelError::BatchRequestNotRun {
                batch: "msgbatch_1".into(),
                reason: "the batch expired (24 hours after its creation) before the request ran"
                    .into()
            }
        );
        let e = read_results(
            &api,
            "m",
            br#"{"custom_id": "x", "result": {"type": "pending"}}"#,
            "u",
            &mut Vec::new(),
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "unexpected answer from `u`: line 1: unknown `result.type` `pending`"
        );
    }

    #[test]
    fn the_key_goes_only_to_the_configured_origin() {
        let api = Endpoint::new(&model("http://127.0.0.1:9/anthropic"), &WIRE).unwrap();
        for (given, want) in [
            (
                Some("/anthropic/v1/messages/batches/b/results"),
                "http://127.0.0.1:9/anthropic/v1/messages/batches/b/results",
            ),
            (
                Some("http://127.0.0.1:9/files/b.jsonl"),
                "http://127.0.0.1:9/files/b.jsonl",
            ),
            (
                Some("https://elsewhere.example/v1/messages/batches/b/results"),
                "http://127.0.0.1:9/anthropic/v1/messages/batches/b/results",
            ),
            (
                Some("http://127.0.0.1:99/x"),
                "http://127.0.0.1:9/anthropic/v1/messages/batches/b/results",
            ),
            (
                None,
                "http://127.0.0.1:9/anthropic/v1/messages/batches/b/results",
            ),
        ] {
            assert_eq!(results_url(&api, "b", given), want, "{given:?}");
        }
    }
}
