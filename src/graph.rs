//! Analysis: from a loaded [`Project`] and the files on disk to the DAG of
//! nodes. A plain target is one node; a `foreach` target is one node per
//! matched file, keyed `NAME[path/of/item]`. Edges come from the
//! `targets.NAME` references templates and partials make (found statically,
//! see `template.rs`); a reference to a `foreach` target depends on all its
//! nodes (fan-in).
//!
//! Everything that can be wrong with a project is found here, before
//! anything runs: missing files, undeclared inputs, unknown targets,
//! duplicate outputs, a glob that matches another target's output, cycles.

use crate::config::{ModelConfig, Project, TargetDecl};
use crate::error::{Error, Location, Result};
use crate::files::{FileError, ProjectFiles, glob_matcher};
use crate::hash::Digest;
use crate::prompty::{Prompty, is_prompty};
use crate::state::{Dep, DepKind};
use crate::template::{MAX_INCLUDE_DEPTH, Ref, TemplateRefs, analyse};
use camino::Utf8Path;
use petgraph::graph::{DiGraph, NodeIndex};
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;

#[derive(Debug, Clone, Serialize)]
pub struct ResolvedInput {
    pub name: String,
    /// As declared in `prompts.toml` (a path or a glob).
    pub pattern: String,
    pub is_glob: bool,
    pub paths: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub key: String,
    /// Index into `project.targets`.
    pub target: usize,
    pub item: Option<String>,
    pub output: String,
    /// (one string shared by every node of a target: a `foreach` over a
    /// million documents has one template)
    pub template: Arc<str>,
    /// The inputs the template (or its partials) use.
    pub inputs: Vec<ResolvedInput>,
    pub partials: Vec<String>,
    pub verbatim: Vec<String>,
    pub uses_item: bool,
    /// Referenced upstream targets by name, each with its nodes.
    pub upstream: Vec<(String, Vec<usize>)>,
    /// Digest of the target definition as it shapes the prompt.
    pub config_digest: Digest,
}

impl Node {
    pub fn upstream_nodes(&self) -> impl Iterator<Item = usize> + '_ {
        self.upstream.iter().flat_map(|(_, v)| v.iter().copied())
    }

    /// The source files the compilation reads, with their kind.
    pub fn sources(&self) -> impl Iterator<Item = (DepKind, &str)> + '_ {
        let item = self.item.as_deref().filter(|_| self.uses_item);
        std::iter::once((DepKind::Template, &*self.template))
            .chain(self.partials.iter().map(|p| (DepKind::Partial, p.as_str())))
            .chain(
                self.verbatim
                    .iter()
                    .map(|p| (DepKind::Verbatim, p.as_str())),
            )
            .chain(
                (self.inputs.iter())
                    .flat_map(|i| i.paths.iter().map(|p| (DepKind::Input, p.as_str()))),
            )
            .chain(item.map(|p| (DepKind::Item, p)))
    }

    /// [`Node::sources`], collected.
    pub fn source_files(&self) -> Vec<(DepKind, &str)> {
        self.sources().collect()
    }
}

pub struct Graph {
    pub nodes: Vec<Node>,
    /// Digest of each target's model's hashed parameters, by target index
    /// (one per target, not per node: a million nodes share a few).
    pub model_digests: Vec<Digest>,
    /// Node indices in dependency order (upstream first).
    pub order: Vec<usize>,
    /// Analysis results by template digest (what the next state keeps).
    pub analysis: HashMap<Digest, TemplateRefs>,
}

fn file_error(project: &Project, span: &Range<usize>, e: FileError) -> Error {
    project.error(
        span,
        e.to_string(),
        Some("every file a target uses must be a regular file inside the project".into()),
    )
}

fn expand_output(pattern: &str, item: &str) -> String {
    let p = Utf8Path::new(item);
    let name = p.file_name().unwrap_or(item);
    let stem = p.file_stem().unwrap_or(name);
    let dir = p.parent().map_or("", |d| d.as_str());
    let s = pattern
        .replace("{stem}", stem)
        .replace("{name}", name)
        .replace("{dir}", dir);
    s.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The error, and what to do, for an output that would be written outside
/// the project or into `.mkt/`: found by analysis, and again when a build
/// is about to write it.
pub fn output_escapes(key: &str, output: &str) -> (String, String) {
    (
        format!(
            "output `{output}` of `{key}` would be written outside the project (through a symlinked directory) or into `.mkt/`"
        ),
        "write outputs to a directory inside the project".to_string(),
    )
}

struct Analyser<'a> {
    files: &'a ProjectFiles,
    old: &'a HashMap<Digest, TemplateRefs>,
    new: Mutex<HashMap<Digest, TemplateRefs>>,
}

