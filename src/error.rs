//! Errors of the library core. Every variant carries the file (and, where it
//! has one, the line and column) it is about; `Display` renders the message a
//! user sees, with paths in backticks and a `help:` line saying what to do.

use camino::Utf8PathBuf;
use std::fmt;

/// A position in a project file, 1-based, as editors and compilers print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: Utf8PathBuf,
    pub line: usize,
    pub col: usize,
}

impl Location {
    /// Converts a byte offset in `text` into a line and column.
    pub fn at_offset(file: impl Into<Utf8PathBuf>, text: &str, offset: usize) -> Location {
        // Spans read back from the project cache are only as good as that
        // file: one inside a character must not panic the slice below.
        let before = &text[..text.floor_char_boundary(offset)];
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        Location {
            file: file.into(),
            line,
            col,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

fn help_line(h: &Option<String>) -> String {
    match h {
        Some(h) => format!("\n  help: {h}"),
        None => String::new(),
    }
}

/// Why a project could not be loaded, analysed or built. Exit code 2 for the
/// invalid-project family, 1 for the rest (see [`Error::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no `prompts.toml` in `{dir}` or any parent directory\n  help: run mkt inside a project, pass `-C DIR`, or create a `prompts.toml` (see README.md)"
    )]
    NoProject { dir: Utf8PathBuf },

    /// Something in `prompts.toml` or a template is wrong; `loc` points at it.
    #[error("{loc}: {message}{}", help_line(.help))]
    Invalid {
        loc: Location,
        message: String,
        help: Option<String>,
    },

    /// A problem with a file that has no useful position (missing, unreadable).
    #[error("{message}{}", help_line(.help))]
    InvalidFile {
        path: Utf8PathBuf,
        message: String,
        help: Option<String>,
    },

    #[error("dependency cycle: {}\n  help: a target cannot depend on its own output; remove one of these `targets.NAME` references", .path.join(" -> "))]
    Cycle { path: Vec<String> },

    #[error("unknown target `{name}`{}", help_line(.help))]
    UnknownTarget { name: String, help: Option<String> },

    #[error("cannot {action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: Utf8PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Something asked for is not on record (an output never built, a
    /// run whose manifest is gone).
    #[error("{what}{}", help_line(.help))]
    NotAvailable { what: String, help: Option<String> },

    /// A remote cache that a command needs (`mkt cache ...`) failed.
    #[error("{error}\n  help: {help}")]
    Remote {
        #[source]
        error: crate::remote_error::RemoteError,
        help: &'static str,
    },

    /// `.mkt` (or a directory of the store) is a symlink or a file: every
    /// write, and `mkt gc`'s deletes, would go where it leads.
    #[error(
        "`{path}` is {what}, not a directory: mkt keeps its store in a directory of the project's own and never writes through a link\n  help: remove it (`rm {path}`) and the next build makes a new store there; to keep the store elsewhere, move or link the whole project instead"
    )]
    StoreNotADirectory { path: Utf8PathBuf, what: String },

    /// A file of the store that mkt writes in place is a symlink.
    #[error(
        "`{path}` is a symlink: mkt writes the files of its store in place, never through a link\n  help: remove it (`rm {path}`); the store then costs a full build at most"
    )]
    StoreFileIsALink { path: Utf8PathBuf },

    /// `mkt gc --all` found a `.mkt` that mkt did not create.
    #[error(
        "`{path}` is not a store mkt created (it has no `CACHEDIR.TAG` of mkt's), so `mkt gc --all` deletes nothing in it\n  help: look at what it holds; if it is yours to delete, remove it by hand"
    )]
    NotAStore { path: Utf8PathBuf },

    /// `mkt batch cancel ID` names no pending batch.
    #[error("no pending batch `{id}`\n  help: `mkt batch status` lists the pending batches")]
    NoSuchBatch { id: String },

    #[error(
        "another `mkt` holds the lock on `{path}`\n  help: wait for it to finish, or drop `--no-wait` to wait for it"
    )]
    Locked { path: Utf8PathBuf },

    /// The build's estimate may cost more than its cost cap (`--max-cost`,
    /// `max_cost_usd`): nothing was run.
    #[error("{}", cost_cap_text(*.cap, *.high, *.targets, .dearest))]
    CostCap {
        cap: f64,
        /// The estimate's upper bound; `None`: unbounded.
        high: Option<f64>,
        /// How many targets the estimate covers.
        targets: usize,
        /// The dearest of them with their upper bounds, dearest first.
        dearest: Vec<(String, Option<f64>)>,
    },
}

fn cost_cap_text(
    cap: f64,
    high: Option<f64>,
    targets: usize,
    dearest: &[(String, Option<f64>)],
) -> String {
    use crate::build::format_usd;
    let cap_s = format_usd(cap);
    let mut s = match high {
        Some(h) => format!(
            "the build may cost up to {}, {} over its cost cap of {cap_s}; ",
            format_usd(h),
            format_usd(h - cap)
        ),
        None => format!(
            "the build's cost has no upper bound, so it may go over its cost cap of {cap_s}; "
        ),
    };
    s.push_str(match dearest.len() {
        n if n == targets => "its model calls, dearest first:",
        _ => "the dearest of its model calls:",
    });
    let width = dearest
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    for (key, h) in dearest {
        let bound = match h {
            Some(h) => format!("up to {}", format_usd(*h)),
            None => "unbounded (no `max_tokens`, and no run on record)".to_string(),
        };
        s.push_str(&format!("\n  {key:width$}  {bound}"));
    }
    s.push_str(match high {
        Some(_) => "\n  help: raise the cap (`--max-cost`, or `max_cost_usd` in `prompts.toml`), build fewer targets, or lower `max_tokens`; `mkt build --dry-run` shows the estimate",
        None => "\n  help: set `max_tokens` on their models (or in the targets' `params`) so that an answer's cost has a bound",
    });
    s
}

impl Error {
    pub fn io(action: &'static str, path: impl Into<Utf8PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub fn invalid(loc: Location, message: impl Into<String>, help: Option<String>) -> Self {
        Error::Invalid {
            loc,
            message: message.into(),
            help,
        }
    }

    /// 2 for an invalid project (nothing ran), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NoProject { .. }
            | Error::Invalid { .. }
            | Error::InvalidFile { .. }
            | Error::Cycle { .. }
            | Error::UnknownTarget { .. }
            | Error::StoreNotADirectory { .. }
            | Error::StoreFileIsALink { .. }
            | Error::NotAStore { .. }
            | Error::CostCap { .. } => 2,
            _ => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_lines_and_columns() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(Location::at_offset("p", text, 0).to_string(), "p:1:1");
        assert_eq!(Location::at_offset("p", text, 6).to_string(), "p:2:1");
        // columns count characters, not bytes
        assert_eq!(Location::at_offset("p", text, 10).to_string(), "p:2:4");
        assert_eq!(Location::at_offset("p", text, 999).to_string(), "p:3:1");
    }

    #[test]
    fn an_offset_inside_a_character_is_not_a_panic() {
        // byte 8 is the second byte of `é`: the position of `é` itself
        let text = "a = 1\nbé = 2\n";
        assert_eq!(Location::at_offset("p", text, 8).to_string(), "p:2:2");
    }
}
