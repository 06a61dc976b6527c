//! `mkt show`: a target's or a past run's compiled prompt, output and
//! manifest.
//!
//! A spec is a run id (any run in the history) or a target: a target
//! name that means one node, a node key (`summary[docs/a.md]`) or an
//! output path. For a target, "the run" is the one that produced its
//! current output. Its prompt is the one that run sent when the target is
//! fresh, and the one that would be sent now (compiled in memory) when it
//! is not: what `mkt build` would send next. Nothing is written.

use crate::error::{Error, Result};
use crate::manifest::RunManifest;
use crate::provenance::{RunLookup, Snapshot, find_run, is_run_id};
use crate::status::status;
use crate::store::{ObjectRead, ObjectStore};
use crate::template::CompiledPrompt;
use camino::Utf8Path;

/// Where a shown prompt comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptSource {
    /// As run `run_id` sent it (from the store).
    Sent { run_id: String },
    /// As the next build would send it (the target is not fresh).
    WouldSend,
}

/// What a spec resolved to.
enum Resolved {
    Run(Box<RunManifest>),
    Target { snap: Box<Snapshot>, node: usize },
}

fn resolve(root: &Utf8Path, spec: &str) -> Result<Resolved> {
    if looks_like_run_id(spec) {
        let store = ObjectStore::open_read_only(root)?;
        match find_run(&store, spec) {
            RunLookup::Found(m) => return Ok(Resolved::Run(m)),
            RunLookup::Gone { run_id, why } => {
                return Err(Error::NotAvailable {
                    what: format!("the manifest of run `{run_id}` is gone: {why}"),
                    help: Some("`mkt runs` lists the runs on record".into()),
                });
            }
            RunLookup::Unknown => {}
        }
    }
    let snap = Snapshot::load(root)?;
    let node = snap.one_node(spec).map_err(|e| match e {
        Error::UnknownTarget { name, help } if looks_like_run_id(&name) => Error::UnknownTarget {
            help: Some(format!(
                "it is not a run id in the history either (`mkt runs` lists them){}",
                help.map(|h| format!("; {h}")).unwrap_or_default()
            )),
            name,
        },
        e => e,
    })?;
    Ok(Resolved::Target {
        snap: Box::new(snap),
        node,
    })
}

/// Run ids start with the date (`20261125...-salt`); target names rarely do.
fn looks_like_run_id(s: &str) -> bool {
    is_run_id(s) && s.bytes().next().is_some_and(|b| b.is_ascii_digit())
}

/// The manifest of the run `spec` names (a run id, or the run that
/// produced a target's current output).
pub fn manifest(root: &Utf8Path, spec: &str) -> Result<RunManifest> {
    match resolve(root, spec)? {
        Resolved::Run(m) => Ok(*m),
        Resolved::Target { snap, node } => target_run(&snap, node),
    }
}

fn target_run(snap: &Snapshot, node: usize) -> Result<RunManifest> {
    let key = &snap.node(node).key;
    match snap.current_run(node) {
        RunLookup::Found(m) => Ok(*m),
        RunLookup::Unknown => Err(Error::NotAvailable {
            what: format!("`{key}` has never been built, so no run is on record"),
            help: Some(format!("run `mkt build {key}`")),
        }),
        RunLookup::Gone { run_id, why } => Err(Error::NotAvailable {
            what: format!("the manifest of run `{run_id}`, which built `{key}`, is gone: {why}"),
            help: Some(format!("run `mkt build --force {key}` to record a new run")),
        }),
    }
}

/// The compiled prompt of a run, or of a target (module docs).
pub fn prompt(root: &Utf8Path, spec: &str) -> Result<(CompiledPrompt, PromptSource)> {
    let m = match resolve(root, spec)? {
        Resolved::Run(m) => *m,
        Resolved::Target { snap, node } => {
            let key = snap.node(node).key.clone();
            let fresh = status(root, std::slice::from_ref(&key))?
                .state_of(&key)
                .is_fresh();
            if !fresh {
                return snap
                    .compile_now(node)
                    .map(|p| (p, PromptSource::WouldSend))
                    .map_err(|e| Error::NotAvailable {
                        what: format!("cannot compile the prompt of `{key}`: {e}"),
                        help: None,
                    });
            }
            target_run(&snap, node)?
        }
    };
    let store = ObjectStore::open_read_only(root)?;
    let bytes = stored(&store, &m.prompt_digest, || {
        format!("the prompt of run `{}`", m.run_id)
    })?;
    let p = CompiledPrompt::from_canonical_json(&bytes).ok_or_else(|| Error::NotAvailable {
        what: format!(
            "the stored prompt of run `{}` is not a compiled prompt",
            m.run_id
        ),
        help: None,
    })?;
    Ok((
        p,
        PromptSource::Sent {
            run_id: m.run_id.clone(),
        },
    ))
}

/// The output of a run, or the output on record for a target (as built,
/// even if the file was edited since).
pub fn output(root: &Utf8Path, spec: &str) -> Result<Vec<u8>> {
    let m = manifest(root, spec)?;
    let Some(out) = m.outputs.first() else {
        return Err(Error::NotAvailable {
            what: format!(
                "run `{}` of `{}` failed and produced no output: {}",
                m.run_id,
                m.target,
                m.error.as_deref().unwrap_or("no error recorded")
            ),
            help: None,
        });
    };
    let store = ObjectStore::open_read_only(root)?;
    stored(&store, &out.digest, || {
        format!("the output of run `{}`", m.run_id)
    })
}

fn stored(
    store: &ObjectStore,
    d: &crate::hash::Digest,
    what: impl Fn() -> String,
) -> Result<Vec<u8>> {
    match store.get(d) {
        ObjectRead::Found(b) => Ok(b),
        ObjectRead::Missing => Err(Error::NotAvailable {
            what: format!("{} ({}) is no longer in the store", what(), d.short()),
            help: None,
        }),
        ObjectRead::Corrupt => Err(Error::NotAvailable {
            what: format!("{} ({}) is corrupt in the store", what(), d.short()),
            help: Some("`mkt build` replaces it".into()),
        }),
    }
}
