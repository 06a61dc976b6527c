//! `provider = "anthropic"`: the Anthropic Messages API
//! (`POST {base_url}/v1/messages`, `anthropic-version: 2023-06-01`; a
//! `base_url` that ends in `/v1` gets `/messages`). The API
//! has no system role among its messages: every `system:` message of the
//! compiled prompt goes, in order, into the top-level `system` field; the
//! user and assistant messages are sent as they are.

use super::http::{self, ApiError, Wire};
use super::limiter::Kind;
use super::{ModelError, ModelResponse};
use crate::config::ModelConfig;
use crate::manifest::Usage;
use crate::template::CompiledPrompt;
use serde_json::{Value, json};

pub const API_VERSION: &str = "2023-06-01";

pub const WIRE: Wire = Wire {
    default_base_url: "https://api.anthropic.com/v1",
    default_key_env: "ANTHROPIC_API_KEY",
    base_url_env: "ANTHROPIC_BASE_URL",
    sdk_base_lacks_v1: true,
    path: "/messages",
    headers,
    body: request_body,
    read_error,
    read_answer,
    limit_headers: &[
        (
            Kind::Requests,
            "anthropic-ratelimit-requests-limit",
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
        ),
        (
            Kind::Tokens,
            "anthropic-ratelimit-tokens-limit",
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
        ),
        (
            Kind::InputTokens,
            "anthropic-ratelimit-input-tokens-limit",
            "anthropic-ratelimit-input-tokens-remaining",
            "anthropic-ratelimit-input-tokens-reset",
        ),
        (
            Kind::OutputTokens,
            "anthropic-ratelimit-output-tokens-limit",
            "anthropic-ratelimit-output-tokens-remaining",
            "anthropic-ratelimit-output-tokens-reset",
        ),
    ],
    read_reset: http::rfc3339_until,
};

/// `anthropic-version`, and `x-api-key` when there is a key.
fn headers(key: Option<&str>) -> Vec<(&'static str, String)> {
    let mut h = vec![("anthropic-version", API_VERSION.to_string())];
    if let Some(k) = key {
        h.push(("x-api-key", k.to_string()));
    }
    h
}

/// The request body (public for tests). `max_tokens` is required by the
/// API and by `prompts.toml` (checked when the project loads).
///
/// A prompt with cache breakpoints (`cache.rs`) has the text they fall in
/// sent as text blocks, each block that ends at one with `cache_control`;
/// the system messages are joined first, as without.
pub fn request_body(m: &ModelConfig, prompt: &CompiledPrompt) -> Value {
    let s = &m.settings;
    let breaks = super::cache::breakpoints(m, prompt);
    let cc = super::cache::cache_control(m);
    let mut system = String::new();
    let mut system_breaks = Vec::new();
    let mut messages = Vec::new();
    for (i, msg) in prompt.messages.iter().enumerate() {
        let at = breaks.iter().filter(|b| b.message == i).map(|b| b.at);
        if msg.role == "system" {
            if !system.is_empty() {
                system.push_str("\n\n");
            }
            system_breaks.extend(at.map(|a| system.len() + a));
            system.push_str(&msg.content);
        } else {
            let at: Vec<usize> = at.collect();
            let content = super::cache::text_content(&msg.content, &at, &cc);
            messages.push(json!({ "role": msg.role, "content": content }));
        }
    }
    let mut body = json!({
        "model": s.model,
        "max_tokens": s.max_tokens,
        "messages": messages,
    });
    let o = body.as_object_mut().expect("object");
    if !system.is_empty() {
        let system = super::cache::text_content(&system, &system_breaks, &cc);
        o.insert("system".into(), system);
    }
    if let Some(t) = s.temperature {
        o.insert("temperature".into(), json!(t));
    }
    if let Some(p) = s.top_p {
        o.insert("top_p".into(), json!(p));
    }
    if let Some(stop) = &s.stop {
        o.insert("stop_sequences".into(), json!(stop));
    }
    if let Some(config) = output_config(m) {
        o.insert("output_config".into(), config);
    }
    body
}

