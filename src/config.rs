//! `prompts.toml`: the project file. This module turns its text into a
//! [`Project`]: models with their parameters, and target declarations with
//! the position of every value, so that later stages (graph, template) can
//! point at the exact `prompts.toml:LINE:COL` when something is wrong.
//!
//! Nothing here touches the file system beyond reading `prompts.toml`;
//! whether the named files exist is checked when the graph is built.

use crate::error::{Error, Location, Result};
use crate::hash::Digest;
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;
use toml::Spanned;

pub const PROJECT_FILE: &str = "prompts.toml";
pub const DEFAULT_MODEL: &str = "default";

/// Model settings as written in `[models.NAME]` or in a target's `params`.
/// Every provider's parameters live here so that an unknown key anywhere is
/// refused by serde with its position.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// mock: simulated latency (not part of the InputBundleHash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// command: the argv to run, prompt on stdin, output on stdout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// command: how the prompt is written to stdin: `text` (default) or `json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// command, openai, anthropic: wall-clock limit in seconds (not part
    /// of the InputBundleHash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,

    // The HTTP providers (`openai`, `anthropic`). Only what decides the
    // output enters the InputBundleHash (see `ModelConfig::hashed_params`).
    /// The provider's model id, e.g. `gpt-4o-mini`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Where the API lives (not hashed: the same model behind another URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The name of the environment variable holding the API key; the key
    /// itself is never in the project, the store or any message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    /// `text` (default) or `json`: the output must parse as JSON (and
    /// match `schema` when given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// openai, with `format = "json"`: how the request asks for JSON,
    /// `json_schema` (default: OpenAI's structured outputs, with `schema`)
    /// or `json_object` (JSON mode, carrying `schema` as llama-cpp-python's
    /// server reads it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<String>,
    /// A JSON Schema for `format = "json"`: a TOML table, or a string of JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// Any string: changing it asks for a fresh sample of an unchanged prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    /// Seconds to wait for the TCP (and TLS) connection (not hashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_s: Option<u64>,
    /// Retries after 429/5xx/529 answers (not hashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Requests in flight to this model at most, whatever `-j` (not hashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Requests started per minute at most (not hashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute at most, estimated before sending (not hashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Seconds one target may wait out 429 and 529 answers (not hashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_wait_s: Option<u64>,
    /// US dollars per million input tokens (not hashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_input_per_mtok: Option<f64>,
    /// US dollars per million output tokens (not hashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_output_per_mtok: Option<f64>,
    /// Send this model's requests through the provider's batch API, as
    /// `mkt build --batch` does for every model (not hashed: a batch
    /// answer is the same result).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<bool>,
    /// The price of a batch request relative to an ordinary one (default
    /// 0.5; not hashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_discount: Option<f64>,
    /// US dollars per million input tokens read from the provider's prompt
    /// cache; default a tenth of `price_input_per_mtok` (not hashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_cached_input_per_mtok: Option<f64>,
    /// `"system"`: mark the system messages for the provider's prompt
    /// cache (`exec/cache.rs`; not hashed: the answer does not depend on
    /// it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_cache: Option<String>,
    /// anthropic: how long a cache entry lives, `"5m"` (default) or
    /// `"1h"` (not hashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_cache_ttl: Option<String>,
    /// An answer from another snapshot than the one that made the model's
    /// outputs fails the target (`drift.rs`; not hashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<bool>,
}

impl ModelSettings {
    /// `self` with every field that `over` sets replaced.
    fn overridden_by(&self, over: &ModelSettings) -> ModelSettings {
        ModelSettings {
            provider: over.provider.clone().or_else(|| self.provider.clone()),
            latency_ms: over.latency_ms.or(self.latency_ms),
            command: over.command.clone().or_else(|| self.command.clone()),
            stdin: over.stdin.clone().or_else(|| self.stdin.clone()),
            timeout_s: over.timeout_s.or(self.timeout_s),
            model: over.model.clone().or_else(|| self.model.clone()),
            base_url: over.base_url.clone().or_else(|| self.base_url.clone()),
            api_key_env: over
                .api_key_env
                .clone()
                .or_else(|| self.api_key_env.clone()),
            temperature: over.temperature.or(self.temperature),
            top_p: over.top_p.or(self.top_p),
            max_tokens: over.max_tokens.or(self.max_tokens),
            seed: over.seed.or(self.seed),
            stop: over.stop.clone().or_else(|| self.stop.clone()),
            format: over.format.clone().or_else(|| self.format.clone()),
            response_format: (over.response_format.clone())
                .or_else(|| self.response_format.clone()),
            schema: over.schema.clone().or_else(|| self.schema.clone()),
            sample: over.sample.clone().or_else(|| self.sample.clone()),
            connect_timeout_s: over.connect_timeout_s.or(self.connect_timeout_s),
            max_retries: over.max_retries.or(self.max_retries),
            max_concurrency: over.max_concurrency.or(self.max_concurrency),
            requests_per_minute: over.requests_per_minute.or(self.requests_per_minute),
            tokens_per_minute: over.tokens_per_minute.or(self.tokens_per_minute),
            rate_limit_wait_s: over.rate_limit_wait_s.or(self.rate_limit_wait_s),
            price_input_per_mtok: over.price_input_per_mtok.or(self.price_input_per_mtok),
            price_output_per_mtok: over.price_output_per_mtok.or(self.price_output_per_mtok),
            batch: over.batch.or(self.batch),
            batch_discount: over.batch_discount.or(self.batch_discount),
            price_cached_input_per_mtok: over
                .price_cached_input_per_mtok
                .or(self.price_cached_input_per_mtok),
            prompt_cache: over
                .prompt_cache
                .clone()
                .or_else(|| self.prompt_cache.clone()),
            prompt_cache_ttl: over
                .prompt_cache_ttl
                .clone()
                .or_else(|| self.prompt_cache_ttl.clone()),
            pin: over.pin.or(self.pin),
        }
    }

    /// The cost in US dollars of `usage` at these prices; `None` when no
    /// price is set. Input tokens read from the prompt cache cost
    /// `price_cached_input_per_mtok` (default a tenth of the input price,
    /// Anthropic's rate); those written to it the input price times
    /// [`ModelSettings::cache_write_premium`]; the rest the input price.
    pub fn cost_usd(&self, usage: &crate::manifest::Usage) -> Option<f64> {
        if self.price_input_per_mtok.is_none() && self.price_output_per_mtok.is_none() {
            return None;
        }
        let input = self.price_input_per_mtok.unwrap_or(0.0);
        let read = usage.cached_tokens.min(usage.input_tokens);
        let written = usage.cache_write_tokens.min(usage.input_tokens - read);
        let plain = usage.input_tokens - read - written;
        let per = |tokens: u64, price: f64| tokens as f64 * price / 1e6;
        Some(
            per(plain, input)
                + per(read, self.cached_input_price())
                + per(written, input * self.cache_write_premium())
                + per(
                    usage.output_tokens,
                    self.price_output_per_mtok.unwrap_or(0.0),
                ),
        )
    }

    /// What a batch request costs relative to an ordinary one.
    pub fn batch_discount(&self) -> f64 {
        self.batch_discount.unwrap_or(DEFAULT_BATCH_DISCOUNT)
    }

