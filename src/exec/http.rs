//! What the HTTP providers (`openai.rs`, `anthropic.rs`) share: the API
//! key from the environment, one blocking client (ureq with rustls), the
//! retry loop with backoff, the per-model pools (`max_concurrency`,
//! `requests_per_minute`) and the record of models that ran out of quota.
//!
//! The pools and the quota record are process-wide, keyed by the model's
//! name in `prompts.toml`: the scheduler's `-j` workers share them, so
//! `-j 32` with `max_concurrency = 4` never has more than 4 requests in
//! flight to that model. [`begin_build`] clears them.

use super::ModelError;
use crate::config::ModelConfig;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Total time for one request when `timeout_s` is not set: generous,
/// because a long answer from a slow model legitimately takes minutes.
pub const DEFAULT_TIMEOUT_S: u64 = 600;
pub const DEFAULT_CONNECT_TIMEOUT_S: u64 = 10;
pub const DEFAULT_MAX_RETRIES: u32 = 4;
/// Backoff before retry n (0-based) without a `Retry-After`: a random
/// time in [d/2, d] for d = BASE × 2^n, at most CAP.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A server asking for a longer pause than this gets this.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(120);
/// Statuses worth retrying: rate limits, server errors, Anthropic's
/// "overloaded" (529).
const RETRY_STATUSES: [u16; 6] = [429, 500, 502, 503, 504, 529];

