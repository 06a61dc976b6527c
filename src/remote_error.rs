//! What can go wrong with a remote cache, as data: each variant carries
//! the remote's URL (redacted: as [`crate::remote::redact`] shows it), the key
//! involved and the kind of failure, so that a caller can tell a remote
//! that is down from one bad entry on a remote that works. `Display`
//! renders the text the user sees, once, at the edge (the CLI, or the
//! build's warning).
//!
//! A leaf: it imports nothing of the crate (so that [`crate::error`] can
//! carry it), and of OpenDAL only what [`Failure::of`] reads.

use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    // ---- the remote cannot be used here at all (set-up) ----
    /// The runtime that runs the remote's I/O did not start.
    #[error(
        "the remote cache `{url}` (from {origin}) cannot start its I/O runtime: {source}; going on without it"
    )]
    NoRuntime {
        url: String,
        /// Where the URL came from, as a message names it.
        origin: String,
        source: Arc<std::io::Error>,
    },
    /// The storage layer refused to set the remote up (a directory that
    /// cannot be created, settings it does not accept).
    #[error(
        "the remote cache `{url}` (from {origin}) cannot be opened ({failure}); going on without it"
    )]
    CannotOpen {
        url: String,
        origin: String,
        failure: Failure,
    },

    // ---- the remote failed: down for the rest of the process ----
    /// An operation failed (unreachable, timed out, refused, an error
    /// answer other than "not found"); nothing more is sent to it.
    #[error(
        "the remote cache `{url}` failed while {doing} ({failure}); going on without it for the rest of this build"
    )]
    Down {
        url: String,
        doing: Doing,
        failure: Failure,
    },
    /// Listing what it holds failed (`mkt cache stats`).
    #[error("cannot list the remote cache `{url}` ({failure})")]
    List { url: String, failure: Failure },

    // ---- one entry failed verification: never served, the remote goes on ----
    /// The manifest under `key` is longer than a run manifest may be (and
    /// was not read).
    #[error(
        "the remote cache `{url}`: entry `{key}` has {len} bytes, more than a run manifest may have ({max})"
    )]
    ManifestTooLarge {
        url: String,
        key: String,
        len: u64,
        max: u64,
    },
    #[error("the remote cache `{url}`: entry `{key}` is not a valid run manifest")]
    NotAManifest { url: String, key: String },
    /// A valid manifest, but not of the run it is filed under.
    #[error(
        "the remote cache `{url}`: entry `{key}` describes another run than the one it is filed under"
    )]
    AnotherRun {
        url: String,
        key: String,
        mismatch: Mismatch,
    },
    /// The entry names an output object the remote does not have.
    #[error(
        "the remote cache `{url}`: entry `{key}` names object `{object}`, which the remote does not have"
    )]
    MissingObject {
        url: String,
        key: String,
        object: String,
    },
    /// The output object is longer than its entry says (and was not read).
    #[error(
        "the remote cache `{url}`: object `{object}` has {len} bytes, not the {expected} its entry says (not read)"
    )]
    ObjectTooLarge {
        url: String,
        key: String,
        object: String,
        len: u64,
        expected: u64,
    },
    /// The output object's bytes do not hash to its name, or are fewer
    /// than its entry says.
    #[error(
        "the remote cache `{url}`: object `{object}` does not hash to its name (corrupt or truncated)"
    )]
    ObjectCorrupt {
        url: String,
        key: String,
        object: String,
    },
}

impl RemoteError {
    /// Whether the remote itself failed (it could not be set up, or an
    /// operation on it failed), so that nothing more is asked of it in this
    /// process; `false` for an entry that failed verification, after which
    /// the remote still serves the other lookups.
    pub fn is_down(&self) -> bool {
        matches!(
            self,
            RemoteError::NoRuntime { .. }
                | RemoteError::CannotOpen { .. }
                | RemoteError::Down { .. }
                | RemoteError::List { .. }
        )
    }

    /// The remote's URL, redacted.
    pub fn url(&self) -> &str {
        match self {
            RemoteError::NoRuntime { url, .. }
            | RemoteError::CannotOpen { url, .. }
            | RemoteError::Down { url, .. }
            | RemoteError::List { url, .. }
            | RemoteError::ManifestTooLarge { url, .. }
            | RemoteError::NotAManifest { url, .. }
            | RemoteError::AnotherRun { url, .. }
            | RemoteError::MissingObject { url, .. }
            | RemoteError::ObjectTooLarge { url, .. }
            | RemoteError::ObjectCorrupt { url, .. } => url,
        }
    }

    /// The action-cache key of the entry that failed verification.
    pub fn key(&self) -> Option<&str> {
        match self {
            RemoteError::ManifestTooLarge { key, .. }
            | RemoteError::NotAManifest { key, .. }
            | RemoteError::AnotherRun { key, .. }
            | RemoteError::MissingObject { key, .. }
            | RemoteError::ObjectTooLarge { key, .. }
            | RemoteError::ObjectCorrupt { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// What the remote was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doing {
    /// Reading an action-cache entry.
    LookingUp,
    /// Reading the output object an entry names.
    Fetching,
    /// Asking whether an entry is there (`mkt cache push`).
    Checking,
    /// Writing an object or an entry.
    Uploading,
}

impl std::fmt::Display for Doing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Doing::LookingUp => "looking up a result",
            Doing::Fetching => "fetching a result",
            Doing::Checking => "checking for a result",
            Doing::Uploading => "uploading a result",
        })
    }
}

/// How a manifest filed under one InputBundleHash differs from the run
/// looked up there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// It names another InputBundleHash (copied or forged).
    InputBundleHash,
    /// It records a run that did not succeed.
    NotOk,
    /// It names another compiled prompt than the one rendered here.
    Prompt,
}

/// How an operation on the remote failed, as far as the storage layer
/// tells. Rendered without the storage layer's own message, whose context
/// can quote the remote's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer that makes sense: unreachable, the connection refused or
    /// cut, a server error. `io` is the kind of the I/O error underneath,
    /// when there is one (`ConnectionRefused`, `PermissionDenied` for a
    /// directory that cannot be created, ...).
    Unreachable {
        io: Option<std::io::ErrorKind>,
    },
    /// No answer within the timeout.
    TimedOut,
    PermissionDenied,
    /// Settings the storage layer does not accept.
    InvalidSettings,
    /// Any other kind of error the storage layer names (`NotFound` where a
    /// write expected a directory, `RateLimited`, ...), by its name.
    Other(&'static str),
}

impl Failure {
    /// The kind of OpenDAL's error `e`.
    pub(crate) fn of(e: &opendal::Error) -> Failure {
        match e.kind() {
            opendal::ErrorKind::PermissionDenied => Failure::PermissionDenied,
            opendal::ErrorKind::ConfigInvalid => Failure::InvalidSettings,
            opendal::ErrorKind::Unexpected => {
                let msg = e.to_string();
                if msg.contains("timeout") || msg.contains("timed out") {
                    Failure::TimedOut
                } else {
                    Failure::Unreachable { io: io_kind(e) }
                }
            }
            k => Failure::Other(k.into_static()),
        }
    }
}

/// The kind of the first I/O error in `e`'s chain of causes.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cause = c.source();
    }
    None
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Failure::Unreachable { .. } => "cannot reach it, or it failed",
            Failure::TimedOut => "timed out",
            Failure::PermissionDenied => "permission denied",
            Failure::InvalidSettings => "its settings are not valid",
            Failure::Other(kind) => kind,
        })
    }
}
