//! The floor under a full build with the `command` model: the time to run
//! a program N times, J at a time, each with a prompt-sized input on stdin
//! and its stdout read back, and nothing else (no templates, no store).
//!
//!     cargo run --release --example spawn_floor -- [N] [J] [PROGRAM]
//!
//! (defaults: 10000, 2, cat). Compare it with a full build of the same N
//! targets: what is left is mkt's own work.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(10_000, |a| a.parse().expect("N"));
    let jobs: usize = args.next().map_or(2, |a| a.parse().expect("J"));
    let program = args.next().unwrap_or_else(|| "cat".to_string());
    let input = vec![b'x'; 634]; // the harness's fan prompts are ~630 bytes
    let next = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let mut child = Command::new(&program)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .expect("spawn");
                    let mut stdin = child.stdin.take().expect("piped");
                    stdin.write_all(&input).expect("write");
                    drop(stdin);
                    let out = child.wait_with_output().expect("wait");
                    assert!(out.status.success());
                }
            });
        }
    });
    let took = started.elapsed().as_secs_f64();
    println!("{n} runs of `{program}`, {jobs} at a time: {took:.2} s");
}
