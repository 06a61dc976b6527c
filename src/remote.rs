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
//! This module never prints: it returns outcomes and [`RemoteError`]s,
//! which the caller renders.

pub use crate::remote_error::{Doing, Failure, Mismatch, RemoteError};

use crate::error::{Error, Result};
use crate::hash::{Digest, InputBundleHash};
use crate::manifest::{RunManifest, RunStatus};
use opendal::blocking;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
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
    /// Something was there but failed verification (one of the variants
    /// for which [`RemoteError::is_down`] is false); never served.
    Bad(RemoteError),
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
    /// The first failure of the remote in this process: once set, nothing
    /// more is sent to it.
    down: OnceLock<RemoteError>,
    /// Whether `down` was handed out yet: it is reported once.
    down_taken: AtomicBool,
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
    /// with the failure, which a build gives as a warning: a build must
    /// not fail because of its cache.
    pub fn open(
        url: &str,
        origin: &str,
        cfg: &CacheConfig,
    ) -> Result<std::result::Result<Remote, RemoteError>> {
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
        let cannot_open = |e: &opendal::Error| {
            Ok(Err(RemoteError::CannotOpen {
                url: shown.clone(),
                origin: origin.into(),
                failure: Failure::of(e),
            }))
        };
        opendal::install_default();
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mkt-remote")
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                return Ok(Err(RemoteError::NoRuntime {
                    url: shown,
                    origin: origin.into(),
                    source: Arc::new(e),
                }));
            }
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
            Err(e) => return cannot_open(&e),
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
                Err(e) => return cannot_open(&e),
            }
        };
        Ok(Ok(Remote {
            inner: Arc::new(Inner {
                display: shown,
                mode: cfg.mode,
                op,
                down: OnceLock::new(),
                down_taken: AtomicBool::new(false),
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
        self.inner.down.get().is_some()
    }

    /// The failure that took the remote down, once: the first caller
    /// after the failure gets it, every other `None`.
    pub fn take_down_warning(&self) -> Option<RemoteError> {
        let e = self.inner.down.get()?;
        (!self.inner.down_taken.swap(true, Ordering::Relaxed)).then(|| e.clone())
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
                        let _ = inner.publish(job.objects, &job.manifest, false);
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
    /// remote already has its entry: `Ok(true)` uploaded, `Ok(false)`
    /// already there. The failure returned is the one that took the
    /// remote down, reported here rather than by
    /// [`Remote::take_down_warning`].
    pub fn push(
        &self,
        manifest: &RunManifest,
        objects: Vec<(Digest, Vec<u8>)>,
    ) -> std::result::Result<bool, RemoteError> {
        let pushed = self.inner.publish(objects, manifest, true);
        if pushed.is_err() {
            self.inner.down_taken.store(true, Ordering::Relaxed);
        }
        pushed
    }

    /// Reads an entry and its output without the prompt check (`mkt cache
    /// pull`, which has no compiled prompt to compare with): the manifest
    /// must still be filed under its own hash and its output verify.
    pub fn fetch_entry(&self, ibh: &InputBundleHash) -> Fetch {
        self.inner.fetch_checked(ibh, None)
    }

    /// Counts what the remote holds under its prefix.
    pub fn stats(&self) -> std::result::Result<RemoteStats, RemoteError> {
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
                    return Err(RemoteError::List {
                        url: self.inner.display.clone(),
                        failure: Failure::of(&e),
                    });
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
    /// Marks the remote down after `e`, unless an earlier failure did:
    /// the failure that did is the one reported.
    fn mark_down(&self, doing: Doing, e: &opendal::Error) -> RemoteError {
        self.down
            .get_or_init(|| RemoteError::Down {
                url: self.display.clone(),
                doing,
                failure: Failure::of(e),
            })
            .clone()
    }

    /// `Err` with the failure that took the remote down, if one did.
    fn up(&self) -> std::result::Result<(), RemoteError> {
        match self.down.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Reads `key` if it holds at most `max` bytes: its length is asked
    /// first, and only that many bytes are read, so an object that grew
    /// on the remote costs neither the time nor the memory to read it
    /// whole. `Ok(None)` when it is not there; `Err` when the remote is
    /// down (now or before).
    fn read(
        &self,
        key: &str,
        max: u64,
        doing: Doing,
    ) -> std::result::Result<Option<Bounded>, RemoteError> {
        self.up()?;
        let fail = |e: opendal::Error| match e.kind() {
            opendal::ErrorKind::NotFound => Ok(None),
            _ => Err(self.mark_down(doing, &e)),
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

    fn write(&self, key: &str, bytes: Vec<u8>) -> std::result::Result<(), RemoteError> {
        self.up()?;
        match self.op.write(key, bytes) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.mark_down(Doing::Uploading, &e)),
        }
    }

    fn exists(&self, key: &str) -> std::result::Result<bool, RemoteError> {
        self.up()?;
        self.op
            .exists(key)
            .map_err(|e| self.mark_down(Doing::Checking, &e))
    }

    fn fetch(&self, ibh: &InputBundleHash, prompt: &Digest) -> Fetch {
        self.fetch_checked(ibh, Some(prompt))
    }

    fn fetch_checked(&self, ibh: &InputBundleHash, prompt: Option<&Digest>) -> Fetch {
        match self.verified(ibh, prompt) {
            Ok(Some((manifest, output))) => Fetch::Hit {
                manifest: Box::new(manifest),
                output,
            },
            Ok(None) => Fetch::Miss,
            Err(e) if e.is_down() => Fetch::Down,
            Err(e) => Fetch::Bad(e),
        }
    }

    /// The manifest filed under `ibh` and its output, verified (module
    /// docs); `Ok(None)` when the remote has no entry there.
    fn verified(
        &self,
        ibh: &InputBundleHash,
        prompt: Option<&Digest>,
    ) -> std::result::Result<Option<(RunManifest, Vec<u8>)>, RemoteError> {
        let url = || self.display.clone();
        let key = ac_key(ibh);
        let bytes = match self.read(&key, MAX_MANIFEST_BYTES, Doing::LookingUp)? {
            None => return Ok(None),
            Some(Bounded::Fits(b)) => b,
            Some(Bounded::TooLarge(len)) => {
                return Err(RemoteError::ManifestTooLarge {
                    url: url(),
                    key,
                    len,
                    max: MAX_MANIFEST_BYTES,
                });
            }
        };
        let Some(m) = RunManifest::from_json(&bytes) else {
            return Err(RemoteError::NotAManifest { url: url(), key });
        };
        let mismatch = if m.input_bundle_hash != *ibh {
            Some(Mismatch::InputBundleHash)
        } else if m.status != RunStatus::Ok {
            Some(Mismatch::NotOk)
        } else if prompt.is_some_and(|p| m.prompt_digest != *p) {
            Some(Mismatch::Prompt)
        } else {
            None
        };
        if let Some(mismatch) = mismatch {
            return Err(RemoteError::AnotherRun {
                url: url(),
                key,
                mismatch,
            });
        }
        let out = &m.outputs[0];
        let object = object_key(&out.digest);
        match self.read(&object, out.bytes, Doing::Fetching)? {
            None => Err(RemoteError::MissingObject {
                url: url(),
                key,
                object,
            }),
            Some(Bounded::TooLarge(len)) => Err(RemoteError::ObjectTooLarge {
                url: url(),
                key,
                object,
                len,
                expected: out.bytes,
            }),
            Some(Bounded::Fits(b))
                if Digest::of(&b) != out.digest || b.len() as u64 != out.bytes =>
            {
                Err(RemoteError::ObjectCorrupt {
                    url: url(),
                    key,
                    object,
                })
            }
            Some(Bounded::Fits(output)) => Ok(Some((m, output))),
        }
    }

    /// Writes the objects, then the manifest that names them (module
    /// docs). With `skip_present`, a run whose entry is there already is
    /// left alone (`Ok(false)`). `Err` when the remote failed.
    fn publish(
        &self,
        objects: Vec<(Digest, Vec<u8>)>,
        m: &RunManifest,
        skip_present: bool,
    ) -> std::result::Result<bool, RemoteError> {
        let key = ac_key(&m.input_bundle_hash);
        if skip_present && self.exists(&key)? {
            return Ok(false);
        }
        for (d, bytes) in objects {
            self.write(&object_key(&d), bytes)?;
        }
        self.write(&key, m.to_json())?;
        Ok(true)
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
/// when there is none; `Some(Err(why))` when it cannot be opened here.
pub fn open_for(
    project: &crate::config::Project,
) -> Result<Option<std::result::Result<Remote, RemoteError>>> {
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

    /// A `file://` remote in a temp directory (which it writes to as is).
    fn dir_remote() -> (tempfile::TempDir, String, Remote) {
        let t = tempfile::tempdir().unwrap();
        let url = format!("file://{}", t.path().display());
        let r = Remote::open(&url, "`prompts.toml`", &CacheConfig::default())
            .unwrap()
            .unwrap();
        (t, url, r)
    }

    /// A manifest of a successful run whose output is `output`.
    fn run_of(output: &[u8]) -> RunManifest {
        let mut m = crate::manifest::tests::sample();
        m.outputs[0].digest = Digest::of(output);
        m.outputs[0].bytes = output.len() as u64;
        m
    }

    #[test]
    fn entries_that_fail_verification_are_rejected_by_kind_with_their_key() {
        let (t, url, r) = dir_remote();
        let put = |key: &str, bytes: &[u8]| std::fs::write(t.path().join(key), bytes).unwrap();
        let answer = b"the answer\n";
        let m = run_of(answer);
        let ibh = m.input_bundle_hash;
        let (key, object) = (ac_key(&ibh), object_key(&m.outputs[0].digest));
        assert!(matches!(r.fetch_entry(&ibh), Fetch::Miss));
        let objects = vec![
            (m.prompt_digest, b"prompt".to_vec()),
            (m.outputs[0].digest, answer.to_vec()),
        ];
        assert!(r.push(&m, objects).unwrap(), "uploaded");
        assert!(
            matches!(r.fetch(&ibh, &m.prompt_digest), Fetch::Hit { output, .. } if output == answer)
        );
        let bad = |f: Fetch| match f {
            Fetch::Bad(e) => {
                assert!(!e.is_down(), "{e:?}");
                assert_eq!((e.url(), e.key()), (url.as_str(), Some(key.as_str())));
                e
            }
            f => panic!("not rejected: {f:?}"),
        };

        // the entry names another compiled prompt than this machine's
        let e = bad(r.fetch(&ibh, &Digest::of(b"another prompt")));
        assert!(
            matches!(
                e,
                RemoteError::AnotherRun {
                    mismatch: Mismatch::Prompt,
                    ..
                }
            ),
            "{e:?}"
        );
        // the output object: flipped, longer, gone
        put(&object, b"the answeR\n"); // one byte flipped
        let e = bad(r.fetch_entry(&ibh));
        assert!(
            matches!(&e, RemoteError::ObjectCorrupt { object: o, .. } if *o == object),
            "{e:?}"
        );
        put(&object, b"the answer, at length\n");
        let e = bad(r.fetch_entry(&ibh));
        assert!(
            matches!(
                e,
                RemoteError::ObjectTooLarge {
                    len: 22,
                    expected: 11,
                    ..
                }
            ),
            "{e:?}"
        );
        std::fs::remove_file(t.path().join(&object)).unwrap();
        let e = bad(r.fetch_entry(&ibh));
        assert!(
            matches!(&e, RemoteError::MissingObject { object: o, .. } if *o == object),
            "{e:?}"
        );
        // the entry: not a manifest, another run's, a failed run's, grown
        put(&key, b"{\"schema\": ");
        let e = bad(r.fetch_entry(&ibh));
        assert!(matches!(e, RemoteError::NotAManifest { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("the remote cache `{url}`: entry `{key}` is not a valid run manifest")
        );
        let mut other = m.clone();
        other.input_bundle_hash = InputBundleHash(Digest::of(b"another run"));
        put(&key, &other.to_json());
        let e = bad(r.fetch_entry(&ibh));
        assert!(
            matches!(
                e,
                RemoteError::AnotherRun {
                    mismatch: Mismatch::InputBundleHash,
                    ..
                }
            ),
            "{e:?}"
        );
        let mut failed = m.clone();
        (failed.status, failed.error) = (RunStatus::Failed, Some("HTTP 500".into()));
        put(&key, &failed.to_json());
        let e = bad(r.fetch_entry(&ibh));
        assert!(
            matches!(
                e,
                RemoteError::AnotherRun {
                    mismatch: Mismatch::NotOk,
                    ..
                }
            ),
            "{e:?}"
        );
        let f = std::fs::File::options()
            .write(true)
            .open(t.path().join(&key))
            .unwrap();
        f.set_len(MAX_MANIFEST_BYTES + 1).unwrap(); // sparse: no disk
        let e = bad(r.fetch_entry(&ibh));
        assert!(
            matches!(e, RemoteError::ManifestTooLarge { len, max: MAX_MANIFEST_BYTES, .. } if len == MAX_MANIFEST_BYTES + 1),
            "{e:?}"
        );

        // none of it took the remote down
        assert!(!r.is_down());
        assert!(r.take_down_warning().is_none());
    }

    #[test]
    fn a_refused_connection_takes_the_remote_down_with_one_failure() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        }; // closed again: connections are refused
        let url = format!("webdav+http://127.0.0.1:{port}/cache");
        let cfg = CacheConfig {
            timeout_s: 2,
            ..Default::default()
        };
        let r = Remote::open(&url, "`prompts.toml`", &cfg).unwrap().unwrap();
        let m = run_of(b"x");
        assert!(matches!(
            r.fetch(&m.input_bundle_hash, &m.prompt_digest),
            Fetch::Down
        ));
        assert!(r.is_down());
        let e = r.take_down_warning().expect("the failure, once");
        assert!(e.is_down());
        let refused = Failure::Unreachable {
            io: Some(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(
            matches!(&e, RemoteError::Down { doing: Doing::LookingUp, failure, .. } if *failure == refused),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "the remote cache `{url}` failed while looking up a result (cannot reach it, or it failed); going on without it for the rest of this build"
            )
        );
        assert!(r.take_down_warning().is_none(), "reported once");
        // nothing more is sent: a push gets the failure that took it down
        let pushed = r.push(&m, vec![(m.prompt_digest, b"p".to_vec())]);
        assert!(
            matches!(
                pushed,
                Err(RemoteError::Down {
                    doing: Doing::LookingUp,
                    ..
                })
            ),
            "{pushed:?}"
        );
    }

    #[test]
    fn a_remote_that_cannot_be_set_up_is_a_setup_failure() {
        let url = "file:///proc/no-such-dir/cache";
        let e = match Remote::open(url, "`prompts.toml`", &CacheConfig::default()).unwrap() {
            Err(e) => e,
            Ok(_) => panic!("a directory under /proc cannot be created"),
        };
        assert!(e.is_down());
        assert!(
            matches!(&e, RemoteError::CannotOpen { url: u, failure: Failure::Unreachable { io: Some(_) }, .. } if u == url),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "the remote cache `file:///proc/no-such-dir/cache` (from `prompts.toml`) cannot be opened (cannot reach it, or it failed); going on without it"
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
    opened.map_err(|error| Error::Remote {
        error,
        help: "check the URL, and that this machine can reach and write it",
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
            Ok(true) => rep.pushed += 1,
            Ok(false) => rep.present += 1,
            Err(error) => {
                return Err(Error::Remote {
                    error,
                    help: "check the remote's URL, that it is up, and the credentials in the environment; then run `mkt cache push` again (what was pushed stays)",
                });
            }
        }
    }
    Ok(rep)
}
