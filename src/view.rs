//! A picture of the pipeline, for `mkt graph`.
//!
//! Design: one data model, [`View`] (nodes with a kind, a label, a state
//! and an optional cluster; edges with a kind and optional digests), built
//! from a read-only [`Snapshot`] and a [`StatusReport`], then rendered by
//! pure functions to Graphviz DOT, Mermaid or JSON. Two pictures share it:
//!
//! * the **pipeline** ([`pipeline`]): templates, partials, verbatim files,
//!   inputs and foreach items feeding targets, targets feeding targets, each
//!   target with its state (fresh, stale, never-built, failed, broken);
//! * the **provenance** ([`provenance`]): what actually produced each
//!   current output, read from its RunManifest (run id, InputBundleHash,
//!   model, finish time, and the digest of every file and upstream output
//!   it consumed), with every edge whose source no longer matches what the
//!   manifest recorded marked `changed`.
//!
//! Readability: a `foreach` target becomes a cluster. Above
//! [`ViewOptions::collapse_above`] nodes it is collapsed into one aggregate
//! node (`summary × 500: 498 fresh, 2 stale`) plus up to
//! [`ViewOptions::list_limit`] of its non-fresh (or, in the provenance
//! picture, changed) nodes shown on their own; its item files likewise
//! become one node, and so does a glob input with more matches than the
//! threshold. [`ViewOptions::expand`] shows everything. The JSON output
//! is meant for programs, so the CLI always builds it expanded.
//!
//! Nothing here prints, writes or calls a model.
//!
//! # JSON schema
//!
//! `mkt graph --json` prints one object, `mkt graph --provenance --json`
//! one of the same shape with `schema` `"mkt.provenance/1"` and the run
//! fields filled in. Optional fields are left out when they do not apply.
//!
//! ```text
//! {
//!   "schema": "mkt.graph/1" | "mkt.provenance/1",
//!   "nodes": [{
//!     "id":      string, unique: "target:KEY", "file:PATH", "glob:TARGET:INPUT",
//!                "group:TARGET" (aggregate of a foreach), "items:TARGET"
//!     "kind":    "target" | "group" | "template" | "partial" | "verbatim"
//!                | "input" | "item",
//!     "label":   string (node key, path or pattern),
//!     "target":  string, target name (target and group nodes),
//!     "output":  string, output path (target nodes),
//!     "state":   "fresh" | "stale" | "never-built" | "failed" | "broken" (targets),
//!     "reason":  string, why it is not fresh,
//!     "cluster": string, the foreach target whose cluster holds the node,
//!     "members": number, how many nodes or files an aggregate stands for,
//!     "counts":  {state: number}, an aggregate's members by state,
//!     "run": {                                   (provenance, target nodes)
//!       "run_id": string, "input_bundle_hash": string (12 hex),
//!       "model": string, "provider": string, "status": "ok" | "failed",
//!       "finished_at": string (RFC 3339),
//!       "output": string, "output_digest": string (12 hex),
//!       "output_now": string | null (12 hex; null: the file is missing),
//!       "output_changed": bool
//!     },
//!     "no_run": string (provenance: why no manifest is shown)
//!   }],
//!   "edges": [{
//!     "from": node id, "to": node id,
//!     "kind": "template" | "partial" | "verbatim" | "input" | "item" | "upstream",
//!     "name": string, the input's name,
//!     "count": number, how many edges an aggregate edge stands for,
//!     "recorded": string (12 hex), the digest the run consumed (provenance),
//!     "current": string | null, the digest now (null: file gone),
//!     "run_id": string, the upstream run whose output was consumed,
//!     "changed": bool, the source no longer matches the record (provenance)
//!   }],
//!   "clusters": [{"id": string, "target": string, "foreach": string, "members": number}]
//! }
//! ```

use crate::error::Result;
use crate::graph::Node;
use crate::hash::Digest;
use crate::manifest::{RunManifest, RunStatus};
use crate::provenance::{RunLookup, Snapshot};
use crate::status::{NodeState, StatusReport};
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub const GRAPH_SCHEMA: &str = "mkt.graph/1";
pub const PROVENANCE_SCHEMA: &str = "mkt.provenance/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Target,
    /// Several nodes of one `foreach` target drawn as one.
    Group,
    Template,
    Partial,
    Verbatim,
    Input,
    Item,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeKind {
    Template,
    Partial,
    Verbatim,
    Input,
    Item,
    Upstream,
}

/// The run that produced a node's current output (provenance picture).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    pub input_bundle_hash: String,
    pub model: String,
    pub provider: String,
    pub status: &'static str,
    pub finished_at: String,
    pub output: String,
    pub output_digest: String,
    pub output_now: Option<String>,
    pub output_changed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewNode {
    pub id: String,
    pub kind: NodeKind,
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<BTreeMap<&'static str, usize>>,
    /// (boxed: most nodes have none, and a node is drawn for each of a
    /// corpus's million documents)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<Box<RunInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_run: Option<String>,
}

impl ViewNode {
    fn new(id: String, kind: NodeKind, label: &str) -> ViewNode {
        ViewNode {
            id,
            kind,
            label: label.to_string(),
            target: None,
            output: None,
            state: None,
            reason: None,
            cluster: None,
            members: None,
            counts: None,
            run: None,
            no_run: None,
        }
    }