    /// US dollars per million input tokens read from the prompt cache.
    pub fn cached_input_price(&self) -> f64 {
        (self.price_cached_input_per_mtok).unwrap_or(self.price_input_per_mtok.unwrap_or(0.0) * 0.1)
    }

    /// What writing a token to the prompt cache costs, in input prices:
    /// 1.25 for Anthropic's 5-minute entries, 2 for 1-hour ones.
    pub fn cache_write_premium(&self) -> f64 {
        match self.prompt_cache_ttl.as_deref() {
            Some("1h") => 2.0,
            _ => 1.25,
        }
    }

    /// What prompt caching saved on `usage` against the same tokens sent
    /// uncached, in US dollars (negative when the writes cost more than
    /// the reads saved); `None` when no input price is set.
    pub fn prompt_cache_saving(&self, usage: &crate::manifest::Usage) -> Option<f64> {
        let input = self.price_input_per_mtok?;
        let read = usage.cached_tokens as f64 * (input - self.cached_input_price());
        let written = usage.cache_write_tokens as f64 * input * (self.cache_write_premium() - 1.0);
        Some((read - written) / 1e6)
    }
}

/// OpenAI's and Anthropic's batch APIs both charge half the ordinary price.
pub const DEFAULT_BATCH_DISCOUNT: f64 = 0.5;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    #[serde(default)]
    models: BTreeMap<String, Spanned<ModelSettings>>,
    #[serde(default)]
    targets: BTreeMap<Spanned<String>, Spanned<RawTarget>>,
    cache: Option<RawCache>,
    max_cost_usd: Option<Spanned<f64>>,
}

/// `[cache]`: the remote cache (see `remote.rs`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    remote: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    region: Option<String>,
    timeout_s: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    template: Spanned<String>,
    #[serde(default)]
    inputs: BTreeMap<Spanned<String>, Spanned<String>>,
    output: Spanned<String>,
    model: Option<Spanned<String>>,
    params: Option<Spanned<ModelSettings>>,
    foreach: Option<Spanned<String>>,
}

/// Which model adapter runs a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Mock,
    Command,
    /// The OpenAI chat completions API (OpenAI, and local servers that
    /// speak it: Ollama, llama.cpp, vLLM, LM Studio, LiteLLM).
    Openai,
    /// The Anthropic Messages API.
    Anthropic,
}

impl Provider {
    pub const ALL: [Provider; 4] = [
        Provider::Mock,
        Provider::Command,
        Provider::Openai,
        Provider::Anthropic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Mock => "mock",
            Provider::Command => "command",
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
        }
    }

    /// The settings a `[models.NAME]` table of this provider may have
    /// (besides `provider`).
    pub(crate) fn keys(self) -> &'static [&'static str] {
        const HTTP: &[&str] = &[
            "timeout_s",
            "model",
            "base_url",
            "api_key_env",
            "temperature",
            "top_p",
            "max_tokens",
            "seed",
            "stop",
            "format",
            "response_format",
            "schema",
            "sample",
            "connect_timeout_s",
            "max_retries",
            "max_concurrency",
            "requests_per_minute",
            "tokens_per_minute",
            "rate_limit_wait_s",
            "price_input_per_mtok",
            "price_output_per_mtok",
            "batch",
            "batch_discount",
            "price_cached_input_per_mtok",
            "prompt_cache",
            "pin",
        ];
        // the Messages API has no `seed`
        const ANTHROPIC: &[&str] = &[
            "timeout_s",
            "model",
            "base_url",
            "api_key_env",
            "temperature",
            "top_p",
            "max_tokens",
            "stop",
            "format",
            "schema",
            "sample",
            "connect_timeout_s",
            "max_retries",
            "max_concurrency",
            "requests_per_minute",
            "tokens_per_minute",
            "rate_limit_wait_s",
            "price_input_per_mtok",
            "price_output_per_mtok",
            "batch",
            "batch_discount",
            "price_cached_input_per_mtok",
            "prompt_cache",
            "prompt_cache_ttl",
            "pin",
        ];
        match self {
            Provider::Mock => &["latency_ms"],
            Provider::Command => &["command", "stdin", "timeout_s"],
            Provider::Openai => HTTP,
            Provider::Anthropic => ANTHROPIC,
        }
    }
}

/// The fully resolved model a target runs with: its `[models.NAME]` table
/// with the target's `params` applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub name: String,
    pub provider: Provider,
    pub settings: ModelSettings,
}

impl ModelConfig {
    /// The parameters that determine the output, as they enter the
    /// InputBundleHash: everything except the provider name itself and the
    /// settings that only change how (not what) the model is run.
    pub fn hashed_params(&self) -> BTreeMap<String, serde_json::Value> {
        let mut s = self.settings.clone();
        s.provider = None;
        s.latency_ms = None; // simulated delay: same output
        s.timeout_s = None; // a time limit: same output when it succeeds
        // where and how the request is sent, and what it costs: same output
        s.base_url = None;
        s.api_key_env = None;
        s.connect_timeout_s = None;
        s.max_retries = None;
        s.max_concurrency = None;
        s.requests_per_minute = None;
        s.tokens_per_minute = None;
        s.rate_limit_wait_s = None;
        s.price_input_per_mtok = None;
        s.price_output_per_mtok = None;
        s.batch = None;
        s.batch_discount = None;
        s.price_cached_input_per_mtok = None;
        // caching hints and the pin: the same answer, sent and checked
        // another way
        s.prompt_cache = None;
        s.prompt_cache_ttl = None;
        s.pin = None;
        match serde_json::to_value(&s) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputDecl {
    pub name: String,
    pub pattern: String,
    pub is_glob: bool,
    pub span: Range<usize>,
}

/// A `[targets.NAME]` table, validated but not yet expanded over files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetDecl {
    pub name: String,
    pub name_span: Range<usize>,
    pub template: Utf8PathBuf,
    pub template_span: Range<usize>,
    pub inputs: Vec<InputDecl>,
    pub output: String,
    pub output_span: Range<usize>,
    pub model: std::sync::Arc<ModelConfig>,
    pub foreach: Option<(String, Range<usize>)>,
}

/// A loaded `prompts.toml`.
#[derive(Debug, Clone)]
pub struct Project {
    /// Absolute project root (the directory holding `prompts.toml`).
    pub root: Utf8PathBuf,
    /// The project file's text, kept to turn spans into line and column.
    pub source: String,
    /// Each shared by the targets that use it as it is (no `params`).
    pub models: BTreeMap<String, std::sync::Arc<ModelConfig>>,
    pub targets: Vec<TargetDecl>,
    /// `[cache]`, checked (none of it enters any hash).
    pub cache: crate::cache_config::CacheConfig,
    /// `max_cost_usd`: a build whose estimate may cost more is refused,
    /// and one that has spent it stops (`mkt build --max-cost` wins).
    pub max_cost_usd: Option<f64>,
}

impl Project {
    /// The `prompts.toml:LINE:COL` of a byte span.
    pub fn loc(&self, span: &Range<usize>) -> Location {
        Location::at_offset(PROJECT_FILE, &self.source, span.start)
    }

    pub fn error(
        &self,
        span: &Range<usize>,
        msg: impl Into<String>,
        help: Option<String>,
    ) -> Error {
        Error::invalid(self.loc(span), msg, help)
    }

