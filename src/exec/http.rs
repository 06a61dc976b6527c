//! The one request path of the HTTP providers; a provider file
//! (`openai.rs`, `anthropic.rs`) holds only its wire format, a [`Wire`].
//! Here: the API key from the environment, one blocking client (ureq with
//! rustls), the retry loop, the record of models that ran out of quota,
//! and the use of the model's [`limiter`](super::limiter). The batch APIs
//! ([`super::batch`]) send their requests (GET or POST, any body) through
//! the same loop by way of an [`Endpoint`], outside the limiter.
//!
//! Answers of 429 and 529 are back-pressure, not failure: they never count
//! against `max_retries`; the request waits (what the server asked for,
//! with jitter, and its place in the limiter) within `rate_limit_wait_s`.
//! Server errors, 408, 409, timeouts and dropped connections are retried
//! up to `max_retries` times with exponential backoff.

use super::limiter::{self, Cost, Kind, Learnt, Signal};
use super::{CallStats, HttpError, ModelAdapter, ModelError, ModelResponse, TransportKind};
use crate::config::ModelConfig;
use crate::template::CompiledPrompt;
use camino::Utf8Path;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Total time for one request when `timeout_s` is not set: generous,
/// because a long answer from a slow model legitimately takes minutes.
pub const DEFAULT_TIMEOUT_S: u64 = 600;
pub const DEFAULT_CONNECT_TIMEOUT_S: u64 = 10;
pub const DEFAULT_MAX_RETRIES: u32 = 4;
/// How long one target may wait out 429 and 529 answers.
pub const DEFAULT_RATE_LIMIT_WAIT_S: u64 = 900;
/// Backoff before retry n (0-based) without a `Retry-After`: a random
/// time in [d/2, d] for d = BASE × 2^n, at most CAP.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A server asking for a longer pause than this gets this.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(120);
/// Back-pressure: rate limited, Anthropic's "overloaded".
const BACKPRESSURE_STATUSES: [u16; 2] = [429, 529];
/// Worth a bounded number of retries: timeouts, conflicts, server errors.
const RETRY_STATUSES: [u16; 6] = [408, 409, 500, 502, 503, 504];

/// A provider's wire format.
pub struct Wire {
    pub default_base_url: &'static str,
    /// The key's variable when `api_key_env` is not set and the model talks
    /// to the provider's own API (a local server needs no key).
    pub default_key_env: &'static str,
    /// The variable the provider's SDKs read a base URL from (used when
    /// `base_url` is not set).
    pub base_url_env: &'static str,
    /// Whether the SDK's base URL leaves out the API's `/v1` (Anthropic's
    /// SDK appends `/v1/messages` to `https://api.anthropic.com`; OpenAI's
    /// appends `/chat/completions` to `https://api.openai.com/v1`): then a
    /// base URL that does not end in `/v1` gets it.
    pub sdk_base_lacks_v1: bool,
    /// Appended to the base URL.
    pub path: &'static str,
    /// The headers that carry the key (when there is one) and the version.
    pub headers: fn(Option<&str>) -> Vec<(&'static str, String)>,
    pub body: fn(&ModelConfig, &CompiledPrompt) -> Value,
    pub read_error: fn(u16, &Value) -> Option<ApiError>,
    pub read_answer: fn(&Value) -> Result<ModelResponse, ModelError>,
    /// The rate-limit headers: a kind, its limit's, its remaining's and its
    /// reset's names.
    pub limit_headers: &'static [(Kind, &'static str, &'static str, &'static str)],
    /// How the reset headers are written: the time from now until the
    /// limit is full again, `None` for what is not understood.
    pub read_reset: fn(&str) -> Option<Duration>,
}

/// How a protocol reads an error answer's JSON.
pub struct ApiError {
    pub message: String,
    /// The provider says the account has no money or quota left: no retry,
    /// and no further request to this model in this build.
    pub quota: bool,
}

