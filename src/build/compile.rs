//! Compilation: a node's sources and upstream outputs rendered into its
//! compiled prompt.

use crate::config::{ModelConfig, Project};
use crate::files::ProjectFiles;
use crate::graph::{Graph, Node};
use crate::hash::Digest;
use crate::manifest::UpstreamRecord;
use crate::prompty::{Prompty, is_prompty};
use crate::store::{ObjectRead, ObjectStore};
use crate::template::{RenderInput, compile};
use camino::Utf8Path;
use minijinja::Value;
use rustc_hash::FxHashMap as HashMap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What compilation reads from: the project, its graph, its files and
/// the store (for upstream outputs).
pub(crate) struct Sources<'a> {
    pub project: &'a Project,
    pub graph: &'a Graph,
    pub files: &'a ProjectFiles,
    pub store: &'a ObjectStore,
}

/// Why a node's prompt could not be compiled. The texts are what a user
/// sees; a caller can match on the kind.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A source file could not be read (or leads out of the project).
    #[error(transparent)]
    Read(#[from] crate::files::FileError),
    /// A source file is not what the fingerprint recorded any more.
    #[error("`{path}` changed while the build was running; run `mkt build` again")]
    Changed { path: String },
    #[error("`{path}` is not UTF-8 text")]
    NotUtf8 { path: String },
    /// An upstream output is neither in the store nor as recorded on disk.
    #[error("the output of `{target}` changed during the build")]
    UpstreamChanged { target: String },
    #[error("the output of `{target}` is not UTF-8 text")]
    UpstreamNotUtf8 { target: String },
    /// An upstream output could not be read.
    #[error("{0}")]
    UpstreamRead(crate::files::FileError),
    /// The template did not render (the text has its file and line).
    #[error(transparent)]
    Render(#[from] crate::error::Error),
}

/// Renders `node`'s compiled prompt. Every source file must still have the
/// digest in `expected` (when listed there); `upstream` gives, in the
/// node's upstream order, the output each upstream node has now.
pub(crate) fn compile_node(
    src: &Sources<'_>,
    node: &Node,
    expected: &HashMap<&str, Digest>,
    upstream: &[UpstreamRecord],
) -> std::result::Result<crate::template::CompiledPrompt, CompileError> {
    compile_node_with(src, node, expected, upstream, &|un, d| {
        upstream_text(src, un, d)
    })
}

/// The text of an upstream node's output of a digest, for compilation.
pub(super) type UpstreamText<'a> =
    dyn Fn(&Node, Digest) -> std::result::Result<String, CompileError> + 'a;

/// [`compile_node`], the upstream outputs' texts given by `text_of` (an
/// estimate compiles a target whose upstream has not run yet).
pub(super) fn compile_node_with(
    src: &Sources<'_>,
    node: &Node,
    expected: &HashMap<&str, Digest>,
    upstream: &[UpstreamRecord],
    text_of: &UpstreamText<'_>,
) -> std::result::Result<crate::template::CompiledPrompt, CompileError> {
    let template_source = read_text(src.files, expected, &node.template)?;
    let prompty = prompty_of(node, &template_source)?;
    let mut partials = BTreeMap::new();
    for p in &node.partials {
        partials.insert(
            p.clone(),
            Arc::<str>::from(read_text(src.files, expected, p)?),
        );
    }
    let mut verbatim = BTreeMap::new();
    for p in &node.verbatim {
        verbatim.insert(
            p.clone(),
            Arc::<str>::from(read_text(src.files, expected, p)?),
        );
    }
    let mut inputs = BTreeMap::new();
    for i in &node.inputs {
        let v = if i.is_glob {
            let mut list = Vec::new();
            for p in &i.paths {
                list.push(
                    minijinja::context! { path => p, content => read_text(src.files, expected, p)? },
                );
            }
            Value::from(list)
        } else {
            Value::from(read_text(src.files, expected, &i.paths[0])?)
        };
        inputs.insert(i.name.clone(), v);
    }
    let mut targets = BTreeMap::new();
    let mut up = upstream.iter();
    for (name, nodes) in &node.upstream {
        // a plain target is exactly one node without an item
        let is_foreach = nodes.len() != 1 || src.graph.nodes[nodes[0]].item.is_some();
        let mut list = Vec::new();
        for &u in nodes {
            let rec = up.next().expect("one upstream record per upstream node");
            let un = &src.graph.nodes[u];
            let text = text_of(un, rec.output_digest)?;
            if is_foreach {
                list.push(minijinja::context! {
                    path => un.output.clone(),
                    content => text,
                    item => un.item.clone(),
                    stem => un.item.as_deref().and_then(|i| Utf8Path::new(i).file_stem()).unwrap_or(""),
                });
            } else {
                targets.insert(name.clone(), Value::from(text));
            }
        }
        if is_foreach {
            targets.insert(name.clone(), Value::from(list));
        }
    }
    let item = match &node.item {
        Some(p) => item_value(
            p,
            if node.uses_item {
                Some(read_checked(src.files, expected, p)?)
            } else {
                None
            },
        ),
        None => Value::UNDEFINED,
    };
    let context = match &prompty {
        Some(p) => prompty_context(p, inputs, targets, node.item.as_ref().map(|_| item)),
        None if node.item.is_some() => {
            minijinja::context! { inputs => inputs, targets => targets, item => item }
        }
        None => minijinja::context! { inputs => inputs, targets => targets },
    };
    let prompt = compile(&RenderInput {
        template_path: Utf8Path::new(&node.template),
        template_source: prompty.as_ref().map_or(&template_source, |p| &p.body),
        partials: &partials,
        verbatim: &verbatim,
        context,
    })?;
    Ok(prompt)
}

/// The model `node` runs with: its target's, with the parameters of a
/// `.prompty` template's front matter over its settings. The template
/// must still have the digest in `expected` (when listed there).
pub(crate) fn node_model(
    src: &Sources<'_>,
    node: &Node,
    expected: &HashMap<&str, Digest>,
) -> std::result::Result<Arc<ModelConfig>, CompileError> {
    let model = &src.project.targets[node.target].model;
    if !is_prompty(&node.template) {
        return Ok(Arc::clone(model));
    }
    let text = read_text(src.files, expected, &node.template)?;
    match prompty_of(node, &text)? {
        Some(p) if !p.params.is_empty() => Ok(Arc::new(p.apply(model))),
        _ => Ok(Arc::clone(model)),
    }
}

/// The front matter of `node`'s template, if it is a `.prompty` file.
fn prompty_of(node: &Node, text: &str) -> std::result::Result<Option<Prompty>, CompileError> {
    if !is_prompty(&node.template) {
        return Ok(None);
    }
    let p = Prompty::parse(text).map_err(|e| e.into_error(Utf8Path::new(&node.template)))?;
    Ok(Some(p))
}

/// A `.prompty` body's context: every input by its bare name (bound, or
/// else its declared default), and `inputs`, `targets` and `item` as in
/// any template (they win over an input of the same name).
fn prompty_context(
    p: &Prompty,
    inputs: BTreeMap<String, Value>,
    targets: BTreeMap<String, Value>,
    item: Option<Value>,
) -> Value {
    let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
    for d in &p.inputs {
        if let Some(v) = &d.default {
            ctx.insert(d.name.clone(), Value::from_serialize(v));
        }
    }
    for (name, v) in &inputs {
        ctx.insert(name.clone(), v.clone());
    }
    ctx.insert("inputs".into(), Value::from(inputs));
    ctx.insert("targets".into(), Value::from(targets));
    if let Some(item) = item {
        ctx.insert("item".into(), item);
    }
    Value::from(ctx)
}

/// Reads a source file for compilation and checks it still has the digest
/// its fingerprint recorded: the prompt must be built from exactly the
/// bytes the record will claim.
fn read_text(
    files: &ProjectFiles,
    expected: &HashMap<&str, Digest>,
    path: &str,
) -> std::result::Result<String, CompileError> {
    let bytes = read_checked(files, expected, path)?;
    String::from_utf8(bytes).map_err(|_| CompileError::NotUtf8 { path: path.into() })
}

/// [`read_text`] without the UTF-8 check.
fn read_checked(
    files: &ProjectFiles,
    expected: &HashMap<&str, Digest>,
    path: &str,
) -> std::result::Result<Vec<u8>, CompileError> {
    let bytes = files.read(path)?;
    if expected.get(path).is_some_and(|d| *d != Digest::of(&bytes)) {
        return Err(CompileError::Changed { path: path.into() });
    }
    Ok(bytes)
}

fn not_utf8(path: &str) -> String {
    CompileError::NotUtf8 { path: path.into() }.to_string()
}

/// The text of an upstream output: from the store (verified), else from
/// the output file when it still has the expected digest.
pub(super) fn upstream_text(
    src: &Sources<'_>,
    node: &Node,
    digest: Digest,
) -> std::result::Result<String, CompileError> {
    let target = || node.key.clone();
    let bytes = match src.store.get(&digest) {
        ObjectRead::Found(b) => b,
        _ => {
            let b = (src.files.read(&node.output)).map_err(CompileError::UpstreamRead)?;
            if Digest::of(&b) != digest {
                return Err(CompileError::UpstreamChanged { target: target() });
            }
            b
        }
    };
    String::from_utf8(bytes).map_err(|_| CompileError::UpstreamNotUtf8 { target: target() })
}

/// `item`; its `content` is an error only where the template uses it,
/// so a template that reads `item.name` works on a file that is not text.
fn item_value(path: &str, content: Option<Vec<u8>>) -> Value {
    let content = match content.map(String::from_utf8) {
        Some(Ok(text)) => Value::from(text),
        Some(Err(_)) => Value::from(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            not_utf8(path),
        )),
        None => Value::from(""),
    };
    let p = Utf8Path::new(path);
    let name = p.file_name().unwrap_or(path);
    minijinja::context! {
        path => path,
        name => name,
        stem => p.file_stem().unwrap_or(name),
        dir => p.parent().map_or("", |d| d.as_str()),
        content => content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_that_changed_or_is_not_text_is_told_apart() {
        let t = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(t.path()).unwrap();
        std::fs::write(root.join("a.md"), "now").unwrap();
        std::fs::write(root.join("b.bin"), [0xff, 0xfe]).unwrap();
        let files = ProjectFiles::new(root, HashMap::default());
        let was = Digest::of(b"then");
        let expected: HashMap<&str, Digest> = [("a.md", was)].into_iter().collect();
        let changed = read_text(&files, &expected, "a.md").unwrap_err();
        assert!(matches!(&changed, CompileError::Changed { path } if path == "a.md"));
        assert_eq!(
            changed.to_string(),
            "`a.md` changed while the build was running; run `mkt build` again"
        );
        let binary = read_text(&files, &HashMap::default(), "b.bin").unwrap_err();
        assert!(matches!(&binary, CompileError::NotUtf8 { path } if path == "b.bin"));
        let missing = read_text(&files, &HashMap::default(), "gone.md").unwrap_err();
        assert!(matches!(missing, CompileError::Read(_)), "{missing:?}");
        assert_eq!(
            read_text(&files, &HashMap::default(), "a.md").unwrap(),
            "now"
        );
    }
}
