//! `.prompty` files as templates: Prompty's prompt format (Markdown with a
//! YAML front matter between `---` lines), read the way Prompty's own
//! runtimes read it, in both of its schemas (v1: `model.parameters` and
//! `inputs` as a mapping; v2: `model.options` and `inputs` as a list).
//!
//! What mkt takes from the front matter:
//! - **model parameters** (`temperature`, `max_tokens`, `top_p`, `stop`,
//!   `seed`; in v2 `maxOutputTokens`, `topP`, `stopSequences`) become the
//!   target's model settings, over those of its `[models.NAME]`, and are
//!   hashed like any setting. A parameter mkt does not send is an error:
//!   dropping it would run the prompt otherwise than the file says.
//! - **inputs**: each declared name is available in the body by its bare
//!   name, bound from the target's `inputs` table or else its `default`.
//!   (Every one of the target's inputs is, too, as Prompty renders the body
//!   with all its inputs.)
//! - `api`/`apiType` must be `chat`, the template format `jinja2`.
//!
//! What it leaves: `name`, `description`, `metadata`, `sample`, `outputs`,
//! `tools` and where the model runs (`configuration`, `connection`, `id`,
//! `provider`): `prompts.toml` says that, so one file runs unchanged on the
//! mock in a test and on a real model. None of it is in the prompt, so
//! editing it re-runs nothing. `${env:...}`/`${file:...}` references are
//! refused where mkt would use them: a build does not read the environment.
//!
//! **The body** is a template like any other, with Prompty's role lines:
//! `system:`, `user:`, `assistant:`, case-insensitive, possibly indented or
//! after a `#`; text before the first one is a system message, as in
//! Prompty. [`Prompty::body`] is the template mkt renders: the front
//! matter's lines blanked, so every line number is the file's.

pub mod yaml;

use crate::config::{ModelConfig, Provider, TargetDecl};
use crate::error::{Error, Location};
use crate::template::Ref;
use camino::Utf8Path;
use yaml::{Node, Value};

/// Whether a template path names a Prompty file.
pub fn is_prompty(path: &str) -> bool {
    path.ends_with(".prompty")
}

/// The model setting a front-matter parameter sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Temperature,
    TopP,
    MaxTokens,
    Seed,
    Stop,
}

impl Setting {
    /// Its name in `prompts.toml` (and in the InputBundleHash).
    pub fn key(self) -> &'static str {
        match self {
            Setting::Temperature => "temperature",
            Setting::TopP => "top_p",
            Setting::MaxTokens => "max_tokens",
            Setting::Seed => "seed",
            Setting::Stop => "stop",
        }
    }

    /// The setting a parameter's name, in either schema, stands for.
    fn named(name: &str) -> Option<Setting> {
        Some(match name {
            "temperature" => Setting::Temperature,
            "top_p" | "topP" => Setting::TopP,
            "max_tokens" | "max_completion_tokens" | "maxOutputTokens" => Setting::MaxTokens,
            "seed" => Setting::Seed,
            "stop" | "stopSequences" => Setting::Stop,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Number(f64),
    Count(u64),
    Int(i64),
    Strings(Vec<String>),
}

/// One model parameter of the front matter, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub setting: Setting,
    /// As written (`maxOutputTokens`).
    pub written: String,
    pub line: usize,
    pub value: ParamValue,
}

/// A name declared under `inputs`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredInput {
    pub name: String,
    pub line: usize,
    pub default: Option<serde_json::Value>,
}

/// A `.prompty` file, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompty {
    pub params: Vec<Param>,
    pub inputs: Vec<DeclaredInput>,
    /// The body as mkt renders it (module docs).
    pub body: String,
}