/// Structured outputs: with `format = "json"` and a `schema`, on a model
/// that has them, `output_config.format` asks for JSON of that schema by
/// constrained decoding (Anthropic's "Structured outputs" guide: generally
/// available, no beta header, on Claude Sonnet 4.5, Opus 4.5, Haiku 4.5
/// and later). mkt's own check of the answer stays the guard, with the
/// schema as written.
fn output_config(m: &ModelConfig) -> Option<Value> {
    let s = &m.settings;
    let schema = s
        .schema
        .as_ref()
        .filter(|_| s.format.as_deref() == Some("json"))?;
    if !has_structured_outputs(s.model.as_deref()?) {
        return None;
    }
    Some(json!({ "format": { "type": "json_schema", "schema": api_schema(schema) } }))
}

/// Whether model id `id` (`claude-sonnet-4-5`, `claude-opus-4-5-20251101`)
/// names a Claude 4.5 or later, which have structured outputs.
pub fn has_structured_outputs(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("claude-") else {
        return false;
    };
    let mut parts = rest.split('-');
    // the family first (opus, sonnet, haiku); ids before 4 put the version
    // first (`claude-3-5-sonnet`)
    if !parts
        .next()
        .is_some_and(|f| f.bytes().all(|b| b.is_ascii_lowercase()))
    {
        return false;
    }
    let mut version = parts.map_while(|p| p.parse::<u32>().ok().filter(|_| p.len() <= 2));
    match (version.next(), version.next()) {
        (Some(major), minor) => (major, minor.unwrap_or(0)) >= (4, 5),
        _ => false,
    }
}

/// `schema` as the API takes it, as Anthropic's SDKs send it: every object
/// closed (`additionalProperties: false`, which the API requires) and the
/// constraints it refuses with a 400 (bounds of numbers, strings and
/// arrays) left out; the answer is still checked against all of them.
pub fn api_schema(schema: &Value) -> Value {
    const REFUSED: &[&str] = &[
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "maxItems",
        "uniqueItems",
    ];
    match schema {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let keep = match k.as_str() {
                    k if REFUSED.contains(&k) => false,
                    "minItems" => v.as_u64().is_some_and(|n| n <= 1),
                    "additionalProperties" => v == &Value::Bool(false),
                    _ => true,
                };
                if !keep {
                    continue;
                }
                // (a map of names to schemas: a property may be named
                // `maximum`)
                let named = ["properties", "$defs", "definitions", "patternProperties"];
                let v = match v {
                    Value::Object(m) if named.contains(&k.as_str()) => {
                        Value::Object(m.iter().map(|(n, s)| (n.clone(), api_schema(s))).collect())
                    }
                    v => api_schema(v),
                };
                out.insert(k.clone(), v);
            }
            let is_object =
                map.get("type") == Some(&json!("object")) || map.contains_key("properties");
            if is_object {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(api_schema).collect()),
        v => v.clone(),
    }
}

/// `{"type": "error", "error": {"type", "message"}}`; a `billing_error`
/// (or HTTP 402) means the account has no credit left.
fn read_error(status: u16, body: &Value) -> Option<ApiError> {
    let e = body.get("error")?;
    let message = e.get("message")?.as_str()?.to_string();
    let kind = e.get("type").and_then(Value::as_str).unwrap_or("");
    let quota = status == 402
        || kind == "billing_error"
        || message.to_ascii_lowercase().contains("credit balance");
    Some(ApiError {
        message: if kind.is_empty() {
            message
        } else {
            format!("{kind}: {message}")
        },
        quota,
    })
}

