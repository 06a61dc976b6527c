//! The remote cache: results shared through storage a team already has (an
//! S3-compatible bucket, a WebDAV server, a shared directory), reached
//! through Apache OpenDAL's blocking operator.
//!
//! **What is uploaded**: for each successful model run, its output object,
//! its compiled-prompt object and its manifest. Failed runs never are.
//!
//! **Key layout** mirrors the local store (`store.rs`), under the URL's
//! path: `objects/xx/<digest>` and `ac/xx/<ibh>.json`. Keys are content
//! addressed, so an upload is idempotent and two machines publishing the
//! same result at once write the same bytes. Objects are written before
//! the action-cache entry that names them, so a reader that finds an entry
//! finds its objects.
//!
//! **Verification**: the remote is untrusted. A manifest is believed only
//! if it parses as a manifest of the current schema
//! ([`RunManifest::from_json`]), is filed under the InputBundleHash it
//! names, says `ok`, and names the compiled prompt this machine just
//! rendered; its output object must hash (BLAKE3) to the digest the
//! manifest names and have its length. Lengths are asked first and bound
//! what is read (a manifest's by [`MAX_MANIFEST_BYTES`]), so a grown
//! object costs one request, not its size in time and memory. Anything else is a miss that the
//! caller reports once; nothing unverified reaches the local store.
//!
//! **Failure policy**: the remote is optional. Every operation has a
//! bounded timeout and at most one retry; the first transport error
//! (unreachable, timeout, an error answer other than "not found") marks the
//! remote down for the rest of the process and is reported once: the build
//! goes on locally and never fails because of the cache.
//!
//! **Secrets**: credentials come only from the environment or the standard
//! credential files (OpenDAL's S3 credential chain, or `MKT_WEBDAV_USERNAME`
//! / `MKT_WEBDAV_PASSWORD`); user info in a URL is refused, and every
//! message shows the URL through [`redact`]. The remote's location, mode
//! and credentials are not part of any InputBundleHash.
//!
//! This module never prints: it returns outcomes and warning texts.

use crate::error::{Error, Result};
use crate::hash::{Digest, InputBundleHash};
use crate::manifest::{RunManifest, RunStatus};
use opendal::blocking;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The environment variable that, when set, wins over `[cache] remote`.
pub const ENV_REMOTE: &str = "MKT_REMOTE_CACHE";

pub use crate::cache_config::{CacheConfig, DEFAULT_TIMEOUT_S, Location, Mode, parse_url, redact};

/// What a remote lookup found.
#[derive(Debug)]
pub enum Fetch {
    Hit {
        manifest: Box<RunManifest>,
        output: Vec<u8>,
    },
    Miss,
    /// Something was there but failed verification (the text says what);
    /// never served.
    Bad(String),
    /// The remote is down (or was found down earlier in this process).
    Down,
}

/// The largest run manifest read from a remote: a real one is a few KiB,
/// growing by one short record per input file.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// A remote file read with a bound on its length.
enum Bounded {
    Fits(Vec<u8>),
    /// Longer than the bound: its length, and nothing read.
    TooLarge(u64),
}

/// One successful run to publish: objects first, then the manifest.
struct Upload {
    objects: Vec<(Digest, Vec<u8>)>,
    manifest: RunManifest,
}

/// Counts of what a remote holds (`mkt cache stats`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RemoteStats {
    pub entries: u64,
    pub objects: u64,
    pub bytes: u64,
}

/// An open remote cache. Shared by the build's worker threads.
pub struct Remote {
    inner: Arc<Inner>,
    /// Runs OpenDAL's async I/O; the blocking operator waits on it. Kept
    /// in an `Option` so that drop can shut it down without waiting for
    /// a request stuck on a server that never answers.
    rt: Option<tokio::runtime::Runtime>,
    uploads: Mutex<Option<Uploader>>,
}

/// What the build's workers and the upload threads share.
struct Inner {
    display: String,
    mode: Mode,
    op: blocking::Operator,
    down: AtomicBool,
    /// The one warning about the remote being down, taken by the caller.
    down_warning: Mutex<Option<String>>,
}