    /// Whether the node deserves to be shown on its own when its cluster
    /// is collapsed: not fresh, or (provenance) not matching its record.
    fn notable(&self, edges_changed: bool) -> bool {
        self.state.is_some_and(|s| s != "fresh")
            || self.no_run.is_some()
            || self.run.as_ref().is_some_and(|r| r.output_changed)
            || edges_changed
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewEdge {
    pub from: String,
    pub to: String,
    pub kind: EdgeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<String>,
    /// `Some(None)`: the source is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub changed: bool,
}

impl ViewEdge {
    fn new(from: &str, to: &str, kind: EdgeKind) -> ViewEdge {
        ViewEdge {
            from: from.to_string(),
            to: to.to_string(),
            kind,
            name: None,
            count: None,
            recorded: None,
            current: None,
            run_id: None,
            changed: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewCluster {
    pub id: String,
    pub target: String,
    pub foreach: String,
    pub members: usize,
}

/// A picture of (part of) the pipeline, ready to render.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct View {
    pub schema: &'static str,
    pub nodes: Vec<ViewNode>,
    pub edges: Vec<ViewEdge>,
    pub clusters: Vec<ViewCluster>,
}

#[derive(Debug, Clone)]
pub struct ViewOptions {
    /// Show every node, never an aggregate.
    pub expand: bool,
    /// A foreach target (or glob input) with more nodes (files) than this
    /// is drawn as one aggregate node.
    pub collapse_above: usize,
    /// How many notable nodes of a collapsed target are still shown alone.
    pub list_limit: usize,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            expand: false,
            collapse_above: 12,
            list_limit: 5,
        }
    }
}

/// Which nodes a picture shows: all, or the cone of the named ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cone {
    /// The named nodes and everything they need.
    Upstream,
    /// The named nodes and everything that needs them.
    Downstream,
}

/// The graph nodes to show: every node when `names` is empty, else the
/// named ones (resolved by [`Snapshot::nodes_named`]) and their cone.
pub fn select(snap: &Snapshot, names: &[String], cone: Cone) -> Result<Vec<bool>> {
    let n = snap.graph.nodes.len();
    if names.is_empty() {
        return Ok(vec![true; n]);
    }
    let mut stack = Vec::new();
    for name in names {
        stack.extend(snap.nodes_named(name)?);
    }
    let next: Vec<Vec<usize>> = match cone {
        Cone::Upstream => snap
            .graph
            .nodes
            .iter()
            .map(|node| node.upstream_nodes().collect())
            .collect(),
        Cone::Downstream => {
            let mut down = vec![Vec::new(); n];
            for (i, node) in snap.graph.nodes.iter().enumerate() {
                for u in node.upstream_nodes() {
                    down[u].push(i);
                }
            }
            down
        }
    };
    let mut selected = vec![false; n];
    while let Some(i) = stack.pop() {
        if !selected[i] {
            selected[i] = true;
            stack.extend(next[i].iter().copied());
        }
    }
    Ok(selected)
}

fn target_id(key: &str) -> String {
    format!("target:{key}")
}

fn file_id(path: &str) -> String {
    format!("file:{path}")
}

/// Collects nodes (first definition of an id wins) and edges in order.
#[derive(Default)]
struct Builder {
    nodes: Vec<ViewNode>,
    index: HashMap<String, usize>,
    edges: Vec<ViewEdge>,
}

impl Builder {
    fn node(&mut self, n: ViewNode) -> &mut ViewNode {
        let i = match self.index.get(&n.id) {
            Some(&i) => i,
            None => {
                self.index.insert(n.id.clone(), self.nodes.len());
                self.nodes.push(n);
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    fn file(&mut self, kind: NodeKind, path: &str, cluster: Option<&str>) -> String {
        let id = file_id(path);
        let n = self.node(ViewNode::new(id.clone(), kind, path));
        if n.cluster.is_none() && kind == NodeKind::Item {
            n.cluster = cluster.map(str::to_string);
        }
        id
    }
}

/// The target node for graph node `i`, with its state.
fn target_node(snap: &Snapshot, i: usize, state: &NodeState) -> ViewNode {
    let node = snap.node(i);
    let decl = &snap.project.targets[node.target];
    let mut v = ViewNode::new(target_id(&node.key), NodeKind::Target, &node.key);
    v.target = Some(decl.name.clone());
    v.output = Some(node.output.clone());
    v.state = Some(state.word());
    v.reason = state.reason();
    v.cluster = decl.foreach.as_ref().map(|_| decl.name.clone());
    v
}

fn states(report: &StatusReport) -> HashMap<&str, &NodeState> {
    report.nodes.iter().map(|(k, s)| (k.as_str(), s)).collect()
}

fn clusters(snap: &Snapshot, nodes: &[ViewNode]) -> Vec<ViewCluster> {
    let mut out: Vec<ViewCluster> = Vec::new();
    for decl in &snap.project.targets {
        let Some((glob, _)) = &decl.foreach else {
            continue;
        };
        let members = nodes
            .iter()
            .filter(|n| {
                matches!(n.kind, NodeKind::Target | NodeKind::Group)
                    && n.cluster.as_deref() == Some(decl.name.as_str())
            })
            .map(|n| n.members.unwrap_or(1))
            .sum();
        if members > 0 {
            out.push(ViewCluster {
                id: format!("cluster:{}", decl.name),
                target: decl.name.clone(),
                foreach: glob.clone(),
                members,
            });
        }
    }
    out
}

/// The declared sources of graph node `node` as edges into `to`, with
/// large glob inputs drawn as one node unless `expand`.
fn declared_edges(
    b: &mut Builder,
    node: &Node,
    to: &str,
    cluster: Option<&str>,
    opts: &ViewOptions,
) {
    let t = b.file(NodeKind::Template, &node.template, None);
    b.edges.push(ViewEdge::new(&t, to, EdgeKind::Template));
    for p in &node.partials {
        let f = b.file(NodeKind::Partial, p, None);
        b.edges.push(ViewEdge::new(&f, to, EdgeKind::Partial));
    }
    for p in &node.verbatim {
        let f = b.file(NodeKind::Verbatim, p, None);
        b.edges.push(ViewEdge::new(&f, to, EdgeKind::Verbatim));
    }
    for input in &node.inputs {
        let many = input.is_glob && !opts.expand && input.paths.len() > opts.collapse_above;
        if many {
            let id = format!("glob:{}:{}", cluster.unwrap_or(&node.key), input.name);
            let label = format!("{} ({} files)", input.pattern, input.paths.len());
            let n = b.node(ViewNode::new(id.clone(), NodeKind::Input, &label));
            n.members = Some(input.paths.len());
            let mut e = ViewEdge::new(&id, to, EdgeKind::Input);
            e.name = Some(input.name.clone());
            b.edges.push(e);
            continue;
        }
        for p in &input.paths {
            let f = b.file(NodeKind::Input, p, None);
            let mut e = ViewEdge::new(&f, to, EdgeKind::Input);
            e.name = Some(input.name.clone());
            b.edges.push(e);
        }
    }
    if let Some(item) = &node.item {
        let f = b.file(NodeKind::Item, item, cluster);
        b.edges.push(ViewEdge::new(&f, to, EdgeKind::Item));
    }
}

/// The pipeline picture of the selected nodes (see the module docs).
pub fn pipeline(
    snap: &Snapshot,
    report: &StatusReport,
    selected: &[bool],
    opts: &ViewOptions,
) -> View {
    let states = states(report);
    let mut b = Builder::default();
    for &i in &snap.graph.order {
        if !selected[i] {
            continue;
        }
        let node = snap.node(i);
        let state = states
            .get(node.key.as_str())
            .copied()
            .unwrap_or(&NodeState::Fresh);
        let v = target_node(snap, i, state);
        let cluster = v.cluster.clone();
        let to = v.id.clone();
        b.node(v);
        declared_edges(&mut b, node, &to, cluster.as_deref(), opts);
        for u in node.upstream_nodes() {
            if selected[u] {
                let from = target_id(&snap.node(u).key);
                b.edges.push(ViewEdge::new(&from, &to, EdgeKind::Upstream));
            }
        }
    }
    finish(snap, b, GRAPH_SCHEMA, opts)
}

/// What a file recorded with `recorded` digest is now.
fn current_digest(snap: &Snapshot, path: &str) -> Option<Digest> {
    snap.files.digest(path).ok().flatten()
}

fn short(d: &Digest) -> String {
    d.short()
}

/// An edge from a recorded file: its recorded and current digest.
fn recorded_edge(
    snap: &Snapshot,
    b: &mut Builder,
    kind: NodeKind,
    path: &str,
    recorded: &Digest,
    to: &str,
    cluster: Option<&str>,
) -> ViewEdge {
    let f = b.file(kind, path, cluster);
    let now = current_digest(snap, path);
    let edge = match kind {
        NodeKind::Partial => EdgeKind::Partial,
        NodeKind::Verbatim => EdgeKind::Verbatim,
        NodeKind::Input => EdgeKind::Input,
        NodeKind::Item => EdgeKind::Item,
        _ => EdgeKind::Template,
    };
    let mut e = ViewEdge::new(&f, to, edge);
    e.recorded = Some(short(recorded));
    e.current = Some(now.as_ref().map(short));
    e.changed = now.as_ref() != Some(recorded);
    e
}

fn run_info(snap: &Snapshot, m: &RunManifest) -> RunInfo {
    let (output, digest) = match m.outputs.first() {
        Some(o) => (o.path.clone(), Some(o.digest)),
        None => (String::new(), None),
    };
    let now = if output.is_empty() {
        None
    } else {
        current_digest(snap, &output)
    };
    RunInfo {
        run_id: m.run_id.clone(),
        input_bundle_hash: m.input_bundle_hash.0.short(),
        model: m.model.name.clone(),
        provider: m.model.provider.clone(),
        status: match m.status {
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
        },
        finished_at: m.timing.finished_at.clone(),
        output,
        output_digest: digest.as_ref().map(short).unwrap_or_default(),
        output_changed: digest.is_some() && now != digest,
        output_now: now.as_ref().map(short),
    }
}

/// The provenance picture of the selected nodes (see the module docs):
/// each target's edges are what its current run's manifest recorded.
pub fn provenance(
    snap: &Snapshot,
    report: &StatusReport,
    selected: &[bool],
    opts: &ViewOptions,
) -> View {
    let states = states(report);
    let key_index: HashMap<&str, usize> = snap
        .graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.key.as_str(), i))
        .collect();
    let mut b = Builder::default();
    for &i in &snap.graph.order {
        if !selected[i] {
            continue;
        }
        let node = snap.node(i);
        let state = states
            .get(node.key.as_str())
            .copied()
            .unwrap_or(&NodeState::Fresh);
        let mut v = target_node(snap, i, state);
        let cluster = v.cluster.clone();
        let cl = cluster.as_deref();
        let to = v.id.clone();
        let manifest = match snap.current_run(i) {
            RunLookup::Found(m) => Some(m),
            RunLookup::Unknown => {
                v.no_run = Some("no run on record".into());
                None
            }
            RunLookup::Gone { run_id, why } if run_id.is_empty() => {
                v.no_run = Some(why);
                None
            }
            RunLookup::Gone { run_id, why } => {
                v.no_run = Some(format!("run {run_id}: {why}"));
                None
            }
        };
        let Some(m) = manifest else {
            // nothing recorded: draw what the definition declares
            b.node(v);
            declared_edges(&mut b, node, &to, cl, opts);
            for u in node.upstream_nodes() {
                if selected[u] {
                    let from = target_id(&snap.node(u).key);
                    b.edges.push(ViewEdge::new(&from, &to, EdgeKind::Upstream));
                }
            }
            continue;
        };
        v.run = Some(Box::new(run_info(snap, &m)));
        b.node(v);
        let mut edges = vec![recorded_edge(
            snap,
            &mut b,
            NodeKind::Template,
            &m.template.path,
            &m.template.digest,
            &to,
            None,
        )];
        for p in &m.partials {
            edges.push(recorded_edge(
                snap,
                &mut b,
                NodeKind::Partial,
                &p.path,
                &p.digest,
                &to,
                None,
            ));
        }
        for p in &m.verbatim {
            edges.push(recorded_edge(
                snap,
                &mut b,
                NodeKind::Verbatim,
                &p.path,
                &p.digest,
                &to,
                None,
            ));
        }
        // inputs, with a large glob's files drawn as one node
        let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &m.inputs {
            *by_name.entry(r.name.as_str()).or_default() += 1;
        }
        let mut globbed: BTreeMap<&str, ViewEdge> = BTreeMap::new();
        for r in &m.inputs {
            let count = by_name[r.name.as_str()];
            if !opts.expand && count > opts.collapse_above {
                let id = format!("glob:{}:{}", cl.unwrap_or(&node.key), r.name);
                let changed = current_digest(snap, &r.path) != Some(r.digest);
                let e = globbed.entry(r.name.as_str()).or_insert_with(|| {
                    let label = format!("{} ({count} files)", r.name);
                    let n = b.node(ViewNode::new(id.clone(), NodeKind::Input, &label));
                    n.members = Some(count);
                    let mut e = ViewEdge::new(&id, &to, EdgeKind::Input);
                    e.name = Some(r.name.clone());
                    e.count = Some(count);
                    e
                });
                e.changed |= changed;
                continue;
            }
            let mut e = recorded_edge(snap, &mut b, NodeKind::Input, &r.path, &r.digest, &to, None);
            e.name = Some(r.name.clone());
            edges.push(e);
        }
        edges.extend(globbed.into_values());
        if let Some(item) = &m.item {
            edges.push(recorded_edge(
                snap,
                &mut b,
                NodeKind::Item,
                &item.path,
                &item.digest,
                &to,
                cl,
            ));
        }
        for up in &m.upstream {
            let Some(&u) = key_index.get(up.target.as_str()) else {
                // an upstream that no longer exists in the project
                let id = target_id(&up.target);
                let mut n = ViewNode::new(id.clone(), NodeKind::Target, &up.target);
                n.no_run = Some("no longer in `prompts.toml`".into());
                b.node(n);
                let mut e = ViewEdge::new(&id, &to, EdgeKind::Upstream);
                e.recorded = Some(short(&up.output_digest));
                e.current = Some(None);
                e.run_id = Some(up.run_id.clone());
                e.changed = true;
                edges.push(e);
                continue;
            };
            if !selected[u] {
                continue;
            }
            let now = snap
                .records
                .get(&up.target)
                .filter(|r| !r.failed)
                .map(|r| r.output_digest);
            let mut e = ViewEdge::new(&target_id(&up.target), &to, EdgeKind::Upstream);
            e.recorded = Some(short(&up.output_digest));
            e.current = Some(now.as_ref().map(short));
            e.run_id = Some(up.run_id.clone());
            e.changed = now != Some(up.output_digest);
            edges.push(e);
        }
        b.edges.extend(edges);
    }
    finish(snap, b, PROVENANCE_SCHEMA, opts)
}

fn finish(snap: &Snapshot, b: Builder, schema: &'static str, opts: &ViewOptions) -> View {
    let mut view = View {
        schema,
        nodes: b.nodes,
        edges: dedup_edges(b.edges),
        clusters: Vec::new(),
    };
    if !opts.expand {
        collapse(&mut view, opts);
    }
    view.clusters = clusters(snap, &view.nodes);
    view
}

/// Merges edges with the same ends and kind (counting them); a merged
/// edge keeps digests only when all agree, and is changed when any is.
fn dedup_edges(edges: Vec<ViewEdge>) -> Vec<ViewEdge> {
    let mut out: Vec<ViewEdge> = Vec::with_capacity(edges.len());
    let mut at: HashMap<(String, String, EdgeKind, Option<String>), usize> = HashMap::default();
    for e in edges {
        let key = (e.from.clone(), e.to.clone(), e.kind, e.name.clone());
        match at.get(&key) {
            Some(&i) => {
                let o = &mut out[i];
                o.count = Some(o.count.unwrap_or(1) + e.count.unwrap_or(1));
                o.changed |= e.changed;
                if o.recorded != e.recorded {
                    o.recorded = None;
                }
                if o.current != e.current {
                    o.current = None;
                }
                if o.run_id != e.run_id {
                    o.run_id = None;
                }
            }
            None => {
                at.insert(key, out.len());
                out.push(e);
            }
        }
    }
    out
}

/// Collapses every cluster with more target nodes than the threshold into
/// an aggregate node (module docs).
fn collapse(view: &mut View, opts: &ViewOptions) {
    let mut by_cluster: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, n) in view.nodes.iter().enumerate() {
        if n.kind == NodeKind::Target
            && let Some(c) = &n.cluster
        {
            by_cluster.entry(c.clone()).or_default().push(i);
        }
    }
    let changed_into: std::collections::HashSet<&str> = view
        .edges
        .iter()
        .filter(|e| e.changed)
        .map(|e| e.to.as_str())
        .collect();
    // node id -> the id it is drawn as
    let mut merged: HashMap<String, String> = HashMap::default();
    let mut groups: Vec<ViewNode> = Vec::new();
    for (cluster, members) in &by_cluster {
        if members.len() <= opts.collapse_above {
            continue;
        }
        let group_id = format!("group:{cluster}");
        let items_id = format!("items:{cluster}");
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut shown = 0;
        let mut hidden_notable = 0;
        let mut kept_items = std::collections::HashSet::new();
        let mut folded = 0;
        let mut worst: Option<&'static str> = None;
        for &i in members {
            let n = &view.nodes[i];
            *counts.entry(n.state.unwrap_or("fresh")).or_default() += 1;
            if n.notable(changed_into.contains(n.id.as_str())) {
                if shown < opts.list_limit {
                    shown += 1;
                    kept_items.extend(
                        view.edges
                            .iter()
                            .filter(|e| e.to == n.id && e.kind == EdgeKind::Item)
                            .map(|e| e.from.clone()),
                    );
                    continue;
                }
                hidden_notable += 1;
            }
            folded += 1;
            if let Some(s) = n.state
                && worst.is_none_or(|w| severity(s) > severity(w))
            {
                worst = Some(s);
            }
            merged.insert(n.id.clone(), group_id.clone());
        }
        let mut item_count = 0;
        for n in &view.nodes {
            if n.kind == NodeKind::Item
                && n.cluster.as_deref() == Some(cluster)
                && !kept_items.contains(&n.id)
            {
                item_count += 1;
                merged.insert(n.id.clone(), items_id.clone());
            }
        }
        let tally: Vec<String> = counts.iter().map(|(s, c)| format!("{c} {s}")).collect();
        let mut label = format!("{cluster} × {}: {}", members.len(), tally.join(", "));
        if hidden_notable > 0 {
            let _ = write!(label, " ({hidden_notable} more not shown alone)");
        }
        let mut g = ViewNode::new(group_id, NodeKind::Group, &label);
        g.target = Some(cluster.clone());
        g.cluster = Some(cluster.clone());
        g.members = Some(folded);
        g.counts = Some(counts);
        // the aggregate looks as bad as its worst folded member
        g.state = worst;
        if item_count > 0 {
            let mut it = ViewNode::new(
                items_id,
                NodeKind::Item,
                &format!("{item_count} item files"),
            );
            it.cluster = Some(cluster.clone());
            it.members = Some(item_count);
            groups.push(it);
        }
        groups.push(g);
    }
    if merged.is_empty() {
        return;
    }
    // put each aggregate where its first member was, so the order stays
    // upstream first
    let mut nodes = Vec::with_capacity(view.nodes.len());
    let mut placed = std::collections::HashSet::new();
    for n in view.nodes.drain(..) {
        match merged.get(&n.id) {
            Some(to) => {
                if placed.insert(to.clone())
                    && let Some(g) = groups.iter().position(|g| g.id == *to)
                {
                    nodes.push(groups.remove(g));
                }
            }
            None => nodes.push(n),
        }
    }
    view.nodes = nodes;
    let edges = std::mem::take(&mut view.edges)
        .into_iter()
        .map(|mut e| {
            if let Some(to) = merged.get(&e.from) {
                e.from = to.clone();
            }
            if let Some(to) = merged.get(&e.to) {
                e.to = to.clone();
            }
            e
        })
        .filter(|e| e.from != e.to)
        .collect();
    view.edges = dedup_edges(edges);
}

fn severity(state: &str) -> u8 {
    match state {
        "fresh" => 0,
        "stale" => 1,
        "never-built" => 2,
        "failed" => 3,
        _ => 4,
    }
}

impl View {
    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut v = Vec::new();
        self.write_json(&mut v)
            .expect("writing to a Vec cannot fail");
        String::from_utf8(v).expect("serde_json writes UTF-8")
    }