/// Clears the pools and the out-of-quota record (see `exec::begin_build`).
pub(super) fn begin_build() {
    lock(&POOLS).clear();
    lock(&OUT_OF_QUOTA).clear();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The API key named by `api_key_env` (or the provider's usual variable
/// when the model talks to the provider's own API): `Ok(None)` when no
/// variable is named (a local server needs none). The error names the
/// variable, never a value.
pub fn api_key(m: &ModelConfig, default_env: Option<&str>) -> Result<Option<String>, ModelError> {
    let var = match (&m.settings.api_key_env, default_env) {
        (Some(v), _) => v.as_str(),
        (None, Some(v)) => v,
        (None, None) => return Ok(None),
    };
    match std::env::var(var) {
        Ok(k) if !k.trim().is_empty() => Ok(Some(k.trim().to_string())),
        _ => {
            let why = if m.settings.api_key_env.is_some() {
                "named by `api_key_env`"
            } else {
                "the default for this provider; set `api_key_env` to use another"
            };
            Err(ModelError::new(format!(
                "the API key for model `{}` is missing: environment variable `{var}` ({why}) is not set or empty; no request was sent\n\
                 help: `export {var}=...` before `mkt build`",
                m.name
            )))
        }
    }
}

/// One request as the protocol builds it.
pub struct Request<'a> {
    pub model: &'a ModelConfig,
    pub url: String,
    /// Header name and value; the key is among them and is redacted from
    /// every message made here.
    pub headers: Vec<(&'static str, String)>,
    pub secret: Option<&'a str>,
    pub body: Vec<u8>,
}

/// How a protocol reads an error answer's JSON.
pub struct ApiError {
    pub message: String,
    /// The provider says the account has no money or quota left: no retry,
    /// and no further request to this model in this build.
    pub quota: bool,
}

static AGENT: LazyLock<ureq::Agent> = LazyLock::new(|| {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("mkt/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
});

/// Sends `req`, retrying what is worth retrying, and returns the JSON of
/// the successful answer.
pub fn send(
    req: &Request<'_>,
    read_error: fn(u16, &serde_json::Value) -> Option<ApiError>,
) -> Result<serde_json::Value, ModelError> {
    let m = req.model;
    let redact = |s: String| match req.secret {
        Some(k) if !k.is_empty() => redact_key(&s, k),
        _ => s,
    };
    let max_retries = m.settings.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
    let timeout = Duration::from_secs(m.settings.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S));
    let connect = Duration::from_secs(
        m.settings
            .connect_timeout_s
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT_S),
    );
    let pool = pool_for(m);
    let mut attempt = 0u32;
    loop {
        check_quota(&m.name)?;
        let answer = {
            let _slot = pool.acquire()?;
            check_quota(&m.name)?;
            let mut r = AGENT
                .post(&req.url)
                .config()
                .timeout_global(Some(timeout))
                .timeout_connect(Some(connect))
                .build()
                .header("content-type", "application/json");
            for (k, v) in &req.headers {
                r = r.header(*k, v);
            }
            r.send(&req.body[..]).and_then(|mut resp| {
                let status = resp.status().as_u16();
                let header = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let wait = retry_after(header("retry-after-ms"), header("retry-after"));
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024 * 1024)
                    .read_to_vec()?;
                Ok((status, wait, body))
            })
        };
        let (status, wait, body) = match answer {
            Ok(a) => a,
            Err(e) => {
                let (msg, transient) = transport_error(&e, &req.url, timeout, connect);
                if transient && attempt < max_retries {
                    backoff(attempt, None)?;
                    attempt += 1;
                    continue;
                }
                return Err(ModelError::new(redact(msg)));
            }
        };
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if (200..300).contains(&status) {
            return json.ok_or_else(|| {
                ModelError::new(redact(format!(
                    "HTTP {status} from `{}` but the body is not JSON: {}",
                    req.url,
                    snippet(&body)
                )))
            });
        }
        let api = json.as_ref().and_then(|j| read_error(status, j));
        let what = match &api {
            Some(a) => format!("HTTP {status} from `{}`: {}", req.url, a.message),
            None => format!("HTTP {status} from `{}`: {}", req.url, snippet(&body)),
        };
        let what = redact(what);
        if api.as_ref().is_some_and(|a| a.quota) {
            lock(&OUT_OF_QUOTA).insert(m.name.clone(), what.clone());
            return Err(ModelError::new(format!(
                "{what}\nhelp: the account is out of quota or credit; no further request goes to model `{}` in this build",
                m.name
            )));
        }
        if RETRY_STATUSES.contains(&status) {
            if attempt < max_retries {
                backoff(attempt, wait)?;
                attempt += 1;
                continue;
            }
            let tries = attempt + 1;
            return Err(ModelError::new(format!(
                "{what}\n(gave up after {tries} attempt{}; `max_retries` = {max_retries})",
                if tries == 1 { "" } else { "s" }
            )));
        }
        return Err(ModelError::new(what));
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

/// The message for a request that got no HTTP answer, and whether it is
/// worth another try (a dropped connection is; a refused one, a timeout
/// or an unknown host are not: retrying them only multiplies the wait).
fn transport_error(
    e: &ureq::Error,
    url: &str,
    timeout: Duration,
    connect: Duration,
) -> (String, bool) {
    use std::io::ErrorKind as K;
    match e {
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => (
            format!(
                "could not connect to `{url}` within {} s (`connect_timeout_s`)",
                connect.as_secs()
            ),
            false,
        ),
        ureq::Error::Timeout(_) => (
            format!(
                "no complete answer from `{url}` within {} s (`timeout_s`)",
                timeout.as_secs()
            ),
            false,
        ),
        ureq::Error::Io(io) if io.kind() == K::ConnectionRefused => (
            format!("connection refused by `{url}`: is the server running and `base_url` right?"),
            false,
        ),
        ureq::Error::HostNotFound => (
            format!("cannot resolve the host of `{url}`: check `base_url` and the network"),
            false,
        ),
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe
            ) =>
        {
            (format!("the connection to `{url}` broke: {io}"), true)
        }
        other => (format!("request to `{url}` failed: {other}"), false),
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

/// Sleeps before retry `attempt` (0-based): what the server asked for, or
/// exponential backoff with jitter. Stops early when the build is
/// interrupted.
fn backoff(attempt: u32, asked: Option<Duration>) -> Result<(), ModelError> {
    let pause = asked.unwrap_or_else(|| {
        let d = BACKOFF_BASE
            .saturating_mul(1u32 << attempt.min(16))
            .min(BACKOFF_CAP);
        d / 2 + d.mul_f64(random_unit() / 2.0)
    });
    sleep_interruptible(pause)
}

fn sleep_interruptible(pause: Duration) -> Result<(), ModelError> {
    let until = Instant::now() + pause;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if super::interrupted() {
            return Err(ModelError::new("the build was interrupted".into()));
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
    if super::interrupted() {
        return Err(ModelError::new("the build was interrupted".into()));
    }
    Ok(())
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
        Some(first) => Err(ModelError::new(format!(
            "not sent: model `{model}` is out of quota (an earlier request of this build got: {first})\n\
             help: top up the account or raise its limit, then run `mkt build` again"
        ))),
        None => Ok(()),
    }
}

/// A model's limits on requests: at most `max` in flight, and starts at
/// least `interval` apart (`requests_per_minute`, spread evenly so that a
/// burst of `-j` workers cannot exceed it in any window).
struct Pool {
    max: Option<u32>,
    in_flight: Mutex<u32>,
    freed: Condvar,
    interval: Option<Duration>,
    next_start: Mutex<Instant>,
}

static POOLS: Mutex<BTreeMap<String, Arc<Pool>>> = Mutex::new(BTreeMap::new());

fn pool_for(m: &ModelConfig) -> Arc<Pool> {
    let mut pools = lock(&POOLS);
    Arc::clone(pools.entry(m.name.clone()).or_insert_with(|| {
        Arc::new(Pool {
            max: m.settings.max_concurrency,
            in_flight: Mutex::new(0),
            freed: Condvar::new(),
            interval: m
                .settings
                .requests_per_minute
                .map(|n| Duration::from_secs(60) / n.max(1)),
            next_start: Mutex::new(Instant::now()),
        })
    }))
}

/// A request's place in its model's pool, given back when dropped.
struct Slot<'a>(&'a Pool);

impl Pool {
    fn acquire(&self) -> Result<Slot<'_>, ModelError> {
        let mut n = lock(&self.in_flight);
        while self.max.is_some_and(|max| *n >= max) {
            if super::interrupted() {
                return Err(ModelError::new("the build was interrupted".into()));
            }
            n = self
                .freed
                .wait_timeout(n, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *n += 1;
        drop(n);
        let slot = Slot(self);
        if let Some(interval) = self.interval {
            let start = {
                let mut next = lock(&self.next_start);
                let start = (*next).max(Instant::now());
                *next = start + interval;
                start
            };
            sleep_interruptible(start.saturating_duration_since(Instant::now()))?;
        }
        Ok(slot)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *lock(&self.0.in_flight) -= 1;
        self.0.freed.notify_one();
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
    fn jitter_stays_in_the_unit_interval() {
        for _ in 0..1000 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r), "{r}");
        }
    }

    #[test]
    fn pool_bounds_requests_in_flight() {
        let pool = Pool {
            max: Some(2),
            in_flight: Mutex::new(0),
            freed: Condvar::new(),
            interval: None,
            next_start: Mutex::new(Instant::now()),
        };
        let peak = Mutex::new(0u32);
        let now = Mutex::new(0u32);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let _slot = pool.acquire().unwrap();
                    let n = {
                        let mut n = now.lock().unwrap();
                        *n += 1;
                        *n
                    };
                    let mut p = peak.lock().unwrap();
                    *p = (*p).max(n);
                    drop(p);
                    std::thread::sleep(Duration::from_millis(20));
                    *now.lock().unwrap() -= 1;
                });
            }
        });
        assert_eq!(*peak.lock().unwrap(), 2);
        assert_eq!(*pool.in_flight.lock().unwrap(), 0);
    }

    #[test]
    fn rate_limit_spaces_the_starts() {
        let pool = Pool {
            max: None,
            in_flight: Mutex::new(0),
            freed: Condvar::new(),
            // 1200 per minute: one every 50 ms
            interval: Some(Duration::from_millis(50)),
            next_start: Mutex::new(Instant::now()),
        };
        let t = Instant::now();
        for _ in 0..4 {
            drop(pool.acquire().unwrap());
        }
        // starts at 0, 50, 100, 150 ms
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_millis(1000), "{took:?}");
    }
}
