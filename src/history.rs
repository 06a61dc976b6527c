//! The run history: `.mkt/history.jsonl`, what `mkt runs` reads.
//!
//! One JSON object per line, one line per target that a build did work
//! for (targets found up to date leave no line), appended as the build
//! goes and never rewritten:
//!
//! ```json
//! {"time":"2026-11-25T10:00:00.123Z","target":"summary[docs/a.md]","status":"ran",
//!  "run_id":"20261125100000123-1a2b3c4d","input_bundle_hash":"6ec4…","model":"default",
//!  "reason":"input `docs/a.md` changed","duration_ms":12.5,"usage":null}
//! ```
//!
//! - `status`: `ran` (the model was called), `cached` (served from the
//!   action cache: `run_id` is the run that produced the result),
//!   `restored` (output file put back from the store), `failed`.
//! - `input_bundle_hash`: hex, `null` when the run failed before its
//!   prompt was compiled; `run_id` is then empty.
//! - `usage`: tokens as the provider reported them, `null` when it
//!   reports none (mock, command).
//! - `cost_usd`: `usage` priced with the model's `price_*_per_mtok`;
//!   absent when the model has no prices.
//! - `remote`: `true` on a `cached` line served from the remote cache
//!   (absent otherwise); `host`: the machine that made that run, when
//!   its manifest names one.
//! - `batch`: on a `ran` line, the provider's batch that answered it
//!   (absent for an ordinary call).
//!
//! A successful run's manifest is `ac/<ibh>.json`, a failed one's
//! `runs/<run id>.json`: the line leads to either.
//!
//! The reader skips any line that does not parse: an append cut short by a
//! crash loses that line only, never the history before it.

use crate::hash::Digest;
use crate::manifest::Usage;
use serde::{Deserialize, Serialize};

pub use crate::layout::HISTORY as HISTORY_FILE;

/// What a history line says happened to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    Ran,
    Cached,
    Restored,
    Failed,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Ran => "ran",
            RunKind::Cached => "cached",
            RunKind::Restored => "restored",
            RunKind::Failed => "failed",
        }
    }
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub time: String,
    pub target: String,
    pub status: RunKind,
    pub run_id: String,
    pub input_bundle_hash: Option<Digest>,
    /// Absent in lines written before the field existed.
    #[serde(default)]
    pub model: String,
    pub reason: String,
    pub duration_ms: f64,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// `usage` priced in US dollars; absent when the model has no prices
    /// (and in lines written before the field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// `cached` from the remote cache rather than the local store; absent
    /// (false) otherwise and in lines written before the field existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
    /// For a remote hit: the machine that made the run, when its manifest
    /// says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `ran` from the answer of this provider batch (`mkt build --batch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
}

impl HistoryEntry {
    /// The line as appended to the file, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("history entry serialises");
        s.push('\n');
        s
    }

    /// True when the entry is about `target`: a target name matches every
    /// node of it (`summary` matches `summary[docs/a.md]`), a node key only
    /// itself.
    pub fn is_for(&self, target: &str) -> bool {
        self.target == target
            || self
                .target
                .strip_prefix(target)
                .is_some_and(|rest| rest.starts_with('[') && !target.contains('['))
    }
}