    /// [`View::to_json`] written to `out` as it is made, never held whole
    /// (at a million targets the text is 640 MB).
    pub fn write_json(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        out.write_all(b"\n")
    }

    fn is_provenance(&self) -> bool {
        self.schema == PROVENANCE_SCHEMA
    }
}

// ---- rendering ----------------------------------------------------------

/// Control characters (a newline in a file name, say) shown as `\u{a}`,
/// so a label is one line per line we mean.
fn visible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// A DOT double-quoted string whose text shows exactly `s`, lines joined
/// by `\n`. In labels a backslash starts an escape (`\n`, `\N`, `\G`, ...),
/// so it is doubled; a quote is the one character the string syntax needs
/// escaped.
pub fn dot_quote(lines: &[&str]) -> String {
    let mut out = String::from("\"");
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.push_str("\\n");
        }
        for c in visible(line).chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c => out.push(c),
            }
        }
    }
    out.push('"');
    out
}

/// Text for a Mermaid quoted label: `#` starts an entity (`#quot;`) and
/// `<`, `>`, `&` would be read as HTML, so all are written as entities;
/// lines are joined by `<br>`.
pub fn mermaid_text(lines: &[&str]) -> String {
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.push_str("<br>");
        }
        for c in visible(line).chars() {
            match c {
                '#' => out.push_str("#35;"),
                '"' => out.push_str("#quot;"),
                '<' => out.push_str("#lt;"),
                '>' => out.push_str("#gt;"),
                '&' => out.push_str("#amp;"),
                '`' => out.push_str("#96;"),
                c => out.push(c),
            }
        }
    }
    out
}

