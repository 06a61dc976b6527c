//! `mkt completions SHELL` and `mkt man`: shell completion scripts and
//! manual pages, generated from the argument definitions themselves, so
//! they cannot fall behind the commands. Both run before project
//! discovery: they need no project.

use camino::Utf8PathBuf;
use clap::{Args, CommandFactory};
use std::io::Write;

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write `mkt.1` and a page per subcommand (`mkt-build.1`, ...) into
    /// DIR instead of printing `mkt.1`.
    #[arg(long = "out-dir", value_name = "DIR")]
    out_dir: Option<Utf8PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> i32 {
    let mut cmd = super::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut cmd, "mkt", &mut out);
    match out.flush() {
        Ok(()) => 0,
        Err(e) => write_failed("standard output", &e),
    }
}

pub fn man(args: ManArgs) -> i32 {
    let cmd = super::Cli::command();
    match args.out_dir {
        Some(dir) => {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                return write_failed(dir.as_str(), &e);
            }
            match clap_mangen::generate_to(cmd, &dir) {
                Ok(()) => 0,
                Err(e) => write_failed(dir.as_str(), &e),
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            let written = clap_mangen::Man::new(cmd)
                .render(&mut out)
                .and_then(|()| out.flush());
            match written {
                Ok(()) => 0,
                Err(e) => write_failed("standard output", &e),
            }
        }
    }
}

fn write_failed(what: &str, e: &std::io::Error) -> i32 {
    eprintln!("error: cannot write `{}`: {e}", super::shown(what));
    1
}