    /// Finds the project root: `start` or its nearest ancestor with a
    /// `prompts.toml`.
    pub fn discover(start: &Utf8Path) -> Result<Utf8PathBuf> {
        let mut dir = Some(start);
        while let Some(d) = dir {
            if d.join(PROJECT_FILE).is_file() {
                return Ok(d.to_owned());
            }
            dir = d.parent();
        }
        Err(Error::NoProject {
            dir: start.to_owned(),
        })
    }

    pub fn read_source(root: &Utf8Path) -> Result<String> {
        let path = root.join(PROJECT_FILE);
        let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        String::from_utf8(bytes).map_err(|e| {
            let valid = e.utf8_error().valid_up_to();
            // the bytes before the first bad one are valid UTF-8
            let before = std::str::from_utf8(&e.as_bytes()[..valid]).unwrap_or_default();
            Error::invalid(
                Location::at_offset(PROJECT_FILE, before, valid),
                format!("`{PROJECT_FILE}` is not UTF-8 text (byte {valid})"),
                Some("TOML files are UTF-8: save it in that encoding".into()),
            )
        })
    }

    /// Loads the project through a cache of its parsed form (parsing a
    /// 10,000-target `prompts.toml` costs more than the rest of a no-op
    /// build). The cache is keyed by the BLAKE3 of the file's bytes and
    /// mkt's version; anything unreadable in it just means a fresh parse.
    /// Returns the bytes to store as the new cache when it was not used.
    ///
    /// Format (binary, see `codec.rs`): `"MKTPROJ3"`, key digest,
    /// str version, u32 n, n × str (model JSON), u32 n, n × TARGET, where
    /// TARGET := str name, span, str template, span, u32 n × (str name,
    /// str pattern, u8 glob, span), str output, span, u32 model index,
    /// u8 has_foreach [str glob, span], str (`[cache]` JSON), str
    /// (`max_cost_usd` JSON), then the BLAKE3 of all before;
    /// span := u64 start, u64 end.
    pub fn load_cached(root: &Utf8Path, cache: &Utf8Path) -> Result<(Project, Option<Vec<u8>>)> {
        let source = Project::read_source(root)?;
        let key = Digest::of(source.as_bytes());
        if let Ok(bytes) = crate::store::map_replaced(cache)
            && let Some((models, targets, cache, max_cost_usd)) = decode_cache(&bytes, &key)
        {
            let p = Project {
                root: root.to_owned(),
                source,
                models,
                targets,
                cache,
                max_cost_usd,
            };
            return Ok((p, None));
        }
        let p = Project::parse(root, source)?;
        let bytes = encode_cache(&p, &key);
        Ok((p, Some(bytes)))
    }
}

// 2: the `[cache]` table was added (str, JSON) after the targets;
// 3: `max_cost_usd` (str, JSON) after it
const CACHE_MAGIC: &[u8; 8] = b"MKTPROJ3";

fn encode_cache(p: &Project, key: &Digest) -> Vec<u8> {
    use crate::codec::Writer;
    let mut w = Writer(Vec::with_capacity(64 + p.targets.len() * 128));
    w.0.extend_from_slice(CACHE_MAGIC);
    w.digest(key);
    w.str(env!("CARGO_PKG_VERSION"));
    // one table of distinct model configs: the project's models first,
    // then targets' configs with `params` applied
    let mut models: Vec<&ModelConfig> = p.models.values().map(|m| &**m).collect();
    let mut index = Vec::with_capacity(p.targets.len());
    for t in &p.targets {
        let i = match models.iter().position(|m| **m == *t.model) {
            Some(i) => i,
            None => {
                models.push(&t.model);
                models.len() - 1
            }
        };
        index.push(i as u32);
    }
    w.u32(models.len() as u32);
    for m in &models {
        w.str(&serde_json::to_string(m).expect("model serialises"));
    }
    w.u32(p.models.len() as u32);
    let span = |w: &mut Writer, s: &Range<usize>| {
        w.u64(s.start as u64);
        w.u64(s.end as u64);
    };
    w.u32(p.targets.len() as u32);
    for (t, mi) in p.targets.iter().zip(index) {
        w.str(&t.name);
        span(&mut w, &t.name_span);
        w.str(t.template.as_str());
        span(&mut w, &t.template_span);
        w.u32(t.inputs.len() as u32);
        for i in &t.inputs {
            w.str(&i.name);
            w.str(&i.pattern);
            w.u8(i.is_glob as u8);
            span(&mut w, &i.span);
        }
        w.str(&t.output);
        span(&mut w, &t.output_span);
        w.u32(mi);
        match &t.foreach {
            Some((g, s)) => {
                w.u8(1);
                w.str(g);
                span(&mut w, s);
            }
            None => w.u8(0),
        }
    }
    w.str(&serde_json::to_string(&p.cache).expect("cache config serialises"));
    w.str(&serde_json::to_string(&p.max_cost_usd).expect("a number serialises"));
    let sum = Digest::of(&w.0);
    w.digest(&sum);
    w.0
}

type Decoded = (
    BTreeMap<String, std::sync::Arc<ModelConfig>>,
    Vec<TargetDecl>,
    crate::cache_config::CacheConfig,
    Option<f64>,
);

fn decode_cache(bytes: &[u8], key: &Digest) -> Option<Decoded> {
    use crate::codec::Reader;
    let (bytes, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if Digest::of(bytes).0 != sum {
        return None;
    }
    let mut r = Reader { buf: bytes, pos: 0 };
    if r.take(8)? != CACHE_MAGIC || r.digest()? != *key || r.str()? != env!("CARGO_PKG_VERSION") {
        return None;
    }
    let n = r.count(4)?;
    let mut models = Vec::with_capacity(n);
    for _ in 0..n {
        // one shared copy per distinct model: 10,000 targets of one model
        // hold one config, not 10,000 clones of it
        models.push(std::sync::Arc::new(
            serde_json::from_str::<ModelConfig>(&r.str()?).ok()?,
        ));
    }
    let n_project_models = r.u32()? as usize;
    if n_project_models > models.len() {
        return None;
    }
    fn span(r: &mut Reader<'_>) -> Option<Range<usize>> {
        Some(usize::try_from(r.u64()?).ok()?..usize::try_from(r.u64()?).ok()?)
    }
    let n = r.count(8)?;
    let mut targets = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.str()?;
        let name_span = span(&mut r)?;
        let template = Utf8PathBuf::from(r.str()?);
        let template_span = span(&mut r)?;
        let ni = r.count(4)?;
        let mut inputs = Vec::with_capacity(ni);
        for _ in 0..ni {
            inputs.push(InputDecl {
                name: r.str()?,
                pattern: r.str()?,
                is_glob: r.bool()?,
                span: span(&mut r)?,
            });
        }
        let output = r.str()?;
        let output_span = span(&mut r)?;
        let model = std::sync::Arc::clone(models.get(r.u32()? as usize)?);
        let foreach = match r.u8()? {
            0 => None,
            1 => Some((r.str()?, span(&mut r)?)),
            _ => return None,
        };
        targets.push(TargetDecl {
            name,
            name_span,
            template,
            template_span,
            inputs,
            output,
            output_span,
            model,
            foreach,
        });
    }
    let cache = serde_json::from_str(&r.str()?).ok()?;
    let max_cost_usd = serde_json::from_str(&r.str()?).ok()?;
    if r.pos != bytes.len() {
        return None;
    }
    let all = models
        .into_iter()
        .take(n_project_models)
        .map(|m| (m.name.clone(), m))
        .collect();
    Some((all, targets, cache, max_cost_usd))
}

impl Project {
    pub fn parse(root: &Utf8Path, source: String) -> Result<Project> {
        let raw: RawProject = toml::from_str(&source).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let msg = e.message().trim_end().to_string();
            let help = if msg.contains("unknown field") {
                Some(
                    "remove or rename the key; see the `prompts.toml` reference in README.md"
                        .to_string(),
                )
            } else {
                None
            };
            Error::invalid(
                Location::at_offset(PROJECT_FILE, &source, offset),
                msg,
                help,
            )
        })?;
        let mut project = Project {
            root: root.to_owned(),
            source,
            models: BTreeMap::new(),
            targets: Vec::new(),
            cache: Default::default(),
            max_cost_usd: None,
        };
        if let Some(c) = raw.cache {
            project.cache = resolve_cache(&project, c)?;
        }
        if let Some(cap) = raw.max_cost_usd {
            let v = *cap.get_ref();
            if !(v.is_finite() && v > 0.0) {
                return Err(project.error(
                    &cap.span(),
                    format!("`max_cost_usd` is {v}, not a positive number of US dollars"),
                    Some("e.g. `max_cost_usd = 5.0`, or remove it for no cap".into()),
                ));
            }
            project.max_cost_usd = Some(v);
        }

