//! Every reader of mkt's on-disk store, fed arbitrary bytes: each must
//! answer "not a valid file" (`None`, an empty state, a fresh parse), never
//! panic or allocate from an unchecked length.
//!
//! The first input byte picks the reader. Odd choices wrap the rest of the
//! input in a valid header and checksum, because a fuzzer cannot forge a
//! BLAKE3 checksum: without the wrapping, nothing past the checksum check
//! of the binary formats would ever run.
#![no_main]

use camino::{Utf8Path, Utf8PathBuf};
use libfuzzer_sys::fuzz_target;
use markitect::config::Project;
use markitect::graph::Graph;
use markitect::hash::Digest;
use markitect::stamp::NoopStamp;
use markitect::state::{State, StateFiles};
use markitect::store::MappedFile;
use std::sync::OnceLock;

const PROJECT: &str = "# résumé: a non-ASCII comment, so that spans can fall inside a character\n\
[models.m]\nprovider = \"mock\"\n\
[targets.s]\nforeach = \"docs/*.md\"\ntemplate = \"t/s.md\"\noutput = \"out/{stem}.md\"\nmodel = \"m\"\n\
[targets.i]\ntemplate = \"t/i.md\"\ninputs = { a = \"docs/a.md\" }\noutput = \"out/index.md\"\n";

struct Fixture {
    _dir: tempfile::TempDir,
    root: Utf8PathBuf,
    project: Project,
    /// A graph cache key (any digest: the wrapped inputs carry it).
    key: Digest,
    state_header: Vec<u8>,
    noop_header: Vec<u8>,
    graph_header: Vec<u8>,
    cache_header: Vec<u8>,
    /// A valid snapshot for the journal to extend, and its checksum.
    snapshot: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = Utf8PathBuf::from_path_buf(dir.path().to_path_buf()).expect("utf-8 temp");
        for (f, text) in [
            ("docs/a.md", "A"),
            ("docs/b.md", "B"),
            ("t/s.md", "{{ item.content }}"),
            (
                "t/i.md",
                "{{ inputs.a.content }}{% for s in targets.s %}{% endfor %}",
            ),
            ("prompts.toml", PROJECT),
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        std::fs::create_dir_all(root.join(".mkt")).unwrap();
        let project = Project::parse(&root, PROJECT.to_string()).expect("fixture project");
        // headers are cut from real encodings, so they follow the format
        let state = State::default().encode();
        let body_counts = 3 * 4; // three empty u32 counts
        let state_header = state[..state.len() - 32 - body_counts].to_vec();
        let noop = NoopStamp::new(0, &[]).encode();
        // (magic and version: less the checksum, the entry count, the
        // state tip and the node count)
        let noop_header = noop[..noop.len() - 32 - 4 - 32 - 4].to_vec();
        let key = Digest::of(b"fuzz key");
        let mut graph_header = noop_header.clone();
        graph_header[..8].copy_from_slice(b"MKTGRPH1");
        graph_header.extend_from_slice(&key.0);
        let cache_path = root.join(".mkt/project-cache");
        let (_, fresh) = Project::load_cached(&root, &cache_path).expect("fixture loads");
        let fresh = fresh.expect("no cache yet, so one to write");
        // magic, key, version
        let cache_header = fresh[..8 + 32 + (noop_header.len() - 8)].to_vec();
        Fixture {
            _dir: dir,
            root,
            project,
            key,
            state_header,
            noop_header,
            graph_header,
            cache_header,
            snapshot: state,
        }
    })
}

/// `header | body | BLAKE3 of both`: the frame of `.mkt/noop`, `.mkt/graph`
/// and the project cache.
fn framed(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = header.to_vec();
    v.extend_from_slice(body);
    let sum = Digest::of(&v);
    v.extend_from_slice(&sum.0);
    v
}

fn store_dir(f: &Fixture) -> Utf8PathBuf {
    f.root.join(".mkt")
}