/// What is wrong with a `.prompty` file, and on which line.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptyError {
    pub line: usize,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ErrorKind {
    #[error("the front matter opened here is never closed")]
    Unclosed,
    #[error("the front matter is not valid YAML: {0}")]
    Yaml(String),
    #[error("the front matter is not a YAML mapping")]
    NotAMapping,
    #[error("`{0}` must be a mapping")]
    NotMapping(String),
    #[error("`{key}` is `{value}`, but mkt sends chat messages")]
    NotChat { key: String, value: String },
    #[error("the template format is `{0}`, but mkt renders Jinja templates")]
    NotJinja(String),
    #[error("`{key}` in `model.{section}` is not a model parameter mkt sends")]
    UnknownParameter { key: String, section: String },
    #[error("`{key}` must be {expected}, not `{got}`")]
    ParameterType {
        key: String,
        expected: &'static str,
        got: String,
    },
    #[error("`{key}` and `{other}` both set `{setting}`")]
    Twice {
        key: String,
        other: String,
        setting: &'static str,
    },
    #[error("`{0}` is a Prompty reference, which mkt does not resolve")]
    Reference(String),
    #[error("`inputs` must be a mapping of input names or a list of `- name: ...` items")]
    InputsShape,
    #[error("an item of `inputs` has no `name`")]
    InputWithoutName,
    #[error("the input name `{0}` cannot be written bare in a template")]
    InputName(String),
    #[error("input `{input}` has no `default`, and target `{target}` binds no input of that name")]
    Unbound { input: String, target: String },
    #[error(
        "`{name}` is neither an input of target `{target}` nor declared under `inputs` in the front matter"
    )]
    Undeclared { name: String, target: String },
    #[error(
        "`{key}` is not a setting of the `{provider}` provider (model `{model}` of target `{target}`)"
    )]
    NotForProvider {
        key: String,
        provider: &'static str,
        model: String,
        target: String,
    },
}

impl ErrorKind {
    /// What to do about it.
    pub fn help(&self) -> String {
        match self {
            ErrorKind::Unclosed => "end the front matter with a line `---`".into(),
            ErrorKind::Yaml(_) => "the front matter is YAML between two `---` lines".into(),
            ErrorKind::NotAMapping => "write `key: value` lines, e.g. `name: summarise`".into(),
            ErrorKind::NotMapping(key) => format!("write `{key}:` followed by indented `key: value` lines"),
            ErrorKind::NotChat { key, .. } => format!("remove `{key}`, or set it to `chat`"),
            ErrorKind::NotJinja(_) => "write the body in Jinja (`{{ name }}`) and remove `template`, or set it to `jinja2`".into(),
            ErrorKind::UnknownParameter { key, .. } => format!(
                "mkt sends `temperature`, `max_tokens`, `top_p`, `stop` and `seed` (in `model.options`: `maxOutputTokens`, `topP`, `stopSequences`); remove `{key}`"
            ),
            ErrorKind::ParameterType { .. } => "e.g. `temperature: 0.2`, `max_tokens: 256`, `stop: [\"END\"]`".into(),
            ErrorKind::Twice { key, .. } => format!("keep one of them; remove `{key}`"),
            ErrorKind::Reference(_) => "a build does not read the environment: write the value out, or bind it from a file in the target's `inputs`".into(),
            ErrorKind::InputsShape | ErrorKind::InputWithoutName => {
                "e.g. `inputs:` then `  question:` then `    default: What is mkt?`".into()
            }
            ErrorKind::InputName(_) => "use letters, digits and `_`, not starting with a digit".into(),
            ErrorKind::Unbound { input, target } => format!(
                "add `{input} = \"path\"` to `inputs` of `[targets.{target}]` in `prompts.toml`, or give `{input}` a `default`"
            ),
            ErrorKind::Undeclared { name, target } => format!(
                "add `{name} = \"path\"` to `inputs` of `[targets.{target}]` in `prompts.toml`, or declare `{name}` under `inputs` with a `default`"
            ),
            ErrorKind::NotForProvider { key, .. } => {
                format!("remove `{key}` from the front matter, or run the target on a model that has it")
            }
        }
    }
}

impl PromptyError {
    fn at(line: usize, kind: ErrorKind) -> PromptyError {
        PromptyError { line, kind }
    }

    /// The error a user sees: `FILE:LINE:1: message` and its help.
    pub fn into_error(self, path: &Utf8Path) -> Error {
        let help = Some(self.kind.help());
        Error::invalid(
            Location {
                file: path.to_owned(),
                line: self.line,
                col: 1,
            },
            self.kind.to_string(),
            help,
        )
    }
}

type Result<T> = std::result::Result<T, PromptyError>;

impl Prompty {
    /// Reads a `.prompty` file's text (module docs).
    pub fn parse(text: &str) -> Result<Prompty> {
        let (front, body) = split(text)?;
        let mut p = Prompty {
            params: Vec::new(),
            inputs: Vec::new(),
            body,
        };
        let Some((yaml_text, first_line)) = front else {
            return Ok(p);
        };
        let doc = yaml::parse(yaml_text, first_line)
            .map_err(|e| PromptyError::at(e.line, ErrorKind::Yaml(e.why)))?;
        match &doc.value {
            Value::Null => return Ok(p),
            Value::Map(_) => {}
            _ => return Err(PromptyError::at(doc.line, ErrorKind::NotAMapping)),
        }
        if let Some(t) = doc.get("template") {
            check_template(t)?;
        }
        if let Some(model) = doc.get("model") {
            p.params = model_params(model)?;
        }
        if let Some(inputs) = doc.get("inputs") {
            p.inputs = declared_inputs(inputs)?;
        }
        Ok(p)
    }

