//! What can go wrong in a model call, as data: each variant carries what a
//! caller may act on (retryable or not, the HTTP status, a rate limit or an
//! exhausted quota, the wait the server asked for, the tokens already
//! paid for); `Display` renders the text the user sees, once, at the edge.

use crate::manifest::Usage;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// Ctrl-C or SIGTERM stopped the call.
    #[error("the build was interrupted")]
    Interrupted,
    /// A local failure with nothing more to it than its text (a `command`
    /// model's program that could not start, exited non-zero, timed out).
    #[error("{0}")]
    Failed(String),
    /// The variable that should hold the API key is unset or empty.
    #[error(
        "the API key for model `{model}` is missing: environment variable `{var}` ({}) is not set or empty; no request was sent\n\
         help: `export {var}=...` before `mkt build`",
        key_origin(.named)
    )]
    MissingKey {
        model: String,
        var: String,
        /// Named by `api_key_env` (else the provider's default variable).
        named: bool,
    },
    /// No HTTP answer.
    #[error("{}{}", .kind.describe(.url), gave_up(.attempts, .max_retries))]
    Transport {
        url: String,
        kind: TransportKind,
        attempts: u32,
        max_retries: u32,
    },
    /// An HTTP answer with an error status (after the retries it was
    /// worth).
    #[error("{}", .0)]
    Http(HttpError),
    /// Answers of 429 or 529 for longer than `rate_limit_wait_s`.
    #[error(
        "HTTP {status} from `{url}`: {message}\n\
         (still rate-limited after waiting {:.1} s; `rate_limit_wait_s` = {})\n\
         help: raise `rate_limit_wait_s`, set `requests_per_minute` / `tokens_per_minute` below the account's limits, or build with a lower `-j`",
        .waited.as_secs_f64(), .budget.as_secs()
    )]
    RateLimitBudgetSpent {
        status: u16,
        url: String,
        message: String,
        waited: Duration,
        budget: Duration,
    },
    /// The account has no quota or credit left: no retry, and no further
    /// request to this model in this build.
    #[error(
        "{first}\nhelp: the account is out of quota or credit; no further request goes to model `{model}` in this build"
    )]
    Quota { model: String, first: String },
    /// Not sent: an earlier request of this build found the quota spent.
    #[error(
        "not sent: model `{model}` is out of quota (an earlier request of this build got: {first})\n\
         help: top up the account or raise its limit, then run `mkt build` again"
    )]
    OutOfQuota { model: String, first: String },
    /// A 2xx answer whose body is not JSON.
    #[error("HTTP {status} from `{url}` but the body is not JSON: {snippet}")]
    NotJsonBody {
        status: u16,
        url: String,
        snippet: String,
    },
    /// The answer is JSON but not what the provider's format promises, or
    /// the model refused; it may have been paid for.
    #[error("{why}")]
    BadAnswer { why: String, usage: Option<Usage> },
    /// `pin = true` and the answer came from another snapshot than the one
    /// the model's outputs were made by (`drift.rs`); it was paid for.
    #[error(
        "model `{model}` is pinned to `{was}`, which made its outputs, but answered as `{now}`; the answer was not stored\n\
         help: to move to `{now}`, remove `pin = true` from `[models.{model}]` and build again; to stay on `{was}`, set `model = \"{was}\"` if the provider still serves it"
    )]
    SnapshotChanged {
        model: String,
        was: String,
        now: String,
        usage: Option<Usage>,
    },
    /// `format = "json"` and the output is not (matching) JSON.
    #[error("model `{model}` was asked for JSON (`format = \"json\"`) but {why}")]
    NotJson {
        model: String,
        why: String,
        usage: Option<Usage>,
    },
    /// A request of a batch that the provider never ran: the batch expired
    /// or was cancelled first, or its results do not mention it.
    #[error(
        "not run in batch `{batch}`: {reason}\n\
         help: nothing was stored for it; the next `mkt build` sends it again"
    )]
    BatchRequestNotRun { batch: String, reason: String },
    /// A request of a batch that the provider refused without an HTTP
    /// status of its own (an OpenAI error file's `error` object).
    #[error("the provider refused this request of batch `{batch}`: {code}: {message}")]
    BatchRequestRefused {
        batch: String,
        code: String,
        message: String,
    },
    /// A batch beyond the provider's limits: not sent.
    #[error(
        "a batch of {requests} requests and {bytes} bytes is beyond the provider's limits ({max_requests} requests, {max_bytes} bytes); nothing was sent\n\
         help: this is a bug in how mkt splits batches; `mkt build --no-batch` sends the requests one by one"
    )]
    BatchTooLarge {
        requests: usize,
        bytes: usize,
        max_requests: usize,
        max_bytes: usize,
    },
    /// Results asked of a batch that has not ended.
    #[error(
        "batch `{batch}` has not ended (status `{status}`): its results are not ready\n\
         help: wait until it has ended, or cancel it"
    )]
    BatchNotEnded { batch: String, status: String },
    /// A batch endpoint answered with JSON that is not what its API
    /// promises.
    #[error("unexpected answer from `{url}`: {why}")]
    BatchAnswer { url: String, why: String },
}