        let mut raw_models = raw.models;
        for (name, settings) in &raw_models {
            check_name(&project, name, &settings.span(), "model")?;
        }
        if !raw_models.contains_key(DEFAULT_MODEL) {
            let mock = ModelSettings {
                provider: Some("mock".into()),
                ..Default::default()
            };
            raw_models.insert(DEFAULT_MODEL.into(), Spanned::new(0..0, mock));
        }
        for (name, settings) in &raw_models {
            let model = resolve_model(&project, name, settings.get_ref(), &settings.span())?;
            project.models.insert(name.clone(), model.into());
        }

        project.targets.reserve_exact(raw.targets.len());
        for (name, target) in raw.targets {
            let decl = resolve_target(&project, &name, target.into_inner())?;
            project.targets.push(decl);
        }
        Ok(project)
    }
}

fn resolve_cache(project: &Project, raw: RawCache) -> Result<crate::cache_config::CacheConfig> {
    use crate::cache_config::{CacheConfig, Mode, parse_url, redact};
    let mut c = CacheConfig::default();
    if let Some(url) = raw.remote {
        if let Err(why) = parse_url(url.get_ref()) {
            return Err(project.error(
                &url.span(),
                format!("the remote cache `{}` {why}", redact(url.get_ref())),
                Some("e.g. `remote = \"s3://bucket/prefix\"`, `\"webdav+https://host/path\"` or `\"file:///mnt/team-cache\"`".into()),
            ));
        }
        c.remote = Some(url.into_inner());
    }
    if let Some(mode) = raw.mode {
        c.mode = Mode::parse(mode.get_ref()).ok_or_else(|| {
            project.error(
                &mode.span(),
                format!("unknown cache mode `{}`", mode.get_ref()),
                Some("use `\"read-write\"` (the default) or `\"read-only\"`".into()),
            )
        })?;
    }
    if let Some(e) = raw.endpoint {
        let ok = e.get_ref().starts_with("http://") || e.get_ref().starts_with("https://");
        if !ok || e.get_ref().contains('@') {
            return Err(project.error(
                &e.span(),
                format!("the endpoint `{}` is not an http(s) URL without credentials", redact(e.get_ref())),
                Some("e.g. `endpoint = \"http://127.0.0.1:9000\"`; credentials come from the AWS environment variables or profile".into()),
            ));
        }
        c.endpoint = Some(e.into_inner());
    }
    c.region = raw.region;
    if let Some(t) = raw.timeout_s {
        if *t.get_ref() == 0 {
            return Err(project.error(&t.span(), "`timeout_s` must be at least 1", None));
        }
        c.timeout_s = t.into_inner();
    }
    Ok(c)
}

fn check_name(project: &Project, name: &str, span: &Range<usize>, what: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(project.error(
            span,
            format!("invalid {what} name `{name}`"),
            Some("use letters, digits, `_` and `-` only".into()),
        ))
    }
}

fn resolve_model(
    project: &Project,
    name: &str,
    settings: &ModelSettings,
    span: &Range<usize>,
) -> Result<ModelConfig> {
    let names = Provider::ALL
        .map(|p| format!("`{}`", p.as_str()))
        .join(", ");
    let provider = match settings.provider.as_deref() {
        Some(p) => match Provider::ALL.into_iter().find(|k| k.as_str() == p) {
            Some(k) => k,
            None => {
                return Err(project.error(
                    span,
                    format!("model `{name}` has unknown provider `{p}`"),
                    Some(format!("use one of {names}")),
                ));
            }
        },
        None => {
            return Err(project.error(
                span,
                format!("model `{name}` has no `provider`"),
                Some(format!("add `provider = ...`, one of {names}")),
            ));
        }
    };
    let mut model = ModelConfig {
        name: name.to_string(),
        provider,
        settings: settings.clone(),
    };
    check_model_settings(project, &mut model, span)?;
    Ok(model)
}

/// Provider-specific rules serde cannot express: which settings a provider
/// accepts and which it needs. A `schema` given as a string of JSON is
/// replaced by the JSON it holds, so that only its content is hashed.
fn check_model_settings(project: &Project, m: &mut ModelConfig, span: &Range<usize>) -> Result<()> {
    check_setting_keys(project, m, span)?;
    check_numbers(project, m, span)?;
    match m.provider {
        Provider::Mock => check_mock_settings(project, m, span),
        Provider::Command => check_command_settings(project, m, span),
        Provider::Openai | Provider::Anthropic => {
            check_http_settings(project, m, span)?;
            check_output_format(project, m, span)
        }
    }
}

/// Every key given in the table is a setting of the model's provider.
fn check_setting_keys(project: &Project, m: &ModelConfig, span: &Range<usize>) -> Result<()> {
    let set = match serde_json::to_value(&m.settings) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let allowed = m.provider.keys();
    if let Some(key) = set
        .keys()
        .find(|k| *k != "provider" && !allowed.contains(&k.as_str()))
    {
        return Err(project.error(
            span,
            format!(
                "model `{}`: `{key}` is not a setting of the `{}` provider",
                m.name,
                m.provider.as_str()
            ),
            Some(format!("remove `{key}`")),
        ));
    }
    Ok(())
}

