//! Templates: static analysis and compilation.
//!
//! **Analysis** finds, without rendering, every name a template can reach in
//! any branch: `inputs.NAME`, `targets.NAME`, `item`, partials named by
//! `{% include %}` / `{% import %}` / `{% from %}` / `{% extends %}`, and
//! files inserted by `verbatim("path")`. It works on minijinja's token
//! stream, so an `{% if %}` branch that never runs still counts. Names must
//! be literal (`targets.x` or `targets["x"]`, `include "p.md"`): a computed
//! name cannot be known before running, so it is an error, never a guess.
//!
//! **Compilation** renders the template with only what analysis recorded:
//! partials come from a per-render environment holding just the recorded
//! ones, `verbatim` only serves recorded paths and `targets` only holds the
//! recorded upstream outputs, so reaching anything else is an error.
//!
//! **Chat roles** (the Prompty convention): a template line that is exactly
//! `system:`, `user:` or `assistant:` starts a message with that role. Role
//! lines are recognised in templates and partials only, never in inserted
//! data, so an input document cannot forge a message boundary. Without role
//! lines the whole text is one user message, byte for byte; with them each
//! message's text is trimmed of surrounding whitespace and empty ones are
//! dropped.
//!
//! **Cache breakpoints**: a template or partial line that is exactly
//! `{# mkt:cache #}` (a Jinja comment, so any other renderer ignores it)
//! ends the prefix the provider is asked to cache there
//! ([`CompiledPrompt::cache_breaks`], `exec/cache.rs`). The line vanishes
//! whole, its line ending too, so a prompt with the marker is byte for
//! byte, and digest for digest, the prompt without it; like role lines,
//! data cannot forge one.

use crate::error::{Error, Location, Result};
use crate::hash::Digest;
use camino::Utf8Path;
use minijinja::machinery::{Token, tokenize};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::OnceLock;

/// A name a template refers to, with the line it is on (1-based).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub name: String,
    pub line: u32,
}

/// What one template file (template or partial) refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRefs {
    pub inputs: Vec<Ref>,
    /// The template uses `inputs` as a whole (e.g. loops over it).
    pub all_inputs: bool,
    pub targets: Vec<Ref>,
    pub partials: Vec<Ref>,
    pub verbatim: Vec<Ref>,
    pub uses_item: bool,
}

/// How many includes (or imports, or `extends`) may nest: minijinja stops
/// at a recursion depth of 500, and each include costs 10 of it.
pub const MAX_INCLUDE_DEPTH: usize = 49;

const ROLES: [&str; 3] = ["system", "user", "assistant"];
pub(crate) const ROLE_FN: &str = "__mkt_role__";
const CACHE_FN: &str = "__mkt_cache__";
/// The line that marks a cache breakpoint (module docs).
pub const CACHE_MARKER: &str = "{# mkt:cache #}";

