//! `mkt explain TARGET`: why a target would run, component by component.
//!
//! The InputBundleHash covers the compiled prompt and the model
//! configuration; the compiled prompt covers the template, partials,
//! verbatim files, inputs, the `foreach` file and upstream outputs. The
//! RunManifest of the run that produced the current output recorded the
//! digest of each; this module takes the same components as they are now
//! and lists every one that differs, with old and new digests.
//!
//! Diffs: the store keeps outputs and compiled prompts, not copies of
//! source files. So a changed upstream output or an edited output file is
//! diffed against its stored bytes, and for every change the prompt as the
//! run sent it is diffed against the prompt as it would be sent now, which
//! shows an input or template change as the model would see it. A source
//! file is diffed directly only when its old bytes happen to be in the store.
//!
//! Nothing is written: the new prompt is compiled in memory.

use crate::error::Result;
use crate::hash::{Digest, InputBundleHash};
use crate::manifest::{FileDigest, RunManifest, UpstreamRecord};
use crate::provenance::{RunLookup, Snapshot};
use crate::state::DepKind;
use crate::status::{NodeState, status};
use crate::store::ObjectRead;
use camino::Utf8Path;
use rustc_hash::FxHashMap as HashMap;
use std::collections::BTreeMap;

/// Lines of a unified diff shown before it is cut short.
pub const DIFF_LINES: usize = 40;

/// One component of the bundle that differs from the recorded run.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What it is, in words: "input `doc` (`docs/a.md`)", "template
    /// `t.md`", "model parameter `temperature`", "upstream `outline` output".
    pub what: String,
    /// Digests (or, for model parameters, values) then and now; `None`
    /// when absent on that side.
    pub old: Option<String>,
    pub new: Option<String>,
    /// A short unified diff, when both texts are at hand.
    pub diff: Option<String>,
}

/// What `explain` found for one node.
#[derive(Debug)]
pub struct Explanation {
    pub key: String,
    pub state: NodeState,
    /// The run that produced the current output (or the last, failed run).
    pub run: RunLookup,
    /// Components that differ from that run, in bundle order.
    pub changes: Vec<Change>,
    /// The compiled prompt then and now, when it differs and both are at hand.
    pub prompt_diff: Option<String>,
    /// The InputBundleHash then and now (now: `None` when the prompt cannot
    /// be compiled yet).
    pub bundle: (Option<InputBundleHash>, Option<InputBundleHash>),
    /// Things the reader should know (an upstream that must be built
    /// first, old contents that are not kept, ...).
    pub notes: Vec<String>,
}

/// Explains node `name` (a target name that means one node, a node key or
/// an output path) of the project at `root`.
pub fn explain(root: &Utf8Path, name: &str) -> Result<Explanation> {
    let snap = Snapshot::load(root)?;
    let i = snap.one_node(name)?;
    let node = snap.node(i);
    let key = node.key.clone();
    let st = status(root, std::slice::from_ref(&key))?;
    let state = st.state_of(&key);
    let run = snap.current_run(i);
    let mut ex = Explanation {
        key,
        state,
        run,
        changes: Vec::new(),
        prompt_diff: None,
        bundle: (None, None),
        notes: Vec::new(),
    };
    let RunLookup::Found(m) = &ex.run else {
        return Ok(ex);
    };
    let m = m.clone();
    ex.bundle.0 = Some(m.input_bundle_hash);
    compare_model(&snap, i, &m, &mut ex.changes);
    compare_files(&snap, i, &m, &mut ex.changes);
    let complete = compare_upstream(&snap, i, &m, &mut ex);
    for u in snap.node(i).upstream_nodes() {
        let key = &snap.node(u).key;
        if let Some(why) = st.state_of(key).reason() {
            ex.notes.push(format!(
                "upstream `{key}` is not fresh ({why}): its output may change when it is rebuilt"
            ));
        }
    }
    if let Some(rec) = snap.records.get(&ex.key)
        && !rec.failed
    {
        compare_output(&snap, i, rec.output_digest, &mut ex.changes);
    }

    // The prompt now, compiled in memory from the files as they are.
    if !complete {
        return Ok(ex);
    }
    let prompt = match snap.compile_now(i) {
        Ok(p) => p,
        Err(e) => {
            ex.notes
                .push(format!("the prompt cannot be compiled now: {e}"));
            return Ok(ex);
        }
    };
    let json = prompt.canonical_json();
    let digest = Digest::of(&json);
    let model = snap.model_now(i);
    ex.bundle.1 = Some(InputBundleHash::compute(
        digest,
        model.provider.as_str(),
        &model.hashed_params(),
    ));
    if digest != m.prompt_digest {
        match snap.store.get(&m.prompt_digest) {
            ObjectRead::Found(old) => {
                let old = crate::template::CompiledPrompt::from_canonical_json(&old)
                    .map(|p| p.to_text())
                    .unwrap_or_else(|| String::from_utf8_lossy(&old).into_owned());
                ex.prompt_diff = Some(unified_diff(
                    &old,
                    &prompt.to_text(),
                    &format!("prompt sent by run {}", m.run_id),
                    "prompt as it would be sent now",
                ));
            }
            _ => ex.notes.push(format!(
                "the prompt run {} sent ({}) is no longer in the store, so it cannot be diffed",
                m.run_id,
                m.prompt_digest.short()
            )),
        }
    }
    Ok(ex)
}