/// The lines of a node's label.
fn node_lines(n: &ViewNode) -> Vec<String> {
    let mut lines = vec![n.label.clone()];
    match n.kind {
        NodeKind::Target => {
            if let Some(s) = n.state {
                lines.push(s.to_string());
            }
        }
        NodeKind::Template | NodeKind::Partial | NodeKind::Verbatim => {
            lines.insert(0, format!("{:?}", n.kind).to_lowercase());
        }
        _ => {}
    }
    if let Some(r) = &n.run {
        lines.push(format!("run {}", r.run_id));
        lines.push(format!("ibh {}  model {}", r.input_bundle_hash, r.model));
        lines.push(format!("finished {}", r.finished_at));
        if r.status == "failed" {
            lines.push("run failed".into());
        }
        if r.output_changed {
            lines.push(match &r.output_now {
                Some(_) => format!("output `{}` edited since", r.output),
                None => format!("output `{}` missing since", r.output),
            });
        }
    }
    if let Some(why) = &n.no_run {
        lines.push(why.clone());
    }
    lines
}

fn node_tooltip(n: &ViewNode) -> String {
    let mut t = match n.kind {
        NodeKind::Target | NodeKind::Group => n.state.unwrap_or("").to_string(),
        k => format!("{k:?}").to_lowercase(),
    };
    if let Some(r) = &n.reason {
        let _ = write!(t, ": {r}");
    }
    if let Some(o) = &n.output {
        let _ = write!(t, " (output `{o}`)");
    }
    t
}