struct Uploader {
    tx: mpsc::Sender<Upload>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Concurrent uploads at most: enough to hide a round trip per file.
const UPLOAD_THREADS: usize = 4;

impl Remote {
    /// Opens the remote `url` (from `origin`, for messages). Builds the
    /// operator only: nothing is sent until the first lookup. A URL that
    /// is not valid is an error; a valid one that cannot be set up here
    /// (a directory that cannot be created, no I/O runtime) is `Ok(Err)`
    /// with the warning to give, since a build must not fail because of
    /// its cache.
    pub fn open(
        url: &str,
        origin: &str,
        cfg: &CacheConfig,
    ) -> Result<std::result::Result<Remote, String>> {
        let shown = redact(url);
        let bad = |why: String| {
            Error::InvalidFile {
            path: origin.into(),
            message: format!("the remote cache `{shown}` (from {origin}) {why}"),
            help: Some(
                "see \"Sharing results: the remote cache\" in README.md, or build without it: `mkt build --remote-cache off`"
                    .into(),
            ),
        }
        };
        let loc = parse_url(url).map_err(&bad)?;
        let unavailable = |why: String| {
            Ok(Err(format!(
                "the remote cache `{shown}` (from {origin}) {why}; going on without it"
            )))
        };
        opendal::install_default();
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mkt-remote")
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return unavailable(format!("cannot start its I/O runtime: {e}")),
        };
        let timeout = Duration::from_secs(cfg.timeout_s.max(1));
        let op = match match loc {
            Location::S3 { bucket, prefix } => {
                let region = cfg
                    .region
                    .clone()
                    .or_else(|| std::env::var("AWS_REGION").ok())
                    .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                    .unwrap_or_else(|| "us-east-1".into());
                let mut b = opendal::services::S3::default()
                    .bucket(&bucket)
                    .root(&prefix)
                    .region(&region);
                if let Some(e) = &cfg.endpoint {
                    // an S3-compatible server: no EC2 metadata lookup
                    // (there is no EC2 there)
                    b = b.endpoint(e).disable_ec2_metadata();
                }
                opendal::Operator::new(b)
            }
            Location::Webdav { endpoint, root } => {
                let mut b = opendal::services::Webdav::default()
                    .endpoint(&endpoint)
                    .root(&root);
                if let Ok(u) = std::env::var("MKT_WEBDAV_USERNAME") {
                    b = b.username(&u);
                }
                if let Ok(p) = std::env::var("MKT_WEBDAV_PASSWORD") {
                    b = b.password(&p);
                }
                opendal::Operator::new(b)
            }
            Location::Dir { path } => {
                // written to a temp file and renamed, so a reader on
                // another machine never sees half an entry
                let b = opendal::services::Fs::default()
                    .root(&path)
                    .atomic_write_dir(&format!("{path}/.tmp"));
                opendal::Operator::new(b)
            }
        } {
            Ok(op) => op,
            // OpenDAL's messages may quote its configuration: the kind only
            Err(e) => return unavailable(format!("cannot be opened ({})", describe(&e))),
        };
        let op = op
            .layer(
                opendal::layers::TimeoutLayer::new()
                    .with_timeout(timeout)
                    .with_io_timeout(timeout),
            )
            .layer(
                opendal::layers::RetryLayer::new()
                    .with_max_times(1)
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_millis(200)),
            );
        let op = {
            let _guard = rt.enter();
            match blocking::Operator::new(op) {
                Ok(op) => op,
                Err(e) => return unavailable(format!("cannot be opened ({})", describe(&e))),
            }
        };
        Ok(Ok(Remote {
            inner: Arc::new(Inner {
                display: shown,
                mode: cfg.mode,
                op,
                down: AtomicBool::new(false),
                down_warning: Mutex::new(None),
            }),
            rt: Some(rt),
            uploads: Mutex::new(None),
        }))
    }

    /// The URL, redacted, for messages.
    pub fn display(&self) -> &str {
        &self.inner.display
    }

    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// Whether the remote has failed in this process (then nothing more is
    /// sent to it).
    pub fn is_down(&self) -> bool {
        self.inner.down.load(Ordering::Relaxed)
    }

    /// The warning about the remote being down, once: the first caller
    /// after the failure gets it, every other `None`.
    pub fn take_down_warning(&self) -> Option<String> {
        self.inner.down_warning.lock().unwrap().take()
    }

    /// Looks up the run for `ibh`, whose compiled prompt has digest
    /// `prompt`, and verifies it (module docs).
    pub fn fetch(&self, ibh: &InputBundleHash, prompt: &Digest) -> Fetch {
        self.inner.fetch(ibh, prompt)
    }

    /// Queues a successful run for publishing in the background (read-write
    /// mode only); [`Remote::finish_uploads`] waits for the queue.
    pub fn upload(&self, manifest: RunManifest, prompt: Vec<u8>, output: Vec<u8>) {
        if self.inner.mode != Mode::ReadWrite || self.is_down() || manifest.status != RunStatus::Ok
        {
            return;
        }
        let objects = vec![
            (manifest.prompt_digest, prompt),
            (manifest.outputs[0].digest, output),
        ];
        let job = Upload { objects, manifest };
        let mut up = self.uploads.lock().unwrap();
        let up = up.get_or_insert_with(|| self.start_uploader());
        let _ = up.tx.send(job);
    }

    fn start_uploader(&self) -> Uploader {
        let (tx, rx) = mpsc::channel::<Upload>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..UPLOAD_THREADS)
            .map(|_| {
                let rx = Arc::clone(&rx);
                let inner = Arc::clone(&self.inner);
                std::thread::spawn(move || {
                    loop {
                        let job = match rx.lock().unwrap().recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        };
                        // a failure marks the remote down (one warning)
                        inner.publish(job.objects, &job.manifest, false);
                    }
                })
            })
            .collect();
        Uploader { tx, threads }
    }

    /// Waits until every queued upload is done (or failed).
    pub fn finish_uploads(&self) {
        let up = self.uploads.lock().unwrap().take();
        if let Some(up) = up {
            drop(up.tx);
            for t in up.threads {
                let _ = t.join();
            }
        }
    }

    /// Publishes one run now (`mkt cache push`), skipping it when the
    /// remote already has its entry: `Some(true)` uploaded, `Some(false)`
    /// already there, `None` the remote failed.
    pub fn push(&self, manifest: &RunManifest, objects: Vec<(Digest, Vec<u8>)>) -> Option<bool> {
        self.inner.publish(objects, manifest, true)
    }

    /// Reads an entry and its output without the prompt check (`mkt cache
    /// pull`, which has no compiled prompt to compare with): the manifest
    /// must still be filed under its own hash and its output verify.
    pub fn fetch_entry(&self, ibh: &InputBundleHash) -> Fetch {
        self.inner.fetch_checked(ibh, None)
    }

    /// Counts what the remote holds under its prefix.
    pub fn stats(&self) -> std::result::Result<RemoteStats, String> {
        let mut s = RemoteStats::default();
        for (dir, is_ac) in [("ac/", true), ("objects/", false)] {
            let opts = opendal::options::ListOptions {
                recursive: true,
                ..Default::default()
            };
            let entries = match self.inner.op.list_options(dir, opts) {
                Ok(e) => e,
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(format!(
                        "cannot list the remote cache `{}` ({})",
                        self.inner.display,
                        describe(&e)
                    ));
                }
            };
            for e in entries {
                if !e.metadata().mode().is_file() {
                    continue;
                }
                let mut len = e.metadata().content_length();
                if len == 0 {
                    // some backends list names only
                    len = self
                        .inner
                        .op
                        .stat(e.path())
                        .map(|m| m.content_length())
                        .unwrap_or(0);
                }
                if is_ac {
                    s.entries += 1;
                } else {
                    s.objects += 1;
                }
                s.bytes += len;
            }
        }
        Ok(s)
    }
}