/// Clears the out-of-quota record (see `exec::begin_build`).
pub(super) fn begin_build() {
    lock(&OUT_OF_QUOTA).clear();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a model's requests go: `base_url`, else the provider SDKs'
/// variable (`OPENAI_BASE_URL`, `ANTHROPIC_BASE_URL`), else the
/// provider's own API; and whether that is the provider's own API.
pub fn base_url(m: &ModelConfig, w: &Wire) -> (String, bool) {
    let from_env = || {
        std::env::var(w.base_url_env)
            .ok()
            .filter(|v| !v.trim().is_empty())
    };
    match m.settings.base_url.clone().or_else(from_env) {
        Some(url) => (url.trim().to_string(), false),
        None => (w.default_base_url.to_string(), true),
    }
}

/// The URL of a request: `base` (in the SDK's form or with `/v1`, see
/// [`Wire::sdk_base_lacks_v1`]) and the wire's path.
pub fn endpoint(base: &str, w: &Wire) -> String {
    format!("{}{}", api_root(base, w), w.path)
}

/// `base` with the API's `/v1` (see [`Wire::sdk_base_lacks_v1`]), without a
/// trailing slash: what every path of the API is appended to.
pub fn api_root(base: &str, w: &Wire) -> String {
    let base = base.trim_end_matches('/');
    let v1 = if w.sdk_base_lacks_v1 && !base.ends_with("/v1") {
        "/v1"
    } else {
        ""
    };
    format!("{base}{v1}")
}

/// The API key, as the providers' SDKs find it:
/// - `api_key_env = "NAME"`: that variable, which must be set;
/// - `api_key_env = ""`: none;
/// - not set: the provider's usual variable (`OPENAI_API_KEY`,
///   `ANTHROPIC_API_KEY`), which must be set for the provider's own API
///   (`own_api`) and is sent, when set, to any other (a proxy or gateway
///   may want one; a local server ignores it).
///
/// The error names the variable, never a value.
pub fn api_key(
    m: &ModelConfig,
    default_env: &str,
    own_api: bool,
) -> Result<Option<String>, ModelError> {
    let (var, required) = match m.settings.api_key_env.as_deref() {
        Some("") => return Ok(None),
        Some(v) => (v, true),
        None => (default_env, own_api),
    };
    match std::env::var(var) {
        Ok(k) if !k.trim().is_empty() => Ok(Some(k.trim().to_string())),
        _ if !required => Ok(None),
        _ => Err(ModelError::MissingKey {
            model: m.name.clone(),
            var: var.to_string(),
            named: m.settings.api_key_env.is_some(),
        }),
    }
}

/// A model of an HTTP provider.
pub struct Http {
    model: ModelConfig,
    wire: &'static Wire,
}

impl Http {
    pub fn new(m: &ModelConfig, wire: &'static Wire) -> Http {
        Http {
            model: m.clone(),
            wire,
        }
    }
}

impl ModelAdapter for Http {
    fn call(&self, prompt: &CompiledPrompt, root: &Utf8Path) -> Result<ModelResponse, ModelError> {
        self.call_counted(prompt, root, &mut CallStats::default())
    }

    fn call_counted(
        &self,
        prompt: &CompiledPrompt,
        _root: &Utf8Path,
        stats: &mut CallStats,
    ) -> Result<ModelResponse, ModelError> {
        let (m, w) = (&self.model, self.wire);
        let s = &m.settings;
        let (base, own_api) = base_url(m, w);
        let key = api_key(m, w.default_key_env, own_api)?;
        let body = serde_json::to_vec(&(w.body)(m, prompt)).expect("JSON");
        let req = Request {
            model: m,
            wire: w,
            method: Method::Post,
            url: endpoint(&base, w),
            content_type: "application/json".into(),
            headers: (w.headers)(key.as_deref()),
            secret: key.as_deref(),
            metered: true,
            // a chat call sent twice is paid twice but does no other harm
            idempotent: true,
            max_body: CHAT_MAX_BODY,
            // what providers (and llmock) count before answering: a
            // quarter of the body's bytes, and the answer at its longest
            cost: Cost {
                input_tokens: body.len() as u64 / 4,
                output_tokens: s.max_tokens.unwrap_or(0),
            },
            body,
        };
        (w.read_answer)(&send(&req, stats)?)
    }
}

/// The largest answer body read: a chat answer, and a batch's result
/// file (50,000 long answers may well pass 64 MiB).
const CHAT_MAX_BODY: u64 = 64 * 1024 * 1024;
const FILE_MAX_BODY: u64 = 2 * 1024 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// A model's API for requests other than its chat call (the batch
/// endpoints): the same base URL, key, headers, retries, back-pressure
/// handling and key redaction as the chat call, through the same loop.
///
/// These requests do not go through the model's limiter and do not teach
/// it their answers' rate-limit headers: the limiter paces chat calls by
/// the account's requests and tokens per minute, and a batch's upload,
/// creation and polls count against neither (both providers limit the
/// batch endpoints separately, and the batch's tokens against a queue of
/// their own). A poll is one cheap request every few seconds at most;
/// taking a request from `requests_per_minute` for it would slow the
/// chat calls of the same build for nothing, and a 200 MB upload counted
/// as tokens would stall them for minutes. A 429 from these endpoints
/// is still waited out (within `rate_limit_wait_s`) and 5xx retried.
pub struct Endpoint {
    model: ModelConfig,
    wire: &'static Wire,
    root: String,
    key: Option<String>,
}

impl Endpoint {
    /// The API of `m` as `wire` reaches it; fails, sending nothing, when
    /// the key is required and missing.
    pub fn new(m: &ModelConfig, wire: &'static Wire) -> Result<Endpoint, ModelError> {
        let (base, own_api) = base_url(m, wire);
        let key = api_key(m, wire.default_key_env, own_api)?;
        Ok(Endpoint {
            model: m.clone(),
            wire,
            root: api_root(&base, wire),
            key,
        })
    }

    /// The URL of `path` (`/batches`, starting with a slash).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.root)
    }

    /// Sends a request to `url` (from [`Endpoint::url`], or one the API
    /// gave) and returns the body of its successful answer.
    pub fn send(
        &self,
        method: Method,
        url: String,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, ModelError> {
        let req = self.request(method, url, content_type, body);
        Ok(send_raw(&req, &mut CallStats::default())?.1)
    }

    /// [`Endpoint::send`] of a JSON body (or none, for a GET) to `path`,
    /// returning the answer's JSON.
    pub fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ModelError> {
        let body = body.map_or_else(Vec::new, |b| serde_json::to_vec(b).expect("JSON"));
        let req = self.request(method, self.url(path), "application/json", body);
        send(&req, &mut CallStats::default())
    }

    /// [`Endpoint::json`] of a POST that creates something (a batch): not
    /// sent again when it may have arrived (see `Request::idempotent`).
    pub fn create(&self, path: &str, body: &Value) -> Result<Value, ModelError> {
        let body = serde_json::to_vec(body).expect("JSON");
        let mut req = self.request(Method::Post, self.url(path), "application/json", body);
        req.idempotent = false;
        send(&req, &mut CallStats::default())
    }

    fn request(
        &self,
        method: Method,
        url: String,
        content_type: &str,
        body: Vec<u8>,
    ) -> Request<'_> {
        Request {
            model: &self.model,
            wire: self.wire,
            method,
            url,
            content_type: content_type.to_string(),
            headers: (self.wire.headers)(self.key.as_deref()),
            secret: self.key.as_deref(),
            body,
            metered: false,
            idempotent: true,
            max_body: FILE_MAX_BODY,
            cost: Cost::default(),
        }
    }

    /// The error the chat call would give for an answer of `status` with
    /// `body` from `url` (a line of a batch's results carries one): the
    /// API's own message, key redacted; [`ModelError::Quota`] where the
    /// API says the account is out of credit. Never `retryable`: the
    /// request is not retried within the batch (a later build may submit
    /// it again).
    pub fn answer_error(&self, status: u16, body: &Value, url: &str) -> ModelError {
        let api = (self.wire.read_error)(status, body);
        let message = match &api {
            Some(a) => a.message.clone(),
            None => snippet(body.to_string().as_bytes()),
        };
        let message = match &self.key {
            Some(k) if !k.is_empty() => redact_key(&message, k),
            _ => message,
        };
        if api.is_some_and(|a| a.quota) {
            return ModelError::Quota {
                model: self.model.name.clone(),
                first: format!("HTTP {status} from `{url}`: {message}"),
            };
        }
        ModelError::Http(HttpError {
            status,
            url: url.to_string(),
            message,
            retryable: false,
            attempts: 1,
            max_retries: 0,
            wait_asked: None,
        })
    }

    /// The URL of the chat call, which a batch's requests stand for.
    pub fn chat_url(&self) -> String {
        self.url(self.wire.path)
    }

    /// The wire's reading of a successful answer (the chat call's own).
    pub fn read_answer(&self, v: &Value) -> Result<ModelResponse, ModelError> {
        (self.wire.read_answer)(v)
    }

    /// Whether `url` is on the API's own origin (scheme, host, port): only
    /// there may the key go.
    pub fn same_origin(&self, url: &str) -> bool {
        origin(url).is_some_and(|o| Some(o) == origin(&self.root))
    }

    /// `path` (absolute, `/...`) on the API's origin.
    pub fn on_origin(&self, path: &str) -> Option<String> {
        origin(&self.root).map(|o| format!("{o}{path}"))
    }
}

