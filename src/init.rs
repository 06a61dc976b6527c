//! `mkt init`: a new project that builds at once, offline.
//!
//! It writes a `prompts.toml` with the mock model (so the first `mkt
//! build` needs no network and no key), one `foreach` target, its
//! template and one document, and makes git ignore `.mkt/` (the store
//! also ignores itself with its own `.gitignore`, but a project-level entry
//! keeps `git status` quiet before the first build creates it, and tells a
//! reader what the directory is).
//!
//! It never overwrites a file: an existing `prompts.toml` means there is a
//! project already, which is an error; any other existing file is left as
//! it is and reported. `.gitignore` is appended to when it lacks `.mkt/`.

use crate::config::PROJECT_FILE;
use crate::error::{Error, Result};
use camino::{Utf8Path, Utf8PathBuf};
use std::io::Write;

const PROMPTS_TOML: &str = r#"# A Markitect project: `mkt build` builds it, `mkt status` says what is stale.
#
# The mock model answers offline (a header and the prompt echoed back). For a
# real model, replace it with a command that reads the prompt on stdin and
# writes the answer on stdout:
#   [models.default]
#   provider = "command"
#   command = ["python3", "call_model.py"]
[models.default]
provider = "mock"

# One summary per document in docs/: add a file and `mkt build` summarises
# it, and only it.
[targets.summary]
foreach = "docs/*.md"
template = "templates/summarize.md"
output = "out/{stem}.md"
"#;

const TEMPLATE: &str = "system:
You summarise documents in three short bullet points.

user:
Summarise this document ({{ item.name }}):

{{ item.content }}
";

const DOCUMENT: &str = "# Welcome

This is the first document of a new Markitect project. Edit it and run
`mkt build` again: only its summary is rebuilt. Run `mkt build` once more
and nothing runs at all.
";

/// The files `init` writes, relative to the project directory.
pub const FILES: [(&str, &str); 3] = [
    (PROJECT_FILE, PROMPTS_TOML),
    ("templates/summarize.md", TEMPLATE),
    ("docs/welcome.md", DOCUMENT),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gitignore {
    Created,
    Appended,
    /// It already ignores `.mkt/`.
    Unchanged,
}

#[derive(Debug, Clone)]
pub struct InitReport {
    pub dir: Utf8PathBuf,
    /// Files written, relative to `dir`.
    pub created: Vec<String>,
    /// Files that existed and were left as they are.
    pub left_alone: Vec<String>,
    pub gitignore: Gitignore,
}

/// Creates a project in `dir` (created if missing); see the module docs.
pub fn init(dir: &Utf8Path) -> Result<InitReport> {
    let project_file = dir.join(PROJECT_FILE);
    if std::fs::symlink_metadata(&project_file).is_ok() {
        return Err(Error::InvalidFile {
            message: format!("`{project_file}` already exists: this is a project already"),
            path: project_file,
            help: Some(
                "`mkt build` builds it; `mkt init DIR` starts a new project in another directory"
                    .into(),
            ),
        });
    }
    let mut rep = InitReport {
        dir: dir.to_owned(),
        created: Vec::new(),
        left_alone: Vec::new(),
        gitignore: Gitignore::Unchanged,
    };
    for (rel, text) in FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
        }
        // create_new: a file that appeared meanwhile is still never replaced
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(text.as_bytes())
                    .map_err(|e| Error::io("write", &path, e))?;
                rep.created.push(rel.to_string());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                rep.left_alone.push(rel.to_string());
            }
            Err(e) => return Err(Error::io("create", path, e)),
        }
    }
    rep.gitignore = ignore_store(&dir.join(".gitignore"))?;
    Ok(rep)
}

/// Whether a `.gitignore` line ignores the store at the project root.
fn ignores_store(line: &str) -> bool {
    matches!(line.trim(), ".mkt" | ".mkt/" | "/.mkt" | "/.mkt/")
}

fn ignore_store(path: &Utf8Path) -> Result<Gitignore> {
    let (old, how) = match std::fs::read_to_string(path) {
        Ok(s) => (s, Gitignore::Appended),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), Gitignore::Created),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    if old.lines().any(ignores_store) {
        return Ok(Gitignore::Unchanged);
    }
    let mut add = String::new();
    if !old.is_empty() && !old.ends_with('\n') {
        add.push('\n');
    }
    add.push_str("# mkt's store (build cache and run history)\n.mkt/\n");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    f.write_all(add.as_bytes())
        .map_err(|e| Error::io("write", path, e))?;
    Ok(how)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_lines_that_ignore_the_store() {
        for l in [".mkt", ".mkt/", "/.mkt/", "  /.mkt "] {
            assert!(ignores_store(l), "{l}");
        }
        for l in ["# .mkt/", ".mkt/objects", "mkt", "*.mkt"] {
            assert!(!ignores_store(l), "{l}");
        }
    }

    #[test]
    fn never_overwrites_and_appends_to_gitignore_once() {
        let t = tempfile::tempdir().unwrap();
        let dir = Utf8Path::from_path(t.path()).unwrap().join("new");
        std::fs::create_dir_all(dir.join("docs")).unwrap();
        std::fs::write(dir.join("docs/welcome.md"), "mine").unwrap();
        std::fs::write(dir.join(".gitignore"), "target").unwrap();
        let rep = init(&dir).unwrap();
        assert_eq!(rep.created, [PROJECT_FILE, "templates/summarize.md"]);
        assert_eq!(rep.left_alone, ["docs/welcome.md"]);
        assert_eq!(rep.gitignore, Gitignore::Appended);
        assert_eq!(
            std::fs::read_to_string(dir.join("docs/welcome.md")).unwrap(),
            "mine"
        );
        let gi = std::fs::read_to_string(dir.join(".gitignore")).unwrap();
        assert!(gi.starts_with("target\n# mkt's store"), "{gi}");
        // a second init refuses, and changes nothing
        let e = init(&dir).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.join(".gitignore")).unwrap(), gi);
    }
}