/// The sampling and price numbers are finite, and `batch_discount` is a
/// fraction in (0, 1].
fn check_numbers(project: &Project, m: &ModelConfig, span: &Range<usize>) -> Result<()> {
    let err = |msg: String, help: Option<String>| Err(project.error(span, msg, help));
    let s = &m.settings;
    let numbers = [
        ("temperature", s.temperature),
        ("top_p", s.top_p),
        ("price_input_per_mtok", s.price_input_per_mtok),
        ("price_output_per_mtok", s.price_output_per_mtok),
        ("batch_discount", s.batch_discount),
        ("price_cached_input_per_mtok", s.price_cached_input_per_mtok),
    ];
    if let Some((key, v)) = numbers
        .into_iter()
        .find_map(|(k, v)| v.filter(|v| !v.is_finite()).map(|v| (k, v)))
    {
        return err(
            format!("model `{}`: `{key}` is {v}, not a finite number", m.name),
            Some(format!("give `{key}` a finite value, or remove it")),
        );
    }
    if let Some(d) = s.batch_discount.filter(|d| !(*d > 0.0 && *d <= 1.0)) {
        return err(
            format!(
                "model `{}`: `batch_discount` is {d}, not a fraction of the ordinary price",
                m.name
            ),
            Some("give the batch price relative to the ordinary one, e.g. `batch_discount = 0.5` for half".into()),
        );
    }
    Ok(())
}

/// The mock's `latency_ms` is at most [`MAX_LATENCY_MS`].
fn check_mock_settings(project: &Project, m: &ModelConfig, span: &Range<usize>) -> Result<()> {
    if m.settings.latency_ms.is_some_and(|l| l > MAX_LATENCY_MS) {
        return Err(project.error(
            span,
            format!(
                "model `{}`: `latency_ms` is more than {MAX_LATENCY_MS} (an hour)",
                m.name
            ),
            Some("the mock's latency simulates a model: use milliseconds to seconds".into()),
        ));
    }
    Ok(())
}

/// A command model has a non-empty argv and a known `stdin` format.
fn check_command_settings(project: &Project, m: &ModelConfig, span: &Range<usize>) -> Result<()> {
    let err = |msg: String, help: Option<String>| Err(project.error(span, msg, help));
    let s = &m.settings;
    match &s.command {
        Some(argv) if !argv.is_empty() && !argv[0].is_empty() => {}
        _ => {
            return err(
                format!("model `{}` needs a non-empty `command`", m.name),
                Some("for example `command = [\"python3\", \"call_model.py\"]`".into()),
            );
        }
    }
    if let Some(fmt) = s.stdin.as_deref()
        && fmt != "text"
        && fmt != "json"
    {
        return err(
            format!(
                "model `{}`: `stdin` must be \"text\" or \"json\", not \"{fmt}\"",
                m.name
            ),
            None,
        );
    }
    Ok(())
}

/// An HTTP model has a model id, known prompt-cache values, `max_tokens`
/// for Anthropic, an http(s) `base_url`, a plausible `api_key_env` and
/// limits of at least 1.
fn check_http_settings(project: &Project, m: &ModelConfig, span: &Range<usize>) -> Result<()> {
    let err = |msg: String, help: Option<String>| Err(project.error(span, msg, help));
    let s = &m.settings;
    if s.model.as_deref().is_none_or(str::is_empty) {
        return err(
            format!("model `{}` needs `model`, the provider's model id", m.name),
            Some(match m.provider {
                Provider::Anthropic => "for example `model = \"claude-sonnet-4-5\"`".into(),
                _ => {
                    "for example `model = \"gpt-4o-mini\"` (or a local server's model name)".into()
                }
            }),
        );
    }
    let one_of = |key: &str, v: Option<&str>, allowed: &[&str]| match v {
        Some(v) if !allowed.contains(&v) => {
            let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
            Some(project.error(
                span,
                format!(
                    "model `{}`: `{key}` must be {}, not \"{v}\"",
                    m.name,
                    list.join(" or ")
                ),
                Some(format!("for example `{key} = {}`", list[0])),
            ))
        }
        _ => None,
    };
    if let Some(e) = one_of("prompt_cache", s.prompt_cache.as_deref(), &["system"]).or_else(|| {
        one_of(
            "prompt_cache_ttl",
            s.prompt_cache_ttl.as_deref(),
            &["5m", "1h"],
        )
    }) {
        return Err(e);
    }
    // The Messages API requires it; a silent default would decide
    // how long (and how costly) every answer may be.
    if m.provider == Provider::Anthropic && s.max_tokens.is_none() {
        return err(
            format!(
                "model `{}` needs `max_tokens` (the Anthropic API requires it)",
                m.name
            ),
            Some("for example `max_tokens = 1024`".into()),
        );
    }
    if let Some(url) = &s.base_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return err(
            format!(
                "model `{}`: `base_url` `{url}` is not an http(s) URL",
                m.name
            ),
            Some("for example `base_url = \"http://localhost:11434/v1\"`".into()),
        );
    }
    if let Some(var) = &s.api_key_env
        && var.contains(['=', '\0'])
    {
        return err(
            format!(
                "model `{}`: `api_key_env` must name an environment variable",
                m.name
            ),
            Some("for example `api_key_env = \"OPENAI_API_KEY\"` (or `\"\"` for no key); the key itself never goes in `prompts.toml`".into()),
        );
    }
    if s.max_concurrency == Some(0)
        || s.requests_per_minute == Some(0)
        || s.tokens_per_minute == Some(0)
    {
        return err(
            format!(
                "model `{}`: `max_concurrency`, `requests_per_minute` and `tokens_per_minute` must be at least 1",
                m.name
            ),
            None,
        );
    }
    Ok(())
}

/// An HTTP model's `format` and `response_format` are known and agree,
/// `schema` comes with `format = "json"` and is a valid JSON Schema (a
/// string of JSON is replaced by the JSON it holds).
fn check_output_format(project: &Project, m: &mut ModelConfig, span: &Range<usize>) -> Result<()> {
    let err = |msg: String, help: Option<String>| Err(project.error(span, msg, help));
    let s = &mut m.settings;
    match s.format.as_deref() {
        None | Some("text") => {
            if s.schema.is_some() {
                return err(
                    format!("model `{}`: `schema` needs `format = \"json\"`", m.name),
                    Some("add `format = \"json\"`".into()),
                );
            }
        }
        Some("json") => {}
        Some(other) => {
            return err(
                format!(
                    "model `{}`: `format` must be \"text\" or \"json\", not \"{other}\"",
                    m.name
                ),
                None,
            );
        }
    }
    match (s.response_format.as_deref(), s.format.as_deref()) {
        (None | Some("json_schema" | "json_object"), Some("json")) | (None, _) => {}
        (Some("json_schema" | "json_object"), _) => {
            return err(
                format!(
                    "model `{}`: `response_format` needs `format = \"json\"`",
                    m.name
                ),
                Some("add `format = \"json\"`, or remove `response_format`".into()),
            );
        }
        (Some(other), _) => {
            return err(
                format!(
                    "model `{}`: `response_format` must be \"json_schema\" or \"json_object\", not \"{other}\"",
                    m.name
                ),
                Some("`json_object` for servers that take the schema in JSON mode (llama-cpp-python)".into()),
            );
        }
    }
    if let Some(serde_json::Value::String(text)) = &s.schema {
        match serde_json::from_str(text) {
            Ok(v) => s.schema = Some(v),
            Err(e) => {
                return err(
                    format!("model `{}`: `schema` is not valid JSON: {e}", m.name),
                    Some("write the schema as a TOML table or a string of JSON".into()),
                );
            }
        }
    }
    if let Some(schema) = &s.schema
        && let Err(e) = jsonschema::validator_for(schema)
    {
        return err(
            format!(
                "model `{}`: `schema` is not a valid JSON Schema: {e}",
                m.name
            ),
            None,
        );
    }
    Ok(())
}