/// Every well-formed entry of a history file's bytes, oldest first.
pub fn parse(bytes: &[u8]) -> Vec<HistoryEntry> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// Reads the history of the store at `store_dir`, oldest first; a missing
/// file is an empty history.
pub fn read(store_dir: &camino::Utf8Path) -> std::io::Result<Vec<HistoryEntry>> {
    match std::fs::read(store_dir.join(HISTORY_FILE)) {
        Ok(bytes) => Ok(parse(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Which history entries `mkt runs` shows.
#[derive(Debug, Clone, Default)]
pub struct RunsFilter {
    /// Target names or node keys (see [`HistoryEntry::is_for`]); all when empty.
    pub targets: Vec<String>,
    pub failed_only: bool,
    /// At most this many, newest first; all when `None`.
    pub limit: Option<usize>,
}

/// The history entries that pass `filter`, newest first, and how many
/// passed before the limit cut the list.
pub fn runs(
    store_dir: &camino::Utf8Path,
    filter: &RunsFilter,
) -> std::io::Result<(Vec<HistoryEntry>, usize)> {
    let all = read(store_dir)?;
    let mut matching: Vec<HistoryEntry> = all
        .into_iter()
        .rev()
        .filter(|e| !filter.failed_only || e.status == RunKind::Failed)
        .filter(|e| filter.targets.is_empty() || filter.targets.iter().any(|t| e.is_for(t)))
        .collect();
    // a parallel build appends lines as its jobs are collected, which can
    // differ from the order they ended in by a few milliseconds
    matching.sort_by(|a, b| b.time.cmp(&a.time));
    let total = matching.len();
    if let Some(n) = filter.limit {
        matching.truncate(n);
    }
    Ok((matching, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(target: &str, status: RunKind) -> HistoryEntry {
        HistoryEntry {
            time: "2026-11-25T10:00:00.123Z".into(),
            target: target.into(),
            status,
            run_id: "20261125100000123-1a2b3c4d".into(),
            input_bundle_hash: Some(Digest::of(target.as_bytes())),
            model: "default".into(),
            reason: "input `docs/a.md` changed".into(),
            duration_ms: 12.5,
            usage: Some(Usage {
                cache_write_tokens: 0,
                input_tokens: 10,
                output_tokens: 20,
                cached_tokens: 0,
            }),
            cost_usd: Some(0.25),
            remote: false,
            host: None,
            batch: None,
        }
    }

    fn sample() -> (Vec<HistoryEntry>, String) {
        let entries = vec![
            entry("summary[docs/a.md]", RunKind::Ran),
            HistoryEntry {
                remote: true,
                host: Some("laptop-2".into()),
                ..entry("outline", RunKind::Cached)
            },
            HistoryEntry {
                input_bundle_hash: None,
                run_id: String::new(),
                usage: None,
                cost_usd: None,
                ..entry("briefing", RunKind::Failed)
            },
        ];
        let text = entries.iter().map(HistoryEntry::to_line).collect();
        (entries, text)
    }

    #[test]
    fn lines_round_trip() {
        let (entries, text) = sample();
        assert_eq!(parse(text.as_bytes()), entries);
    }

    #[test]
    fn lines_from_before_model_and_usage_still_read() {
        let line = r#"{"time":"t","target":"a","status":"ran","run_id":"r","input_bundle_hash":null,"reason":"never built","duration_ms":1.0}"#;
        let e = &parse(line.as_bytes())[0];
        assert_eq!((e.model.as_str(), e.usage.as_ref()), ("", None));
    }

    /// A file cut at any byte keeps exactly the lines that were whole.
    #[test]
    fn cut_at_every_byte_keeps_the_whole_lines() {
        let (entries, text) = sample();
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let whole = bytes[..cut].iter().filter(|&&b| b == b'\n').count();
            let got = parse(&bytes[..cut]);
            // a line cut just before its newline is still whole JSON
            let complete_json = cut < bytes.len() && bytes[cut] == b'\n';
            let want = whole + usize::from(complete_json);
            assert_eq!(got, entries[..want], "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_byte_loses_at_most_its_line() {
        let (_, text) = sample();
        for i in 0..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] ^= 0x5a;
            let got = parse(&b);
            assert!(got.len() >= 2 || b[i] == b'\n' || text.as_bytes()[i] == b'\n');
        }
    }

    #[test]
    fn a_target_name_matches_its_foreach_nodes() {
        let e = entry("summary[docs/a.md]", RunKind::Ran);
        assert!(e.is_for("summary"));
        assert!(e.is_for("summary[docs/a.md]"));
        assert!(!e.is_for("summ"));
        assert!(!e.is_for("summary[docs/b.md]"));
    }
}