impl Analyser<'_> {
    /// The references of one template file, from the cache when its digest
    /// is known.
    /// `fail(reason, help)` makes the error for a file that cannot be used;
    /// `help` is `None` for a missing file (the caller knows what to say).
    fn refs(&self, path: &str, fail: impl Fn(&str, Option<&str>) -> Error) -> Result<TemplateRefs> {
        let missing = |why: &str| fail(why, None);
        let digest = match self.files.digest(path) {
            Ok(Some(d)) => d,
            Ok(None) => return Err(missing("not found")),
            Err(e) => return Err(fail(&e.reason(), Some(e.help()))),
        };
        if let Some(r) = self.new.lock().unwrap().get(&digest) {
            return Ok(r.clone());
        }
        let refs = match self.old.get(&digest) {
            Some(r) => r.clone(),
            None => analyse(Utf8Path::new(path), &self.read_text(path, digest, &fail)?)?,
        };
        self.new.lock().unwrap().insert(digest, refs.clone());
        Ok(refs)
    }

    /// The text of `path`, which must still have `digest`.
    fn read_text(
        &self,
        path: &str,
        digest: Digest,
        fail: &dyn Fn(&str, Option<&str>) -> Error,
    ) -> Result<String> {
        let bytes = self
            .files
            .read(path)
            .map_err(|e| fail(&e.reason(), Some(e.help())))?;
        // analyse the very bytes the digest names
        if Digest::of(&bytes) != digest {
            return Err(fail(
                "changed while mkt was reading it",
                Some("run `mkt build` again once the file is saved"),
            ));
        }
        String::from_utf8(bytes).map_err(|_| fail("is not UTF-8 text", None))
    }

    /// A `.prompty` template: its front matter, the references of its
    /// body and the bare names the body reads. Never cached: what the
    /// state keeps of an analysis has no room for the front matter, and
    /// Prompty files are few.
    fn prompty(
        &self,
        path: &str,
        fail: impl Fn(&str, Option<&str>) -> Error,
    ) -> Result<(TemplateRefs, Prompty, Vec<Ref>)> {
        let digest = match self.files.digest(path) {
            Ok(Some(d)) => d,
            Ok(None) => return Err(fail("not found", None)),
            Err(e) => return Err(fail(&e.reason(), Some(e.help()))),
        };
        let text = self.read_text(path, digest, &fail)?;
        let path = Utf8Path::new(path);
        let p = Prompty::parse(&text).map_err(|e| e.into_error(path))?;
        let refs = analyse(path, &p.body)?;
        let names = crate::prompty::body_names(path, &p.body)?;
        Ok((refs, p, names))
    }
}

/// All references of a template and the partials it reaches, each paired
/// with the file that made it (for error positions).
#[derive(Default)]
struct Reach {
    inputs: Vec<(String, Ref)>,
    all_inputs: bool,
    targets: Vec<(String, Ref)>,
    partials: BTreeSet<String>,
    verbatim: Vec<(String, Ref)>,
    uses_item: bool,
    /// A `.prompty` template's front matter and the bare names its body
    /// reads.
    prompty: Option<(Prompty, Vec<Ref>)>,
}

/// `output_of(path)` names the node that writes `path`, if any: a template,
/// partial or verbatim file may not be one (it would be read while it is
/// being written, with no edge to order the two).
fn reach(
    an: &Analyser<'_>,
    project: &Project,
    decl: &TargetDecl,
    output_of: &dyn Fn(&str) -> Option<String>,
) -> Result<Reach> {
    let template = decl.template.as_str().to_string();
    if let Some(by) = output_of(&template) {
        return Err(project.error(
            &decl.template_span,
            format!(
                "template `{template}` of `{}` is the output of `{by}`",
                decl.name
            ),
            Some("a template must be a source file; mkt does not generate templates".into()),
        ));
    }
    let fail = |why: &str, help: Option<&str>| {
        project.error(
            &decl.template_span,
            format!("template `{template}` {why}"),
            Some(
                help.unwrap_or("create the file or fix the `template` path")
                    .into(),
            ),
        )
    };
    let mut out = Reach::default();
    let refs = if is_prompty(&template) {
        let (refs, p, names) = an.prompty(&template, fail)?;
        out.prompty = Some((p, names));
        refs
    } else {
        an.refs(&template, fail)?
    };
    let mut includes = Includes::default();
    let mut stack = vec![(template.clone(), refs)];
    while let Some((file, refs)) = stack.pop() {
        let mut edges = Vec::with_capacity(refs.partials.len());
        out.all_inputs |= refs.all_inputs;
        out.uses_item |= refs.uses_item;
        out.inputs
            .extend(refs.inputs.iter().map(|r| (file.clone(), r.clone())));
        out.targets
            .extend(refs.targets.iter().map(|r| (file.clone(), r.clone())));
        out.verbatim
            .extend(refs.verbatim.iter().map(|r| (file.clone(), r.clone())));
        for p in &refs.partials {
            let name = normalise_ref(&file, p, "partial")?;
            if let Some(by) = output_of(&name) {
                return Err(Error::invalid(
                    Location {
                        file: file.clone().into(),
                        line: p.line as usize,
                        col: 1,
                    },
                    format!("partial `{name}` is the output of `{by}`"),
                    Some(
                        "a partial must be a source file; to use an output, write `targets.NAME`"
                            .into(),
                    ),
                ));
            }
            edges.push((name.clone(), p.line));
            if out.partials.insert(name.clone()) {
                let prefs = an.refs(&name, |why, help| {
                    Error::invalid(
                        Location {
                            file: file.clone().into(),
                            line: p.line as usize,
                            col: 1,
                        },
                        format!("partial `{name}` {why}"),
                        Some(match help {
                            Some(h) => h.to_string(),
                            None => {
                                "partial names are paths relative to the project root".to_string()
                            }
                        }),
                    )
                })?;
                stack.push((name, prefs));
            }
        }
        includes.insert(file, edges);
    }
    check_includes(
        &includes,
        &template,
        &mut Vec::new(),
        &mut HashMap::default(),
    )?;
    Ok(out)
}

/// Each template file reached, with the partials it names and their lines.
type Includes = HashMap<String, Vec<(String, u32)>>;