/// `scheme://host[:port]` of `url`.
fn origin(url: &str) -> Option<&str> {
    let after = url.find("://")? + 3;
    let end = url[after..].find('/').map_or(url.len(), |i| after + i);
    Some(&url[..end])
}

/// One request as the protocol builds it.
struct Request<'a> {
    model: &'a ModelConfig,
    wire: &'static Wire,
    method: Method,
    url: String,
    /// Of the body (a GET sends none).
    content_type: String,
    /// Header name and value; the key is among them and is redacted from
    /// every message made here.
    headers: Vec<(&'static str, String)>,
    secret: Option<&'a str>,
    body: Vec<u8>,
    /// Whether the request takes its place in the model's limiter and
    /// teaches it the rate-limit headers of its answer (a chat call); see
    /// [`Endpoint`] for why the batch endpoints do not.
    metered: bool,
    /// Whether sending it twice does no harm. A request that is not (one
    /// that creates a batch) is not sent again after a timeout or a broken
    /// connection, when the server may have acted on it; it still is after
    /// an answer that says it did not (5xx, 429).
    idempotent: bool,
    max_body: u64,
    cost: Cost,
}

impl Request<'_> {
    fn redact(&self, s: String) -> String {
        match self.secret {
            Some(k) if !k.is_empty() => redact_key(&s, k),
            _ => s,
        }
    }
}

