//! Template analysis, preprocessing and compilation on arbitrary text, and
//! the same text read as a `.prompty` file: errors are fine, panics are not.
#![no_main]

use camino::Utf8Path;
use libfuzzer_sys::fuzz_target;
use markitect::prompty::{Prompty, body_names};
use markitect::template::{RenderInput, analyse, compile, preprocess};
use minijinja::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

fuzz_target!(|source: &str| {
    // as a `.prompty` file: the front matter read, the body analysed as
    // the build analyses it
    if let Ok(p) = Prompty::parse(source) {
        let prompty = Utf8Path::new("t.prompty");
        if analyse(prompty, &p.body).is_ok() {
            let _ = body_names(prompty, &p.body);
        }
    }
    let _ = preprocess(source);
    let path = Utf8Path::new("t.md");
    let Ok(refs) = analyse(path, source) else {
        return;
    };
    // A context like the build's: every recorded name resolves, partials
    // and verbatim files hold a little text (a partial that includes
    // itself is left to minijinja's recursion limit).
    let mut inputs = BTreeMap::new();
    for r in &refs.inputs {
        inputs.insert(
            r.name.clone(),
            Value::from_serialize(serde_like_doc(&r.name)),
        );
    }
    let mut targets = BTreeMap::new();
    for r in &refs.targets {
        targets.insert(
            r.name.clone(),
            Value::from_serialize(serde_like_doc(&r.name)),
        );
    }
    let partials: BTreeMap<String, Arc<str>> = refs
        .partials
        .iter()
        .map(|r| (r.name.clone(), Arc::from("partial {{ 1 + 1 }}")))
        .collect();
    let verbatim: BTreeMap<String, Arc<str>> = refs
        .verbatim
        .iter()
        .map(|r| (r.name.clone(), Arc::from("{{ not rendered }}")))
        .collect();
    let context = minijinja::context! {
        inputs => inputs,
        targets => targets,
        item => serde_like_doc("item"),
    };
    let input = RenderInput {
        template_path: path,
        template_source: source,
        partials: &partials,
        verbatim: &verbatim,
        context,
    };
    if let Ok(p) = compile(&input) {
        let _ = p.canonical_json();
        let _ = p.to_text();
    }
});

/// What a template sees for one file: `{path, content}`.
fn serde_like_doc(name: &str) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("path", format!("docs/{name}.md")),
        ("content", format!("content of {name}\nsystem:\n")),
    ])
}
