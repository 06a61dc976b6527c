//! The shell around mkt: completion scripts, the manual pages and
//! `--version`, all generated from the argument definitions.

mod support;

use std::process::{Command, Stdio};
use support::project;

/// Every subcommand a user can type, as `mkt --help` lists them.
const SUBCOMMANDS: [&str; 13] = [
    "build",
    "status",
    "explain",
    "show",
    "runs",
    "graph",
    "watch",
    "gc",
    "clean",
    "init",
    "cache",
    "completions",
    "man",
];

fn has(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[test]
fn completion_scripts_offer_every_subcommand_in_every_shell() {
    // outside any project: a completion script is installed once, anywhere
    let p = project().build();
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let run = p.mkt(&["completions", shell]);
        run.success();
        for sub in SUBCOMMANDS {
            assert!(
                run.stdout.contains(sub),
                "the {shell} script lacks `{sub}`:\n{}",
                run.stdout
            );
        }
        // options of a subcommand are completed too
        assert!(run.stdout.contains("dry-run"), "{shell}: no `--dry-run`");
    }
    if has("bash") {
        // the bash script parses, and defines the completion function
        let script = p.mkt(&["completions", "bash"]).stdout.clone();
        let out = Command::new("bash")
            .args(["-c", &format!("{script}\ndeclare -F _mkt")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "_mkt\n");
    }
    let bad = p.mkt(&["completions", "tcsh"]);
    bad.code(2).stderr_contains("invalid value 'tcsh'");
}

#[test]
fn the_manual_page_is_roff_with_every_subcommand_and_renders() {
    let p = project().build();
    let run = p.mkt(&["man"]);
    run.success();
    let page = &run.stdout;
    let th = page
        .lines()
        .find(|l| l.starts_with(".TH "))
        .expect(".TH line");
    assert_eq!(
        th,
        format!(".TH mkt 1  \"mkt {}\" ", env!("CARGO_PKG_VERSION"))
    );
    for section in ["NAME", "SYNOPSIS", "OPTIONS", "SUBCOMMANDS"] {
        assert!(
            page.lines().any(|l| l == format!(".SH {section}")),
            "no {section}"
        );
    }
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&format!("mkt\\-{sub}(1)")),
            "the page lacks `{sub}`"
        );
    }
    if has("groff") {
        let mut child = Command::new("groff")
            .args(["-man", "-Tutf8", "-P", "-cbou", "-ww"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "groff warned: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("mkt - A build system for LLM prompt pipelines"),
            "{text}"
        );
        assert!(text.contains("mkt-build(1)"), "{text}");
    }
}

#[test]
fn man_out_dir_writes_a_page_per_command() {
    let p = project().build();
    p.mkt(&["man", "--out-dir", "man/man1"])
        .success()
        .stdout_eq("");
    assert!(p.read("man/man1/mkt.1").contains(".TH mkt 1"));
    for sub in SUBCOMMANDS {
        let page = p.read(&format!("man/man1/mkt-{sub}.1"));
        assert!(
            page.contains(&format!(".TH mkt-{sub} 1")),
            "mkt-{sub}.1:\n{page}"
        );
    }
    // the build page documents the build's own options
    assert!(p.read("man/man1/mkt-build.1").contains("dry\\-run"));
}

#[test]
fn version_names_the_store_and_hash_formats() {
    let p = project().build();
    let version = env!("CARGO_PKG_VERSION");
    p.mkt(&["--version"]).success().stdout_eq(&format!(
        "mkt {version}\n\
         store format: 2\n\
         input-bundle hash: mkt.input-bundle.v1\n\
         run manifest: mkt.run-manifest/1\n"
    ));
    // `-V` stays one line, for scripts that read it
    p.mkt(&["-V"])
        .success()
        .stdout_eq(&format!("mkt {version}\n"));
}
