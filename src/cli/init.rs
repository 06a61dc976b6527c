//! `mkt init`: runs before project discovery (there is no project yet).

use camino::{Utf8Path, Utf8PathBuf};
use clap::Args;
use markitect::init::{Gitignore, init};

#[derive(Args)]
pub struct InitArgs {
    /// Where to create the project (created if missing); default: here.
    // not `dir`: that is the id of the global `-C DIR`, and clap would
    // fill both from one value
    #[arg(value_name = "DIR")]
    path: Option<Utf8PathBuf>,
}

pub fn run(start: &Utf8Path, args: InitArgs) -> i32 {
    let dir = match &args.path {
        Some(d) => start.join(d),
        None => start.to_owned(),
    };
    let rep = match init(&dir) {
        Ok(r) => r,
        Err(e) => return super::report_error(&e),
    };
    for f in &rep.created {
        eprintln!("created {f}");
    }
    for f in &rep.left_alone {
        eprintln!("left alone {f}: it exists already");
    }
    match rep.gitignore {
        Gitignore::Created => eprintln!("created .gitignore (ignores .mkt/)"),
        Gitignore::Appended => eprintln!("added .mkt/ to .gitignore"),
        Gitignore::Unchanged => {}
    }
    let cd = match &args.path {
        Some(d) if dir != start => format!("cd {d} && "),
        _ => String::new(),
    };
    eprintln!("next: `{cd}mkt build` (offline, with the mock model)");
    0
}