/// Rewrites role lines and cache markers into calls that emit an
/// unforgeable marker. Line numbers are unchanged.
pub fn preprocess(source: &str) -> std::borrow::Cow<'_, str> {
    let is_role_line = |line: &str| {
        let l = line.trim_end();
        l.strip_suffix(':').is_some_and(|r| ROLES.contains(&r))
    };
    let is_cache_line = |line: &str| line.trim() == CACHE_MARKER;
    if !source.lines().any(|l| is_role_line(l) || is_cache_line(l)) {
        return std::borrow::Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len() + 64);
    for line in source.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        if is_role_line(body) {
            let role = body.trim_end().trim_end_matches(':');
            out.push_str(&format!("{{{{ {ROLE_FN}(\"{role}\") }}}}"));
            out.push_str(&line[body.len()..]);
        } else if is_cache_line(body) {
            // (the line ending stays, for the line numbers; the marker
            // takes it away from the rendered text: `take_cache_marks`)
            out.push_str(&format!("{{{{ {CACHE_FN}() }}}}"));
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn syntax_error(path: &Utf8Path, source: &str, err: &minijinja::Error) -> Error {
    let loc = match err.range() {
        Some(r) => Location::at_offset(path, source, r.start),
        None => Location {
            file: path.to_owned(),
            line: err.line().unwrap_or(1),
            col: 1,
        },
    };
    let help = match err.kind() {
        minijinja::ErrorKind::UndefinedError => Some(
            "every name must be defined; guard optional values with `is defined` or `| default(...)`"
                .to_string(),
        ),
        minijinja::ErrorKind::InvalidOperation if err.detail() == Some("recursion limit exceeded") => {
            Some(format!("includes, macro calls and loops nest too deeply (includes at most {MAX_INCLUDE_DEPTH} levels, fewer inside loops or macros); flatten the nesting"))
        }
        minijinja::ErrorKind::SyntaxError => {
            Some("see the template reference in README.md; literal `{{` can be written `{{ \"{{\" }}` or kept in a `verbatim(...)` file".to_string())
        }
        _ => None,
    };
    let mut msg = err.detail().unwrap_or("template error").to_string();
    if err.kind() == minijinja::ErrorKind::UndefinedError {
        // minijinja does not name the undefined value; its span does
        if let Some(expr) = err.range().and_then(|r| source.get(r)) {
            msg = format!("`{}` is not defined", expr.trim());
        }
    }
    if let Some(kind) = kind_word(err.kind()) {
        msg = format!("{kind}: {msg}");
    }
    Error::invalid(loc, msg, help)
}

fn kind_word(kind: minijinja::ErrorKind) -> Option<&'static str> {
    match kind {
        minijinja::ErrorKind::SyntaxError => Some("syntax error"),
        minijinja::ErrorKind::UndefinedError => Some("undefined value"),
        minijinja::ErrorKind::TemplateNotFound => Some("template not found"),
        minijinja::ErrorKind::UnknownFunction => Some("unknown function"),
        minijinja::ErrorKind::UnknownFilter => Some("unknown filter"),
        _ => None,
    }
}

