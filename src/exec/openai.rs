//! `provider = "openai"`: the OpenAI chat completions API
//! (`POST {base_url}/chat/completions`), which OpenAI serves and which
//! local servers (Ollama, llama.cpp's llama-server, vLLM, LM Studio) and
//! proxies (LiteLLM) speak too. The compiled prompt's messages are sent as
//! they are, roles included.

use super::http::{self, ApiError, Wire};
use super::limiter::Kind;
use super::{ModelError, ModelResponse};
use crate::config::ModelConfig;
use crate::manifest::Usage;
use crate::template::CompiledPrompt;
use serde_json::{Value, json};

pub const WIRE: Wire = Wire {
    default_base_url: "https://api.openai.com/v1",
    default_key_env: "OPENAI_API_KEY",
    base_url_env: "OPENAI_BASE_URL",
    sdk_base_lacks_v1: false,
    path: "/chat/completions",
    headers,
    body: request_body,
    read_error,
    read_answer,
    limit_headers: &[
        (
            Kind::Requests,
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        (
            Kind::Tokens,
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ),
    ],
    read_reset: http::go_duration,
};

/// `Authorization: Bearer` when there is a key.
fn headers(key: Option<&str>) -> Vec<(&'static str, String)> {
    key.map(|k| ("authorization", format!("Bearer {k}")))
        .into_iter()
        .collect()
}

/// The request body (public for tests): the official chat completions
/// fields; sampling parameters only when set; `prompt_cache_key` when the
/// prompt asks for caching (`cache.rs`). `max_tokens` is sent under
/// that name because local servers know it (OpenAI still accepts it).
pub fn request_body(m: &ModelConfig, prompt: &CompiledPrompt) -> Value {
    let s = &m.settings;
    let messages: Vec<Value> = prompt
        .messages
        .iter()
        .map(|msg| json!({ "role": msg.role, "content": msg.content }))
        .collect();
    let mut body = json!({ "model": s.model, "messages": messages });
    let o = body.as_object_mut().expect("object");
    if let Some(t) = s.temperature {
        o.insert("temperature".into(), json!(t));
    }
    if let Some(p) = s.top_p {
        o.insert("top_p".into(), json!(p));
    }
    if let Some(n) = s.max_tokens {
        o.insert("max_tokens".into(), json!(n));
    }
    if let Some(seed) = s.seed {
        o.insert("seed".into(), json!(seed));
    }
    if let Some(stop) = &s.stop {
        o.insert("stop".into(), json!(stop));
    }
    if let Some(key) = super::cache::prefix_key(m, prompt) {
        o.insert(
            "prompt_cache_key".into(),
            json!(super::cache::openai_key(&key)),
        );
    }
    if s.format.as_deref() == Some("json") {
        let rf = match (&s.schema, s.response_format.as_deref()) {
            (Some(schema), None | Some("json_schema")) => json!({
                "type": "json_schema",
                "json_schema": { "name": "output", "schema": schema }
            }),
            // JSON mode with the schema beside it: llama-cpp-python's
            // server makes a grammar of it
            (Some(schema), Some(_)) => json!({ "type": "json_object", "schema": schema }),
            (None, _) => json!({ "type": "json_object" }),
        };
        o.insert("response_format".into(), rf);
    }
    body
}

/// `{"error": {"message", "type", "code"}}`; `insufficient_quota` (in a
/// 429) means the account has no credit left, not a rate limit.
fn read_error(_status: u16, body: &Value) -> Option<ApiError> {
    let e = body.get("error")?;
    let message = match e {
        Value::String(s) => s.clone(),
        _ => e.get("message")?.as_str()?.to_string(),
    };
    let is = |k: &str| e.get(k).and_then(Value::as_str) == Some("insufficient_quota");
    Some(ApiError {
        quota: is("code") || is("type"),
        message,
    })
}

/// The answer's text and usage.
pub fn read_answer(v: &Value) -> Result<ModelResponse, ModelError> {
    let usage = v.get("usage").filter(|u| u.is_object()).map(|u| {
        let n = |x: Option<&Value>| x.and_then(Value::as_u64).unwrap_or(0);
        Usage {
            input_tokens: n(u.get("prompt_tokens")),
            output_tokens: n(u.get("completion_tokens")),
            cached_tokens: n(u.pointer("/prompt_tokens_details/cached_tokens")),
            // OpenAI charges no premium for writing its cache
            cache_write_tokens: 0,
        }
    });
    let named = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let msg = v.pointer("/choices/0/message");
    match msg.and_then(|m| m.get("content")).and_then(Value::as_str) {
        Some(text) => Ok(ModelResponse {
            output: text.as_bytes().to_vec(),
            usage,
            model: named("model"),
            system_fingerprint: named("system_fingerprint"),
        }),
        None => {
            let why = match msg.and_then(|m| m.get("refusal")).and_then(Value::as_str) {
                Some(r) => format!("the model refused: {r}"),
                None => "the answer has no `choices[0].message.content`".to_string(),
            };
            Err(ModelError::BadAnswer { why, usage })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelSettings, Provider};
    use crate::template::Message;

    fn model(s: ModelSettings) -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            provider: Provider::Openai,
            settings: s,
        }
    }

    #[test]
    fn body_has_the_messages_and_only_the_set_parameters() {
        let p = CompiledPrompt {
            cache_breaks: Vec::new(),
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
        };
        let b = request_body(
            &model(ModelSettings {
                model: Some("gpt-x".into()),
                temperature: Some(0.5),
                stop: Some(vec!["END".into()]),
                format: Some("json".into()),
                ..Default::default()
            }),
            &p,
        );
        assert_eq!(
            b,
            json!({
                "model": "gpt-x",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"}
                ],
                "temperature": 0.5,
                "stop": ["END"],
                "response_format": {"type": "json_object"}
            })
        );
    }

    #[test]
    fn answer_usage_and_errors() {
        let v = json!({
            "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_44709d6fcb",
            "choices": [{"message": {"role": "assistant", "content": "Hello"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3,
                      "prompt_tokens_details": {"cached_tokens": 8}}
        });
        let r = read_answer(&v).unwrap();
        assert_eq!(r.output, b"Hello");
        assert_eq!(
            r.usage,
            Some(Usage {
                input_tokens: 12,
                output_tokens: 3,
                cached_tokens: 8,
                cache_write_tokens: 0,
            })
        );
        assert_eq!(r.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        assert_eq!(r.system_fingerprint.as_deref(), Some("fp_44709d6fcb"));
        // a local server may name no model
        let bare = json!({"choices": [{"message": {"content": "x"}}]});
        assert_eq!(read_answer(&bare).unwrap().model, None);
        let e = read_error(
            429,
            &json!({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}),
        )
        .unwrap();
        assert!(e.quota);
        let e = read_error(
            429,
            &json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}),
        )
        .unwrap();
        assert!(!e.quota);
        assert_eq!(e.message, "Rate limit reached");
    }
}