impl Inner {
    fn mark_down(&self, doing: &str, e: &opendal::Error) {
        if !self.down.swap(true, Ordering::Relaxed) {
            *self.down_warning.lock().unwrap() = Some(format!(
                "the remote cache `{}` failed while {doing} ({}); going on without it for the rest of this build",
                self.display,
                describe(e)
            ));
        }
    }

    /// Reads `key` if it holds at most `max` bytes: its length is asked
    /// first, and only that many bytes are read, so an object that grew
    /// on the remote costs neither the time nor the memory to read it
    /// whole. `Ok(None)` when it is not there; `Err(())` when the remote
    /// is down (now or before).
    fn read(&self, key: &str, max: u64, doing: &str) -> std::result::Result<Option<Bounded>, ()> {
        if self.down.load(Ordering::Relaxed) {
            return Err(());
        }
        let fail = |e: opendal::Error| match e.kind() {
            opendal::ErrorKind::NotFound => Ok(None),
            _ => {
                self.mark_down(doing, &e);
                Err(())
            }
        };
        let len = match self.op.stat(key) {
            Ok(m) => m.content_length(),
            Err(e) => return fail(e),
        };
        if len > max {
            return Ok(Some(Bounded::TooLarge(len)));
        }
        if len == 0 {
            return Ok(Some(Bounded::Fits(Vec::new())));
        }
        let opts = opendal::options::ReadOptions {
            range: (0..len).into(),
            ..Default::default()
        };
        match self.op.read_options(key, opts) {
            Ok(buf) => Ok(Some(Bounded::Fits(buf.to_vec()))),
            // replaced by a shorter one since it was measured: what it
            // holds is not what was measured, so it fails verification
            Err(e) if e.kind() == opendal::ErrorKind::RangeNotSatisfied => {
                Ok(Some(Bounded::Fits(Vec::new())))
            }
            Err(e) => fail(e),
        }
    }