/// Refuses an include cycle (minijinja would recurse until its limit) and
/// a chain of includes deeper than minijinja renders, naming the files.
/// `path` holds the files being included, outermost first; `depth_below`
/// the deepest chain under each file already checked, so a file included
/// from many places is walked once. Returns the depth below `file`.
fn check_includes(
    includes: &Includes,
    file: &str,
    path: &mut Vec<(String, u32)>,
    depth_below: &mut HashMap<String, usize>,
) -> Result<usize> {
    if let Some(&d) = depth_below.get(file) {
        return Ok(d);
    }
    let mut deepest = 0;
    for (name, line) in includes.get(file).into_iter().flatten() {
        let at = Location {
            file: file.into(),
            line: *line as usize,
            col: 1,
        };
        let chain = |from: usize| {
            let names: Vec<String> = path[from..]
                .iter()
                .map(|(f, _)| f.as_str())
                .chain([file, name.as_str()])
                .map(|f| format!("`{f}`"))
                .collect();
            names.join(" → ")
        };
        if name == file || path.iter().any(|(f, _)| f == name) {
            let from = path
                .iter()
                .position(|(f, _)| f == name)
                .unwrap_or(path.len());
            return Err(Error::invalid(
                at,
                format!("partial `{name}` includes itself: {}", chain(from)),
                Some("a template cannot include itself, directly or through other partials; for recursion, use a macro that calls itself".into()),
            ));
        }
        let top = path.first().map_or(file, |(f, _)| f.as_str()).to_string();
        let too_deep = |below: usize, depth: usize| {
            (depth + 1 + below > MAX_INCLUDE_DEPTH).then(|| {
                Error::invalid(
                    at.clone(),
                    format!("includes nest more than {MAX_INCLUDE_DEPTH} levels deep from `{top}`, the most templates may nest"),
                    Some("include the partials of a long chain from one file instead of each from the one before".into()),
                )
            })
        };
        // checked on the way down too, so a long chain is not walked whole
        if let Some(e) = too_deep(0, path.len()) {
            return Err(e);
        }
        path.push((file.to_string(), *line));
        let below = check_includes(includes, name, path, depth_below);
        path.pop();
        let below = below?;
        if let Some(e) = too_deep(below, path.len()) {
            return Err(e);
        }
        deepest = deepest.max(below + 1);
    }
    depth_below.insert(file.to_string(), deepest);
    Ok(deepest)
}

/// A warning for each `foreach` target whose glob matched no file (a
/// misspelt or missing directory, most often): it has no node, so it
/// would otherwise vanish from the build without a word.
pub fn empty_foreach(project: &Project, graph: &Graph) -> Vec<String> {
    let mut has_nodes = vec![false; project.targets.len()];
    for n in &graph.nodes {
        has_nodes[n.target] = true;
    }
    project
        .targets
        .iter()
        .zip(has_nodes)
        .filter_map(|(t, has)| match &t.foreach {
            Some((glob, _)) if !has => Some(format!(
                "the `foreach` glob `{glob}` of target `{}` matches no file, so it builds nothing",
                t.name
            )),
            _ => None,
        })
        .collect()
}

/// Checks a path named in a template the way `prompts.toml` paths are.
fn normalise_ref(file: &str, r: &Ref, what: &str) -> Result<String> {
    crate::config::normalise_project_path(&r.name).map_err(|why| {
        Error::invalid(
            Location {
                file: file.into(),
                line: r.line as usize,
                col: 1,
            },
            format!("{what} `{}` {why}", r.name),
            Some(
                "paths in templates are relative to the project root and must stay inside it"
                    .into(),
            ),
        )
    })
}

/// The target-definition part of a node's fingerprint: an internal
/// digest (never stored outside `.mkt/state`), fed field by field with
/// length prefixes so distinct definitions cannot collide.
fn config_digest(
    template: &str,
    inputs: &[ResolvedInput],
    item: Option<&str>,
    upstream: &[(&str, Option<&str>)],
) -> Digest {
    let mut h = blake3::Hasher::new();
    let mut put = |s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    put("mkt.node-config.v1");
    put(template);
    for i in inputs {
        put(&i.name);
        // the pattern, not the matched paths: those are file dependencies
        // of their own, so a new match is reported as "input `x` added"
        put(&i.pattern);
    }
    put(item.unwrap_or(""));
    // upstream names, and for a `foreach` upstream its output pattern: a
    // fan-in template sees each output's path. Which nodes (and outputs)
    // it consumes is compared in the fingerprint's upstream list, which
    // can say which node was added or removed.
    for (name, output_pattern) in upstream {
        put(name);
        put(output_pattern.unwrap_or(""));
    }
    Digest(*h.finalize().as_bytes())
}

fn model_digest(m: &ModelConfig) -> Digest {
    let v = serde_json::json!({ "provider": m.provider.as_str(), "params": m.hashed_params() });
    Digest::of(v.to_string().as_bytes())
}

/// Builds the graph of the whole project (module docs).
pub fn analyse_project(
    project: &Project,
    files: &ProjectFiles,
    old_analysis: &HashMap<Digest, TemplateRefs>,
) -> Result<Graph> {
    // 1. expand foreach globs into nodes and resolve their outputs
    let Expanded {
        mut nodes,
        outputs,
        model_digests,
    } = expand_nodes(project, files)?;
    check_globs_miss_outputs(project, &nodes)?;
    // 2. analyse each target's template (once per target, shared by its
    // nodes), after stat-ing templates and plain inputs in parallel
    let mut prefetch: Vec<&str> = Vec::with_capacity(project.targets.len() * 2);
    for decl in &project.targets {
        prefetch.push(decl.template.as_str());
        prefetch.extend(
            decl.inputs
                .iter()
                .filter(|i| !i.is_glob)
                .map(|i| i.pattern.as_str()),
        );
    }
    files.digest_all(&prefetch);
    let an = Analyser {
        files,
        old: old_analysis,
        new: Mutex::new(HashMap::default()),
    };
    let mut by_target: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        by_target
            .entry(project.targets[n.target].name.clone())
            .or_default()
            .push(i);
    }
    let decl_index: HashMap<&str, usize> = (project.targets.iter().enumerate())
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    for decl in &project.targets {
        let scope = Scope {
            project,
            files,
            nodes: &nodes,
            outputs: &outputs,
            by_target: &by_target,
            decl_index: &decl_index,
        };
        let resolved = scope.resolve(&an, decl)?;
        for &ni in by_target.get(&decl.name).into_iter().flatten() {
            resolved.apply(&mut nodes[ni]);
        }
    }
    check_used_items(project, files, &nodes)?;
    // 3. the DAG, its order, and cycles
    let order = build_order(project, &nodes)?;
    Ok(Graph {
        nodes,
        model_digests,
        order,
        analysis: an.new.into_inner().unwrap(),
    })
}

