//! Times reading the caches an edit's build reads (`.mkt/graph`, the
//! project cache, the state's records), one after another and then on
//! two threads at once as `build` does: `cargo run --release --example
//! read_caches -- PROJECT_DIR [ROUNDS]`.
use camino::Utf8PathBuf;
use markitect::config::Project;
use markitect::graph::Graph;
use markitect::stamp::NoopStamp;
use markitect::state::StateFiles;
use std::time::Instant;

fn main() {
    // as `mkt` tunes it (src/main.rs), unless ARENAS says how many arenas
    let arenas: i32 = std::env::var("ARENAS").map_or(1, |a| a.parse().expect("a number"));
    // SAFETY: mallopt only sets allocator parameters; no thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
    let mut args = std::env::args().skip(1);
    let root = Utf8PathBuf::from(args.next().expect("a project directory"));
    let rounds: usize = args.next().map_or(10, |r| r.parse().expect("a number"));
    let store = root.join(".mkt");
    let stamp = markitect::store::map_replaced(&store.join("noop"))
        .ok()
        .and_then(NoopStamp::decode)
        .expect("a no-op stamp: build the project first");
    let key = stamp.structure_key();
    let graph = || {
        let bytes = markitect::store::map_replaced(&store.join("graph")).unwrap();
        Graph::decode(&bytes, &key).expect("a graph cache")
    };
    let project =
        || Project::load_cached(&root, &store.join(markitect::layout::PROJECT_CACHE)).unwrap();
    let records = || StateFiles::load_records(&store);
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for _ in 0..rounds {
        let t = Instant::now();
        let g = graph();
        let tg = ms(t);
        let t = Instant::now();
        let p = project();
        let tp = ms(t);
        let t = Instant::now();
        let r = records();
        let tr = ms(t);
        drop((g, p, r));
        let t = Instant::now();
        let (a, b) = rayon::join(|| rayon::join(records, graph), project);
        let both = ms(t);
        drop((a, b));
        println!(
            "graph {tg:.1} ms, project {tp:.1} ms, records {tr:.1} ms; all three on two threads {both:.1} ms"
        );
    }
}