fn compare_model(snap: &Snapshot, i: usize, m: &RunManifest, out: &mut Vec<Change>) {
    let model = snap.model_now(i);
    let text = |v: Option<&serde_json::Value>| v.map(|v| v.to_string());
    if m.model.provider != model.provider.as_str() {
        out.push(Change {
            what: "model provider".into(),
            old: Some(m.model.provider.clone()),
            new: Some(model.provider.as_str().into()),
            diff: None,
        });
    }
    let now = model.hashed_params();
    let keys: std::collections::BTreeSet<&String> =
        m.model.params.keys().chain(now.keys()).collect();
    for k in keys {
        let (old, new) = (m.model.params.get(k), now.get(k));
        if old != new {
            out.push(Change {
                what: format!("model parameter `{k}`"),
                old: text(old),
                new: text(new),
                diff: None,
            });
        }
    }
}

/// Every source file the run read or the node reads now, by role and path.
fn compare_files(snap: &Snapshot, i: usize, m: &RunManifest, out: &mut Vec<Change>) {
    let node = snap.node(i);
    let mut then: BTreeMap<(DepKind, String), (String, Digest)> = BTreeMap::new();
    let mut add = |kind, f: &FileDigest, what: String| {
        then.insert((kind, f.path.clone()), (what, f.digest));
    };
    add(
        DepKind::Template,
        &m.template,
        format!("template `{}`", m.template.path),
    );
    for f in &m.partials {
        add(DepKind::Partial, f, format!("partial `{}`", f.path));
    }
    for f in &m.verbatim {
        add(DepKind::Verbatim, f, format!("verbatim file `{}`", f.path));
    }
    if let Some(f) = &m.item {
        add(DepKind::Item, f, format!("foreach file `{}`", f.path));
    }
    for r in &m.inputs {
        let f = FileDigest {
            path: r.path.clone(),
            digest: r.digest,
        };
        add(
            DepKind::Input,
            &f,
            format!("input `{}` (`{}`)", r.name, r.path),
        );
    }
    let mut now: BTreeMap<(DepKind, String), String> = BTreeMap::new();
    for (kind, p) in node.source_files() {
        let what = match kind {
            DepKind::Input => {
                let name = node
                    .inputs
                    .iter()
                    .find(|inp| inp.paths.iter().any(|q| q == p))
                    .map_or("", |inp| inp.name.as_str());
                format!("input `{name}` (`{p}`)")
            }
            k => format!("{} `{p}`", k.word()),
        };
        now.insert((kind, p.to_string()), what);
    }
    // a manifest records the foreach file even when the template does not
    // read it: compare it only when it is read now
    if !node.uses_item {
        then.retain(|(k, _), _| *k != DepKind::Item);
    }
    for ((kind, path), (what, old)) in &then {
        let new = if now.contains_key(&(*kind, path.clone())) {
            snap.files.digest(path).ok().flatten()
        } else {
            None
        };
        if new != Some(*old) {
            let diff = new.and_then(|_| stored_vs_file(snap, old, path));
            out.push(Change {
                what: match new {
                    None if now.contains_key(&(*kind, path.clone())) => {
                        format!("{what}, now missing")
                    }
                    None => format!("{what}, no longer used"),
                    Some(_) => what.clone(),
                },
                old: Some(old.short()),
                new: new.map(|d| d.short()),
                diff,
            });
        }
    }
    for ((kind, path), what) in &now {
        if !then.contains_key(&(*kind, path.clone())) {
            out.push(Change {
                what: format!("{what}, newly used"),
                old: None,
                new: snap.files.digest(path).ok().flatten().map(|d| d.short()),
                diff: None,
            });
        }
    }
}