fn journal(f: &Fixture, dir: &Utf8Path, log: &[u8]) {
    std::fs::write(dir.join("state"), &f.snapshot).unwrap();
    std::fs::write(dir.join("state.log"), log).unwrap();
    let (_files, st) = StateFiles::load(dir);
    let _ = st.encode();
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    match pick % 14 {
        0 => {
            let _ = markitect::manifest::RunManifest::from_json(rest);
        }
        1 => {
            let _ = markitect::history::parse(rest);
        }
        2 | 3 => {
            let bytes = if pick % 14 == 2 {
                rest.to_vec()
            } else {
                let mut v = f.state_header.clone();
                let n = v.len();
                v[n - 8..].copy_from_slice(&(rest.len() as u64).to_le_bytes());
                v.extend_from_slice(rest);
                v.extend_from_slice(&Digest::of(rest).0);
                v
            };
            if let Some(st) = State::decode(&bytes) {
                // what decodes must survive a save and a reload unchanged
                assert_eq!(State::decode(&st.encode()).as_ref(), Some(&st));
            }
        }
        4 | 5 => {
            let bytes = if pick % 14 == 4 {
                rest.to_vec()
            } else {
                framed(&f.noop_header, rest)
            };
            if let Some(s) = NoopStamp::decode(MappedFile::Owned(bytes)) {
                let _ = s.structure_key();
                let _ = s.entries().count();
                let again = NoopStamp::decode(MappedFile::Owned(s.encode()));
                assert_eq!(again.as_ref(), Some(&s));
            }
        }
        6 | 7 => {
            let bytes = if pick % 14 == 6 {
                rest.to_vec()
            } else {
                framed(&f.graph_header, rest)
            };
            // what a build does with a cached graph: decode, check it fits
            if let Some(g) = Graph::decode(&bytes, &f.key).filter(|g| g.fits(&f.project)) {
                let names: Vec<String> = f.project.targets.iter().map(|t| t.name.clone()).collect();
                let _ = g.select(&f.project, &names);
                for n in &g.nodes {
                    let _ = n.source_files();
                    let _ = n.upstream_nodes().count();
                }
                let _ = g.encode(&f.key);
            }
        }
        8 | 9 => {
            let bytes = if pick % 14 == 8 {
                rest.to_vec()
            } else {
                framed(&f.cache_header, rest)
            };
            let cache = store_dir(f).join("project-cache");
            std::fs::write(&cache, &bytes).unwrap();
            if let Ok((p, _)) = Project::load_cached(&f.root, &cache) {
                // cached spans are used as parsed ones are: for error positions
                for t in &p.targets {
                    let _ = p.loc(&t.name_span);
                    let _ = p.loc(&t.template_span);
                    let _ = p.loc(&t.output_span);
                    for i in &t.inputs {
                        let _ = p.loc(&i.span);
                    }
                    if let Some((_, s)) = &t.foreach {
                        let _ = p.loc(s);
                    }
                    let _ = t.model.hashed_params();
                }
            }
        }
        12 | 13 => {
            // a pack: raw, or one valid record (its payload the input)
            // followed by the input again, as a torn or forged tail
            let bytes = if pick % 14 == 12 {
                rest.to_vec()
            } else {
                let mut v = markitect::pack::HEADER.to_vec();
                let key = Digest::of(rest);
                v.extend(markitect::pack::encode_record(
                    markitect::pack::RecordKind::Object,
                    &key.0,
                    rest,
                ));
                v.extend_from_slice(rest);
                v
            };
            let path = store_dir(f).join("fuzz.pack");
            std::fs::write(&path, &bytes).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            if let Ok(pack) = markitect::pack::Pack::open(file) {
                for e in pack.entries() {
                    if let Some(payload) = pack.read(&e) {
                        if e.kind == markitect::pack::RecordKind::Object {
                            assert_eq!(Digest::of(&payload).0, e.key);
                        }
                    }
                }
            }
        }
        10 => journal(f, &store_dir(f), rest),
        _ => {
            // one intact record extending the fixture's snapshot
            let mut log = b"MKTSLOG1".to_vec();
            log.extend_from_slice(&f.snapshot[f.snapshot.len() - 32..]);
            log.extend_from_slice(&(rest.len() as u64).to_le_bytes());
            log.extend_from_slice(rest);
            log.extend_from_slice(&Digest::of(rest).0);
            journal(f, &store_dir(f), &log);
        }
    }
});
