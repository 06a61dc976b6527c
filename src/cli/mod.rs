//! The command line: argument parsing and printing only; all decisions are
//! made in the library.

/// `println!` through [`shown`]: for lines that hold names or file text.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", crate::cli::shown(&format!($($arg)*)))
    };
}

mod batch;
mod build;
mod cache;
mod clean;
mod estimate;
mod explain;
mod gc;
mod graph;
mod init;
mod runs;
mod shell;
mod show;
mod status;
mod watch;

use camino::Utf8PathBuf;
use clap::{Parser, Subcommand};
use markitect::config::Project;
use markitect::error::Error;

#[derive(Parser)]
#[command(
    name = "mkt",
    version,
    long_version = version_text(),
    about = "A build system for LLM prompt pipelines"
)]
struct Cli {
    /// Run as if started in DIR.
    #[arg(short = 'C', long = "directory", global = true, value_name = "DIR")]
    dir: Option<Utf8PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build targets (all by default) and what they need.
    Build(build::BuildArgs),
    /// List the targets that are not fresh, and why (exit code 1 if any).
    Status(status::StatusArgs),
    /// Say what changed since the run that built a target.
    Explain(explain::ExplainArgs),
    /// Print a target's or a run's compiled prompt, output or manifest.
    Show(show::ShowArgs),
    /// List the run history, newest first.
    Runs(runs::RunsArgs),
    /// Print the pipeline (or, with --provenance, what produced the
    /// current outputs) as Graphviz DOT, Mermaid or JSON.
    Graph(graph::GraphArgs),
    /// Build, then rebuild what a saved change affects, until Ctrl-C.
    Watch(watch::WatchArgs),
    /// Remove from `.mkt/` what no current output and no recent run needs
    /// (`--stats`: what the store holds).
    Gc(gc::GcArgs),
    /// Remove the output files mkt wrote and nobody edited since (with
    /// --stale: only those of targets no longer in the project).
    Clean(clean::CleanArgs),
    /// Create a new project that builds at once, offline (mock model).
    Init(init::InitArgs),
    /// Push results to, pull them from, or count what is in the remote
    /// cache.
    Cache(cache::CacheArgs),
    /// List or cancel the batches `mkt build --batch` submitted.
    Batch(batch::BatchArgs),
    /// Print the completion script for a shell (bash, zsh, fish,
    /// powershell, elvish).
    Completions(shell::CompletionsArgs),
    /// Print the manual page (roff), or write one per command into a
    /// directory.
    Man(shell::ManArgs),
}

/// What `mkt --version` prints after `mkt ` (`-V` prints the first line): mkt's version, then the
/// versions of the formats it reads and writes, so that two builds of mkt
/// can be told to share a store and its cache keys, or not.
fn version_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{}\nstore format: {}\ninput-bundle hash: {}\nrun manifest: {}",
            env!("CARGO_PKG_VERSION"),
            markitect::store::STORE_VERSION,
            markitect::hash::BUNDLE_ENCODING,
            markitect::manifest::MANIFEST_SCHEMA,
        )
    })
}

/// Prints an error the way every command does, returning its exit code.
pub fn report_error(e: &Error) -> i32 {
    eprintln!("error: {}", shown(&e.to_string()));
    e.exit_code()
}

/// `text` as it may reach a terminal: control characters other than
/// newline and tab (an escape sequence in a file or target name, a bare
/// `\r`) are written as Rust escapes (`\u{1b}`), so a name cannot
/// recolour, move or erase what mkt prints.
pub(crate) fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.contains(bad) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if bad(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

pub fn run() -> i32 {
    let cli = Cli::parse();
    let start = match cli.dir {
        Some(d) => d,
        None => match std::env::current_dir().map(Utf8PathBuf::try_from) {
            Ok(Ok(d)) => d,
            _ => {
                eprintln!("error: the current directory is not valid UTF-8");
                return 2;
            }
        },
    };
    // init makes the project that discovery would look for; completions
    // and the manual need none
    let command = match cli.command {
        Command::Init(args) => return init::run(&start, args),
        Command::Completions(args) => return shell::completions(args),
        Command::Man(args) => return shell::man(args),
        c => c,
    };
    let root = match Project::discover(&start) {
        Ok(r) => r,
        Err(e) => return report_error(&e),
    };
    // Like every Unix tool, the commands that only print end quietly when
    // a pipe closes (`mkt runs | head`) instead of panicking. Not `build`
    // and `watch`: they write prompts to model commands' stdin, and a
    // command that exits without reading must fail its run, not kill mkt.
    if !matches!(command, Command::Build(_) | Command::Watch(_)) {
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match command {
        Command::Build(args) => build::run(&root, args),
        Command::Status(args) => status::run(&root, args),
        Command::Explain(args) => explain::run(&root, args),
        Command::Show(args) => show::run(&root, args),
        Command::Runs(args) => runs::run(&root, args),
        Command::Watch(args) => watch::run(&root, args),
        Command::Graph(args) => graph::run(&root, args),
        Command::Gc(args) => gc::run(&root, args),
        Command::Clean(args) => clean::run(&root, args),
        Command::Cache(args) => cache::run(&root, args),
        Command::Batch(args) => batch::run(&root, args),
        Command::Init(_) | Command::Completions(_) | Command::Man(_) => {
            unreachable!("handled before discovery")
        }
    }
}
