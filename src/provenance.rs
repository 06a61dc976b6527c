//! Where outputs came from: the project as it stands, read without
//! changing anything, and the RunManifests that produced its outputs.
//!
//! A [`Snapshot`] is what `graph`, `explain` and `show` look at: the
//! analysed graph, the last state's target records (which run produced
//! each node's current output) and the store opened read-only. Nothing
//! here takes the project lock or writes a byte, so these commands work
//! while a build runs; what they read is whatever that build has saved so
//! far (every store file is replaced atomically, so never half a file).
//!
//! Runs are found through the history (`history.rs`): a successful run's
//! manifest is its action-cache entry, a failed run's is
//! `runs/<run id>.json`. A run whose InputBundleHash was run again later
//! (`--force`) has had its action-cache entry replaced by the newer run's;
//! it is reported as gone, never confused with the newer one.

use crate::build::{Sources, compile_node, node_model};
use crate::config::Project;
use crate::error::{Error, Result};
use crate::files::ProjectFiles;
use crate::graph::{Graph, Node, analyse_project};
use crate::hash::InputBundleHash;
use crate::history::{self, HistoryEntry, RunKind};
use crate::manifest::{RunManifest, UpstreamRecord};
use crate::state::{StateFiles, TargetRecord};
use crate::store::{AcRead, ObjectStore};
use crate::template::CompiledPrompt;
use camino::{Utf8Path, Utf8PathBuf};
use rustc_hash::FxHashMap as HashMap;

/// The project, its graph and its last recorded state, read-only.
pub struct Snapshot {
    pub root: Utf8PathBuf,
    pub project: Project,
    pub graph: Graph,
    pub files: ProjectFiles,
    /// The last build's record of each node (by key).
    pub records: HashMap<String, TargetRecord>,
    pub store: ObjectStore,
}

/// What looking for a run's manifest found.
#[derive(Debug)]
pub enum RunLookup {
    Found(Box<RunManifest>),
    /// Nothing on record under that id or for that target.
    Unknown,
    /// The history names the run but its manifest is no longer in the
    /// store (replaced by a later run of the same bundle, or corrupt).
    Gone {
        run_id: String,
        why: String,
    },
}

impl Snapshot {
    /// Loads the project at `root` and its graph (analysed, or from the
    /// cache when the no-op stamp vouches for it), without writing.
    pub fn load(root: &Utf8Path) -> Result<Snapshot> {
        let store = ObjectStore::open_read_only(root)?;
        let (project, _) =
            Project::load_cached(root, &store.dir().join(crate::layout::PROJECT_CACHE))?;
        let (_, state) = StateFiles::load(store.dir());
        let mut files = ProjectFiles::new(root, state.files);
        let graph = match crate::build::graph_from_stamp(root, &project, &mut files) {
            Some(g) => g,
            None => analyse_project(&project, &files, &state.analysis)?,
        };
        Ok(Snapshot {
            root: root.to_owned(),
            project,
            graph,
            files,
            records: state.targets,
            store,
        })
    }

    /// Resolves a name from the command line (a target name, a node key
    /// such as `summary[docs/a.md]`, or an output path) to its nodes.
    pub fn nodes_named(&self, name: &str) -> Result<Vec<usize>> {
        let (_, named) = self.graph.select(&self.project, &[name.to_string()])?;
        Ok((0..named.len()).filter(|&i| named[i]).collect())
    }

    /// Resolves a name that must mean exactly one node.
    pub fn one_node(&self, name: &str) -> Result<usize> {
        let nodes = self.nodes_named(name)?;
        match nodes.as_slice() {
            [i] => Ok(*i),
            [] => Err(Error::UnknownTarget {
                name: name.to_string(),
                help: Some(format!(
                    "`{name}` is a `foreach` target that matches no files yet"
                )),
            }),
            many => {
                let keys: Vec<String> = many
                    .iter()
                    .take(3)
                    .map(|&i| format!("`{}`", self.graph.nodes[i].key))
                    .collect();
                Err(Error::UnknownTarget {
                    name: name.to_string(),
                    help: Some(format!(
                        "`{name}` is a `foreach` target with {} nodes; name one, such as {}",
                        many.len(),
                        keys.join(", ")
                    )),
                })
            }
        }
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.graph.nodes[i]
    }

