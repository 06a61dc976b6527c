//! The `mkt` binary: parses arguments and hands over to `cli`.

mod cli;

fn main() {
    tune_allocator();
    std::process::exit(cli::run());
}

/// glibc's malloc, tuned for a build's memory peak (measured on a
/// 10,000-target layered pipeline: 72 MB of RSS down to 63 MB, no slower).
/// A fixed mmap threshold stops glibc from raising it after the first
/// large buffer is freed, which otherwise sends later multi-megabyte
/// buffers (stamp, cache files) into the heap to fragment it. One arena a
/// core (up to 8), not glibc's eight a core: with one for all, the workers
/// of a 100,000-target build waited on its lock (86% of the build's futex
/// calls; 8.5-13 s against 7.5-7.7 s with two on a 2-core machine, the
/// same 204 MB peak); eight there were no faster than two and held 1 MB
/// more. (mimalloc, tried: no faster, 55 MB more at the peak.)
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        // SAFETY: mallopt only sets allocator parameters; called before any
        // thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            libc::mallopt(libc::M_ARENA_MAX, arenas as libc::c_int);
        }
    }
}