/// The answer's text (its text blocks joined) and usage.
pub fn read_answer(v: &Value) -> Result<ModelResponse, ModelError> {
    let usage = v.get("usage").filter(|u| u.is_object()).map(|u| {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        let (read, written) = (
            n("cache_read_input_tokens"),
            n("cache_creation_input_tokens"),
        );
        // the API counts the cached tokens apart from `input_tokens`; the
        // manifest's `input_tokens` are all of them, as OpenAI's are
        Usage {
            input_tokens: n("input_tokens") + read + written,
            output_tokens: n("output_tokens"),
            cached_tokens: read,
            cache_write_tokens: written,
        }
    });
    let Some(blocks) = v.get("content").and_then(Value::as_array) else {
        return Err(ModelError::BadAnswer {
            why: "the answer has no `content` list".into(),
            usage,
        });
    };
    let text: String = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    Ok(ModelResponse {
        output: text.into_bytes(),
        usage,
        model: v.get("model").and_then(Value::as_str).map(str::to_string),
        system_fingerprint: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelSettings, Provider};
    use crate::template::Message;

    #[test]
    fn system_messages_go_to_the_system_field() {
        let msg = |role: &str, content: &str| Message {
            role: role.into(),
            content: content.into(),
        };
        let p = CompiledPrompt {
            cache_breaks: Vec::new(),
            messages: vec![
                msg("system", "Be brief."),
                msg("user", "Hi"),
                msg("assistant", "Hello"),
                msg("user", "More"),
            ],
        };
        let m = ModelConfig {
            name: "c".into(),
            provider: Provider::Anthropic,
            settings: ModelSettings {
                model: Some("claude-x".into()),
                max_tokens: Some(100),
                stop: Some(vec!["END".into()]),
                ..Default::default()
            },
        };
        assert_eq!(
            request_body(&m, &p),
            json!({
                "model": "claude-x",
                "max_tokens": 100,
                "system": "Be brief.",
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "More"}
                ],
                "stop_sequences": ["END"]
            })
        );
    }

    #[test]
    fn structured_outputs_are_asked_of_claude_4_5_and_later() {
        assert!(has_structured_outputs("claude-sonnet-4-5"));
        assert!(has_structured_outputs("claude-opus-4-5-20251101"));
        assert!(has_structured_outputs("claude-haiku-4-5-20251001"));
        assert!(has_structured_outputs("claude-opus-4-6"));
        assert!(has_structured_outputs("claude-sonnet-5"));
        assert!(!has_structured_outputs("claude-sonnet-4-20250514"));
        assert!(!has_structured_outputs("claude-3-5-sonnet-20241022"));
        assert!(!has_structured_outputs("claude-opus-4-1"));
        assert!(!has_structured_outputs("llama3"));
        let schema = json!({
            "type": "object",
            "required": ["title"],
            "properties": {
                "title": {"type": "string", "maxLength": 80},
                "maximum": {"type": "integer", "minimum": 0},
                "tags": {"type": "array", "minItems": 2, "items": {"type": "object", "properties": {"k": {"type": "string"}}}}
            }
        });
        assert_eq!(
            api_schema(&schema),
            json!({
                "type": "object",
                "required": ["title"],
                "additionalProperties": false,
                "properties": {
                    "title": {"type": "string"},
                    "maximum": {"type": "integer"},
                    "tags": {"type": "array", "items": {"type": "object", "additionalProperties": false, "properties": {"k": {"type": "string"}}}}
                }
            })
        );
        let model = |id: &str, format: Option<&str>| {
            let mut m = ModelConfig {
                name: "c".into(),
                provider: crate::config::Provider::Anthropic,
                settings: Default::default(),
            };
            m.settings.model = Some(id.into());
            m.settings.max_tokens = Some(100);
            m.settings.format = format.map(str::to_string);
            m.settings.schema = Some(json!({"type": "object"}));
            m
        };
        let prompt = CompiledPrompt {
            messages: Vec::new(),
            cache_breaks: Vec::new(),
        };
        let body = request_body(&model("claude-sonnet-4-5", Some("json")), &prompt);
        assert_eq!(
            body["output_config"],
            json!({"format": {"type": "json_schema", "schema": {"type": "object", "additionalProperties": false}}})
        );
        let older = request_body(&model("claude-3-5-haiku-latest", Some("json")), &prompt);
        assert!(older.get("output_config").is_none());
        let text = request_body(&model("claude-sonnet-4-5", None), &prompt);
        assert!(text.get("output_config").is_none());
    }

    #[test]
    fn answer_usage_and_billing_errors() {
        let v = json!({
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
            "usage": {"input_tokens": 20, "output_tokens": 2, "cache_read_input_tokens": 5,
                      "cache_creation_input_tokens": 7}
        });
        let r = read_answer(&v).unwrap();
        assert_eq!(r.output, b"Hello");
        // the cached tokens, which the API counts apart, are added in
        assert_eq!(
            r.usage,
            Some(Usage {
                input_tokens: 32,
                output_tokens: 2,
                cached_tokens: 5,
                cache_write_tokens: 7,
            })
        );
        assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
        assert_eq!(r.system_fingerprint, None);
        let overloaded = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        let e = read_error(529, &overloaded).unwrap();
        assert!(!e.quota);
        assert_eq!(e.message, "overloaded_error: Overloaded");
        let billing = json!({"type": "error", "error": {"type": "billing_error", "message": "Your credit balance is too low"}});
        assert!(read_error(400, &billing).unwrap().quota);
    }
}