    /// The manifest of the run that produced node `i`'s current output (or,
    /// when its last run failed, of that failed run).
    pub fn current_run(&self, i: usize) -> RunLookup {
        let key = &self.graph.nodes[i].key;
        let Some(rec) = self.records.get(key) else {
            return RunLookup::Unknown;
        };
        if rec.failed {
            // a failed record keeps no run id: the history has it
            let hist = history::read(self.store.dir()).unwrap_or_default();
            return match hist
                .iter()
                .rev()
                .find(|e| e.target == *key && e.status == RunKind::Failed)
            {
                Some(e) => find_run_of(&self.store, e),
                None => RunLookup::Unknown,
            };
        }
        manifest_of(&self.store, &InputBundleHash(rec.ibh), &rec.run_id)
    }
}

impl Snapshot {
    /// The upstream outputs node `i` would be compiled with now: each
    /// upstream node's output on record. `Err` names the first upstream
    /// node with no output yet.
    pub fn upstream_now(&self, i: usize) -> std::result::Result<Vec<UpstreamRecord>, String> {
        self.node(i)
            .upstream_nodes()
            .map(|u| {
                let key = &self.node(u).key;
                match self.records.get(key).filter(|r| !r.failed) {
                    Some(r) => Ok(UpstreamRecord {
                        target: key.clone(),
                        run_id: r.run_id.clone(),
                        output_digest: r.output_digest,
                    }),
                    None => Err(key.clone()),
                }
            })
            .collect()
    }

    /// Node `i`'s compiled prompt from the files as they are now and the
    /// upstream outputs on record, in memory.
    pub fn compile_now(&self, i: usize) -> std::result::Result<CompiledPrompt, String> {
        let upstream = self.upstream_now(i).map_err(|key| {
            format!("upstream `{key}` has no output yet; run `mkt build {key}` first")
        })?;
        let src = Sources {
            project: &self.project,
            graph: &self.graph,
            files: &self.files,
            store: &self.store,
        };
        compile_node(&src, self.node(i), &HashMap::default(), &upstream).map_err(|e| e.to_string())
    }

    /// The model node `i` would run with now: its target's, with a
    /// `.prompty` template's parameters as the file has them; its
    /// target's when the file cannot be read.
    pub fn model_now(&self, i: usize) -> std::sync::Arc<crate::config::ModelConfig> {
        let src = Sources {
            project: &self.project,
            graph: &self.graph,
            files: &self.files,
            store: &self.store,
        };
        let node = self.node(i);
        node_model(&src, node, &HashMap::default())
            .unwrap_or_else(|_| std::sync::Arc::clone(&self.project.targets[node.target].model))
    }
}

/// The manifest of run `run_id`, found through the store's history.
pub fn find_run(store: &ObjectStore, run_id: &str) -> RunLookup {
    if !is_run_id(run_id) {
        return RunLookup::Unknown;
    }
    let hist = history::read(store.dir()).unwrap_or_default();
    match hist
        .iter()
        .rev()
        .find(|e| e.run_id == run_id && e.status != RunKind::Failed)
        .or_else(|| hist.iter().rev().find(|e| e.run_id == run_id))
    {
        Some(e) => find_run_of(store, e),
        None => RunLookup::Unknown,
    }
}

pub use crate::manifest::is_run_id;

fn find_run_of(store: &ObjectStore, e: &HistoryEntry) -> RunLookup {
    if e.status == RunKind::Failed {
        if e.run_id.is_empty() {
            return RunLookup::Gone {
                run_id: String::new(),
                why: "it failed before its prompt was compiled, so it has no manifest".into(),
            };
        }
        return match store.run_get(&e.run_id) {
            Some(m) => RunLookup::Found(Box::new(m)),
            None => RunLookup::Gone {
                run_id: e.run_id.clone(),
                why: format!("`.mkt/runs/{}.json` is missing or unreadable", e.run_id),
            },
        };
    }
    match e.input_bundle_hash {
        Some(ibh) => manifest_of(store, &InputBundleHash(ibh), &e.run_id),
        None => RunLookup::Unknown,
    }
}

fn manifest_of(store: &ObjectStore, ibh: &InputBundleHash, run_id: &str) -> RunLookup {
    match store.ac_get(ibh) {
        AcRead::Found(m) if m.run_id == run_id => RunLookup::Found(m),
        AcRead::Found(m) => RunLookup::Gone {
            run_id: run_id.to_string(),
            why: format!(
                "run {} of the same InputBundleHash replaced its record",
                m.run_id
            ),
        },
        AcRead::Missing => RunLookup::Gone {
            run_id: run_id.to_string(),
            why: format!(
                "its action-cache entry {} is no longer in the store",
                ibh.0.short()
            ),
        },
        AcRead::Corrupt => RunLookup::Gone {
            run_id: run_id.to_string(),
            why: format!("its action-cache entry {} is corrupt", ibh.0.short()),
        },
    }
}