/// An HTTP error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpError {
    pub status: u16,
    pub url: String,
    /// The API's own message (or the start of the body).
    pub message: String,
    /// Worth retrying (5xx, 408, 409); how many attempts were made.
    pub retryable: bool,
    pub attempts: u32,
    pub max_retries: u32,
    /// The pause the server asked for (`retry-after-ms`, `Retry-After`).
    pub wait_asked: Option<Duration>,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP {} from `{}`: {}",
            self.status, self.url, self.message
        )?;
        if self.retryable {
            let tries = self.attempts;
            let s = if tries == 1 { "" } else { "s" };
            write!(
                f,
                "\n(gave up after {tries} attempt{s}; `max_retries` = {})",
                self.max_retries
            )?;
        }
        if self.status == 404 && !self.url.contains("/v1/") {
            write!(
                f,
                "\nhelp: the URL has no `/v1`: APIs and local servers usually answer under it; end `base_url` with `/v1` (e.g. `http://localhost:8080/v1`)"
            )?;
        }
        Ok(())
    }
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, PartialEq)]
pub enum TransportKind {
    ConnectTimeout {
        secs: u64,
    },
    Timeout {
        secs: u64,
    },
    Refused,
    HostNotFound,
    /// The connection broke mid-way (worth another try).
    Broken(String),
    Other(String),
}

impl TransportKind {
    /// Worth another try: a broken connection or a timeout (a refused
    /// connection or an unknown host only multiply the wait).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            TransportKind::Broken(_)
                | TransportKind::Timeout { .. }
                | TransportKind::ConnectTimeout { .. }
        )
    }

    fn describe(&self, url: &str) -> String {
        match self {
            TransportKind::ConnectTimeout { secs } => {
                format!("could not connect to `{url}` within {secs} s (`connect_timeout_s`)")
            }
            TransportKind::Timeout { secs } => {
                format!("no complete answer from `{url}` within {secs} s (`timeout_s`)")
            }
            TransportKind::Refused => format!(
                "connection refused by `{url}`: is the server running and `base_url` right?"
            ),
            TransportKind::HostNotFound => {
                format!("cannot resolve the host of `{url}`: check `base_url` and the network")
            }
            TransportKind::Broken(io) => format!("the connection to `{url}` broke: {io}"),
            TransportKind::Other(e) => format!("request to `{url}` failed: {e}"),
        }
    }
}

fn key_origin(named: &bool) -> &'static str {
    if *named {
        "named by `api_key_env`"
    } else {
        "the default for this provider; set `api_key_env` to use another"
    }
}

/// `(gave up after 3 attempts; ...)` once a retryable failure was retried.
fn gave_up(attempts: &u32, max_retries: &u32) -> String {
    let (attempts, max_retries) = (*attempts, *max_retries);
    if attempts <= 1 {
        return String::new();
    }
    format!("\n(gave up after {attempts} attempts; `max_retries` = {max_retries})")
}

impl ModelError {
    /// An error with no more structure than its text (kept for the
    /// `command` provider's messages).
    pub fn new(message: String) -> ModelError {
        ModelError::Failed(message)
    }

    /// The tokens the provider reported for a call that failed after it
    /// was paid for.
    pub fn usage(&self) -> Option<&Usage> {
        match self {
            ModelError::BadAnswer { usage, .. }
            | ModelError::NotJson { usage, .. }
            | ModelError::SnapshotChanged { usage, .. } => usage.as_ref(),
            _ => None,
        }
    }

    pub fn into_usage(self) -> Option<Usage> {
        match self {
            ModelError::BadAnswer { usage, .. }
            | ModelError::NotJson { usage, .. }
            | ModelError::SnapshotChanged { usage, .. } => usage,
            _ => None,
        }
    }

    /// The HTTP status of the answer that ended the call, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ModelError::Http(h) => Some(h.status),
            ModelError::RateLimitBudgetSpent { status, .. }
            | ModelError::NotJsonBody { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The failure is back-pressure or the account's quota (a later build
    /// may well succeed without any change to the project).
    pub fn rate_limited(&self) -> bool {
        matches!(
            self,
            ModelError::RateLimitBudgetSpent { .. }
                | ModelError::Quota { .. }
                | ModelError::OutOfQuota { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, url: &str, retryable: bool, attempts: u32) -> ModelError {
        ModelError::Http(HttpError {
            status,
            url: url.into(),
            message: "m".into(),
            retryable,
            attempts,
            max_retries: 2,
            wait_asked: None,
        })
    }

    #[test]
    fn http_errors_render_their_retries_and_the_missing_v1() {
        assert_eq!(
            http(503, "http://h/v1/chat/completions", true, 3).to_string(),
            "HTTP 503 from `http://h/v1/chat/completions`: m\n(gave up after 3 attempts; `max_retries` = 2)"
        );
        assert_eq!(
            http(400, "http://h/v1/messages", false, 1).to_string(),
            "HTTP 400 from `http://h/v1/messages`: m"
        );
        assert_eq!(
            http(404, "http://h/chat/completions", false, 1).to_string(),
            "HTTP 404 from `http://h/chat/completions`: m\n\
             help: the URL has no `/v1`: APIs and local servers usually answer under it; end `base_url` with `/v1` (e.g. `http://localhost:8080/v1`)"
        );
        assert_eq!(http(404, "http://h/v1/x", false, 1).status(), Some(404));
    }

    #[test]
    fn a_timeout_says_it_was_retried() {
        let e = ModelError::Transport {
            url: "http://h/v1/x".into(),
            kind: TransportKind::Timeout { secs: 1 },
            attempts: 2,
            max_retries: 1,
        };
        assert_eq!(
            e.to_string(),
            "no complete answer from `http://h/v1/x` within 1 s (`timeout_s`)\n(gave up after 2 attempts; `max_retries` = 1)"
        );
    }
}