/// Analyses one template or partial file (module docs). `path` is used only
/// in error messages.
pub fn analyse(path: &Utf8Path, source: &str) -> Result<TemplateRefs> {
    let source = preprocess(source);
    let source = source.as_ref();
    // A full parse first: syntax errors are reported with their position.
    minijinja::machinery::parse(
        source,
        path.as_str(),
        Default::default(),
        Default::default(),
    )
    .map_err(|e| syntax_error(path, source, &e))?;

    let mut toks = Vec::new();
    for t in tokenize(source, false, Default::default(), Default::default()) {
        toks.push(t.map_err(|e| syntax_error(path, source, &e))?);
    }
    let str_at = |i: usize| -> Option<String> {
        match toks.get(i).map(|t| &t.0) {
            Some(Token::Str(s)) => Some(s.to_string()),
            Some(Token::String(s)) => Some(s.to_string()),
            _ => None,
        }
    };
    let err_at = |i: usize, msg: String, help: &str| {
        let line = toks.get(i).map_or(1, |t| t.1.start_line as usize);
        let col = toks.get(i).map_or(1, |t| t.1.start_col as usize + 1);
        Error::invalid(
            Location {
                file: path.to_owned(),
                line,
                col,
            },
            msg,
            Some(help.to_string()),
        )
    };

    let mut refs = TemplateRefs::default();
    for i in 0..toks.len() {
        let line = toks[i].1.start_line as u32;
        let after_dot = i > 0 && matches!(toks[i - 1].0, Token::Dot);
        match &toks[i].0 {
            Token::Ident(kw @ ("include" | "import" | "extends" | "from"))
                if i > 0 && matches!(toks[i - 1].0, Token::BlockStart) =>
            {
                let mut names = Vec::new();
                if let Some(s) = str_at(i + 1) {
                    names.push(s);
                } else if matches!(toks.get(i + 1).map(|t| &t.0), Some(Token::BracketOpen)) {
                    // `{% include ["a.md", "b.md"] %}`: every listed partial
                    let mut j = i + 2;
                    while let Some(s) = str_at(j) {
                        names.push(s);
                        j += 1;
                        if matches!(toks.get(j).map(|t| &t.0), Some(Token::Comma)) {
                            j += 1;
                        }
                    }
                    if !matches!(toks.get(j).map(|t| &t.0), Some(Token::BracketClose)) {
                        names.clear();
                    }
                }
                if names.is_empty() {
                    return Err(err_at(
                        i + 1,
                        format!("`{kw}` must name its partial with a string literal"),
                        "write the path relative to the project root, e.g. `{% include \"partials/style.md\" %}`",
                    ));
                }
                for name in names {
                    refs.partials.push(Ref { name, line });
                }
            }
            Token::Ident("verbatim") if !after_dot => {
                let open = matches!(toks.get(i + 1).map(|t| &t.0), Some(Token::ParenOpen));
                let close = matches!(toks.get(i + 3).map(|t| &t.0), Some(Token::ParenClose));
                match str_at(i + 2) {
                    Some(name) if open && close => refs.verbatim.push(Ref { name, line }),
                    _ => {
                        return Err(err_at(
                            i,
                            "`verbatim` takes one string literal: the file to insert".to_string(),
                            "write `{{ verbatim(\"path/relative/to/root.txt\") }}`",
                        ));
                    }
                }
            }
            Token::Ident(var @ ("inputs" | "targets")) if !after_dot => {
                let name = match toks.get(i + 1).map(|t| &t.0) {
                    Some(Token::Dot) => match toks.get(i + 2).map(|t| &t.0) {
                        Some(Token::Ident(n)) => Some(n.to_string()),
                        _ => None,
                    },
                    Some(Token::BracketOpen) => {
                        let closed =
                            matches!(toks.get(i + 3).map(|t| &t.0), Some(Token::BracketClose));
                        str_at(i + 2).filter(|_| closed)
                    }
                    _ => None,
                };
                match (name, *var) {
                    (Some(name), "inputs") => refs.inputs.push(Ref { name, line }),
                    (Some(name), _) => refs.targets.push(Ref { name, line }),
                    (None, "inputs") => refs.all_inputs = true,
                    (None, _) => {
                        return Err(err_at(
                            i,
                            "`targets` must be used as `targets.NAME` so the dependency is known before the build".to_string(),
                            "name the upstream target literally, e.g. `{{ targets.outline }}`",
                        ));
                    }
                }
            }
            Token::Ident("item") if !after_dot => refs.uses_item = true,
            _ => {}
        }
    }
    Ok(refs)
}

/// One chat message of a compiled prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// The exact messages sent to a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CompiledPrompt {
    pub messages: Vec<Message>,
    /// Where `{# mkt:cache #}` lines ended a prefix to cache, in order: a
    /// hint for the provider, which no answer depends on, so not part of
    /// [`CompiledPrompt::canonical_json`] (nor of the prompt digest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_breaks: Vec<CacheBreak>,
}

/// A cache breakpoint: the prefix up to byte `at` of message `message`'s
/// content (`at` is on a character boundary, at most the content's length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CacheBreak {
    pub message: usize,
    pub at: usize,
}

impl CompiledPrompt {
    /// The bytes stored in the object store and hashed into the prompt
    /// digest: `{"messages":[{"role":..,"content":..},..]}`.
    pub fn canonical_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Canonical<'a> {
            messages: &'a [Message],
        }
        let c = Canonical {
            messages: &self.messages,
        };
        serde_json::to_vec(&c).expect("serialising strings cannot fail")
    }

    /// Reads back what [`CompiledPrompt::canonical_json`] wrote.
    pub fn from_canonical_json(bytes: &[u8]) -> Option<CompiledPrompt> {
        serde_json::from_slice(bytes).ok()
    }

    /// The prompt as plain text: a single user message as is, otherwise
    /// role lines followed by each message's text.
    pub fn to_text(&self) -> String {
        if let [m] = self.messages.as_slice()
            && m.role == "user"
        {
            return m.content.clone();
        }
        let mut s = String::new();
        for m in &self.messages {
            if !s.is_empty() {
                s.push('\n');
            }
            s.push_str(&m.role);
            s.push_str(":\n");
            s.push_str(&m.content);
            s.push('\n');
        }
        s
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.canonical_json())
    }
}