fn edge_label(e: &ViewEdge) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(name) = &e.name {
        parts.push(name.clone());
    }
    if let Some(run) = &e.run_id {
        parts.push(format!("run {run}"));
    }
    if let Some(r) = &e.recorded {
        parts.push(format!("used {r}"));
    }
    if e.changed {
        parts.push(match &e.current {
            Some(Some(now)) => format!("changed since (now {now})"),
            Some(None) => "gone since".into(),
            None => "changed since".into(),
        });
    }
    if let Some(c) = e.count {
        parts.push(format!("× {c}"));
    }
    (!parts.is_empty()).then(|| parts.join("\n"))
}

fn dot_shape(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Target => "box",
        NodeKind::Group => "box3d",
        NodeKind::Template => "note",
        NodeKind::Partial => "component",
        NodeKind::Verbatim => "tab",
        NodeKind::Input => "folder",
        NodeKind::Item => "cylinder",
    }
}

/// DOT style attributes for a target's state.
fn dot_state_style(state: Option<&str>) -> &'static str {
    match state {
        Some("fresh") => r##"style="rounded,filled", fillcolor="#d8f0d8", color="#3a7d3a""##,
        Some("stale") => r##"style="rounded,filled,dashed", fillcolor="#fff0b3", color="#b08900""##,
        Some("never-built") => r##"style="rounded,dashed", color="#777777""##,
        Some("failed") => r##"style="rounded,filled,bold", fillcolor="#f6c6c6", color="#c00000""##,
        Some(_) => r##"style="rounded,filled,dotted", fillcolor="#f6c6c6", color="#c00000""##,
        None => r##"style="rounded""##,
    }
}

