//! `Project::parse` on arbitrary text: errors are fine, panics are not.
#![no_main]

use camino::Utf8PathBuf;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// A project root holding a few files, so that templates, inputs and
/// `foreach` globs in the fuzzed text can resolve (and the code that checks
/// them runs) as well as fail.
fn root() -> &'static Utf8PathBuf {
    static ROOT: OnceLock<(tempfile::TempDir, Utf8PathBuf)> = OnceLock::new();
    &ROOT
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let root = Utf8PathBuf::from_path_buf(dir.path().to_path_buf()).expect("utf-8 temp");
            for (f, text) in [
                ("t.md", "{{ inputs.a }}"),
                ("templates/s.md", "{{ item.content }}"),
                ("docs/a.md", "A"),
                ("docs/b.md", "B"),
                ("partials/p.md", "P"),
            ] {
                let p = root.join(f);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, text).unwrap();
            }
            (dir, root)
        })
        .1
}

fuzz_target!(|source: &str| {
    if let Ok(p) = markitect::config::Project::parse(root(), source.to_string()) {
        // spans are turned into positions when later stages report errors
        for t in &p.targets {
            let _ = p.loc(&t.name_span);
            let _ = p.loc(&t.template_span);
            let _ = p.loc(&t.output_span);
            let _ = t.model.hashed_params();
        }
    }
});