fn marker_nonce() -> &'static str {
    static NONCE: OnceLock<String> = OnceLock::new();
    NONCE.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = format!("{t}-{}", std::process::id());
        Digest::of(seed.as_bytes()).short()
    })
}

fn cache_mark() -> String {
    format!("\u{1}mkt-cache-{}\u{1}", marker_nonce())
}

/// `text` without its cache marks (each with the line ending after it,
/// which was the marker line's), and where they were in what is left.
fn take_cache_marks(text: &str, mark: &str) -> (String, Vec<usize>) {
    if !text.contains(mark) {
        return (text.to_string(), Vec::new());
    }
    let mut out = String::with_capacity(text.len());
    let mut at = Vec::new();
    let mut parts = text.split(mark);
    out.push_str(parts.next().unwrap_or(""));
    for part in parts {
        at.push(out.len());
        let part = (part
            .strip_prefix("\r\n")
            .or_else(|| part.strip_prefix('\n')))
        .unwrap_or(part);
        out.push_str(part);
    }
    (out, at)
}

fn split_roles(text: String) -> CompiledPrompt {
    let marker = format!("\u{1}mkt-role-{}:", marker_nonce());
    let mark = cache_mark();
    if !text.contains(&marker) {
        let (content, at) = take_cache_marks(&text, &mark);
        return CompiledPrompt {
            messages: vec![Message {
                role: "user".into(),
                content,
            }],
            cache_breaks: at
                .into_iter()
                .map(|at| CacheBreak { message: 0, at })
                .collect(),
        };
    }
    let mut p = CompiledPrompt::default();
    let mut push = |role: &str, content: &str| {
        let (content, at) = take_cache_marks(content, &mark);
        let lead = content.len() - content.trim_start().len();
        let content = content.trim();
        if !content.is_empty() {
            let message = p.messages.len();
            for a in at {
                let at = a.saturating_sub(lead).min(content.len());
                p.cache_breaks.push(CacheBreak { message, at });
            }
            p.messages.push(Message {
                role: role.to_string(),
                content: content.to_string(),
            });
        } else if let (Some(last), false) = (p.messages.last(), at.is_empty()) {
            // a mark in a message that is dropped ends the one before
            let (message, at) = (p.messages.len() - 1, last.content.len());
            p.cache_breaks.push(CacheBreak { message, at });
        }
    };
    let mut parts = text.split(&marker);
    if let Some(lead) = parts.next() {
        push("user", lead);
    }
    for part in parts {
        // part = "ROLE\u{1}rest"
        let (role, rest) = part.split_once('\u{1}').unwrap_or(("user", part));
        push(role, rest);
    }
    p.cache_breaks.dedup();
    p
}

/// Everything a compilation may reach, gathered by the caller from what
/// analysis recorded.
pub struct RenderInput<'a> {
    pub template_path: &'a Utf8Path,
    pub template_source: &'a str,
    /// Recorded partials: name → source.
    pub partials: &'a BTreeMap<String, Arc<str>>,
    /// Recorded verbatim files: path → contents.
    pub verbatim: &'a BTreeMap<String, Arc<str>>,
    /// `inputs`, `targets` and (for `foreach`) `item`.
    pub context: Value,
}