    fn write(&self, key: &str, bytes: Vec<u8>, doing: &str) -> bool {
        if self.down.load(Ordering::Relaxed) {
            return false;
        }
        match self.op.write(key, bytes) {
            Ok(_) => true,
            Err(e) => {
                self.mark_down(doing, &e);
                false
            }
        }
    }

    fn exists(&self, key: &str, doing: &str) -> std::result::Result<bool, ()> {
        if self.down.load(Ordering::Relaxed) {
            return Err(());
        }
        match self.op.exists(key) {
            Ok(b) => Ok(b),
            Err(e) => {
                self.mark_down(doing, &e);
                Err(())
            }
        }
    }

    fn fetch(&self, ibh: &InputBundleHash, prompt: &Digest) -> Fetch {
        self.fetch_checked(ibh, Some(prompt))
    }

    fn fetch_checked(&self, ibh: &InputBundleHash, prompt: Option<&Digest>) -> Fetch {
        let key = ac_key(ibh);
        let bytes = match self.read(&key, MAX_MANIFEST_BYTES, "looking up a result") {
            Err(()) => return Fetch::Down,
            Ok(None) => return Fetch::Miss,
            Ok(Some(Bounded::Fits(b))) => b,
            Ok(Some(Bounded::TooLarge(len))) => {
                return Fetch::Bad(format!(
                    "entry `{key}` has {len} bytes, more than a run manifest may have ({MAX_MANIFEST_BYTES})"
                ));
            }
        };
        let m = match RunManifest::from_json(&bytes) {
            Some(m) => m,
            None => return Fetch::Bad(format!("entry `{key}` is not a valid run manifest")),
        };
        if m.input_bundle_hash != *ibh
            || m.status != RunStatus::Ok
            || prompt.is_some_and(|p| m.prompt_digest != *p)
        {
            return Fetch::Bad(format!(
                "entry `{key}` describes another run than the one it is filed under"
            ));
        }
        let out = &m.outputs[0];
        let okey = object_key(&out.digest);
        match self.read(&okey, out.bytes, "fetching a result") {
            Err(()) => Fetch::Down,
            Ok(None) => Fetch::Bad(format!(
                "entry `{key}` names object `{okey}`, which the remote does not have"
            )),
            Ok(Some(Bounded::TooLarge(len))) => Fetch::Bad(format!(
                "object `{okey}` has {len} bytes, not the {} its entry says (not read)",
                out.bytes
            )),
            Ok(Some(Bounded::Fits(b)))
                if Digest::of(&b) != out.digest || b.len() as u64 != out.bytes =>
            {
                Fetch::Bad(format!(
                    "object `{okey}` does not hash to its name (corrupt or truncated)"
                ))
            }
            Ok(Some(Bounded::Fits(output))) => Fetch::Hit {
                manifest: Box::new(m),
                output,
            },
        }
    }