/// Every target's nodes (one, or one per `foreach` file), with their
/// outputs checked (not the project file, not another node's, inside the
/// project), and which node writes each output.
fn expand_nodes(project: &Project, files: &ProjectFiles) -> Result<Expanded> {
    // at least one node per target: no doubling reallocation for the
    // common case of plain targets
    let mut nodes: Vec<Node> = Vec::with_capacity(project.targets.len());
    let mut outputs: HashMap<String, usize> = HashMap::default();
    // few distinct models: digest each once
    let mut model_digests: Vec<(&ModelConfig, Digest)> = Vec::new();
    let mut by_target = Vec::with_capacity(project.targets.len());
    for (ti, decl) in project.targets.iter().enumerate() {
        let md = match model_digests.iter().find(|(m, _)| **m == *decl.model) {
            Some((_, d)) => *d,
            None => {
                let d = model_digest(&decl.model);
                model_digests.push((&decl.model, d));
                d
            }
        };
        by_target.push(md);
        let items: Vec<Option<String>> = match &decl.foreach {
            Some((glob, span)) => files
                .glob(glob)
                .map_err(|e| project.error(span, format!("invalid glob `{glob}`: {e}"), None))?
                .into_iter()
                .map(Some)
                .collect(),
            None => vec![None],
        };
        let template: Arc<str> = decl.template.as_str().into();
        for item in items {
            let (key, output) = match &item {
                Some(i) => (
                    format!("{}[{i}]", decl.name),
                    expand_output(&decl.output, i),
                ),
                None => (decl.name.clone(), decl.output.clone()),
            };
            check_output(project, files, decl, &key, &output, &outputs, &nodes)?;
            outputs.insert(output.clone(), nodes.len());
            nodes.push(Node {
                key,
                target: ti,
                item,
                output,
                template: Arc::clone(&template),
                inputs: Vec::new(),
                partials: Vec::new(),
                verbatim: Vec::new(),
                uses_item: false,
                upstream: Vec::new(),
                config_digest: Digest::default(),
            });
        }
    }
    Ok(Expanded {
        nodes,
        outputs,
        model_digests: by_target,
    })
}

/// What [`expand_nodes`] makes: the nodes, which node writes each output,
/// and each target's model digest.
struct Expanded {
    nodes: Vec<Node>,
    outputs: HashMap<String, usize>,
    model_digests: Vec<Digest>,
}

/// A node's output: not the project file, not another node's, and a path
/// that stays inside the project.
fn check_output(
    project: &Project,
    files: &ProjectFiles,
    decl: &TargetDecl,
    key: &str,
    output: &str,
    outputs: &HashMap<String, usize>,
    nodes: &[Node],
) -> Result<()> {
    if output == crate::config::PROJECT_FILE {
        return Err(project.error(
            &decl.output_span,
            format!("output `{output}` of `{key}` is the project file"),
            Some("write outputs to a directory inside the project, such as `out/`".into()),
        ));
    }
    if let Some(&other) = outputs.get(output) {
        let o = &nodes[other];
        return Err(project.error(
            &decl.output_span,
            format!("`{key}` and `{}` both write `{output}`", o.key),
            Some("give every target its own output path".into()),
        ));
    }
    if files.check_writable(output).is_err() {
        let (message, help) = output_escapes(key, output);
        return Err(project.error(&decl.output_span, message, Some(help)));
    }
    Ok(())
}

/// A glob may not match any target's output, existing or not: that file
/// would be read before (or while) it is written, and a `foreach` over
/// its own outputs would grow by one level every build.
fn check_globs_miss_outputs(project: &Project, nodes: &[Node]) -> Result<()> {
    for decl in &project.targets {
        let globs = decl
            .foreach
            .iter()
            .map(|(g, span)| (g, span, "foreach glob"))
            .chain(
                decl.inputs
                    .iter()
                    .filter(|i| i.is_glob)
                    .map(|i| (&i.pattern, &i.span, "input")),
            );
        for (pattern, span, what) in globs {
            let m = glob_matcher(pattern)
                .map_err(|e| project.error(span, format!("invalid glob `{pattern}`: {e}"), None))?;
            if let Some(o) = nodes.iter().find(|n| m.is_match(&n.output)) {
                let up = &project.targets[o.target].name;
                let help = if what == "input" {
                    format!("use `targets.{up}` in the template instead, so mkt knows the order")
                } else {
                    "narrow the glob or write the outputs elsewhere".to_string()
                };
                return Err(project.error(
                    span,
                    format!(
                        "{what} `{}` of `{}` is the output of `{}`",
                        o.output, decl.name, o.key
                    ),
                    Some(help),
                ));
            }
        }
    }
    Ok(())
}

/// What the analysis of one target's template sees of the project.
struct Scope<'a> {
    project: &'a Project,
    files: &'a ProjectFiles,
    nodes: &'a [Node],
    outputs: &'a HashMap<String, usize>,
    by_target: &'a BTreeMap<String, Vec<usize>>,
    /// Each target's index in the project, by name.
    decl_index: &'a HashMap<&'a str, usize>,
}

/// What a target's template reaches, resolved: shared by its nodes.
struct Resolved {
    inputs: Vec<ResolvedInput>,
    partials: Vec<String>,
    verbatim: Vec<String>,
    uses_item: bool,
    upstream: Vec<(String, Vec<usize>)>,
    /// Each upstream target's name, and its output pattern if `foreach`.
    upstream_shape: Vec<(String, Option<String>)>,
}

