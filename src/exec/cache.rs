//! Prompt caching: where a prompt asks the provider to cache its prefix,
//! and how each provider is told.
//!
//! A prompt has cache breakpoints from two places: `{# mkt:cache #}` lines
//! in its templates ([`CompiledPrompt::cache_breaks`]) and, with the model
//! setting `prompt_cache = "system"`, the end of its system messages. They
//! are hints: the answer does not depend on them, so neither enters the
//! InputBundleHash (`ModelConfig::hashed_params` leaves the settings out,
//! the prompt's canonical JSON the breakpoints).
//!
//! - **Anthropic** ([prompt caching](https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching)):
//!   a content block with `cache_control: {"type": "ephemeral"}` ends a
//!   cached prefix (tools, then `system`, then `messages`); at most 4 per
//!   request (the first 4 are sent). `"ttl": "1h"` asks for an hour
//!   instead of the default 5 minutes (`prompt_cache_ttl`). A write costs
//!   1.25 times the input price (2 times for 1 h), a read 0.1 times. A
//!   prefix shorter than the model's minimum (1,024 tokens for most
//!   models, 2,048 or 4,096 for some Haiku and Opus versions) is silently
//!   not cached: the answer's `usage` then shows neither
//!   `cache_creation_input_tokens` nor `cache_read_input_tokens`, which the
//!   build reports once per model. The system prompt with a breakpoint is
//!   sent as one text block (the same text as the plain string), a
//!   message with one as text blocks split there.
//! - **OpenAI** ([prompt caching](https://platform.openai.com/docs/guides/prompt-caching)):
//!   prefixes of 1,024 tokens and more are cached without asking; reads
//!   show in `usage.prompt_tokens_details.cached_tokens` and cost less
//!   (how much depends on the model: `price_cached_input_per_mtok`).
//!   `prompt_cache_key` routes requests with the same key to the same
//!   cache; mkt sends the digest of the prefix up to the first breakpoint
//!   (for `prompt_cache = "system"`, of the system messages).
//!
//! The scheduler sends the first request of each prefix alone and the
//! others once it has answered (`build/prefix.rs`), so that they read the
//! cache instead of all writing it at once.

use crate::config::{ModelConfig, Provider};
use crate::hash::Digest;
use crate::template::{CacheBreak, CompiledPrompt};
use serde_json::{Value, json};

/// Anthropic's limit of breakpoints per request.
const MAX_BREAKS: usize = 4;

/// The breakpoints to send for `prompt` to `model`, in prompt order: the
/// template's, and with `prompt_cache = "system"` the end of the last
/// system message; the first [`MAX_BREAKS`].
pub fn breakpoints(model: &ModelConfig, prompt: &CompiledPrompt) -> Vec<CacheBreak> {
    let mut breaks = prompt.cache_breaks.clone();
    if model.settings.prompt_cache.as_deref() == Some("system")
        && let Some(i) = prompt.messages.iter().rposition(|m| m.role == "system")
    {
        breaks.push(CacheBreak {
            message: i,
            at: prompt.messages[i].content.len(),
        });
    }
    breaks.retain(|b| b.message < prompt.messages.len() && b.at > 0);
    let order = sent_order(model, prompt);
    breaks.sort_by_key(|b| (order.iter().position(|&i| i == b.message), b.at));
    breaks.dedup();
    breaks.truncate(MAX_BREAKS);
    breaks
}

/// The key of the shortest prefix `prompt` asks `model` to cache, if it
/// asks for one and the provider caches (mock and command models do not).
/// Prompts with equal keys share that prefix on that model.
pub fn prefix_key(model: &ModelConfig, prompt: &CompiledPrompt) -> Option<Digest> {
    if !matches!(model.provider, Provider::Openai | Provider::Anthropic)
        || (prompt.cache_breaks.is_empty() && model.settings.prompt_cache.is_none())
    {
        return None;
    }
    let first = *breakpoints(model, prompt).first()?;
    let mut prefix: Vec<(&str, &str)> = Vec::new();
    for i in sent_order(model, prompt) {
        let m = &prompt.messages[i];
        if i == first.message {
            prefix.push((&m.role, &m.content[..first.at]));
            break;
        }
        prefix.push((&m.role, &m.content));
    }
    let v = json!({
        "provider": model.provider.as_str(),
        "model": model.settings.model,
        "prefix": prefix,
    });
    Some(Digest::of(v.to_string().as_bytes()))
}

/// The messages' indices in the order the provider reads them: Anthropic
/// has every system message first (its `system` field).
fn sent_order(model: &ModelConfig, prompt: &CompiledPrompt) -> Vec<usize> {
    let mut order: Vec<usize> = (0..prompt.messages.len()).collect();
    if model.provider == Provider::Anthropic {
        order.sort_by_key(|&i| prompt.messages[i].role != "system");
    }
    order
}

