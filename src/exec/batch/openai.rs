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

use super::{
    BatchApi, BatchLimits, BatchPhase, BatchProgress, BatchRequest, Outcome, check_limits,
};
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
        let file = input_file(&self.model, requests);
        check_limits(self.limits(), requests.len(), file.len())?;
        let (content_type, body) = multipart(&file);
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
        match api.create("/batches", &create) {
            Ok(batch) => string_at(&batch, "id", &api.url("/batches")),
            // the batch may exist all the same (the answer was lost): its
            // tag tells
            Err(e) => match self.find(tag) {
                Ok(Some(id)) => Ok(id),
                _ => Err(e),
            },
        }
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
        Ok(super::fetch(&self.api()?, &format!("/batches/{id}"), progress)?.1)
    }

    fn results(&self, id: &str) -> Result<Vec<Outcome>, ModelError> {
        let api = self.api()?;
        let batch = super::ended(&api, id, &format!("/batches/{id}"), progress)?;
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

    fn request_bytes(&self, request: &BatchRequest) -> usize {
        input_file(&self.model, std::slice::from_ref(request)).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelSettings, Provider};
    use crate::exec::HttpError;
    use crate::manifest::Usage;
    use crate::template::{CompiledPrompt, Message};

    fn model() -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            provider: Provider::Openai,
            settings: ModelSettings {
                model: Some("gpt-x".into()),
                base_url: Some("http://127.0.0.1:9/v1".into()),
                api_key_env: Some(String::new()),
                max_tokens: Some(50),
                ..Default::default()
            },
        }
    }

    fn request(id: &str, text: &str) -> BatchRequest {
        BatchRequest {
            custom_id: id.into(),
            prompt: CompiledPrompt {
                messages: vec![Message {
                    role: "user".into(),
                    content: text.into(),
                }],
                cache_breaks: Vec::new(),
            },
        }
    }

    #[test]
    fn each_line_carries_the_ordinary_body() {
        let m = model();
        let reqs = [request("a1", "Hi"), request("b2", "Bye")];
        let file = input_file(&m, &reqs);
        let lines: Vec<Value> = file
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        for (line, r) in lines.iter().zip(&reqs) {
            assert_eq!(
                line,
                &json!({
                    "custom_id": r.custom_id,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": request_body(&m, &r.prompt),
                })
            );
        }
    }

    #[test]
    fn request_bytes_are_the_lines_exactly_and_too_many_are_not_sent() {
        let api = OpenaiBatch::new(&model());
        let reqs = [request("a1", "Hi \"there\"\n"), request("b2", "é")];
        let sum: usize = reqs.iter().map(|r| api.request_bytes(r)).sum();
        assert_eq!(sum, input_file(&model(), &reqs).len());
        // nothing listens at the model's port: an error other than this
        // one would mean something was sent
        let many: Vec<BatchRequest> = (0..50_001).map(|i| request(&i.to_string(), "x")).collect();
        match api.submit(&many, "t") {
            Err(ModelError::BatchTooLarge {
                requests: 50_001,
                max_requests: 50_000,
                max_bytes: 200_000_000,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_upload_is_multipart_with_purpose_and_file() {
        let data = b"{\"custom_id\":\"a\"}\n";
        let (ct, body) = multipart(data);
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        let text = String::from_utf8(body).unwrap();
        let parts: Vec<&str> = text.split(&format!("--{boundary}")).collect();
        // before the first boundary, two parts, and the closing `--`
        assert_eq!(parts.len(), 4, "{text}");
        assert_eq!(parts[0], "");
        assert_eq!(
            parts[1],
            "\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
        );
        assert_eq!(
            parts[2],
            "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"mkt-batch.jsonl\"\r\n\
             Content-Type: application/jsonl\r\n\r\n{\"custom_id\":\"a\"}\n\r\n"
        );
        assert_eq!(parts[3], "--\r\n");
        assert_ne!(multipart(data).0, ct, "the boundary is random");
    }

    fn batch(status: &str) -> Value {
        json!({
            "id": "batch_1", "status": status,
            "request_counts": {"total": 10, "completed": 6, "failed": 1},
            "errors": {"data": [{"code": "invalid_model", "message": "Model `x` does not exist", "line": 1},
                                {"code": "too_big", "message": "too many lines"}]}
        })
    }

    #[test]
    fn every_status_maps_to_a_phase() {
        for (status, phase) in [
            ("validating", BatchPhase::Running),
            ("in_progress", BatchPhase::Running),
            ("finalizing", BatchPhase::Running),
            ("cancelling", BatchPhase::Cancelling),
            ("completed", BatchPhase::Ended),
            ("expired", BatchPhase::Ended),
            ("cancelled", BatchPhase::Ended),
            ("failed", BatchPhase::Failed),
        ] {
            let p = progress(&batch(status), "u").unwrap();
            assert_eq!(p.phase, phase, "{status}");
            assert_eq!((p.total, p.done, p.failed), (10, 7, 1), "{status}");
            if phase != BatchPhase::Failed {
                assert_eq!(p.status, status);
            }
        }
        assert_eq!(
            progress(&batch("failed"), "u").unwrap().status,
            "failed: Model `x` does not exist; too many lines"
        );
        assert_eq!(
            progress(&batch("paused"), "http://h/v1/batches/b")
                .unwrap_err()
                .to_string(),
            "unexpected answer from `http://h/v1/batches/b`: unknown batch status `paused`"
        );
        assert_eq!(
            progress(&json!({"id": "b"}), "u").unwrap_err().to_string(),
            "unexpected answer from `u`: no `status` string in {\"id\":\"b\"}"
        );
    }

    fn answer(text: &str) -> Value {
        json!({"choices": [{"message": {"role": "assistant", "content": text}}],
               "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    }

    #[test]
    fn output_and_error_files_give_every_result_whatever_the_order() {
        let api = Endpoint::new(&model(), &WIRE).unwrap();
        let out = |id: &str, status: u16, body: Value| {
            json!({"id": "r", "custom_id": id, "error": null,
                   "response": {"status_code": status, "request_id": "q", "body": body}})
            .to_string()
        };
        let output = [
            out("c", 200, answer("three")),
            out("a", 200, answer("one")),
            out(
                "d",
                400,
                json!({"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}}),
            ),
        ]
        .join("\n");
        let errors = [
            json!({"id": "r", "custom_id": "e", "response": null,
                   "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}),
            json!({"id": "r", "custom_id": "b", "response": null,
                   "error": {"code": "invalid_json", "message": "Could not parse request line."}}),
        ]
        .map(|v| v.to_string())
        .join("\r\n")
            + "\n";
        let mut got = Vec::new();
        read_lines(&api, "batch_1", output.as_bytes(), "u1", &mut got).unwrap();
        read_lines(&api, "batch_1", errors.as_bytes(), "u2", &mut got).unwrap();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d", "e"]);
        let ok = |i: usize| got[i].1.as_ref().unwrap();
        assert_eq!(ok(0).output, b"one");
        assert_eq!(
            ok(0).usage,
            Some(Usage {
                input_tokens: 5,
                output_tokens: 2,
                cached_tokens: 0,
                cache_write_tokens: 0,
            })
        );
        assert_eq!(ok(2).output, b"three");
        let err = |i: usize| got[i].1.clone().unwrap_err();
        assert_eq!(
            err(1),
            ModelError::BatchRequestRefused {
                batch: "batch_1".into(),
                code: "invalid_json".into(),
                message: "Could not parse request line.".into(),
            }
        );
        assert_eq!(
            err(3),
            ModelError::Http(HttpError {
                status: 400,
                url: "http://127.0.0.1:9/v1/chat/completions".into(),
                message: "max_tokens is too large".into(),
                retryable: false,
                attempts: 1,
                max_retries: 0,
                wait_asked: None,
            })
        );
        assert_eq!(
            err(3).to_string(),
            "HTTP 400 from `http://127.0.0.1:9/v1/chat/completions`: max_tokens is too large"
        );
        assert_eq!(
            err(4).to_string(),
            "not run in batch `batch_1`: This request could not be executed before the completion window expired.\n\
             help: nothing was stored for it; the next `mkt build` sends it again"
        );
    }

    #[test]
    fn a_line_that_is_neither_answer_nor_error_is_reported_with_its_number() {
        let api = Endpoint::new(&model(), &WIRE).unwrap();
        let file = format!(
            "{}\n{}\n",
            json!({"custom_id": "a", "response": {"status_code": 200, "body": answer("x")}}),
            json!({"custom_id": "b", "response": null, "error": null})
        );
        let e = read_lines(&api, "b1", file.as_bytes(), "http://h/f", &mut Vec::new());
        assert_eq!(
            e.unwrap_err().to_string(),
            "unexpected answer from `http://h/f`: line 2: neither a `response` nor an `error`"
        );
        let e = read_lines(
            &api,
            "b1",
            b"{\"response\": 1}",
            "http://h/f",
            &mut Vec::new(),
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "unexpected answer from `http://h/f`: line 1: no `custom_id` in {\"response\":1}"
        );
    }

    #[test]
    fn an_unreadable_answer_is_the_ordinary_calls_error() {
        let api = Endpoint::new(&model(), &WIRE).unwrap();
        let file =
            json!({"custom_id": "a", "response": {"status_code": 200, "body": {"choices": []}}});
        let mut got = Vec::new();
        read_lines(&api, "b1", file.to_string().as_bytes(), "u", &mut got).unwrap();
        assert_eq!(
            got[0].1,
            Err(ModelError::BadAnswer {
                why: "the answer has no `choices[0].message.content`".into(),
                usage: None
            })
        );
    }
}