    /// `model` with the front matter's parameters over its settings.
    pub fn apply(&self, model: &ModelConfig) -> ModelConfig {
        let mut m = model.clone();
        let s = &mut m.settings;
        for p in &self.params {
            // `param_value` gives each setting its one kind of value
            match (p.setting, &p.value) {
                (Setting::Temperature, ParamValue::Number(v)) => s.temperature = Some(*v),
                (Setting::TopP, ParamValue::Number(v)) => s.top_p = Some(*v),
                (Setting::MaxTokens, ParamValue::Count(v)) => s.max_tokens = Some(*v),
                (Setting::Seed, ParamValue::Int(v)) => s.seed = Some(*v),
                (Setting::Stop, ParamValue::Strings(v)) => s.stop = Some(v.clone()),
                _ => unreachable!("`{}` read as {:?}", p.written, p.value),
            }
        }
        m
    }

    /// The checks that need the target: each declared input is bound or
    /// has a default, each bare name of the body is an input, and the
    /// parameters are settings of the target's provider. `names` are the
    /// bare names the body reads ([`body_names`]). Returns the names of
    /// the target's inputs the body can read.
    pub fn check_target<'d>(&self, decl: &'d TargetDecl, names: &[Ref]) -> Result<Vec<&'d str>> {
        let target = || decl.name.clone();
        let bound = |name: &str| decl.inputs.iter().any(|i| i.name == name);
        for d in &self.inputs {
            if !bound(&d.name) && d.default.is_none() {
                let kind = ErrorKind::Unbound {
                    input: d.name.clone(),
                    target: target(),
                };
                return Err(PromptyError::at(d.line, kind));
            }
        }
        for r in names {
            if !bound(&r.name) && !self.inputs.iter().any(|d| d.name == r.name) {
                let kind = ErrorKind::Undeclared {
                    name: r.name.clone(),
                    target: target(),
                };
                return Err(PromptyError::at(r.line as usize, kind));
            }
        }
        if matches!(decl.model.provider, Provider::Openai | Provider::Anthropic) {
            let keys = decl.model.provider.keys();
            if let Some(p) = self
                .params
                .iter()
                .find(|p| !keys.contains(&p.setting.key()))
            {
                let kind = ErrorKind::NotForProvider {
                    key: p.written.clone(),
                    provider: decl.model.provider.as_str(),
                    model: decl.model.name.clone(),
                    target: target(),
                };
                return Err(PromptyError::at(p.line, kind));
            }
        }
        // every input is readable by its bare name, so every one the
        // body names or the front matter declares is a dependency
        let wanted =
            |n: &str| names.iter().any(|r| r.name == n) || self.inputs.iter().any(|d| d.name == n);
        Ok(decl
            .inputs
            .iter()
            .filter(|i| wanted(&i.name))
            .map(|i| i.name.as_str())
            .collect())
    }
}

/// Splits the front matter (its text and first line) from the body,
/// which comes back as the template mkt renders (module docs).
fn split(text: &str) -> Result<(Option<(&str, usize)>, String)> {
    let is_fence = |l: &str| matches!(l.trim(), "---" | "+++");
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    // text before any role line is a system message, as in Prompty
    let mut body = format!("{{{{ {}(\"system\") }}}}", crate::template::ROLE_FN);
    let open = (lines.iter().position(|l| !l.trim().is_empty())).filter(|&o| is_fence(lines[o]));
    let Some(open) = open else {
        body_lines(&mut body, &lines);
        return Ok((None, body));
    };
    let close = (open + 1..lines.len())
        .find(|&i| is_fence(lines[i]))
        .ok_or(PromptyError::at(open + 1, ErrorKind::Unclosed))?;
    let len = |ls: &[&str]| ls.iter().map(|l| l.len()).sum::<usize>();
    let start = len(&lines[..=open]);
    let end = start + len(&lines[open + 1..close]);
    // the front matter's lines stay, blank, so that lines keep their numbers
    for line in &lines[..=close] {
        body.push_str(&line[line.trim_end_matches(['\n', '\r']).len()..]);
    }
    body_lines(&mut body, &lines[close + 1..]);
    Ok((Some((&text[start..end], open + 2)), body))
}