static AGENT: LazyLock<ureq::Agent> = LazyLock::new(|| {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("mkt/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
});

/// An HTTP answer as the retry loop needs it.
struct Answer {
    status: u16,
    wait: Option<Duration>,
    learnt: Vec<Learnt>,
    body: Vec<u8>,
}

/// Limits of one call: the settings in effect.
struct Limits {
    max_retries: u32,
    timeout: Duration,
    connect: Duration,
    budget: Duration,
}

impl Limits {
    fn of(m: &ModelConfig) -> Limits {
        let s = &m.settings;
        Limits {
            max_retries: s.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            timeout: Duration::from_secs(s.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S)),
            connect: Duration::from_secs(s.connect_timeout_s.unwrap_or(DEFAULT_CONNECT_TIMEOUT_S)),
            budget: Duration::from_secs(s.rate_limit_wait_s.unwrap_or(DEFAULT_RATE_LIMIT_WAIT_S)),
        }
    }
}

/// Sends `req`, retrying what is worth retrying, and returns the JSON of
/// the successful answer.
fn send(req: &Request<'_>, stats: &mut CallStats) -> Result<Value, ModelError> {
    let (status, body) = send_raw(req, stats)?;
    serde_json::from_slice(&body).map_err(|_| ModelError::NotJsonBody {
        status,
        url: req.url.clone(),
        snippet: req.redact(snippet(&body)),
    })
}