    /// Writes the objects, then the manifest that names them (module
    /// docs). With `skip_present`, a run whose entry is there already is
    /// left alone. `None` when the remote failed.
    fn publish(
        &self,
        objects: Vec<(Digest, Vec<u8>)>,
        m: &RunManifest,
        skip_present: bool,
    ) -> Option<bool> {
        let key = ac_key(&m.input_bundle_hash);
        if skip_present && self.exists(&key, "checking for a result").ok()? {
            return Some(false);
        }
        for (d, bytes) in objects {
            if !self.write(&object_key(&d), bytes, "uploading a result") {
                return None;
            }
        }
        self.write(&key, m.to_json(), "uploading a result")
            .then_some(true)
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.finish_uploads();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// An OpenDAL error as a short message without its context (which can
/// hold configuration).
fn describe(e: &opendal::Error) -> String {
    match e.kind() {
        opendal::ErrorKind::PermissionDenied => "permission denied".into(),
        opendal::ErrorKind::ConfigInvalid => "its settings are not valid".into(),
        opendal::ErrorKind::Unexpected => {
            let msg = e.to_string();
            if msg.contains("timeout") || msg.contains("timed out") {
                "timed out".into()
            } else {
                "cannot reach it, or it failed".into()
            }
        }
        k => format!("{k}"),
    }
}

pub fn object_key(d: &Digest) -> String {
    let hex = d.to_hex();
    format!("objects/{}/{hex}", &hex[..2])
}

pub fn ac_key(ibh: &InputBundleHash) -> String {
    let hex = ibh.0.to_hex();
    format!("ac/{}/{hex}.json", &hex[..2])
}

/// The remote a build of `project` uses, opened: `MKT_REMOTE_CACHE` (when
/// set; empty or `off` means none) wins over `[cache] remote`. `None`
/// when there is none; `Some(Err(warning))` when it cannot be opened here.
pub fn open_for(
    project: &crate::config::Project,
) -> Result<Option<std::result::Result<Remote, String>>> {
    let (url, origin) = match std::env::var(ENV_REMOTE) {
        Ok(v) if v.is_empty() || v == "off" => return Ok(None),
        Ok(v) => (v, "the environment variable `MKT_REMOTE_CACHE`"),
        Err(_) => match &project.cache.remote {
            Some(u) => (u.clone(), "`prompts.toml`"),
            None => return Ok(None),
        },
    };
    Remote::open(&url, origin, &project.cache).map(Some)
}

/// This machine's name, recorded in the manifests of the runs it makes so
/// that a result served from the remote says where it was made.
pub fn hostname() -> Option<String> {
    // (asked once: a full build makes a manifest per target)
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NAME.get_or_init(ask_hostname).clone()
}

fn ask_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8(buf[..end].to_vec()).ok()?;
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_locations() {
        assert_eq!(
            parse_url("s3://bucket/team/cache/"),
            Ok(Location::S3 {
                bucket: "bucket".into(),
                prefix: "team/cache/".into()
            })
        );
        assert_eq!(
            parse_url("webdav+http://127.0.0.1:8080/mkt"),
            Ok(Location::Webdav {
                endpoint: "http://127.0.0.1:8080".into(),
                root: "/mkt/".into()
            })
        );
        assert_eq!(
            parse_url("file:///mnt/team-cache"),
            Ok(Location::Dir {
                path: "/mnt/team-cache".into()
            })
        );
        for bad in [
            "/mnt/cache",
            "ftp://host/x",
            "s3:///prefix",
            "file://otherhost/x",
            "file:///",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_in_urls_are_refused_and_redacted() {
        let url = "webdav+https://alice:hunter2@dav.example/cache";
        let e = parse_url(url).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(redact(url), "webdav+https://***@dav.example/cache");
        assert_eq!(
            redact("s3://b/p@x"),
            "s3://b/p@x",
            "an @ in the path is not user info"
        );
    }

    #[test]
    fn keys_mirror_the_local_store() {
        let d = Digest::of(b"x");
        let hex = d.to_hex();
        assert_eq!(object_key(&d), format!("objects/{}/{hex}", &hex[..2]));
        assert_eq!(
            ac_key(&InputBundleHash(d)),
            format!("ac/{}/{hex}.json", &hex[..2])
        );
    }
}

/// The remote a `mkt cache` command works on: an error when the project
/// names none.
pub fn open_required(project: &crate::config::Project) -> Result<Remote> {
    let opened = open_for(project)?.ok_or_else(|| Error::NotAvailable {
        what: "no remote cache is configured for this project".into(),
        help: Some(format!(
            "add `[cache] remote = \"s3://bucket/prefix\"` (or `webdav+https://...`, `file:///...`) to `prompts.toml`, or set `{ENV_REMOTE}`"
        )),
    })?;
    opened.map_err(|what| Error::NotAvailable {
        what,
        help: Some("check the URL, and that this machine can reach and write it".into()),
    })
}

/// What `mkt cache push` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// Runs uploaded.
    pub pushed: usize,
    /// Runs the remote had already.
    pub present: usize,
    /// Current outputs whose run is no longer complete in the local store
    /// (collected, or never recorded): not pushed.
    pub missing: usize,
}

/// Publishes the run of every current output of the project at `root`:
/// its objects, then its manifest (module docs).
pub fn push(root: &camino::Utf8Path, remote: &Remote) -> Result<PushReport> {
    use crate::store::{AcRead, ObjectRead, ObjectStore};
    if remote.mode() == Mode::ReadOnly {
        return Err(Error::NotAvailable {
            what: format!("the remote cache `{}` is read-only", remote.display()),
            help: Some("set `mode = \"read-write\"` in the `[cache]` table of `prompts.toml` to publish to it".into()),
        });
    }
    let store = ObjectStore::open_read_only(root)?;
    let (_, state) = crate::state::StateFiles::load(store.dir());
    let mut rep = PushReport::default();
    let mut seen = std::collections::HashSet::new();
    let mut records: Vec<_> = state.targets.values().filter(|r| !r.failed).collect();
    records.sort_by(|a, b| a.output.cmp(&b.output));
    for r in records {
        if !seen.insert(r.ibh) {
            continue;
        }
        let AcRead::Found(m) = store.ac_get(&InputBundleHash(r.ibh)) else {
            rep.missing += 1;
            continue;
        };
        let mut objects = Vec::new();
        for d in [m.prompt_digest, m.outputs[0].digest] {
            if let ObjectRead::Found(b) = store.get(&d) {
                objects.push((d, b));
            }
        }
        if objects.len() != 2 {
            rep.missing += 1;
            continue;
        }
        match remote.push(&m, objects) {
            Some(true) => rep.pushed += 1,
            Some(false) => rep.present += 1,
            None => {
                let why = remote.take_down_warning().unwrap_or_default();
                return Err(Error::NotAvailable {
                    what: why,
                    help: Some("check the remote's URL, that it is up, and the credentials in the environment; then run `mkt cache push` again (what was pushed stays)".into()),
                });
            }
        }
    }
    Ok(rep)
}