/// The mock's `latency_ms` at most: a typo of a huge value would make a
/// build sleep for ever.
const MAX_LATENCY_MS: u64 = 3_600_000;

pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

/// Normalises a path or glob named in `prompts.toml` or a template:
/// relative, inside the project, no `..`, not in `.mkt/`. Returns it with
/// `/` separators and no `.` components, or why it is refused.
pub fn normalise_project_path(value: &str) -> std::result::Result<String, &'static str> {
    if value.is_empty() {
        return Err("is empty");
    }
    if value.contains('\0') {
        return Err("contains a NUL character");
    }
    if value.starts_with('/') || value.starts_with('\\') || Utf8Path::new(value).is_absolute() {
        return Err("is absolute");
    }
    let mut parts = Vec::new();
    for part in value.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err("leaves the project (`..`)"),
            p => parts.push(p),
        }
    }
    match parts.first() {
        None => Err("names no file"),
        Some(&first) if first == crate::layout::STORE_DIR => Err("is inside mkt's store `.mkt/`"),
        Some(_) => Ok(parts.join("/")),
    }
}

/// [`normalise_project_path`] for a value in `prompts.toml`, with its
/// position in the error.
pub fn check_project_path(
    project: &Project,
    value: &str,
    span: &Range<usize>,
    what: &str,
) -> Result<String> {
    normalise_project_path(value).map_err(|why| {
        project.error(
            span,
            format!("{what} `{value}` {why}"),
            Some(
                "paths in `prompts.toml` are relative to the project root and must stay inside it"
                    .into(),
            ),
        )
    })
}

fn resolve_target(project: &Project, name: &Spanned<String>, raw: RawTarget) -> Result<TargetDecl> {
    let name_span = name.span();
    let name = name.get_ref().clone();
    check_name(project, &name, &name_span, "target")?;

    let template = check_project_path(
        project,
        raw.template.get_ref(),
        &raw.template.span(),
        "template",
    )?;
    if is_glob(&template) {
        return Err(project.error(
            &raw.template.span(),
            format!("template `{template}` is a glob; a target has exactly one template"),
            Some("use `foreach` to run one template over many files".into()),
        ));
    }

    let mut inputs = Vec::new();
    for (iname, ipath) in &raw.inputs {
        check_name(project, iname.get_ref(), &iname.span(), "input")?;
        let pattern = check_project_path(project, ipath.get_ref(), &ipath.span(), "input")?;
        inputs.push(InputDecl {
            name: iname.get_ref().clone(),
            is_glob: is_glob(&pattern),
            pattern,
            span: ipath.span(),
        });
    }

    let foreach = match &raw.foreach {
        Some(f) => Some((
            check_project_path(project, f.get_ref(), &f.span(), "foreach glob")?,
            f.span(),
        )),
        None => None,
    };

    let output = check_project_path(project, raw.output.get_ref(), &raw.output.span(), "output")?;
    if raw.output.get_ref().ends_with(['/', '\\']) || raw.output.get_ref().ends_with("/.") {
        return Err(project.error(
            &raw.output.span(),
            format!("output `{}` names a directory", raw.output.get_ref()),
            Some(format!(
                "name the file to write, for example `{output}/{name}.md`"
            )),
        ));
    }
    check_output_placeholders(project, &output, &raw.output.span(), foreach.is_some())?;

    let (model_name, model_span) = match &raw.model {
        Some(m) => (m.get_ref().clone(), m.span()),
        None => (DEFAULT_MODEL.to_string(), name_span.clone()),
    };
    let Some(base) = project.models.get(&model_name) else {
        let known: Vec<&str> = project.models.keys().map(String::as_str).collect();
        return Err(project.error(
            &model_span,
            format!("target `{name}` uses unknown model `{model_name}`"),
            Some(format!(
                "define `[models.{model_name}]` or use one of: {}",
                known.join(", ")
            )),
        ));
    };
    let model = match &raw.params {
        Some(over) => {
            if over.get_ref().provider.is_some() {
                return Err(project.error(
                    &over.span(),
                    format!("target `{name}`: `params` cannot change the provider"),
                    Some("define another model in `[models]` and set `model`".into()),
                ));
            }
            // a pool is per model: a target cannot give itself another one
            for (key, set) in [
                ("max_concurrency", over.get_ref().max_concurrency.is_some()),
                (
                    "requests_per_minute",
                    over.get_ref().requests_per_minute.is_some(),
                ),
                (
                    "tokens_per_minute",
                    over.get_ref().tokens_per_minute.is_some(),
                ),
            ] {
                if set {
                    return Err(project.error(
                        &over.span(),
                        format!("target `{name}`: `{key}` cannot be set in `params`"),
                        Some(format!(
                            "set it on `[models.{model_name}]`: the limit is shared by all its targets"
                        )),
                    ));
                }
            }
            let mut m = ModelConfig {
                name: base.name.clone(),
                provider: base.provider,
                settings: base.settings.overridden_by(over.get_ref()),
            };
            check_model_settings(project, &mut m, &over.span())?;
            std::sync::Arc::new(m)
        }
        // (shared: 10,000 targets of one model hold one config)
        None => std::sync::Arc::clone(base),
    };

    Ok(TargetDecl {
        name,
        name_span,
        template: template.into(),
        template_span: raw.template.span(),
        inputs,
        output,
        output_span: raw.output.span(),
        model,
        foreach,
    })
}

const PLACEHOLDERS: [&str; 3] = ["{stem}", "{name}", "{dir}"];