impl View {
    /// The nodes drawn inside cluster `c`, with their index.
    fn members<'a>(&'a self, c: &'a ViewCluster) -> impl Iterator<Item = (usize, &'a ViewNode)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(_, n)| n.cluster.as_deref() == Some(c.target.as_str()))
    }

    /// The nodes drawn outside every cluster, with their index.
    fn unclustered(&self) -> impl Iterator<Item = (usize, &ViewNode)> {
        self.nodes.iter().enumerate().filter(|(_, n)| {
            !n.cluster
                .as_deref()
                .is_some_and(|c| self.clusters.iter().any(|k| k.target == c))
        })
    }

    /// Graphviz DOT (renders with `dot -Tsvg`).
    pub fn to_dot(&self) -> String {
        let ids: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        let mut out = String::new();
        let title = if self.is_provenance() {
            "mkt provenance"
        } else {
            "mkt pipeline"
        };
        let _ = writeln!(out, "digraph {} {{", dot_quote(&[title]));
        out.push_str("  graph [rankdir=LR, fontname=\"Helvetica\", fontsize=11];\n");
        out.push_str("  node [fontname=\"Helvetica\", fontsize=10];\n");
        out.push_str("  edge [fontname=\"Helvetica\", fontsize=9, color=\"#555555\"];\n");
        let node_line = |n: &ViewNode, i: usize, indent: &str| -> String {
            let lines = node_lines(n);
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let style = match n.kind {
                NodeKind::Target | NodeKind::Group => dot_state_style(n.state),
                NodeKind::Item | NodeKind::Input => r##"style="filled", fillcolor="#eef3fb""##,
                _ => r##"style="filled", fillcolor="#f4f4f4""##,
            };
            format!(
                "{indent}n{i} [shape={}, label={}, tooltip={}, {style}];\n",
                dot_shape(n.kind),
                dot_quote(&lines),
                dot_quote(&[&node_tooltip(n)]),
            )
        };
        for (ci, c) in self.clusters.iter().enumerate() {
            let plural = if c.members == 1 { "" } else { "s" };
            let label = format!(
                "{} (foreach {}, {} node{plural})",
                c.target, c.foreach, c.members
            );
            let _ = writeln!(out, "  subgraph cluster_{ci} {{");
            let _ = writeln!(
                out,
                "    label={}; style=\"rounded,dashed\"; color=\"#8888aa\";",
                dot_quote(&[&label])
            );
            for (i, n) in self.members(c) {
                out.push_str(&node_line(n, i, "    "));
            }
            out.push_str("  }\n");
        }
        for (i, n) in self.unclustered() {
            out.push_str(&node_line(n, i, "  "));
        }
        for e in &self.edges {
            let (Some(a), Some(b)) = (ids.get(e.from.as_str()), ids.get(e.to.as_str())) else {
                continue;
            };
            let mut attrs = Vec::new();
            if let Some(l) = edge_label(e) {
                let lines: Vec<&str> = l.lines().collect();
                attrs.push(format!("label={}", dot_quote(&lines)));
            }
            if e.changed {
                attrs.push(r##"color="#d00000", fontcolor="#d00000", style=dashed"##.into());
            } else if e.kind == EdgeKind::Upstream {
                attrs.push("penwidth=1.6".into());
            }
            if attrs.is_empty() {
                let _ = writeln!(out, "  n{a} -> n{b};");
            } else {
                let _ = writeln!(out, "  n{a} -> n{b} [{}];", attrs.join(", "));
            }
        }
        out.push_str("}\n");
        out
    }

    /// A Mermaid flowchart, for pasting into Markdown.
    pub fn to_mermaid(&self) -> String {
        let ids: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        let mut out = String::from("flowchart LR\n");
        let node_line = |n: &ViewNode, i: usize, indent: &str| -> String {
            let lines = node_lines(n);
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let text = mermaid_text(&lines);
            let shape = match n.kind {
                NodeKind::Target => format!("(\"{text}\")"),
                NodeKind::Group => format!("{{{{\"{text}\"}}}}"),
                NodeKind::Template => format!("[/\"{text}\"/]"),
                NodeKind::Partial => format!("[[\"{text}\"]]"),
                NodeKind::Verbatim => format!(">\"{text}\"]"),
                NodeKind::Input | NodeKind::Item => format!("[(\"{text}\")]"),
            };
            format!("{indent}n{i}{shape}\n")
        };
        for (ci, c) in self.clusters.iter().enumerate() {
            let label = format!("{} (foreach {})", c.target, c.foreach);
            let _ = writeln!(out, "  subgraph c{ci} [\"{}\"]", mermaid_text(&[&label]));
            for (i, n) in self.members(c) {
                out.push_str(&node_line(n, i, "    "));
            }
            out.push_str("  end\n");
        }
        for (i, n) in self.unclustered() {
            out.push_str(&node_line(n, i, "  "));
        }
        let mut changed = Vec::new();
        let mut drawn = 0;
        for e in &self.edges {
            let (Some(a), Some(b)) = (ids.get(e.from.as_str()), ids.get(e.to.as_str())) else {
                continue;
            };
            let arrow = if e.changed { "-.->" } else { "-->" };
            match edge_label(e) {
                Some(l) => {
                    let lines: Vec<&str> = l.lines().collect();
                    let _ = writeln!(out, "  n{a} {arrow}|\"{}\"| n{b}", mermaid_text(&lines));
                }
                None => {
                    let _ = writeln!(out, "  n{a} {arrow} n{b}");
                }
            }
            if e.changed {
                changed.push(drawn.to_string());
            }
            drawn += 1;
        }
        out.push_str("  classDef fresh fill:#d8f0d8,stroke:#3a7d3a\n");
        out.push_str("  classDef stale fill:#fff0b3,stroke:#b08900,stroke-dasharray:4 3\n");
        out.push_str("  classDef neverbuilt fill:#ffffff,stroke:#777777,stroke-dasharray:4 3\n");
        out.push_str("  classDef failed fill:#f6c6c6,stroke:#c00000,stroke-width:2px\n");
        out.push_str("  classDef broken fill:#f6c6c6,stroke:#c00000,stroke-dasharray:2 2\n");
        let mut by_class: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(s) = n.state {
                let class = if s == "never-built" { "neverbuilt" } else { s };
                by_class.entry(class).or_default().push(format!("n{i}"));
            }
        }
        for (class, ids) in by_class {
            let _ = writeln!(out, "  class {} {class}", ids.join(","));
        }
        if !changed.is_empty() {
            let _ = writeln!(out, "  linkStyle {} stroke:#d00000", changed.join(","));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_quote_escapes_quotes_and_backslashes_and_controls() {
        assert_eq!(dot_quote(&["plain"]), r#""plain""#);
        assert_eq!(dot_quote(&[r#"a "b" \c"#]), r#""a \"b\" \\c""#);
        assert_eq!(dot_quote(&["a", "b"]), r#""a\nb""#);
        // a newline inside a name is shown, not obeyed
        assert_eq!(dot_quote(&["x\ny"]), r#""x\\u{a}y""#);
        assert_eq!(dot_quote(&["[ü] {é}"]), "\"[ü] {é}\"");
        // a trailing backslash must not escape the closing quote
        assert_eq!(dot_quote(&["dir\\"]), r#""dir\\""#);
    }

    #[test]
    fn mermaid_text_uses_entities() {
        assert_eq!(mermaid_text(&["a\"b"]), "a#quot;b");
        assert_eq!(
            mermaid_text(&["#1 <x> & `y`"]),
            "#35;1 #lt;x#gt; #amp; #96;y#96;"
        );
        assert_eq!(mermaid_text(&["a", "b"]), "a<br>b");
        assert_eq!(mermaid_text(&["[x] (y) {z} \\"]), "[x] (y) {z} \\");
    }

    fn target(key: &str, state: &'static str, cluster: Option<&str>) -> ViewNode {
        let mut n = ViewNode::new(target_id(key), NodeKind::Target, key);
        n.state = Some(state);
        n.cluster = cluster.map(str::to_string);
        n
    }

    fn fan_out(n: usize, stale: &[usize]) -> View {
        let mut nodes = vec![ViewNode::new(file_id("t.md"), NodeKind::Template, "t.md")];
        let mut edges = Vec::new();
        for i in 0..n {
            let key = format!("s[d/{i}.md]");
            let mut item = ViewNode::new(file_id(&format!("d/{i}.md")), NodeKind::Item, "x");
            item.cluster = Some("s".into());
            edges.push(ViewEdge::new(&item.id, &target_id(&key), EdgeKind::Item));
            edges.push(ViewEdge::new(
                &file_id("t.md"),
                &target_id(&key),
                EdgeKind::Template,
            ));
            edges.push(ViewEdge::new(
                &target_id(&key),
                &target_id("all"),
                EdgeKind::Upstream,
            ));
            nodes.push(item);
            let state = if stale.contains(&i) { "stale" } else { "fresh" };
            nodes.push(target(&key, state, Some("s")));
        }
        nodes.push(target("all", "fresh", None));
        View {
            schema: GRAPH_SCHEMA,
            nodes,
            edges,
            clusters: Vec::new(),
        }
    }

    #[test]
    fn a_large_fan_out_collapses_to_one_node_plus_the_stale_ones() {
        let mut v = fan_out(500, &[3, 7]);
        collapse(&mut v, &ViewOptions::default());
        let group = v.nodes.iter().find(|n| n.kind == NodeKind::Group).unwrap();
        assert_eq!(group.label, "s × 500: 498 fresh, 2 stale");
        assert_eq!(group.members, Some(498));
        assert_eq!(group.state, Some("fresh"));
        let alone: Vec<&str> = v
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Target)
            .map(|n| n.label.as_str())
            .collect();
        assert_eq!(alone, ["s[d/3.md]", "s[d/7.md]", "all"]);
        // the template feeds the aggregate once, counted, and the two alone
        let t: Vec<_> = v
            .edges
            .iter()
            .filter(|e| e.from == file_id("t.md"))
            .collect();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].count, Some(498));
        // the stale ones keep their own item files; the rest are one node
        let items = v.nodes.iter().filter(|n| n.kind == NodeKind::Item).count();
        assert_eq!(items, 3);
        assert!(v.nodes.len() < 10, "{} nodes", v.nodes.len());
    }

    #[test]
    fn the_list_of_notable_nodes_is_limited() {
        let stale: Vec<usize> = (0..40).collect();
        let mut v = fan_out(100, &stale);
        collapse(&mut v, &ViewOptions::default());
        let group = v.nodes.iter().find(|n| n.kind == NodeKind::Group).unwrap();
        assert_eq!(
            group.label,
            "s × 100: 60 fresh, 40 stale (35 more not shown alone)"
        );
        assert_eq!(group.state, Some("stale"));
        let alone = v
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Target)
            .count();
        assert_eq!(alone, 5 + 1);
    }

    #[test]
    fn small_fan_outs_and_expand_keep_every_node() {
        let mut v = fan_out(12, &[]);
        let before = v.nodes.len();
        collapse(&mut v, &ViewOptions::default());
        assert_eq!(v.nodes.len(), before);
    }

    #[test]
    fn changed_edges_survive_merging() {
        let mut a = ViewEdge::new("x", "y", EdgeKind::Input);
        a.recorded = Some("aaa".into());
        let mut b = a.clone();
        b.recorded = Some("bbb".into());
        b.changed = true;
        let m = dedup_edges(vec![a, b]);
        assert_eq!(m.len(), 1);
        assert!(m[0].changed);
        assert_eq!(m[0].recorded, None);
        assert_eq!(m[0].count, Some(2));
    }
}