/// Appends body lines, Prompty's role lines written as mkt's.
fn body_lines(body: &mut String, lines: &[&str]) {
    for line in lines {
        let content = line.trim_end_matches(['\n', '\r']);
        match role_line(content) {
            Some(role) => {
                body.push_str(role);
                body.push(':');
                body.push_str(&line[content.len()..]);
            }
            None => body.push_str(line),
        }
    }
}

/// The role a Prompty role line starts: `system:`, `  User:`, `# assistant:`.
fn role_line(line: &str) -> Option<&'static str> {
    let l = line.trim();
    let l = l.strip_prefix('#').unwrap_or(l).trim_start();
    let role = l.strip_suffix(':')?.trim_end();
    ["system", "user", "assistant"]
        .into_iter()
        .find(|r| r.eq_ignore_ascii_case(role))
}

fn check_template(t: &Node) -> Result<()> {
    // `template: jinja2`, `template: {format: jinja2}` or
    // `template: {format: {kind: jinja2}, parser: {kind: prompty}}`
    let kind = |n: &Node| {
        n.as_str()
            .map(str::to_string)
            .or_else(|| n.get("kind").map(Node::shown))
    };
    let format = match &t.value {
        Value::Map(_) => t.get("format").map(|f| (kind(f), f.line)),
        _ => Some((kind(t), t.line)),
    };
    if let Some((Some(f), line)) = format
        && !f.eq_ignore_ascii_case("jinja2")
        && !f.eq_ignore_ascii_case("jinja")
    {
        return Err(PromptyError::at(line, ErrorKind::NotJinja(f)));
    }
    Ok(())
}

fn model_params(model: &Node) -> Result<Vec<Param>> {
    // `model: gpt-4` only names the model, which `prompts.toml` decides
    if !matches!(model.value, Value::Map(_)) {
        return Ok(Vec::new());
    }
    for key in ["api", "apiType"] {
        if let Some(api) = model.get(key)
            && api.as_str() != Some("chat")
        {
            let kind = ErrorKind::NotChat {
                key: format!("model.{key}"),
                value: api.shown(),
            };
            return Err(PromptyError::at(api.line, kind));
        }
    }
    let mut params: Vec<Param> = Vec::new();
    for section in ["parameters", "options"] {
        let Some(node) = model.get(section) else {
            continue;
        };
        let pairs = match &node.value {
            Value::Map(pairs) => pairs,
            Value::Null => continue,
            _ => {
                let kind = ErrorKind::NotMapping(format!("model.{section}"));
                return Err(PromptyError::at(node.line, kind));
            }
        };
        for (k, v) in pairs {
            let key = k.shown();
            let Some(setting) = Setting::named(&key) else {
                let kind = ErrorKind::UnknownParameter {
                    key,
                    section: section.into(),
                };
                return Err(PromptyError::at(k.line, kind));
            };
            if let Some(other) = params.iter().find(|p| p.setting == setting) {
                let kind = ErrorKind::Twice {
                    key,
                    other: other.written.clone(),
                    setting: setting.key(),
                };
                return Err(PromptyError::at(k.line, kind));
            }
            params.push(Param {
                setting,
                line: k.line,
                value: param_value(setting, &key, v)?,
                written: key,
            });
        }
    }
    Ok(params)
}

fn param_value(setting: Setting, key: &str, v: &Node) -> Result<ParamValue> {
    no_reference(v)?;
    let wrong = |expected| {
        let kind = ErrorKind::ParameterType {
            key: key.to_string(),
            expected,
            got: v.shown(),
        };
        Err(PromptyError::at(v.line, kind))
    };
    match (setting, &v.value) {
        (Setting::Temperature | Setting::TopP, Value::Float(f)) if f.is_finite() => {
            Ok(ParamValue::Number(*f))
        }
        (Setting::Temperature | Setting::TopP, Value::Int(i)) => Ok(ParamValue::Number(*i as f64)),
        (Setting::Temperature | Setting::TopP, _) => wrong("a finite number"),
        (Setting::MaxTokens, Value::Int(i)) if *i >= 1 => Ok(ParamValue::Count(*i as u64)),
        (Setting::MaxTokens, _) => wrong("a whole number of at least 1"),
        (Setting::Seed, Value::Int(i)) => Ok(ParamValue::Int(*i)),
        (Setting::Seed, _) => wrong("a whole number"),
        (Setting::Stop, Value::Str(s)) => Ok(ParamValue::Strings(vec![s.clone()])),
        (Setting::Stop, Value::Seq(items)) => {
            let strings: Option<Vec<String>> = items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect();
            match strings {
                Some(s) => Ok(ParamValue::Strings(s)),
                None => wrong("a string or a list of strings"),
            }
        }
        (Setting::Stop, _) => wrong("a string or a list of strings"),
    }
}