/// Sends `req`, retrying what is worth retrying, and returns the status
/// and body of the successful answer.
fn send_raw(req: &Request<'_>, stats: &mut CallStats) -> Result<(u16, Vec<u8>), ModelError> {
    let m = req.model;
    let lim = Limits::of(m);
    let pool = limiter::for_model(m);
    // made before the first wait, so that its setup does not delay the
    // first request of the paced ones
    LazyLock::force(&AGENT);
    // retries counted against `max_retries`; 429/529 answers in a row and
    // the time they made this request wait
    let (mut retries, mut pressed, mut pressed_for) = (0u32, 0u32, Duration::ZERO);
    let mut not_before: Option<Instant> = None;
    loop {
        check_quota(&m.name)?;
        let asked = not_before.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        });
        limiter::wait(asked)?;
        let (permit, queued) = if req.metered {
            let (p, q) = pool.acquire(req.cost)?;
            (Some(p), q)
        } else {
            (None, Duration::ZERO)
        };
        let waited = asked + queued;
        stats.rate_limit_wait += waited;
        if pressed > 0 {
            pressed_for += waited;
        }
        check_quota(&m.name)?;
        stats.attempts += 1;
        let answer = match exchange(req, &lim) {
            Ok(a) => a,
            Err(kind) => {
                let timed_out = matches!(
                    kind,
                    TransportKind::Timeout { .. } | TransportKind::ConnectTimeout { .. }
                );
                match permit {
                    Some(p) if timed_out => p.answered(&[], Signal::Congested),
                    p => drop(p),
                }
                let may_have_acted = matches!(
                    kind,
                    TransportKind::Timeout { .. } | TransportKind::Broken(_)
                );
                let again = req.idempotent || !may_have_acted;
                if kind.retryable() && again && retries < lim.max_retries {
                    limiter::sleep_interruptible(backoff(retries))?;
                    retries += 1;
                    continue;
                }
                return Err(ModelError::Transport {
                    url: req.url.clone(),
                    kind,
                    attempts: retries + 1,
                    max_retries: lim.max_retries,
                });
            }
        };
        let status = answer.status;
        let backpressure = BACKPRESSURE_STATUSES.contains(&status);
        let signal = match status {
            200..=299 => Signal::Fine,
            _ if backpressure => Signal::Congested,
            _ => Signal::Neutral,
        };
        if let Some(p) = permit {
            p.answered(&answer.learnt, signal);
        }
        if (200..300).contains(&status) {
            return Ok((status, answer.body));
        }
        let json: Option<Value> = serde_json::from_slice(&answer.body).ok();
        let api = json.as_ref().and_then(|j| (req.wire.read_error)(status, j));
        let message = req.redact(match &api {
            Some(a) => a.message.clone(),
            None => snippet(&answer.body),
        });
        if api.as_ref().is_some_and(|a| a.quota) {
            let first = format!("HTTP {status} from `{}`: {message}", req.url);
            lock(&OUT_OF_QUOTA).insert(m.name.clone(), first.clone());
            return Err(ModelError::Quota {
                model: m.name.clone(),
                first,
            });
        }
        if backpressure {
            let pause = answer.wait.map_or_else(|| backoff(pressed), jittered);
            if pressed_for + pause > lim.budget {
                return Err(ModelError::RateLimitBudgetSpent {
                    status,
                    url: req.url.clone(),
                    message,
                    waited: pressed_for,
                    budget: lim.budget,
                });
            }
            pressed += 1;
            not_before = Some(Instant::now() + pause);
            continue;
        }
        pressed = 0;
        let retryable = RETRY_STATUSES.contains(&status);
        if retryable && retries < lim.max_retries {
            limiter::sleep_interruptible(answer.wait.unwrap_or_else(|| backoff(retries)))?;
            retries += 1;
            continue;
        }
        return Err(ModelError::Http(HttpError {
            status,
            url: req.url.clone(),
            message,
            retryable,
            attempts: retries + 1,
            max_retries: lim.max_retries,
            wait_asked: answer.wait,
        }));
    }
}

