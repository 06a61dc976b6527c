//! OpenAI's Batch API for `provider = "openai"`, at the model's base URL
//! (the chat call's, so `OPENAI_BASE_URL` and a local server's `/v1` too).
//!
//! What this relies on, from the OpenAI API reference (Files, Batch) and
//! the Batch guide:
//! - `POST /v1/files`, multipart form data with `purpose=batch` and the
//!   `file`: a JSONL file of at most 50,000 requests and 200 MB, each line
//!   `{"custom_id", "method": "POST", "url": "/v1/chat/completions",
//!   "body"}`, one model per file;
//! - `POST /v1/batches` with `input_file_id`, `endpoint` and
//!   `completion_window` (only `"24h"`); `metadata` holds up to 16 pairs,
//!   keys of at most 64 and values of at most 512 characters;
//! - `GET /v1/batches?limit=&after=` (limit 1 to 100, `after` an id,
//!   `has_more`, `last_id`), `GET /v1/batches/{id}`, `POST
//!   /v1/batches/{id}/cancel`;
//! - the batch's `status`: `validating`, `failed`, `in_progress`,
//!   `finalizing`, `completed`, `expired`, `cancelling`, `cancelled`;
//!   `errors.data[]` (`code`, `message`, `line`) says why validation
//!   failed; `request_counts` has `total`, `completed` (succeeded) and
//!   `failed`;
//! - `output_file_id` (requests that ran) and `error_file_id` (requests
//!   that failed), read with `GET /v1/files/{id}/content`; their lines
//!   are in no particular order, each `{"id", "custom_id", "response":
//!   {"status_code", "request_id", "body"}, "error": {"code", "message"}}`;
//!   the requests an expired or cancelled batch never ran are in the
//!   error file with the codes `batch_expired` and `batch_cancelled`.
//!   The files expire (30 days by default, `output_expires_after`).

use super::{BatchApi, BatchLimits, BatchPhase, BatchProgress, BatchRequest, Outcome};
use crate::config::ModelConfig;
use crate::exec::http::{Endpoint, Method};
use crate::exec::openai::{WIRE, request_body};
use crate::exec::{ModelError, ModelResponse};
use serde_json::{Value, json};

/// The `url` of every line: the chat completions endpoint, the one the
/// ordinary call uses (its body is [`request_body`]'s).
const LINE_URL: &str = "/v1/chat/completions";
/// Pages of 100 batches [`BatchApi::find`] reads, newest first: a tag is
/// looked for just after a submission that was cut short, so it is among
/// the newest unless thousands of batches were made since.
const FIND_PAGES: usize = 20;

pub struct OpenaiBatch {
    model: ModelConfig,
}

impl OpenaiBatch {
    pub fn new(model: &ModelConfig) -> OpenaiBatch {
        OpenaiBatch {
            model: model.clone(),
        }
    }

    fn api(&self) -> Result<Endpoint, ModelError> {
        Endpoint::new(&self.model, &WIRE)
    }
}

/// The JSONL file of `requests`, one line each, every body exactly the
/// ordinary call's.
pub fn input_file(model: &ModelConfig, requests: &[BatchRequest]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in requests {
        let line = json!({
            "custom_id": r.custom_id,
            "method": "POST",
            "url": LINE_URL,
            "body": request_body(model, &r.prompt),
        });
        serde_json::to_writer(&mut out, &line).expect("JSON");
        out.push(b'\n');
    }
    out
}

/// A `multipart/form-data` body of the field `purpose=batch` and the file
/// `data`, and its content type. The boundary is random and checked not to
/// occur in `data`.
fn multipart(data: &[u8]) -> (String, Vec<u8>) {
    let boundary = loop {
        let b = format!("mkt-batch-{:016x}{:016x}", random(), random());
        if !contains(data, b.as_bytes()) {
            break b;
        }
    };
    let mut body = Vec::with_capacity(data.len() + 400);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"mkt-batch.jsonl\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Random bits (std's hasher keys are random per process, the time
/// differs between calls).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The string at `key` of an answer from `url`, or why not.
fn string_at(v: &Value, key: &str, url: &str) -> Result<String, ModelError> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ModelError::BatchAnswer {
            url: url.to_string(),
            why: format!("no `{key}` string in {}", short(v)),
        })
}

