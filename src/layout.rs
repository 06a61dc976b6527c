//! The layout of a project's store, `.mkt/`: the name of every file and
//! directory mkt keeps there, in one place, so that no module spells one
//! itself (README, section "The store", shows the same table).
//!
//! | name                 | what it holds                                             | owner            |
//! | -------------------- | --------------------------------------------------------- | ---------------- |
//! | `VERSION`            | the store's format version (`2`)                          | `store.rs`       |
//! | `CACHEDIR.TAG`       | marks the directory as a cache for backup tools           | `store.rs`       |
//! | `.gitignore`         | `*`: git never sees the store                             | `store.rs`       |
//! | `lock`               | one build (or gc, clean) at a time per project            | `store.rs`       |
//! | `packs/<seq>.pack`   | objects and action-cache entries, appended by a build     | `pack.rs`        |
//! | `objects/xx/<hash>`  | loose objects of a version 1 store, still read            | `store.rs`       |
//! | `ac/xx/<ibh>.json`   | loose action-cache entries of a version 1 store           | `store.rs`       |
//! | `runs/<run id>.json` | RunManifests of failed runs                               | `store.rs`       |
//! | `history.jsonl`      | one line per target per build                             | `history.rs`     |
//! | `state`, `state.log` | the fast-path state: a snapshot and its journal           | `state/mod.rs`   |
//! | `sync-pending`       | there from a build's first write to its flush             | `store.rs`       |
//! | `project-cache`      | the parsed `prompts.toml`, keyed by its BLAKE3            | `config.rs`      |
//! | `noop`               | the no-op stamp                                           | `stamp.rs`       |
//! | `noop.patch`         | what builds since changed of `noop`                       | `stamp.rs`       |
//! | `graph`              | the analysed graph, reused while only contents change     | `graph.rs`       |
//! | `batches/<tag>.json` | a submitted batch not yet collected (`mkt build --batch`) | `batch/record.rs` |
//! | `.mkt-tmp-*`         | a write in progress, renamed into place when complete     | `store.rs`       |
//!
//! Every file but the packs, the history and the state's journal is
//! replaced whole (a temp file renamed over it). `state`, `noop`, `graph`
//! and `project-cache` are derived data, written again by a build that
//! finds them missing. An older mkt named the project cache
//! `project-cache.json` (a binary file); that file is no longer read, so
//! an old store costs one parse of `prompts.toml`, nothing else.

/// The store's directory, at the project root.
pub const STORE_DIR: &str = ".mkt";
pub const VERSION: &str = "VERSION";
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
pub const GITIGNORE: &str = ".gitignore";
pub const LOCK: &str = "lock";
pub const PACKS_DIR: &str = "packs";
pub const OBJECTS_DIR: &str = "objects";
pub const AC_DIR: &str = "ac";
pub const RUNS_DIR: &str = "runs";
pub const HISTORY: &str = "history.jsonl";
pub const STATE: &str = "state";
pub const STATE_LOG: &str = "state.log";
pub const SYNC_PENDING: &str = "sync-pending";
pub const PROJECT_CACHE: &str = "project-cache";
pub const NOOP_STAMP: &str = "noop";
pub const NOOP_PATCH: &str = "noop.patch";
pub const GRAPH_CACHE: &str = "graph";
pub const BATCHES_DIR: &str = "batches";
/// The prefix of a temp file, in the store or beside an output.
pub const TEMP_PREFIX: &str = ".mkt-tmp-";

/// The name an older mkt gave the project cache; still mkt's to delete.
const PROJECT_CACHE_OLD: &str = "project-cache.json";

/// Whether `rel` (a path inside `.mkt/`) is named as mkt names the files
/// of its store: only those may `mkt gc --all` delete. (Not `lock`, which
/// it holds.)
pub fn is_store_file(rel: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let parts: Vec<&str> = rel.split('/').collect();
    let (dir, name) = parts.split_at(parts.len() - 1);
    if name[0].starts_with(TEMP_PREFIX) && (dir.is_empty() || is_store_dir(dir)) {
        return true;
    }
    match parts.as_slice() {
        [top] => [
            VERSION,
            CACHEDIR_TAG,
            GITIGNORE,
            HISTORY,
            STATE,
            STATE_LOG,
            SYNC_PENDING,
            PROJECT_CACHE,
            PROJECT_CACHE_OLD,
            NOOP_STAMP,
            NOOP_PATCH,
            GRAPH_CACHE,
        ]
        .contains(top),
        [PACKS_DIR, p] => p.strip_suffix(".pack").is_some_and(|h| hex(h, 16)),
        [OBJECTS_DIR, xx, d] => hex(xx, 2) && hex(d, 64) && d.starts_with(xx),
        [AC_DIR, xx, e] => {
            hex(xx, 2)
                && e.strip_suffix(".json")
                    .is_some_and(|h| hex(h, 64) && h.starts_with(xx))
        }
        [RUNS_DIR, r] | [BATCHES_DIR, r] => r.strip_suffix(".json").is_some_and(|id| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }),
        _ => false,
    }
}

/// Whether a directory (the parts of its path in `.mkt/`) is one mkt
/// makes, where its temp files can be.
fn is_store_dir(parts: &[&str]) -> bool {
    matches!(
        parts,
        [PACKS_DIR] | [RUNS_DIR] | [BATCHES_DIR] | [OBJECTS_DIR, _] | [AC_DIR, _]
    )
}

/// Every name above, for the check that the tables list them all.
#[cfg(test)]
const ALL: [&str; 19] = [
    STORE_DIR,
    VERSION,
    CACHEDIR_TAG,
    GITIGNORE,
    LOCK,
    PACKS_DIR,
    OBJECTS_DIR,
    AC_DIR,
    RUNS_DIR,
    HISTORY,
    STATE,
    STATE_LOG,
    SYNC_PENDING,
    PROJECT_CACHE,
    NOOP_STAMP,
    NOOP_PATCH,
    GRAPH_CACHE,
    BATCHES_DIR,
    TEMP_PREFIX,
];

#[cfg(test)]
mod tests {
    use super::ALL;

    /// The text of the first fenced block after `heading` in README.
    fn readme_block(heading: &str) -> &'static str {
        let readme = include_str!("../README.md");
        let after = readme
            .split(heading)
            .nth(1)
            .expect("README has the heading");
        after
            .split("```")
            .nth(1)
            .expect("a fenced block follows it")
    }

    #[test]
    fn the_readme_and_this_module_list_every_file_of_the_store() {
        let readme = readme_block("## The store (`.mkt/`)");
        let ours: String = include_str!("layout.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect();
        for name in ALL {
            assert!(readme.contains(name), "README's store table lacks `{name}`");
            assert!(
                ours.contains(&format!("`{name}")) || name == super::STORE_DIR,
                "the table at the top of layout.rs lacks `{name}`"
            );
        }
    }
}