/// `text` with `key` replaced by `[redacted]`, and so is a masked form
/// of it that error bodies echo: a start of the key (4 characters or
/// more), a mask of `.`, `*` or `…`, and an end of the key (OpenAI's
/// `Incorrect API key provided: sk-SECRE...7890`).
fn redact_key(text: &str, key: &str) -> String {
    const SHORTEST: usize = 4;
    let text = text.replace(key, "[redacted]");
    if key.len() < 2 * SHORTEST || !key.is_ascii() {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find(&key[..SHORTEST]) {
        out.push_str(&rest[..at]);
        let here = &rest[at..];
        match masked_len(here, key) {
            Some(n) => {
                out.push_str("[redacted]");
                rest = &here[n..];
            }
            None => {
                out.push_str(&here[..SHORTEST]);
                rest = &here[SHORTEST..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The length of a masked `key` at the start of `s`, if one is there.
fn masked_len(s: &str, key: &str) -> Option<usize> {
    let head = s
        .bytes()
        .zip(key.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let after_head = &s[head..];
    let mask = after_head
        .find(|c: char| !matches!(c, '.' | '*' | '…'))
        .unwrap_or(after_head.len());
    if mask == 0 {
        return None;
    }
    let tail_start = &after_head[mask..];
    let tail = tail_start
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .unwrap_or(tail_start.len());
    (tail >= 2 && key.ends_with(&tail_start[..tail])).then_some(head + mask + tail)
}

/// One request and its answer, or why there was none.
fn exchange(req: &Request<'_>, lim: &Limits) -> Result<Answer, TransportKind> {
    fn prepare<B>(
        r: ureq::RequestBuilder<B>,
        req: &Request<'_>,
        lim: &Limits,
    ) -> ureq::RequestBuilder<B> {
        let mut r = r
            .config()
            .timeout_global(Some(lim.timeout))
            .timeout_connect(Some(lim.connect))
            .build();
        for (k, v) in &req.headers {
            r = r.header(*k, v);
        }
        r
    }
    let sent = match req.method {
        Method::Get => prepare(AGENT.get(&req.url), req, lim).call(),
        Method::Post => prepare(AGENT.post(&req.url), req, lim)
            .header("content-type", &req.content_type)
            .send(&req.body[..]),
    };
    let got = sent.and_then(|mut resp| {
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let wait = retry_after(header("retry-after-ms"), header("retry-after"));
        let learnt = req
            .wire
            .limit_headers
            .iter()
            .filter_map(|&(kind, limit, remaining, reset)| {
                let n = |h: &str| header(h)?.trim().parse::<u64>().ok();
                Some(Learnt {
                    kind,
                    limit: n(limit)?,
                    remaining: n(remaining)?,
                    // jittered: the workers waiting for it do not all
                    // come back at the same instant
                    reset: header(reset)
                        .and_then(|v| (req.wire.read_reset)(v.trim()))
                        .map(jittered),
                })
            })
            .collect();
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(req.max_body)
            .read_to_vec()?;
        Ok(Answer {
            status,
            wait,
            learnt,
            body,
        })
    });
    got.map_err(|e| {
        let kind = transport_error(&e, lim);
        match kind {
            TransportKind::Other(s) => TransportKind::Other(req.redact(s)),
            k => k,
        }
    })
}

/// The start of a body that is not what was expected, for the message.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    let cut: String = text.chars().take(300).collect();
    if cut.len() < text.len() {
        format!("{cut}...")
    } else {
        cut
    }
}

/// Why a request got no HTTP answer.
fn transport_error(e: &ureq::Error, lim: &Limits) -> TransportKind {
    use std::io::ErrorKind as K;
    match e {
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
            TransportKind::ConnectTimeout {
                secs: lim.connect.as_secs(),
            }
        }
        ureq::Error::Timeout(_) => TransportKind::Timeout {
            secs: lim.timeout.as_secs(),
        },
        ureq::Error::Io(io) if io.kind() == K::ConnectionRefused => TransportKind::Refused,
        ureq::Error::HostNotFound => TransportKind::HostNotFound,
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe
            ) =>
        {
            TransportKind::Broken(io.to_string())
        }
        other => TransportKind::Other(other.to_string()),
    }
}

/// The pause a server asked for: `retry-after-ms` (Anthropic, OpenAI) or
/// `Retry-After` in seconds. An HTTP date is not understood (backoff then).
fn retry_after(ms: Option<String>, secs: Option<String>) -> Option<Duration> {
    let ms = ms
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v / 1000.0);
    let s = secs.and_then(|v| v.trim().parse::<f64>().ok());
    ms.or(s)
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| Duration::from_secs_f64(v).min(RETRY_AFTER_CAP))
}

/// OpenAI's reset headers (`x-ratelimit-reset-requests`, `-tokens`): "the
/// time until the rate limit resets to its initial state", as a Go
/// duration (`1s`, `6m0s`, `20ms`, `1h2m3.5s`); see "Rate limits in
/// headers" in https://platform.openai.com/docs/guides/rate-limits.
pub fn go_duration(s: &str) -> Option<Duration> {
    const UNITS: [(&str, f64); 7] = [
        ("ns", 1e-9),
        ("us", 1e-6),
        ("µs", 1e-6),
        ("ms", 1e-3),
        ("h", 3600.0),
        ("m", 60.0),
        ("s", 1.0),
    ];
    if s.is_empty() {
        return None;
    }
    let (mut rest, mut secs) = (s, 0.0);
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let &(unit, scale) = UNITS.iter().find(|(u, _)| rest.starts_with(u))?;
        secs += n * scale;
        rest = &rest[unit.len()..];
    }
    // whole nanoseconds: `8.64s` is 8.64 s, not a hair under
    Some(Duration::from_nanos((secs * 1e9).round() as u64))
}

/// Anthropic's reset headers (`anthropic-ratelimit-requests-reset`,
/// `-tokens-reset`, `-input-tokens-reset`, `-output-tokens-reset`): "the
/// time when the rate limit will be fully replenished, provided in RFC 3339
/// format" (https://docs.anthropic.com/en/api/rate-limits); in UTC. A time
/// already past is now.
pub fn rfc3339_until(s: &str) -> Option<Duration> {
    let at = humantime::parse_rfc3339(s).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// A pause the server asked for, lengthened by up to a quarter (and 1 s):
/// the workers it was asked of do not all come back at the same instant.
fn jittered(asked: Duration) -> Duration {
    asked
        + asked
            .min(Duration::from_secs(4))
            .mul_f64(random_unit() / 4.0)
}

/// The pause before retry `n` (0-based) when the server asked for none:
/// exponential backoff with jitter.
fn backoff(n: u32) -> Duration {
    let d = BACKOFF_BASE
        .saturating_mul(1u32 << n.min(16))
        .min(BACKOFF_CAP);
    d / 2 + d.mul_f64(random_unit() / 2.0)
}

/// A number in [0, 1) that differs between calls and processes: enough
/// for jitter (std's hasher keys are random per process).
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

static OUT_OF_QUOTA: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

fn check_quota(model: &str) -> Result<(), ModelError> {
    match lock(&OUT_OF_QUOTA).get(model) {
        Some(first) => Err(ModelError::OutOfQuota {
            model: model.to_string(),
            first: first.clone(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_and_its_masked_forms_are_redacted() {
        let key = "sk-SECRET-0123-4567890";
        for (text, want) in [
            ("bad key sk-SECRET-0123-4567890.", "bad key [redacted]."),
            (
                "Incorrect API key provided: sk-SECRE...7890. You can find",
                "Incorrect API key provided: [redacted]. You can find",
            ),
            ("key sk-S****************7890", "key [redacted]"),
            ("key sk-SEC…890!", "key [redacted]!"),
            // not the key: kept
            ("sk-SECOND...7890", "sk-SECOND...7890"),
            ("sk-SECRE...1111", "sk-SECRE...1111"),
            ("sk-SECRET and more", "sk-SECRET and more"),
        ] {
            assert_eq!(redact_key(text, key), want, "{text}");
        }
    }

    #[test]
    fn retry_after_prefers_milliseconds_and_is_capped() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            retry_after(s("250"), s("3")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(retry_after(None, s("2")), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after(None, s("1.5")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(retry_after(None, s("99999")), Some(RETRY_AFTER_CAP));
        assert_eq!(retry_after(None, s("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(None, s("-1")), None);
        assert_eq!(retry_after(None, None), None);
    }

    #[test]
    fn openai_resets_are_go_durations() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("1s", ms(1000)),
            ("6m0s", ms(360_000)),
            ("20ms", ms(20)),
            ("1h2m3.5s", ms(3_723_500)),
            ("0s", ms(0)),
            ("8.64s", ms(8640)),
            ("250us", Duration::from_micros(250)),
        ] {
            assert_eq!(go_duration(text), Some(want), "{text}");
        }
        for garbage in ["", "5", "s", "1x", "-1s", "1s2", "1.2.3s", "1 s", "soon"] {
            assert_eq!(go_duration(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn anthropic_resets_are_rfc3339_times() {
        let now = std::time::SystemTime::now();
        let soon = humantime::format_rfc3339_millis(now + Duration::from_secs(5)).to_string();
        let left = rfc3339_until(&soon).expect(&soon);
        assert!(
            left > Duration::from_secs(4) && left <= Duration::from_secs(5),
            "{left:?}"
        );
        let past = humantime::format_rfc3339(now - Duration::from_secs(5)).to_string();
        assert_eq!(rfc3339_until(&past), Some(Duration::ZERO));
        for garbage in ["", "soon", "1s", "2026-12-03", "2026-12-03T20:00:00+01:00"] {
            assert_eq!(rfc3339_until(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn jitter_stays_in_the_unit_interval() {
        for _ in 0..1000 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r), "{r}");
        }
    }

    #[test]
    fn jitter_lengthens_a_requested_wait_by_at_most_a_quarter() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(1));
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_millis(1250),
                "{d:?}"
            );
        }
        let d = jittered(Duration::from_secs(100));
        assert!(d <= Duration::from_secs(101), "{d:?}");
    }
}