/// Refuses a `${env:...}` or `${file:...}` reference anywhere in `v`.
fn no_reference(v: &Node) -> Result<()> {
    match &v.value {
        Value::Str(s) if s.starts_with("${") && s.ends_with('}') => {
            Err(PromptyError::at(v.line, ErrorKind::Reference(s.clone())))
        }
        Value::Seq(items) => items.iter().try_for_each(no_reference),
        Value::Map(pairs) => pairs.iter().try_for_each(|(_, v)| no_reference(v)),
        _ => Ok(()),
    }
}

fn declared_inputs(inputs: &Node) -> Result<Vec<DeclaredInput>> {
    // (name node, its declaration)
    let mut decls: Vec<(String, usize, &Node)> = Vec::new();
    match &inputs.value {
        Value::Null => {}
        // v1: `question: {type: string, default: ...}`, or `question: default`
        Value::Map(pairs) => {
            for (k, v) in pairs {
                decls.push((k.shown(), k.line, v));
            }
        }
        // v2: `- name: question` with `kind`, `default`, ...
        Value::Seq(items) => {
            for item in items {
                let name = item
                    .get("name")
                    .and_then(|n| n.as_str())
                    .ok_or(PromptyError::at(item.line, ErrorKind::InputWithoutName))?;
                decls.push((name.to_string(), item.line, item));
            }
        }
        _ => return Err(PromptyError::at(inputs.line, ErrorKind::InputsShape)),
    }
    let mut out = Vec::with_capacity(decls.len());
    for (name, line, v) in decls {
        if !is_identifier(&name) {
            return Err(PromptyError::at(line, ErrorKind::InputName(name)));
        }
        let default = match &v.value {
            Value::Map(_) => v.get("default"),
            Value::Null => None,
            // the scalar shorthand: `firstName: Jane` is a default
            _ => Some(v),
        };
        let default = match default {
            Some(d) if d.value != Value::Null => {
                no_reference(d)?;
                Some(d.to_json())
            }
            _ => None,
        };
        out.push(DeclaredInput {
            name,
            line,
            default,
        });
    }
    Ok(out)
}

/// A name a template can write bare (`{{ first_name }}`).
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The names the body reads bare that it does not set itself (no loop
/// variable, `set`, macro or import), each with its first line; `inputs`,
/// `targets`, `item` and the template functions are not listed. The body
/// must have passed [`crate::template::analyse`].
pub fn body_names(path: &Utf8Path, body: &str) -> crate::error::Result<Vec<Ref>> {
    use minijinja::machinery::{Token, tokenize};
    let env = minijinja::Environment::new();
    let tmpl = env.template_from_str(body).map_err(|e| {
        Error::invalid(
            Location {
                file: path.to_owned(),
                line: e.line().unwrap_or(1),
                col: 1,
            },
            e.to_string(),
            None,
        )
    })?;
    let globals: Vec<&str> = env.globals().map(|(n, _)| n).collect();
    let reserved = [
        "inputs",
        "targets",
        "item",
        "verbatim",
        crate::template::ROLE_FN,
    ];
    let mut names: Vec<String> = tmpl
        .undeclared_variables(false)
        .into_iter()
        .filter(|n| !globals.contains(&n.as_str()) && !reserved.contains(&n.as_str()))
        .collect();
    names.sort();
    let mut refs = Vec::with_capacity(names.len());
    let mut after_dot = false;
    for t in tokenize(body, false, Default::default(), Default::default()).flatten() {
        if let Token::Ident(n) = t.0
            && !after_dot
            && let Some(i) = names.iter().position(|x| x == n)
        {
            refs.push(Ref {
                name: names.remove(i),
                line: t.1.start_line as u32,
            });
        }
        after_dot = matches!(t.0, Token::Dot);
    }
    refs.sort_by_key(|r| r.line);
    Ok(refs)
}

#[cfg(test)]
mod tests;