/// The start of `v`, for a message.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// A batch object's state.
pub fn progress(v: &Value, url: &str) -> Result<BatchProgress, ModelError> {
    let status = string_at(v, "status", url)?;
    let phase = match status.as_str() {
        "validating" | "in_progress" | "finalizing" => BatchPhase::Running,
        "cancelling" => BatchPhase::Cancelling,
        "completed" | "expired" | "cancelled" => BatchPhase::Ended,
        "failed" => BatchPhase::Failed,
        other => {
            return Err(ModelError::BatchAnswer {
                url: url.to_string(),
                why: format!("unknown batch status `{other}`"),
            });
        }
    };
    let n = |k: &str| {
        v.pointer(&format!("/request_counts/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let (completed, failed) = (n("completed"), n("failed"));
    let status = match phase {
        BatchPhase::Failed => {
            let reasons: Vec<&str> = v
                .pointer("/errors/data")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("message").and_then(Value::as_str))
                .collect();
            if reasons.is_empty() {
                status
            } else {
                format!("failed: {}", reasons.join("; "))
            }
        }
        _ => status,
    };
    Ok(BatchProgress {
        phase,
        status,
        total: n("total"),
        done: completed + failed,
        failed,
    })
}

/// The lines of an output or error file: each request's answer or error.
/// `batch` names the batch in the errors; `api` reads the answers as the
/// chat call does.
pub fn read_lines(
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
        let bad = |why: String| ModelError::BatchAnswer {
            url: url.to_string(),
            why: format!("line {}: {why}", i + 1),
        };
        let v: Value = serde_json::from_slice(line).map_err(|e| bad(format!("not JSON ({e})")))?;
        let id = v
            .get("custom_id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("no `custom_id` in {}", short(&v))))?
            .to_string();
        let result = read_line(api, batch, &v, &chat_url).map_err(bad)?;
        into.push((id, result));
    }
    Ok(())
}

/// One line's result; `Err` when the line is neither an answer nor an
/// error.
fn read_line(
    api: &Endpoint,
    batch: &str,
    v: &Value,
    chat_url: &str,
) -> Result<Result<ModelResponse, ModelError>, String> {
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let (code, message) = (text("code"), text("message"));
        return Ok(Err(match code.as_str() {
            "batch_expired" | "batch_cancelled" => ModelError::BatchRequestNotRun {
                batch: batch.to_string(),
                reason: if message.is_empty() { code } else { message },
            },
            _ => ModelError::BatchRequestRefused {
                batch: batch.to_string(),
                code,
                message,
            },
        }));
    }
    let response = v
        .get("response")
        .filter(|r| r.is_object())
        .ok_or("neither a `response` nor an `error`")?;
    let status = response
        .get("status_code")
        .and_then(Value::as_u64)
        .ok_or("no `response.status_code`")? as u16;
    let body = response.get("body").unwrap_or(&Value::Null);
    Ok(if status == 200 {
        api.read_answer(body)
    } else {
        Err(api.answer_error(status, body, chat_url))
    })
}

impl BatchApi for OpenaiBatch {
    fn submit(&self, requests: &[BatchRequest], tag: &str) -> Result<String, ModelError> {
        let api = self.api()?;
        let (content_type, body) = multipart(&input_file(&self.model, requests));
        let files = api.url("/files");
        let file: Value = {
            let got = api.send(Method::Post, files.clone(), &content_type, body)?;
            serde_json::from_slice(&got).map_err(|e| ModelError::BatchAnswer {
                url: files.clone(),
                why: format!("not JSON ({e})"),
            })?
        };
        let file_id = string_at(&file, "id", &files)?;
        let create = json!({
            "input_file_id": file_id,
            "endpoint": LINE_URL,
            "completion_window": "24h",
            "metadata": {"mkt_tag": tag},
        });
        let batch = api.json(Method::Post, "/batches", Some(&create))?;
        string_at(&batch, "id", &api.url("/batches"))
    }

    fn find(&self, tag: &str) -> Result<Option<String>, ModelError> {
        let api = self.api()?;
        let mut after: Option<String> = None;
        for _ in 0..FIND_PAGES {
            let path = match &after {
                Some(a) => format!("/batches?limit=100&after={a}"),
                None => "/batches?limit=100".to_string(),
            };
            let page = api.json(Method::Get, &path, None)?;
            let data = page.get("data").and_then(Value::as_array);
            let data = data.map_or(&[][..], Vec::as_slice);
            if let Some(b) = data
                .iter()
                .find(|b| b.pointer("/metadata/mkt_tag").and_then(Value::as_str) == Some(tag))
            {
                return string_at(b, "id", &api.url(&path)).map(Some);
            }
            let more = page.get("has_more").and_then(Value::as_bool) == Some(true);
            let last = page
                .get("last_id")
                .and_then(Value::as_str)
                .or_else(|| data.last()?.get("id")?.as_str());
            match last {
                Some(l) if more => after = Some(l.to_string()),
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    fn poll(&self, id: &str) -> Result<BatchProgress, ModelError> {
        let api = self.api()?;
        let path = format!("/batches/{id}");
        progress(&api.json(Method::Get, &path, None)?, &api.url(&path))
    }

    fn results(&self, id: &str) -> Result<Vec<Outcome>, ModelError> {
        let api = self.api()?;
        let path = format!("/batches/{id}");
        let batch = api.json(Method::Get, &path, None)?;
        let p = progress(&batch, &api.url(&path))?;
        if matches!(p.phase, BatchPhase::Running | BatchPhase::Cancelling) {
            return Err(ModelError::BatchNotEnded {
                batch: id.to_string(),
                status: p.status,
            });
        }
        let mut out = Vec::new();
        for key in ["output_file_id", "error_file_id"] {
            let Some(file) = batch.get(key).and_then(Value::as_str) else {
                continue;
            };
            let url = api.url(&format!("/files/{file}/content"));
            let content = api.send(Method::Get, url.clone(), "", Vec::new())?;
            read_lines(&api, id, &content, &url, &mut out)?;
        }
        Ok(out)
    }

    fn cancel(&self, id: &str) -> Result<(), ModelError> {
        let api = self.api()?;
        api.json(Method::Post, &format!("/batches/{id}/cancel"), None)?;
        Ok(())
    }

    fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_requests: 50_000,
            max_bytes: 200_000_000,
        }
    }
}