/// Renders a template into its compiled prompt (module docs).
pub fn compile(input: &RenderInput<'_>) -> Result<CompiledPrompt> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    let sources: BTreeMap<String, String> = input
        .partials
        .iter()
        .map(|(k, v)| (k.clone(), preprocess(v).into_owned()))
        .collect();
    for (name, src) in &sources {
        env.add_template(name, src)
            .map_err(|e| syntax_error(Utf8Path::new(name), src, &e))?;
    }
    // names in templates are project paths, normalised as analysis did
    // (`./p.md` is `p.md`)
    env.set_path_join_callback(|name, _parent| {
        crate::config::normalise_project_path(name)
            .map_or_else(|_| name.to_string().into(), Into::into)
    });
    let verbatim = input.verbatim.clone();
    env.add_function(
        "verbatim",
        move |path: String| -> Result<String, minijinja::Error> {
            let path = crate::config::normalise_project_path(&path).unwrap_or(path);
            verbatim.get(&path).map(|s| s.to_string()).ok_or_else(|| {
                minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("`verbatim(\"{path}\")` was not found by analysis"),
                )
            })
        },
    );
    let nonce = marker_nonce();
    env.add_function(ROLE_FN, move |role: String| {
        format!("\u{1}mkt-role-{nonce}:{role}\u{1}")
    });
    env.add_function(CACHE_FN, cache_mark);
    let main = preprocess(input.template_source);
    let name = input.template_path.as_str();
    let tmpl = env
        .template_from_named_str(name, &main)
        .map_err(|e| syntax_error(input.template_path, &main, &e))?;
    let text = tmpl.render(&input.context).map_err(|e| {
        // An error inside a partial is wrapped in one "error in" per
        // include: the innermost says what and where.
        let e = innermost(&e);
        // Errors inside a partial carry the partial's name.
        let (path, src) = match e.name() {
            Some(n) if n != name => (Utf8Path::new(n), sources.get(n).map_or("", |s| s.as_str())),
            _ => (input.template_path, main.as_ref()),
        };
        syntax_error(path, src, e)
    })?;
    Ok(split_roles(text))
}