fn check_output_placeholders(
    project: &Project,
    output: &str,
    span: &Range<usize>,
    has_foreach: bool,
) -> Result<()> {
    let mut rest = output.to_string();
    for p in PLACEHOLDERS {
        rest = rest.replace(p, "");
    }
    if rest.contains(['{', '}']) {
        return Err(project.error(
            span,
            format!("output `{output}` has an unknown placeholder"),
            Some("an output may use `{stem}`, `{name}` and `{dir}` (with `foreach`)".into()),
        ));
    }
    let used = PLACEHOLDERS.iter().any(|p| output.contains(p));
    if used && !has_foreach {
        return Err(project.error(
            span,
            format!("output `{output}` uses a placeholder but the target has no `foreach`"),
            Some("add `foreach = \"GLOB\"` or write a plain path".into()),
        ));
    }
    if has_foreach && !output.contains("{stem}") && !output.contains("{name}") {
        return Err(project.error(
            span,
            format!("output `{output}` is the same for every `foreach` file"),
            Some("put `{stem}` or `{name}` in the output path, e.g. `out/{stem}.md`".into()),
        ));
    }
    if is_glob(&rest) {
        return Err(project.error(
            span,
            format!("output `{output}` contains glob characters"),
            None,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Project> {
        Project::parse(Utf8Path::new("/p"), src.to_string())
    }

    fn err(src: &str) -> String {
        parse(src).unwrap_err().to_string()
    }

    /// Targets that use a model as it is share its one config, parsed or
    /// read from the project cache (at 10,000 targets a copy each was
    /// 4.6 MB of a full build's peak); one with `params` has its own.
    #[test]
    fn targets_share_their_models_config_unless_they_override_it() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let cache = root.join("cache");
        std::fs::write(
            root.join(PROJECT_FILE),
            "[models.m]\nprovider = \"mock\"\n\
             [targets.a]\ntemplate = \"t.md\"\noutput = \"a.md\"\nmodel = \"m\"\n\
             [targets.b]\ntemplate = \"t.md\"\noutput = \"b.md\"\nmodel = \"m\"\n\
             [targets.c]\ntemplate = \"t.md\"\noutput = \"c.md\"\nmodel = \"m\"\n\
             params = { latency_ms = 5 }\n",
        )
        .unwrap();
        let (parsed, bytes) = Project::load_cached(root, &cache).unwrap();
        std::fs::write(&cache, bytes.unwrap()).unwrap();
        let (cached, again) = Project::load_cached(root, &cache).unwrap();
        assert!(again.is_none(), "the second load reads the cache");
        for p in [&parsed, &cached] {
            let m = &p.models["m"];
            let [a, b, c] = &p.targets[..] else {
                panic!("3 targets")
            };
            assert!(std::sync::Arc::ptr_eq(&a.model, m));
            assert!(std::sync::Arc::ptr_eq(&b.model, m));
            assert!(!std::sync::Arc::ptr_eq(&c.model, m));
            assert_ne!(*c.model, **m);
        }
    }

    #[test]
    fn project_cache_round_trips_and_is_keyed_by_content() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let cache = root.join("cache");
        std::fs::write(
            root.join(PROJECT_FILE),
            "[targets.a]\ntemplate = \"t.md\"\noutput = \"o.md\"\n",
        )
        .unwrap();
        let (p, bytes) = Project::load_cached(root, &cache).unwrap();
        std::fs::write(&cache, bytes.unwrap()).unwrap();
        let (q, again) = Project::load_cached(root, &cache).unwrap();
        assert!(again.is_none(), "second load uses the cache");
        assert_eq!(
            serde_json::to_string(&p.targets).unwrap(),
            serde_json::to_string(&q.targets).unwrap()
        );
        std::fs::write(
            root.join(PROJECT_FILE),
            "[targets.b]\ntemplate = \"t.md\"\noutput = \"o.md\"\n",
        )
        .unwrap();
        let (r, bytes) = Project::load_cached(root, &cache).unwrap();
        assert!(bytes.is_some(), "an edited file is parsed again");
        assert_eq!(r.targets[0].name, "b");
        assert_eq!(r.models.len(), 1);
        let bytes = bytes.unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode_cache(&bytes[..cut], &Digest::of(r.source.as_bytes())).is_none(),
                "cut at {cut}"
            );
        }
        let key = Digest::of(r.source.as_bytes());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(decode_cache(&b, &key).is_none(), "flip at {i}");
        }
        std::fs::write(&cache, b"{garbage").unwrap();
        assert!(Project::load_cached(root, &cache).unwrap().1.is_some());
    }

    /// `[cache]` survives the parsed-project cache: a build that loads the
    /// project from it must still find its remote.
    #[test]
    fn the_cache_table_is_parsed_and_kept_by_the_project_cache() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        let cache = root.join("cache");
        std::fs::write(
            root.join(PROJECT_FILE),
            "[cache]\nremote = \"s3://b/p\"\nmode = \"read-only\"\nendpoint = \"http://127.0.0.1:9000\"\ntimeout_s = 3\n",
        )
        .unwrap();
        let (p, bytes) = Project::load_cached(root, &cache).unwrap();
        let want = crate::cache_config::CacheConfig {
            remote: Some("s3://b/p".into()),
            mode: crate::cache_config::Mode::ReadOnly,
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: None,
            timeout_s: 3,
        };
        assert_eq!(p.cache, want);
        std::fs::write(&cache, bytes.unwrap()).unwrap();
        let (q, again) = Project::load_cached(root, &cache).unwrap();
        assert!(again.is_none(), "second load uses the cache");
        assert_eq!(q.cache, want);
        assert!(err("[cache]\ntimeout_s = 0\n").contains("prompts.toml:2:13"));
        assert!(err("[cache]\nendpoint = \"ftp://x\"\n").contains("not an http(s) URL"));
    }

    #[test]
    fn minimal_project_gets_the_default_mock_model() {
        let p = parse("[targets.a]\ntemplate = \"t.md\"\noutput = \"out/a.md\"\n").unwrap();
        assert_eq!(p.targets[0].model.provider, Provider::Mock);
        assert_eq!(p.targets[0].model.name, "default");
    }

    #[test]
    fn unknown_key_names_its_line_and_column() {
        let e = err("[targets.a]\ntemplate = \"t.md\"\noutput = \"o.md\"\ntemplat = \"x\"\n");
        assert!(
            e.starts_with("prompts.toml:4:1: unknown field `templat`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_is_reported() {
        let e = err("[targets.a]\ntemplate = 3\noutput = \"o.md\"\n");
        assert!(e.starts_with("prompts.toml:2:12: invalid type"), "{e}");
    }

    #[test]
    fn unknown_model() {
        let e = err("[targets.a]\ntemplate = \"t.md\"\noutput = \"o.md\"\nmodel = \"fast\"\n");
        assert_eq!(
            e,
            "prompts.toml:4:9: target `a` uses unknown model `fast`\n  help: define `[models.fast]` or use one of: default"
        );
    }

    #[test]
    fn escaping_paths_are_refused() {
        for bad in ["../x.md", "/etc/passwd", "a/../../x", ".mkt/objects/x"] {
            let e = err(&format!(
                "[targets.a]\ntemplate = \"{bad}\"\noutput = \"o.md\"\n"
            ));
            assert!(e.starts_with("prompts.toml:2:12: template"), "{bad}: {e}");
        }
    }

    #[test]
    fn params_override_and_hash_only_what_matters() {
        let p = parse(
            "[models.m]\nprovider = \"command\"\ncommand = [\"cat\"]\ntimeout_s = 5\n\
             [targets.a]\ntemplate = \"t.md\"\noutput = \"o.md\"\nmodel = \"m\"\nparams = { stdin = \"json\" }\n",
        )
        .unwrap();
        let h = p.targets[0].model.hashed_params();
        assert_eq!(h.get("stdin"), Some(&serde_json::json!("json")));
        assert_eq!(h.get("command"), Some(&serde_json::json!(["cat"])));
        assert!(!h.contains_key("timeout_s"));
    }

    #[test]
    fn http_params_hash_what_decides_the_output() {
        let p = parse(
            "[models.m]\nprovider = \"openai\"\nmodel = \"gpt-x\"\ntemperature = 0.3\n\
             base_url = \"http://localhost:11434/v1\"\napi_key_env = \"K\"\ntimeout_s = 5\n\
             connect_timeout_s = 2\nmax_retries = 1\nmax_concurrency = 2\nrequests_per_minute = 60\n\
             tokens_per_minute = 30000\nrate_limit_wait_s = 60\n\
             price_input_per_mtok = 1.0\nprice_output_per_mtok = 2.0\n\
             price_cached_input_per_mtok = 0.5\nprompt_cache = \"system\"\npin = true\n\
             [targets.a]\ntemplate = \"t.md\"\noutput = \"o.md\"\nmodel = \"m\"\n\
             [targets.b]\ntemplate = \"t.md\"\noutput = \"p.md\"\nmodel = \"m\"\n\
             params = { sample = \"2\", base_url = \"http://elsewhere/v1\", timeout_s = 9 }\n",
        )
        .unwrap();
        let a = p.targets[0].model.hashed_params();
        assert_eq!(
            a,
            BTreeMap::from([
                ("model".to_string(), serde_json::json!("gpt-x")),
                ("temperature".to_string(), serde_json::json!(0.3)),
            ])
        );
        let b = p.targets[1].model.hashed_params();
        assert_eq!(b.get("sample"), Some(&serde_json::json!("2")));
        let mut without_sample = b.clone();
        without_sample.remove("sample");
        assert_eq!(without_sample, a, "base_url and timeout_s are not hashed");
        let cost = p.models["m"].settings.cost_usd(&crate::manifest::Usage {
            input_tokens: 1_000_000,
            output_tokens: 500_000,
            cached_tokens: 0,
            cache_write_tokens: 0,
        });
        assert_eq!(cost, Some(2.0));
        assert_eq!(
            parse("[models.m]\nprovider = \"openai\"\nmodel = \"x\"\n")
                .unwrap()
                .models["m"]
                .settings
                .cost_usd(&Default::default()),
            None
        );
    }

    /// Cache reads at a tenth of the input price (or the price set), cache
    /// writes at 1.25 times it (twice for `prompt_cache_ttl = "1h"`).
    #[test]
    fn prompt_cache_reads_and_writes_are_priced() {
        let model = |extra: &str| {
            parse(&format!(
                "[models.m]\nprovider = \"anthropic\"\nmodel = \"c\"\nmax_tokens = 9\n\
                 price_input_per_mtok = 3.0\nprice_output_per_mtok = 15.0\n{extra}"
            ))
            .unwrap()
            .models["m"]
                .settings
                .clone()
        };
        let usage = |read, written| crate::manifest::Usage {
            input_tokens: 1_000_000,
            output_tokens: 0,
            cached_tokens: read,
            cache_write_tokens: written,
        };
        let close = |a: Option<f64>, b: f64| assert!((a.unwrap() - b).abs() < 1e-9, "{a:?} {b}");
        let m = model("");
        close(m.cost_usd(&usage(0, 0)), 3.0);
        close(m.cost_usd(&usage(800_000, 0)), 0.2 * 3.0 + 0.8 * 0.3);
        close(m.cost_usd(&usage(0, 800_000)), 0.2 * 3.0 + 0.8 * 3.75);
        close(m.prompt_cache_saving(&usage(800_000, 0)), 0.8 * 2.7);
        close(m.prompt_cache_saving(&usage(0, 800_000)), -0.8 * 0.75);
        let hour = model("prompt_cache_ttl = \"1h\"\nprice_cached_input_per_mtok = 1.5\n");
        close(hour.cost_usd(&usage(0, 1_000_000)), 6.0);
        close(hour.cost_usd(&usage(1_000_000, 0)), 1.5);
        let e = parse("[models.m]\nprovider = \"openai\"\nmodel = \"x\"\nprompt_cache = \"all\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model `m`: `prompt_cache` must be \"system\", not \"all\""),
            "{e}"
        );
        let e =
            parse("[models.m]\nprovider = \"openai\"\nmodel = \"x\"\nprompt_cache_ttl = \"1h\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("`prompt_cache_ttl` is not a setting of the `openai` provider"),
            "{e}"
        );
    }

    #[test]
    fn a_schema_string_is_hashed_as_the_json_it_holds() {
        let table = parse(
            "[models.m]\nprovider = \"openai\"\nmodel = \"x\"\nformat = \"json\"\n\
             schema = { type = \"object\", required = [\"a\"] }\n",
        )
        .unwrap();
        let string = parse(
            "[models.m]\nprovider = \"openai\"\nmodel = \"x\"\nformat = \"json\"\n\
             schema = '{ \"required\": [\"a\"],  \"type\": \"object\" }'\n",
        )
        .unwrap();
        assert_eq!(
            table.models["m"].hashed_params(),
            string.models["m"].hashed_params()
        );
    }

    #[test]
    fn http_provider_rules() {
        let e = err("[models.m]\nprovider = \"openai\"\n");
        assert!(
            e.starts_with("prompts.toml:1:1: model `m` needs `model`"),
            "{e}"
        );
        let e =
            err("[models.m]\nprovider = \"anthropic\"\nmodel = \"c\"\nseed = 1\nmax_tokens = 9\n");
        assert!(
            e.contains("`seed` is not a setting of the `anthropic` provider"),
            "{e}"
        );
        let e = err(
            "[models.m]\nprovider = \"openai\"\nmodel = \"c\"\nschema = { type = \"object\" }\n",
        );
        assert!(e.contains("`schema` needs `format = \"json\"`"), "{e}");
        let e = err("[models.m]\nprovider = \"openai\"\nmodel = \"c\"\nformat = \"yaml\"\n");
        assert!(e.contains("`format` must be \"text\" or \"json\""), "{e}");
        let e = err(
            "[models.m]\nprovider = \"openai\"\nmodel = \"c\"\nformat = \"json\"\nschema = '{not json'\n",
        );
        assert!(e.contains("`schema` is not valid JSON"), "{e}");
        let e = err(
            "[models.m]\nprovider = \"openai\"\nmodel = \"c\"\nformat = \"json\"\nschema = { type = 5 }\n",
        );
        assert!(e.contains("`schema` is not a valid JSON Schema"), "{e}");
        let e = err(
            "[models.m]\nprovider = \"openai\"\nmodel = \"c\"\nbase_url = \"localhost:8080\"\n",
        );
        assert!(e.contains("is not an http(s) URL"), "{e}");
        let e = err("[models.m]\nprovider = \"openai\"\nmodel = \"c\"\nmax_concurrency = 0\n");
        assert!(e.contains("must be at least 1"), "{e}");
    }

    #[test]
    fn provider_rules() {
        let e = err("[models.m]\nprovider = \"command\"\n");
        assert!(e.contains("model `m` needs a non-empty `command`"), "{e}");
        let e = err("[models.m]\nprovider = \"mock\"\ncommand = [\"cat\"]\n");
        assert!(
            e.contains("`command` is not a setting of the `mock` provider"),
            "{e}"
        );
        let e = err("[models.m]\nprovider = \"gpt\"\n");
        assert!(e.contains("unknown provider `gpt`"), "{e}");
        let e = err("[models.m]\nprovider = \"openai\"\nmodel = \"x\"\nlatency_ms = 3\n");
        assert!(
            e.contains("`latency_ms` is not a setting of the `openai` provider"),
            "{e}"
        );
    }

    #[test]
    fn foreach_output_needs_a_placeholder() {
        let e = err("[targets.a]\ntemplate = \"t.md\"\noutput = \"o.md\"\nforeach = \"d/*.md\"\n");
        assert!(e.contains("is the same for every `foreach` file"), "{e}");
        let e = err("[targets.a]\ntemplate = \"t.md\"\noutput = \"o/{stem}.md\"\n");
        assert!(
            e.contains("uses a placeholder but the target has no `foreach`"),
            "{e}"
        );
    }
}
