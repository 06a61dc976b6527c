//! The `[cache]` table of `prompts.toml` and the URLs of a remote cache,
//! as the project file knows them: below both `config.rs`, which checks
//! them when it loads a project, and `remote.rs`, which opens them.

/// Seconds one remote operation may take before the remote is given up on
/// for the build (`[cache] timeout_s`).
pub const DEFAULT_TIMEOUT_S: u64 = 5;

/// Whether builds publish to the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    ReadWrite,
    ReadOnly,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "read-write" => Some(Mode::ReadWrite),
            "read-only" => Some(Mode::ReadOnly),
            _ => None,
        }
    }
}

/// The `[cache]` table of `prompts.toml`, checked.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheConfig {
    /// `s3://bucket/prefix`, `webdav+https://host/path`, `file:///dir`.
    pub remote: Option<String>,
    pub mode: Mode,
    /// S3: the endpoint of an S3-compatible server (MinIO, moto, R2...).
    pub endpoint: Option<String>,
    /// S3: the region; else `AWS_REGION`, else `us-east-1`.
    pub region: Option<String>,
    pub timeout_s: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            remote: None,
            mode: Mode::ReadWrite,
            endpoint: None,
            region: None,
            timeout_s: DEFAULT_TIMEOUT_S,
        }
    }
}

/// A remote URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    S3 {
        bucket: String,
        prefix: String,
    },
    /// `endpoint` is `http(s)://host[:port]`, `root` the path on it.
    Webdav {
        endpoint: String,
        root: String,
    },
    Dir {
        path: String,
    },
}

/// `url` with any user info (`user:password@`) replaced by `***@`, for
/// messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let auth_end = rest.find('/').unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Parses a remote URL; the error says what is wrong, for a message that
/// adds where the URL came from.
pub fn parse_url(url: &str) -> std::result::Result<Location, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(
            "is not a URL (expected `s3://`, `webdav+https://`, `webdav+http://` or `file://`)"
                .into(),
        );
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(
            "has credentials in it; give them through the environment (see README.md) instead"
                .into(),
        );
    }
    let path = path.trim_end_matches('/');
    match scheme {
        "s3" => {
            if authority.is_empty() {
                return Err("names no bucket (`s3://BUCKET/PREFIX`)".into());
            }
            Ok(Location::S3 {
                bucket: authority.to_string(),
                prefix: format!("{}/", path.trim_start_matches('/')),
            })
        }
        "webdav+https" | "webdav+http" => {
            if authority.is_empty() {
                return Err("names no host".into());
            }
            let http = scheme.trim_start_matches("webdav+");
            Ok(Location::Webdav {
                endpoint: format!("{http}://{authority}"),
                root: format!("{path}/"),
            })
        }
        "file" => {
            if !authority.is_empty() && authority != "localhost" {
                return Err("must be a local path (`file:///DIR`)".into());
            }
            if path.is_empty() {
                return Err("names no directory (`file:///DIR`)".into());
            }
            Ok(Location::Dir {
                path: path.to_string(),
            })
        }
        other => Err(format!(
            "has scheme `{other}`; use `s3://`, `webdav+https://`, `webdav+http://` or `file://`"
        )),
    }
}