impl Resolved {
    fn apply(&self, n: &mut Node) {
        let shape: Vec<(&str, Option<&str>)> = (self.upstream_shape.iter())
            .map(|(name, pattern)| (name.as_str(), pattern.as_deref()))
            .collect();
        n.config_digest = config_digest(
            &n.template,
            &self.inputs,
            n.item.as_deref().filter(|_| self.uses_item),
            &shape,
        );
        n.inputs = self.inputs.clone();
        n.partials = self.partials.clone();
        n.verbatim = self.verbatim.clone();
        n.uses_item = self.uses_item;
        n.upstream = self.upstream.clone();
    }
}

/// An error at a reference `r` in `file`.
fn ref_error(file: &str, r: &Ref, msg: String, help: String) -> Error {
    Error::invalid(
        Location {
            file: file.into(),
            line: r.line as usize,
            col: 1,
        },
        msg,
        Some(help),
    )
}

impl Scope<'_> {
    /// The node that writes `path`, if one does.
    fn output_of(&self, path: &str) -> Option<&Node> {
        self.outputs.get(path).map(|&o| &self.nodes[o])
    }

    /// Analyses `decl`'s template and resolves what it reaches.
    fn resolve(&self, an: &Analyser<'_>, decl: &TargetDecl) -> Result<Resolved> {
        let output_of = |p: &str| self.output_of(p).map(|n| n.key.clone());
        let reach = reach(an, self.project, decl, &output_of)?;
        let inputs = self.resolve_inputs(decl, &reach)?;
        let verbatim = self.resolve_verbatim(&reach)?;
        if reach.uses_item && decl.foreach.is_none() {
            return Err(Error::invalid(
                Location {
                    file: decl.template.to_string().into(),
                    line: 1,
                    col: 1,
                },
                format!(
                    "the template of `{}` uses `item`, but the target has no `foreach`",
                    decl.name
                ),
                Some("add `foreach = \"GLOB\"` to the target, or remove `item`".into()),
            ));
        }
        let upstream = self.resolve_upstream(&reach)?;
        let upstream_shape = (upstream.iter())
            .map(|(name, _)| {
                let up = (self.decl_index.get(name.as_str())).map(|&i| &self.project.targets[i]);
                let pattern = up.filter(|t| t.foreach.is_some()).map(|t| t.output.clone());
                (name.clone(), pattern)
            })
            .collect();
        Ok(Resolved {
            inputs,
            partials: reach.partials.into_iter().collect(),
            verbatim,
            uses_item: reach.uses_item,
            upstream,
            upstream_shape,
        })
    }

    /// The inputs a template reads: declared, existing, not a node's
    /// output (all of them when the template reads the whole table).
    fn resolve_inputs(&self, decl: &TargetDecl, reach: &Reach) -> Result<Vec<ResolvedInput>> {
        let project = self.project;
        let mut used: BTreeSet<&str> = BTreeSet::new();
        for (file, r) in &reach.inputs {
            if !decl.inputs.iter().any(|i| i.name == r.name) {
                return Err(ref_error(
                    file,
                    r,
                    format!(
                        "`inputs.{}` is not declared for target `{}`",
                        r.name, decl.name
                    ),
                    format!(
                        "add `{} = \"path\"` to `inputs` of `[targets.{}]` in `prompts.toml`",
                        r.name, decl.name
                    ),
                ));
            }
            used.insert(&r.name);
        }
        if let Some((p, names)) = &reach.prompty {
            let readable = (p.check_target(decl, names))
                .map_err(|e| e.into_error(Utf8Path::new(&decl.template)))?;
            used.extend(readable);
        }
        let mut inputs = Vec::new();
        for i in &decl.inputs {
            let paths = if i.is_glob {
                self.files.glob(&i.pattern).map_err(|e| {
                    project.error(&i.span, format!("invalid glob `{}`: {e}", i.pattern), None)
                })?
            } else {
                vec![i.pattern.clone()]
            };
            for p in &paths {
                self.check_input(decl, i, p)?;
            }
            if reach.all_inputs || used.contains(i.name.as_str()) {
                inputs.push(ResolvedInput {
                    name: i.name.clone(),
                    pattern: i.pattern.clone(),
                    is_glob: i.is_glob,
                    paths,
                });
            }
        }
        Ok(inputs)
    }

    /// One path of input `i`: not a node's output, and a file that exists.
    fn check_input(&self, decl: &TargetDecl, i: &crate::config::InputDecl, p: &str) -> Result<()> {
        let project = self.project;
        if let Some(o) = self.output_of(p) {
            return Err(project.error(
                &i.span,
                format!(
                    "input `{}` of `{}` is the output of `{}`",
                    p, decl.name, o.key
                ),
                Some(format!(
                    "use `targets.{}` in the template instead, so mkt knows the order",
                    project.targets[o.target].name
                )),
            ));
        }
        match self.files.digest(p) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(project.error(
                &i.span,
                format!(
                    "input `{}` of target `{}`: `{p}` not found",
                    i.name, decl.name
                ),
                Some("create the file or fix the path".into()),
            )),
            Err(e) => Err(file_error(project, &i.span, e)),
        }
    }

    /// The verbatim files a template inserts: existing, inside the
    /// project, not a node's output.
    fn resolve_verbatim(&self, reach: &Reach) -> Result<Vec<String>> {
        let mut verbatim = BTreeSet::new();
        for (file, r) in &reach.verbatim {
            let p = normalise_ref(file, r, "verbatim file")?;
            if let Some(o) = self.output_of(&p) {
                return Err(ref_error(
                    file,
                    r,
                    format!("verbatim file `{p}` is the output of `{}`", o.key),
                    format!(
                        "use `targets.{}` instead, so mkt knows the order",
                        self.project.targets[o.target].name
                    ),
                ));
            }
            match self.files.digest(&p) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(ref_error(
                        file,
                        r,
                        format!("verbatim file `{p}` not found"),
                        "create the file or fix the path".into(),
                    ));
                }
                Err(e) => {
                    return Err(ref_error(
                        file,
                        r,
                        e.to_string(),
                        "keep verbatim files inside the project".into(),
                    ));
                }
            }
            verbatim.insert(p);
        }
        Ok(verbatim.into_iter().collect())
    }

    /// The targets a template reads, each with its nodes (none for a
    /// `foreach` target whose glob matches no file).
    fn resolve_upstream(&self, reach: &Reach) -> Result<Vec<(String, Vec<usize>)>> {
        let mut upstream: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (file, r) in &reach.targets {
            match self.by_target.get(&r.name) {
                Some(v) => {
                    upstream.insert(r.name.clone(), v.clone());
                }
                // a `foreach` target whose glob matches no file: an empty list
                None if self.decl_index.contains_key(r.name.as_str()) => {
                    upstream.insert(r.name.clone(), Vec::new());
                }
                None => {
                    return Err(ref_error(
                        file,
                        r,
                        format!("`targets.{}` names no target in `prompts.toml`", r.name),
                        known_targets(self.project),
                    ));
                }
            }
        }
        Ok(upstream.into_iter().collect())
    }
}