fn innermost(e: &minijinja::Error) -> &minijinja::Error {
    let mut e = e;
    while let Some(inner) = std::error::Error::source(e).and_then(|s| s.downcast_ref()) {
        e = inner;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(src: &str) -> TemplateRefs {
        analyse(Utf8Path::new("t.md"), src).unwrap()
    }

    fn names(r: &[Ref]) -> Vec<&str> {
        r.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn finds_references_in_every_branch() {
        let r = refs(
            "{% if false %}{{ targets.outline }}{% else %}{{ inputs.doc }}{% endif %}\n\
             {% include \"partials/a.md\" %}{{ verbatim(\"raw/x.txt\") }}{{ targets[\"b\"] }}{{ item.stem }}",
        );
        assert_eq!(names(&r.targets), ["outline", "b"]);
        assert_eq!(names(&r.inputs), ["doc"]);
        assert_eq!(names(&r.partials), ["partials/a.md"]);
        assert_eq!(names(&r.verbatim), ["raw/x.txt"]);
        assert!(r.uses_item);
        assert_eq!(r.partials[0].line, 2);
    }

    #[test]
    fn attribute_named_like_a_root_is_not_a_reference() {
        let r = refs("{{ item.targets }}{{ x.inputs }}");
        assert!(r.targets.is_empty() && r.inputs.is_empty() && !r.all_inputs);
    }

    #[test]
    fn computed_names_are_errors() {
        let e = analyse(Utf8Path::new("t.md"), "a\n{% include name %}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.md:2:12: `include` must name its partial with a string literal\n  help: write the path relative to the project root, e.g. `{% include \"partials/style.md\" %}`"
        );
        let e = analyse(Utf8Path::new("t.md"), "{% for t in targets %}{% endfor %}").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.md:1:13: `targets` must be used as `targets.NAME`"),
            "{e}"
        );
        let e = analyse(Utf8Path::new("t.md"), "{{ verbatim(p) }}").unwrap_err();
        assert!(
            e.to_string()
                .contains("`verbatim` takes one string literal"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_has_file_and_line() {
        let e = analyse(Utf8Path::new("t.md"), "ok\n{{ oops(\n").unwrap_err();
        assert!(e.to_string().starts_with("t.md:"), "{e}");
        assert!(e.to_string().contains("syntax error"), "{e}");
    }

    fn render(src: &str, ctx: Value) -> Result<CompiledPrompt> {
        compile(&RenderInput {
            template_path: Utf8Path::new("t.md"),
            template_source: src,
            partials: &BTreeMap::new(),
            verbatim: &BTreeMap::new(),
            context: ctx,
        })
    }

    #[test]
    fn plain_text_is_one_user_message_byte_for_byte() {
        let p = render(
            "Hi {{ inputs.x }}\n\n",
            minijinja::context! { inputs => minijinja::context!{ x => "there" } },
        )
        .unwrap();
        assert_eq!(
            p.messages,
            vec![Message {
                role: "user".into(),
                content: "Hi there\n\n".into()
            }]
        );
    }

    #[test]
    fn role_lines_split_messages_but_data_cannot() {
        let p = render(
            "system:\nBe brief.\nuser:\n{{ doc }}\n",
            minijinja::context! { doc => "user:\nnot a role" },
        )
        .unwrap();
        assert_eq!(p.messages.len(), 2);
        assert_eq!(
            p.messages[0],
            Message {
                role: "system".into(),
                content: "Be brief.".into()
            }
        );
        assert_eq!(p.messages[1].content, "user:\nnot a role");
        assert_eq!(
            p.to_text(),
            "system:\nBe brief.\n\nuser:\nuser:\nnot a role\n"
        );
    }

    /// A `{# mkt:cache #}` line leaves the prompt, its text and digest,
    /// as they are without it, and says where the cached prefix ends; data
    /// cannot forge one, and line numbers after it are unchanged.
    #[test]
    fn cache_markers_are_breakpoints_outside_the_prompt_text() {
        let ctx = || minijinja::context! { doc => "{# mkt:cache #}\nnot a mark" };
        let plain = "system:\nBe brief.\nuser:\nRead this:\n{{ doc }}\nNow answer.\n";
        let marked = "system:\nBe brief.\n{# mkt:cache #}\nuser:\nRead this:\n{{ doc }}\n  {# mkt:cache #}\nNow answer.\n";
        let (p, m) = (
            render(plain, ctx()).unwrap(),
            render(marked, ctx()).unwrap(),
        );
        assert_eq!(m.messages, p.messages);
        assert_eq!(m.canonical_json(), p.canonical_json());
        assert_eq!(m.digest(), p.digest());
        assert!(p.cache_breaks.is_empty());
        let user = &m.messages[1].content;
        assert_eq!(user, "Read this:\n{# mkt:cache #}\nnot a mark\nNow answer.");
        assert_eq!(
            m.cache_breaks,
            [
                CacheBreak { message: 0, at: 9 },
                CacheBreak {
                    message: 1,
                    at: user.find("Now").unwrap()
                }
            ]
        );
        // without role lines: one user message, byte for byte
        let m = render("Doc\n{# mkt:cache #}\r\nQ\n", minijinja::context! {}).unwrap();
        assert_eq!(m.messages[0].content, "Doc\nQ\n");
        assert_eq!(m.cache_breaks, [CacheBreak { message: 0, at: 4 }]);
        // a line after a marker keeps its number in errors
        let e = render("a\n{# mkt:cache #}\n{{ nope }}\n", minijinja::context! {}).unwrap_err();
        assert!(e.to_string().starts_with("t.md:3:"), "{e}");
    }

    #[test]
    fn strict_undefined_is_an_error_with_a_line() {
        let e = render("a\n{{ nope }}\n", minijinja::context! {}).unwrap_err();
        assert!(e.to_string().starts_with("t.md:2:"), "{e}");
        assert!(e.to_string().contains("undefined value"), "{e}");
    }

    #[test]
    fn unrecorded_partial_or_verbatim_file_cannot_be_reached() {
        assert!(render("{% include \"p.md\" %}", minijinja::context! {}).is_err());
        let e = render("{{ verbatim(\"x\") }}", minijinja::context! {}).unwrap_err();
        assert!(e.to_string().contains("was not found by analysis"), "{e}");
    }
}
