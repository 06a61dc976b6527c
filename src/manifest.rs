//! RunManifest: the provenance record of one model run.
//!
//! A manifest is JSON (schema `mkt.run-manifest/1`, pinned by a snapshot
//! test). A successful run's manifest is its action-cache entry
//! `.mkt/ac/<xx>/<InputBundleHash>.json`; a failed run's is written to
//! `.mkt/runs/<run id>.json`. `history.jsonl` maps run ids to either. Nothing secret is ever stored:
//! the model config holds only the settings from `prompts.toml`.
//!
//! A manifest read back from disk is believed only after [`RunManifest::validate`]:
//! right schema, and for an action-cache entry the InputBundleHash it was
//! filed under.

use crate::hash::{Digest, InputBundleHash};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MANIFEST_SCHEMA: &str = "mkt.run-manifest/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub path: String,
    pub digest: Digest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRecord {
    pub name: String,
    pub path: String,
    pub digest: Digest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamRecord {
    pub target: String,
    pub run_id: String,
    pub output_digest: Digest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRecord {
    pub name: String,
    pub provider: String,
    /// The parameters that entered the InputBundleHash.
    pub params: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRecord {
    pub path: String,
    pub digest: Digest,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Ok,
    Failed,
}

/// Milliseconds spent in each stage, and wall-clock start and end (RFC 3339).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    pub started_at: String,
    pub finished_at: String,
    pub compile_ms: f64,
    pub process_ms: f64,
    /// Requests the run took (HTTP providers; retries included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Of `process_ms`, the time spent waiting for rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_wait_ms: Option<f64>,
}

/// Token usage as a provider reported it (none for mock and command).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// All the prompt's tokens, those read from or written to the
    /// provider's prompt cache included (Anthropic, which reports them
    /// apart, has them added in).
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from the prompt cache (OpenAI's
    /// `cached_tokens`, Anthropic's `cache_read_input_tokens`).
    pub cached_tokens: u64,
    /// Of `input_tokens`, those written to the prompt cache (Anthropic's
    /// `cache_creation_input_tokens`; OpenAI charges no write); absent in
    /// manifests written before the field existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunManifest {
    pub schema: String,
    pub run_id: String,
    /// The node: `NAME`, or `NAME[item/path]` for a `foreach` node.
    pub target: String,
    pub input_bundle_hash: InputBundleHash,
    pub template: FileDigest,
    pub partials: Vec<FileDigest>,
    pub verbatim: Vec<FileDigest>,
    pub item: Option<FileDigest>,
    pub inputs: Vec<InputRecord>,
    pub upstream: Vec<UpstreamRecord>,
    pub prompt_digest: Digest,
    pub model: ModelRecord,
    pub outputs: Vec<OutputRecord>,
    pub status: RunStatus,
    pub error: Option<String>,
    pub usage: Option<Usage>,
    /// `usage` priced with the model's `price_*_per_mtok` at run time, in
    /// US dollars; absent when no price is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// The model the provider says answered (the `model` of its answer:
    /// the dated snapshot behind an alias), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    /// OpenAI's `system_fingerprint`: the backend configuration that
    /// answered, when the provider gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    pub timing: Timing,
    pub tool_version: String,
    /// The machine that made the run, so that a result served from a
    /// remote cache says where it came from; absent in manifests written
    /// before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The provider's batch that answered the run (`mkt build --batch`);
    /// absent for an ordinary call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
}

impl RunManifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }

    /// [`RunManifest::to_json`] on one line, for the packs, where no one
    /// reads it but mkt (`mkt show` prints it pretty): a sixth smaller, at
    /// a million targets 190 MB of the store.
    pub fn to_json_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }

    /// Parses and checks a manifest read from disk; `None` for anything
    /// that is not a well-formed manifest of this schema.
    pub fn from_json(bytes: &[u8]) -> Option<RunManifest> {
        let m: RunManifest = serde_json::from_slice(bytes).ok()?;
        m.validate().then_some(m)
    }

    fn validate(&self) -> bool {
        self.schema == MANIFEST_SCHEMA
            && !self.run_id.is_empty()
            && self
                .run_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && match self.status {
                RunStatus::Ok => self.outputs.len() == 1 && self.error.is_none(),
                RunStatus::Failed => self.error.is_some(),
            }
    }
}