/// Compares the upstream outputs the run consumed with the ones on record
/// now. Returns false when some upstream has no output yet (so the prompt
/// cannot be compiled now).
fn compare_upstream(snap: &Snapshot, i: usize, m: &RunManifest, ex: &mut Explanation) -> bool {
    let node = snap.node(i);
    let then: HashMap<&str, &UpstreamRecord> =
        m.upstream.iter().map(|u| (u.target.as_str(), u)).collect();
    let mut complete = true;
    for u in node.upstream_nodes() {
        let un = snap.node(u);
        let rec = snap.records.get(&un.key).filter(|r| !r.failed);
        let old = then.get(un.key.as_str());
        if rec.is_none() {
            complete = false;
            ex.notes.push(format!(
                "upstream `{}` has no output yet; build it to see the prompt this target would get",
                un.key
            ));
        }
        let new = rec.map(|r| r.output_digest);
        if old.map(|o| o.output_digest) != new {
            let diff = match (old, new) {
                (Some(o), Some(n)) => stored_pair(snap, &o.output_digest, &n),
                _ => None,
            };
            ex.changes.push(Change {
                what: format!(
                    "upstream `{}` output{}",
                    un.key,
                    if old.is_none() { ", newly used" } else { "" }
                ),
                old: old.map(|o| o.output_digest.short()),
                new: new.map(|d| d.short()),
                diff,
            });
        }
    }
    let keys: std::collections::HashSet<&str> = node
        .upstream_nodes()
        .map(|u| snap.node(u).key.as_str())
        .collect();
    for u in &m.upstream {
        if !keys.contains(u.target.as_str()) {
            ex.changes.push(Change {
                what: format!("upstream `{}` output, no longer used", u.target),
                old: Some(u.output_digest.short()),
                new: None,
                diff: None,
            });
        }
    }
    complete
}

fn compare_output(snap: &Snapshot, i: usize, recorded: Digest, out: &mut Vec<Change>) {
    let path = &snap.node(i).output;
    let now = snap.files.digest(path).ok().flatten();
    if now != Some(recorded) {
        out.push(Change {
            what: match now {
                Some(_) => format!("output `{path}`, edited since it was built"),
                None => format!("output `{path}`, missing"),
            },
            old: Some(recorded.short()),
            new: now.map(|d| d.short()),
            diff: now.and_then(|_| stored_vs_file(snap, &recorded, path)),
        });
    }
}

/// A diff of stored bytes against a project file, when both are text.
fn stored_vs_file(snap: &Snapshot, old: &Digest, path: &str) -> Option<String> {
    let ObjectRead::Found(old) = snap.store.get(old) else {
        return None;
    };
    let new = snap.files.read(path).ok()?;
    Some(unified_diff(
        std::str::from_utf8(&old).ok()?,
        std::str::from_utf8(&new).ok()?,
        &format!("{path} (as built)"),
        &format!("{path} (now)"),
    ))
}

fn stored_pair(snap: &Snapshot, old: &Digest, new: &Digest) -> Option<String> {
    let (ObjectRead::Found(a), ObjectRead::Found(b)) = (snap.store.get(old), snap.store.get(new))
    else {
        return None;
    };
    Some(unified_diff(
        std::str::from_utf8(&a).ok()?,
        std::str::from_utf8(&b).ok()?,
        &format!("output {}", old.short()),
        &format!("output {}", new.short()),
    ))
}

/// A unified diff with two lines of context, cut after [`DIFF_LINES`].
pub fn unified_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    let diff = similar::TextDiff::from_lines(old, new);
    let text = diff
        .unified_diff()
        .context_radius(2)
        .header(old_name, new_name)
        .to_string();
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= DIFF_LINES {
        return text;
    }
    let mut s = lines[..DIFF_LINES].join("\n");
    s.push_str(&format!(
        "\n... ({} more lines)\n",
        lines.len() - DIFF_LINES
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_show_the_changed_line_with_context() {
        let d = unified_diff("a\nb\nc\nd\n", "a\nb\nC\nd\n", "old", "new");
        assert_eq!(d, "--- old\n+++ new\n@@ -1,4 +1,4 @@\n a\n b\n-c\n+C\n d\n");
    }

    #[test]
    fn long_diffs_are_cut() {
        let old: String = (0..100).map(|i| format!("{i}\n")).collect();
        let d = unified_diff(&old, "", "old", "new");
        assert!(d.ends_with("... (63 more lines)\n"), "{d}");
        assert_eq!(d.lines().count(), DIFF_LINES + 1);
    }
}