/// Each `foreach` file a template uses is a source like any input: one
/// that leads out of the project is an error here, before anything runs.
/// (One no template reads is never opened, so it may be anything.)
fn check_used_items(project: &Project, files: &ProjectFiles, nodes: &[Node]) -> Result<()> {
    let used_items: Vec<&str> = (nodes.iter())
        .filter(|n| n.uses_item)
        .filter_map(|n| n.item.as_deref())
        .collect();
    files.digest_all(&used_items);
    for n in nodes.iter().filter(|n| n.uses_item) {
        let (Some(item), Some((_, span))) = (&n.item, &project.targets[n.target].foreach) else {
            continue;
        };
        match files.digest(item) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(project.error(
                    span,
                    format!(
                        "`{item}` matched the `foreach` glob but cannot be read: \
                         a symlink that leads nowhere, or removed since"
                    ),
                    Some("fix or remove the symlink, or run the build again".into()),
                ));
            }
            Err(e) => return Err(file_error(project, span, e)),
        }
    }
    Ok(())
}

/// The nodes in dependency order; a cycle is an error naming it.
fn build_order(project: &Project, nodes: &[Node]) -> Result<Vec<usize>> {
    let mut g: DiGraph<usize, ()> = DiGraph::with_capacity(nodes.len(), nodes.len());
    let idx: Vec<NodeIndex> = (0..nodes.len()).map(|i| g.add_node(i)).collect();
    for (i, n) in nodes.iter().enumerate() {
        for u in n.upstream_nodes() {
            g.add_edge(idx[u], idx[i], ());
        }
    }
    match petgraph::algo::toposort(&g, None) {
        Ok(o) => Ok(o.into_iter().map(|ix| g[ix]).collect()),
        Err(cycle) => Err(Error::Cycle {
            path: cycle_path(nodes, project, g[cycle.node_id()]),
        }),
    }
}

/// The help line listing a project's targets.
fn known_targets(project: &Project) -> String {
    if project.targets.is_empty() {
        return "`prompts.toml` defines no targets yet".to_string();
    }
    let known: Vec<&str> = project.targets.iter().map(|t| t.name.as_str()).collect();
    format!("known targets: {}", known.join(", "))
}

/// A cycle through `start`, as target names (`a -> b -> a`).
fn cycle_path(nodes: &[Node], project: &Project, start: usize) -> Vec<String> {
    // depth-first search from `start` along upstream edges back to `start`
    let name = |i: usize| project.targets[nodes[i].target].name.clone();
    let mut stack = vec![(start, vec![start])];
    let mut seen = BTreeSet::new();
    while let Some((n, path)) = stack.pop() {
        for u in nodes[n].upstream_nodes() {
            if u == start {
                // `a -> b` reads "a uses the output of b"
                let mut names: Vec<String> = path.iter().map(|&i| name(i)).collect();
                names.push(name(start));
                return names;
            }
            if seen.insert(u) {
                let mut p = path.clone();
                p.push(u);
                stack.push((u, p));
            }
        }
    }
    vec![name(start), name(start)]
}

impl Graph {
    /// Resolves the names given on the command line (target names, node
    /// keys or output paths) to nodes. Returns the selection (the named
    /// nodes plus everything they need) and the named nodes themselves;
    /// with no names, every node is both.
    pub fn select(&self, project: &Project, names: &[String]) -> Result<(Vec<bool>, Vec<bool>)> {
        let mut selected = vec![names.is_empty(); self.nodes.len()];
        if names.is_empty() {
            return Ok((selected.clone(), selected));
        }
        let mut stack = Vec::new();
        for name in names {
            let of_target: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| project.targets[self.nodes[i].target].name == *name)
                .collect();
            if !of_target.is_empty() {
                stack.extend(of_target);
            } else if let Some(i) = self.nodes.iter().position(|n| n.key == *name) {
                stack.push(i);
            } else if let Some(i) = self
                .nodes
                .iter()
                .position(|n| n.output == name.trim_start_matches("./"))
            {
                stack.push(i);
            } else if project.targets.iter().any(|t| &t.name == name) {
                // a foreach target with no files: nothing to build
            } else {
                return Err(Error::UnknownTarget {
                    name: name.clone(),
                    help: Some(known_targets(project)),
                });
            }
        }
        let mut named = vec![false; self.nodes.len()];
        for &i in &stack {
            named[i] = true;
        }
        while let Some(i) = stack.pop() {
            if !selected[i] {
                selected[i] = true;
                stack.extend(self.nodes[i].upstream_nodes());
            }
        }
        Ok((selected, named))
    }

    /// The current fingerprint's file part for a node.
    pub fn source_deps(
        &self,
        node: &Node,
        files: &ProjectFiles,
    ) -> std::result::Result<Vec<Dep>, FileError> {
        let mut deps = Vec::new();
        for (kind, path) in node.source_files() {
            let digest = files.digest(path)?.ok_or_else(|| {
                FileError::Io(
                    path.to_string(),
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                )
            })?;
            deps.push(Dep {
                kind,
                path: path.to_string(),
                digest,
            });
        }
        Ok(deps)
    }
}

