//! Compilation: a node's sources and upstream outputs rendered into its
//! compiled prompt.

use crate::config::Project;
use crate::files::ProjectFiles;
use crate::graph::{Graph, Node};
use crate::hash::Digest;
use crate::manifest::UpstreamRecord;
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

/// Renders `node`'s compiled prompt. Every source file must still have the
/// digest in `expected` (when listed there); `upstream` gives, in the
/// node's upstream order, the output each upstream node has now.
pub(crate) fn compile_node(
    src: &Sources<'_>,
    node: &Node,
    expected: &HashMap<&str, Digest>,
    upstream: &[UpstreamRecord],
) -> std::result::Result<crate::template::CompiledPrompt, String> {
    let template_source = read_text(src.files, expected, &node.template)?;
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
            let text = upstream_text(src, un, rec.output_digest)?;
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
    let context = if node.item.is_some() {
        minijinja::context! { inputs => inputs, targets => targets, item => item }
    } else {
        minijinja::context! { inputs => inputs, targets => targets }
    };
    let prompt = compile(&RenderInput {
        template_path: Utf8Path::new(&node.template),
        template_source: &template_source,
        partials: &partials,
        verbatim: &verbatim,
        context,
    })
    .map_err(|e| e.to_string())?;
    Ok(prompt)
}

/// Reads a source file for compilation and checks it still has the digest
/// its fingerprint recorded: the prompt must be built from exactly the
/// bytes the record will claim.
fn read_text(
    files: &ProjectFiles,
    expected: &HashMap<&str, Digest>,
    path: &str,
) -> std::result::Result<String, String> {
    let bytes = read_checked(files, expected, path)?;
    String::from_utf8(bytes).map_err(|_| not_utf8(path))
}

/// [`read_text`] without the UTF-8 check.
fn read_checked(
    files: &ProjectFiles,
    expected: &HashMap<&str, Digest>,
    path: &str,
) -> std::result::Result<Vec<u8>, String> {
    let bytes = files.read(path).map_err(|e| e.to_string())?;
    if expected.get(path).is_some_and(|d| *d != Digest::of(&bytes)) {
        return Err(format!(
            "`{path}` changed while the build was running; run `mkt build` again"
        ));
    }
    Ok(bytes)
}

fn not_utf8(path: &str) -> String {
    format!("`{path}` is not UTF-8 text")
}

/// The text of an upstream output: from the store (verified), else from
/// the output file when it still has the expected digest.
fn upstream_text(
    src: &Sources<'_>,
    node: &Node,
    digest: Digest,
) -> std::result::Result<String, String> {
    let bytes = match src.store.get(&digest) {
        ObjectRead::Found(b) => b,
        _ => {
            let b = src.files.read(&node.output).map_err(|e| e.to_string())?;
            if Digest::of(&b) != digest {
                return Err(format!(
                    "the output of `{}` changed during the build",
                    node.key
                ));
            }
            b
        }
    };
    String::from_utf8(bytes).map_err(|_| format!("the output of `{}` is not UTF-8 text", node.key))
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