/// OpenAI's `prompt_cache_key` for a prefix key.
pub fn openai_key(key: &Digest) -> String {
    format!("mkt-{}", &key.to_hex()[..32])
}

/// Anthropic's `cache_control` for `model`.
pub fn cache_control(model: &ModelConfig) -> Value {
    match model.settings.prompt_cache_ttl.as_deref() {
        Some("1h") => json!({"type": "ephemeral", "ttl": "1h"}),
        _ => json!({"type": "ephemeral"}),
    }
}

/// `text` as Anthropic content: the plain string without breakpoints,
/// else text blocks split at each offset of `at`, each block that ends at
/// one carrying `cache_control`.
pub fn text_content(text: &str, at: &[usize], cache_control: &Value) -> Value {
    if at.is_empty() {
        return json!(text);
    }
    let mut blocks = Vec::new();
    let mut from = 0;
    for &to in at {
        let to = to.min(text.len());
        if to > from {
            blocks.push(
                json!({"type": "text", "text": &text[from..to], "cache_control": cache_control}),
            );
            from = to;
        }
    }
    if from < text.len() {
        blocks.push(json!({"type": "text", "text": &text[from..]}));
    }
    Value::Array(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelSettings;
    use crate::template::Message;

    fn model(provider: Provider, cache: Option<&str>) -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            provider,
            settings: ModelSettings {
                model: Some("x".into()),
                prompt_cache: cache.map(str::to_string),
                ..Default::default()
            },
        }
    }

    fn prompt(system: &str, user: &str, breaks: Vec<CacheBreak>) -> CompiledPrompt {
        let msg = |role: &str, content: &str| Message {
            role: role.into(),
            content: content.into(),
        };
        CompiledPrompt {
            messages: vec![msg("system", system), msg("user", user)],
            cache_breaks: breaks,
        }
    }

    #[test]
    fn the_system_setting_breaks_after_the_system_messages() {
        let p = prompt("Be brief.", "Hi", vec![]);
        let m = model(Provider::Anthropic, Some("system"));
        assert_eq!(breakpoints(&m, &p), [CacheBreak { message: 0, at: 9 }]);
        assert!(breakpoints(&model(Provider::Anthropic, None), &p).is_empty());
        assert_eq!(prefix_key(&model(Provider::Anthropic, None), &p), None);
        assert_eq!(prefix_key(&model(Provider::Mock, Some("system")), &p), None);
    }

    /// Prompts that share the system messages share the key, whatever
    /// follows; another system prompt or model is another key.
    #[test]
    fn the_prefix_key_covers_the_prefix_and_the_model_only() {
        let m = model(Provider::Openai, Some("system"));
        let a = prefix_key(&m, &prompt("Long rules.", "doc A", vec![])).unwrap();
        let b = prefix_key(&m, &prompt("Long rules.", "doc B", vec![])).unwrap();
        let c = prefix_key(&m, &prompt("Other rules.", "doc A", vec![])).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut other = m.clone();
        other.settings.model = Some("y".into());
        assert_ne!(
            prefix_key(&other, &prompt("Long rules.", "doc A", vec![])),
            Some(a)
        );
        // a template break inside the user message: the prefix is up to it
        let m = model(Provider::Anthropic, None);
        let at = |user: &str| {
            let brk = CacheBreak { message: 1, at: 4 };
            prefix_key(&m, &prompt("S", user, vec![brk])).unwrap()
        };
        assert_eq!(at("Ref. question 1"), at("Ref. question 2"));
        assert_ne!(at("Ref. question 1"), at("Fer. question 1"));
    }

    #[test]
    fn content_is_split_into_blocks_at_the_breakpoints() {
        let cc = json!({"type": "ephemeral"});
        assert_eq!(text_content("abc", &[], &cc), json!("abc"));
        assert_eq!(
            text_content("abcdef", &[3, 6], &cc),
            json!([
                {"type": "text", "text": "abc", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "def", "cache_control": {"type": "ephemeral"}}
            ])
        );
        assert_eq!(
            text_content("abcdef", &[2], &cc),
            json!([
                {"type": "text", "text": "ab", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "cdef"}
            ])
        );
    }

    #[test]
    fn at_most_four_breakpoints_are_sent() {
        let breaks = (1..=6).map(|at| CacheBreak { message: 1, at }).collect();
        let p = prompt("S", "abcdefgh", breaks);
        let b = breakpoints(&model(Provider::Anthropic, Some("system")), &p);
        assert_eq!(b.len(), 4);
        assert_eq!(b[0], CacheBreak { message: 0, at: 1 }, "the system's first");
    }
}