/// The graph cache `.mkt/graph`: the analysed graph of the last full
/// analysis, reused when nothing that shapes the graph changed since
/// (`prompts.toml`, templates, partials and globbed directories all have
/// the stats the no-op stamp recorded; see `stamp.rs`). `key` is the
/// digest of those stamp entries.
///
/// ```text
/// "MKTGRPH1" | str mkt version | digest key | u32 n | n × NODE | u32 n × u32 order
///            | BLAKE3 of all before
/// NODE := str key | u32 target | u8 has_item [str item] | str output | str template
///         | u32 n × (str name | str pattern | u8 glob | u32 n × str path)
///         | u32 n × str partial | u32 n × str verbatim | u8 uses_item
///         | u32 n × (str name | u32 n × u32 node) | digest config | digest model
/// ```
impl Graph {
    pub fn encode(&self, key: &Digest) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_to(key, &mut v)
            .expect("writing to a Vec cannot fail");
        v
    }

    /// Writes [`Graph::encode`]'s bytes to `out` in chunks, never holding
    /// them whole (a million-node graph is 180 MB, and its buffer, grown
    /// by doubling, was a sixth of the build's peak memory).
    pub fn encode_to(&self, key: &Digest, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        use crate::state::Writer;
        const CHUNK: usize = 64 * 1024;
        let mut hasher = blake3::Hasher::new();
        let mut w = Writer(Vec::with_capacity(CHUNK + 4096));
        let mut flush = |w: &mut Writer, force: bool| -> std::io::Result<()> {
            if force || w.0.len() >= CHUNK {
                hasher.update(&w.0);
                out.write_all(&w.0)?;
                w.0.clear();
            }
            Ok(())
        };
        w.0.extend_from_slice(GRAPH_MAGIC);
        w.str(env!("CARGO_PKG_VERSION"));
        w.digest(key);
        let strs = |w: &mut Writer, v: &[String]| {
            w.u32(v.len() as u32);
            for s in v {
                w.str(s);
            }
        };
        w.u32(self.nodes.len() as u32);
        for n in &self.nodes {
            w.str(&n.key);
            w.u32(n.target as u32);
            match &n.item {
                Some(i) => {
                    w.u8(1);
                    w.str(i);
                }
                None => w.u8(0),
            }
            w.str(&n.output);
            w.str(&n.template);
            w.u32(n.inputs.len() as u32);
            for i in &n.inputs {
                w.str(&i.name);
                w.str(&i.pattern);
                w.u8(i.is_glob as u8);
                strs(&mut w, &i.paths);
            }
            strs(&mut w, &n.partials);
            strs(&mut w, &n.verbatim);
            w.u8(n.uses_item as u8);
            w.u32(n.upstream.len() as u32);
            for (name, v) in &n.upstream {
                w.str(name);
                w.u32(v.len() as u32);
                for &u in v {
                    w.u32(u as u32);
                }
            }
            w.digest(&n.config_digest);
            w.digest(&self.model_digest(n));
            flush(&mut w, false)?;
        }
        w.u32(self.order.len() as u32);
        for &o in &self.order {
            w.u32(o as u32);
            flush(&mut w, false)?;
        }
        flush(&mut w, true)?;
        out.write_all(hasher.finalize().as_bytes())
    }

    /// Decodes a graph cache written for `key`; `None` for anything else.
    /// Check it [`Graph::fits`] the project before use.
    pub fn decode(bytes: &[u8], key: &Digest) -> Option<Graph> {
        Graph::decode_with(bytes, key, Digest::of, &|_| {})
    }

    /// [`Graph::decode`] of a mapped cache, its pages let go as they are
    /// read: decoded, they are not read again (a million-node cache is
    /// 180 MB).
    pub fn decode_mapped(file: &crate::store::MappedFile, key: &Digest) -> Option<Graph> {
        let digest = |body: &[u8]| file.digest_releasing(0..body.len());
        Graph::decode_with(file, key, digest, &|range| file.release(range))
    }

    /// [`Graph::decode`], hashing the body with `digest` and passing to
    /// `release` each stretch of `bytes` it has read.
    fn decode_with(
        bytes: &[u8],
        key: &Digest,
        digest: impl Fn(&[u8]) -> Digest,
        release: &dyn Fn(std::ops::Range<usize>),
    ) -> Option<Graph> {
        use crate::state::Reader;
        let body = bytes.get(..bytes.len().checked_sub(32)?)?;
        if digest(body).0 != bytes[body.len()..] {
            return None;
        }
        let mut r = Reader { buf: body, pos: 0 };
        if r.take(8)? != GRAPH_MAGIC || r.str()? != env!("CARGO_PKG_VERSION") || r.digest()? != *key
        {
            return None;
        }
        fn strs(r: &mut Reader<'_>) -> Option<Vec<String>> {
            let n = r.count(4)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(r.str()?);
            }
            Some(v)
        }
        let n = r.count(8)?;
        let mut nodes = Vec::with_capacity(n);
        let mut model_digests: Vec<Option<Digest>> = Vec::new();
        let mut released = 0;
        // the template of the node before: the next one likely shares it
        let mut template: Arc<str> = Arc::from("");
        for _ in 0..n {
            if r.pos - released >= crate::store::RELEASE_EVERY {
                release(released..r.pos);
                released = r.pos;
            }
            let key = r.str()?;
            let target = r.u32()? as usize;
            let item = match r.u8()? {
                0 => None,
                1 => Some(r.str()?),
                _ => return None,
            };
            let output = r.str()?;
            let t = r.str_ref()?;
            if *template != *t {
                template = t.into();
            }
            let ni = r.count(4)?;
            let mut inputs = Vec::with_capacity(ni);
            for _ in 0..ni {
                inputs.push(ResolvedInput {
                    name: r.str()?,
                    pattern: r.str()?,
                    is_glob: r.bool()?,
                    paths: strs(&mut r)?,
                });
            }
            let partials = strs(&mut r)?;
            let verbatim = strs(&mut r)?;
            let uses_item = r.bool()?;
            let nu = r.count(8)?;
            let mut upstream = Vec::with_capacity(nu);
            for _ in 0..nu {
                upstream.push((r.str()?, node_indices(&mut r, n)?));
            }
            nodes.push(Node {
                key,
                target,
                item,
                output,
                template: Arc::clone(&template),
                inputs,
                partials,
                verbatim,
                uses_item,
                upstream,
                config_digest: r.digest()?,
            });
            // (the file keeps it per node; every node of a target has its
            // target's, or the file is not one mkt wrote)
            let md = r.digest()?;
            if model_digests.len() <= target {
                // (a target index past any project's: not a file mkt wrote)
                if target >= 1 << 24 {
                    return None;
                }
                model_digests.resize(target + 1, None);
            }
            if *model_digests[target].get_or_insert(md) != md {
                return None;
            }
        }
        let order = node_indices(&mut r, n)?;
        if r.pos != body.len() || order.len() != n {
            return None;
        }
        Some(Graph {
            nodes,
            model_digests: model_digests
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect(),
            order,
            analysis: HashMap::default(),
        })
    }

    /// Whether every node names a target `project` has (a decoded graph
    /// is checked so before use: it was read without the project).
    /// Digest of `node`'s model's hashed parameters.
    pub fn model_digest(&self, node: &Node) -> Digest {
        self.model_digests[node.target]
    }

    pub fn fits(&self, project: &Project) -> bool {
        self.nodes.iter().all(|n| n.target < project.targets.len())
    }
}