/// Whether `s` has the shape of a run id (so it can name a file safely).
pub fn is_run_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A new run id: UTC time to the millisecond plus a random suffix, so ids
/// sort by time and do not collide across machines.
pub fn new_run_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now();
    let stamp = humantime::format_rfc3339_millis(now).to_string();
    let compact: String = stamp.chars().filter(|c| c.is_ascii_digit()).collect();
    let nanos = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    // (the process id, asked once: a getpid per run id was a system call
    // per target)
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    let salt = Digest::of(format!("{nanos}-{pid}-{seq}").as_bytes());
    format!(
        "{}-{}",
        &compact[..compact.len().min(17)],
        &salt.to_hex()[..8]
    )
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> RunManifest {
        let d = Digest::of(b"x");
        RunManifest {
            schema: MANIFEST_SCHEMA.into(),
            run_id: "20261125000102345-0a1b2c3d".into(),
            target: "summarize[docs/a.md]".into(),
            input_bundle_hash: InputBundleHash(Digest::of(b"ibh")),
            template: FileDigest {
                path: "templates/s.md".into(),
                digest: d,
            },
            partials: vec![FileDigest {
                path: "partials/style.md".into(),
                digest: d,
            }],
            verbatim: vec![],
            item: Some(FileDigest {
                path: "docs/a.md".into(),
                digest: d,
            }),
            inputs: vec![InputRecord {
                name: "glossary".into(),
                path: "docs/glossary.md".into(),
                digest: d,
            }],
            upstream: vec![UpstreamRecord {
                target: "outline".into(),
                run_id: "20261125000101000-00000000".into(),
                output_digest: d,
            }],
            prompt_digest: Digest::of(b"prompt"),
            model: ModelRecord {
                name: "default".into(),
                provider: "mock".into(),
                params: BTreeMap::new(),
            },
            outputs: vec![OutputRecord {
                path: "out/a.md".into(),
                digest: d,
                bytes: 12,
            }],
            status: RunStatus::Ok,
            error: None,
            usage: Some(Usage {
                input_tokens: 2100,
                output_tokens: 40,
                cached_tokens: 0,
                cache_write_tokens: 2048,
            }),
            cost_usd: None,
            answered_by: Some("gpt-4o-mini-2024-07-18".into()),
            system_fingerprint: Some("fp_0123abcd".into()),
            timing: Timing {
                started_at: "2026-11-25T00:01:02.345Z".into(),
                finished_at: "2026-11-25T00:01:02.400Z".into(),
                compile_ms: 0.5,
                process_ms: 55.0,
                attempts: None,
                rate_limit_wait_ms: None,
            },
            tool_version: "0.1.0".into(),
            batch: None,
            host: Some("ci-runner-1".into()),
        }
    }

    #[test]
    fn manifest_schema_is_pinned() {
        insta::assert_snapshot!(String::from_utf8(sample().to_json()).unwrap());
    }

    /// Manifests written before `host` existed still parse.
    #[test]
    fn manifests_without_a_host_still_parse() {
        let mut m = sample();
        m.host = None;
        let json = String::from_utf8(m.to_json()).unwrap();
        assert!(!json.contains("host"), "{json}");
        assert_eq!(RunManifest::from_json(json.as_bytes()), Some(m));
    }

    /// Manifests written before the answering model, the fingerprint and
    /// cache writes were recorded still parse.
    #[test]
    fn manifests_without_answered_by_or_cache_writes_still_parse() {
        let mut m = sample();
        m.answered_by = None;
        m.system_fingerprint = None;
        m.usage.as_mut().unwrap().cache_write_tokens = 0;
        let json = String::from_utf8(m.to_json()).unwrap();
        for field in ["answered_by", "system_fingerprint", "cache_write_tokens"] {
            assert!(!json.contains(field), "{json}");
        }
        assert_eq!(RunManifest::from_json(json.as_bytes()), Some(m));
    }

    #[test]
    fn round_trip_and_validation() {
        let m = sample();
        assert_eq!(RunManifest::from_json(&m.to_json()), Some(m.clone()));
        // the packs' form: the same manifest, one line, smaller
        let line = m.to_json_line();
        assert_eq!(RunManifest::from_json(&line), Some(m.clone()));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(line.len() < m.to_json().len() * 9 / 10);
        let mut bad = m.clone();
        bad.schema = "other".into();
        assert_eq!(RunManifest::from_json(&bad.to_json()), None);
        let mut bad = m;
        bad.status = RunStatus::Failed;
        assert_eq!(RunManifest::from_json(&bad.to_json()), None);
    }

    #[test]
    fn every_truncation_is_rejected_without_panic() {
        let bytes = sample().to_json();
        for cut in 0..bytes.len() - 1 {
            // the last byte is the trailing newline, which JSON does not need
            assert_eq!(RunManifest::from_json(&bytes[..cut]), None, "cut at {cut}");
        }
    }

    /// Random corruptions never panic, and what still parses passes
    /// validation (the store then checks the hash it is filed under).
    #[test]
    fn random_corruptions_are_rejected_or_still_valid() {
        let bytes = sample().to_json();
        let mut parsed = 0;
        for case in crate::faults::corruptions(&bytes, 3000, 0xc0ffee) {
            if let Some(m) = RunManifest::from_json(&case) {
                assert!(m.validate());
                parsed += 1;
            }
        }
        // most corruptions break the JSON; the test must not pass by
        // accepting everything
        assert!(parsed < 1500, "{parsed} of 3000 corruptions parsed");
    }

    #[test]
    fn run_ids_are_unique_and_well_formed() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        assert!(
            a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'),
            "{a}"
        );
    }
}
