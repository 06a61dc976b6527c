//! The record of one submitted batch: `.mkt/batches/<tag>.json`.
//!
//! ```json
//! {"schema":"mkt-batch-1","tag":"20261204013000123-1a2b3c4d","provider":"openai",
//!  "model":"gpt","batch_id":"batch_abc","submitted_at":"2026-12-04T01:30:00.123Z",
//!  "cancelled":false,"requests":[<RunManifest before the call>, ...]}
//! ```
//!
//! - `tag`: unique to the submission (a run id's shape: time, then random),
//!   also the file's name; the provider keeps it with the batch where it
//!   keeps metadata (OpenAI), so that a submission cut short after the
//!   provider accepted it but before its id was recorded can be found.
//! - `batch_id`: the provider's id; `null` in the record written *before*
//!   the batch is sent, which is rewritten with the id once the provider
//!   answers. A record with `null` found by a later build belongs to a
//!   submission that was cut short.
//! - `requests`: each request's manifest as far as it is known before the
//!   call (the InputBundleHash, the sources, the prompt digest, the model):
//!   what storing its answer needs, even when the target has changed since.
//!   Their compiled prompts are in the store, pinned against `mkt gc` while
//!   the record exists.
//!
//! Each record is written whole to a temp file, flushed to the disk and
//! renamed into place (the directory flushed too), so a record is either
//! complete or absent. One that does not parse is reported, never trusted.

use crate::error::{Error, Result};
use crate::hash::InputBundleHash;
use crate::manifest::RunManifest;
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use std::io::Write;

pub const BATCH_SCHEMA: &str = "mkt-batch-1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRecord {
    pub schema: String,
    pub tag: String,
    pub provider: String,
    pub model: String,
    pub batch_id: Option<String>,
    pub submitted_at: String,
    /// `mkt batch cancel` asked the provider to cancel it: its requests
    /// are no longer pending (a later build may send them again), though
    /// the answers that come are still collected.
    #[serde(default)]
    pub cancelled: bool,
    pub requests: Vec<RunManifest>,
}

impl BatchRecord {
    /// The `custom_id` of a request: its InputBundleHash in hex.
    pub fn custom_id(ibh: &InputBundleHash) -> String {
        ibh.0.to_hex()
    }

    /// The record's file in `dir` (`.mkt/batches/`).
    pub fn path_in(&self, dir: &Utf8Path) -> Utf8PathBuf {
        dir.join(format!("{}.json", self.tag))
    }

    /// The provider's id, or the tag while there is none.
    pub fn name(&self) -> &str {
        self.batch_id.as_deref().unwrap_or(&self.tag)
    }

    /// Writes the record durably (module docs).
    pub fn write(&self, dir: &Utf8Path) -> Result<()> {
        let path = self.path_in(dir);
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let bytes = serde_json::to_vec(self).expect("a batch record serialises");
        let mut tmp = crate::store::temp_in(dir).map_err(|e| Error::io("write", &path, e))?;
        (|| {
            tmp.write_all(&bytes)?;
            tmp.as_file().sync_all()?;
            tmp.persist(&path).map_err(|e| e.error)?;
            std::fs::File::open(dir)?.sync_all()
        })()
        .map_err(|e| Error::io("write", &path, e))
    }

    /// Removes the record: its batch is collected.
    pub fn remove(&self, dir: &Utf8Path) -> Result<()> {
        crate::store::remove_if_there(&self.path_in(dir))
    }

    fn parse(bytes: &[u8]) -> Option<BatchRecord> {
        let r: BatchRecord = serde_json::from_slice(bytes).ok()?;
        let well_formed = r.schema == BATCH_SCHEMA
            && crate::manifest::is_run_id(&r.tag)
            && r.requests
                .iter()
                .all(|m| m.prompt_digest != Default::default());
        well_formed.then_some(r)
    }
}

/// What [`read_all`] found in `.mkt/batches/`.
#[derive(Debug, Default)]
pub struct Records {
    /// Oldest first.
    pub records: Vec<BatchRecord>,
    /// Files that are not a complete record: reported, never trusted.
    pub unreadable: Vec<Utf8PathBuf>,
}

/// Every record in `dir`; none when it does not exist.
pub fn read_all(dir: &Utf8Path) -> Records {
    let mut out = Records::default();
    let Ok(entries) = dir.read_dir_utf8() else {
        return out;
    };
    let mut paths: Vec<Utf8PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.into_path())
        .filter(|p| p.extension() == Some("json"))
        .collect();
    paths.sort();
    for path in paths {
        match std::fs::read(&path)
            .ok()
            .and_then(|b| BatchRecord::parse(&b))
        {
            Some(r) if r.path_in(dir) == path => out.records.push(r),
            _ => out.unreadable.push(path),
        }
    }
    out
}

/// Whether `dir` holds any record (one `readdir` when it does not exist:
/// asked by every build before its no-op fast path).
pub fn any_in(dir: &Utf8Path) -> bool {
    dir.read_dir_utf8()
        .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().ends_with(".json"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tag: &str) -> BatchRecord {
        let mut m = crate::manifest::tests::sample();
        m.run_id = String::new();
        BatchRecord {
            schema: BATCH_SCHEMA.into(),
            tag: tag.into(),
            provider: "openai".into(),
            model: "gpt".into(),
            batch_id: Some("batch_abc".into()),
            submitted_at: "2026-12-04T01:30:00.123Z".into(),
            cancelled: false,
            requests: vec![m],
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let t = tempfile::tempdir().unwrap();
        let dir = Utf8Path::from_path(t.path()).unwrap().join("batches");
        assert!(!any_in(&dir));
        let r = sample("20261204013000123-1a2b3c4d");
        r.write(&dir).unwrap();
        assert!(any_in(&dir));
        let read = read_all(&dir);
        assert_eq!(read.records, vec![r.clone()]);
        assert!(read.unreadable.is_empty());
        r.remove(&dir).unwrap();
        assert!(!any_in(&dir));
    }

    #[test]
    fn a_record_cut_at_any_byte_is_reported_not_trusted() {
        let t = tempfile::tempdir().unwrap();
        let dir = Utf8Path::from_path(t.path()).unwrap();
        let r = sample("20261204013000123-1a2b3c4d");
        r.write(dir).unwrap();
        let path = r.path_in(dir);
        let bytes = std::fs::read(&path).unwrap();
        for cut in 0..bytes.len() {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let read = read_all(dir);
            assert!(read.records.is_empty(), "cut at {cut} was trusted");
            assert_eq!(read.unreadable, vec![path.clone()]);
        }
    }

    #[test]
    fn a_record_under_another_name_is_not_trusted() {
        let t = tempfile::tempdir().unwrap();
        let dir = Utf8Path::from_path(t.path()).unwrap();
        let r = sample("20261204013000123-1a2b3c4d");
        r.write(dir).unwrap();
        let moved = dir.join("20261204013000999-00000000.json");
        std::fs::rename(r.path_in(dir), &moved).unwrap();
        assert_eq!(read_all(dir).unreadable, vec![moved]);
    }
}