const GRAPH_MAGIC: &[u8; 8] = b"MKTGRPH1";

/// A counted list of node indices, each below `n`.
fn node_indices(r: &mut crate::state::Reader<'_>, n: usize) -> Option<Vec<usize>> {
    let m = r.count(4)?;
    let mut v = Vec::with_capacity(m);
    for _ in 0..m {
        let i = r.u32()? as usize;
        if i >= n {
            return None;
        }
        v.push(i);
    }
    Some(v)
}

impl Graph {
    /// How many outputs of records whose node is gone from the graph are
    /// still on disk (a stat each, for those records only), for `mkt
    /// build`'s summary (`mkt clean --stale` removes them). An output path
    /// that a current node writes is not counted.
    pub fn leftovers(&self, root: &Utf8Path, records: &crate::state::TargetRecords) -> usize {
        let graph = self;
        let keys: rustc_hash::FxHashSet<&str> =
            graph.nodes.iter().map(|n| n.key.as_str()).collect();
        let gone: Vec<&crate::state::TargetRecord> = records
            .iter()
            .filter(|(k, _)| !keys.contains(k))
            .map(|(_, r)| r)
            .collect();
        if gone.is_empty() {
            return 0;
        }
        let outputs: rustc_hash::FxHashSet<&str> =
            graph.nodes.iter().map(|n| n.output.as_str()).collect();
        gone.iter()
            .filter(|r| !outputs.contains(r.output.as_str()))
            .filter(|r| std::fs::symlink_metadata(root.join(&r.output)).is_ok_and(|m| m.is_file()))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_placeholders() {
        assert_eq!(expand_output("out/{stem}.md", "docs/a.txt"), "out/a.md");
        assert_eq!(
            expand_output("out/{dir}/{name}", "docs/x/a.txt"),
            "out/docs/x/a.txt"
        );
        assert_eq!(expand_output("out/{dir}/{stem}.md", "a.txt"), "out/a.md");
    }

    #[test]
    fn graph_cache_round_trips_and_rejects_every_cut_and_flip() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        for (f, text) in [
            ("docs/a.md", "A"),
            ("docs/b.md", "B"),
            ("t/s.md", "{{ item.content }}"),
            (
                "t/i.md",
                "{% for s in targets.s %}{{ s.content }}{% endfor %}",
            ),
        ] {
            std::fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
            std::fs::write(root.join(f), text).unwrap();
        }
        let project = Project::parse(
            root,
            "[targets.s]\nforeach = \"docs/*.md\"\ntemplate = \"t/s.md\"\noutput = \"out/{stem}.md\"\n\
             [targets.i]\ntemplate = \"t/i.md\"\noutput = \"out/index.md\"\n"
                .to_string(),
        )
        .unwrap();
        let files = ProjectFiles::new(root, HashMap::default());
        let g = analyse_project(&project, &files, &HashMap::default()).unwrap();
        let key = Digest::of(b"key");
        let bytes = g.encode(&key);
        let back = Graph::decode(&bytes, &key).unwrap();
        let keys = |g: &Graph| {
            g.nodes
                .iter()
                .map(|n| {
                    let template = n.template.to_string();
                    (
                        n.key.clone(),
                        n.output.clone(),
                        template,
                        n.upstream.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&back), keys(&g));
        assert_eq!(back.order, g.order);
        assert_eq!(back.model_digests, g.model_digests);
        assert!(back.fits(&project));
        let smaller = Project::parse(
            root,
            "[targets.s]\nforeach = \"docs/*.md\"\ntemplate = \"t/s.md\"\noutput = \"out/{stem}.md\"\n"
                .to_string(),
        )
        .unwrap();
        assert!(!back.fits(&smaller), "node `i` names target 1 of 1");
        assert!(Graph::decode(&bytes, &Digest::of(b"other")).is_none());
        for cut in 0..bytes.len() {
            assert!(Graph::decode(&bytes[..cut], &key).is_none(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(Graph::decode(&b, &key).is_none(), "flip at {i}");
        }
    }
}
