#!/usr/bin/env python3
"""What `mkt gc` reclaims, and what it costs.

    bench/gc.py [--mkt PATH] [--work DIR] [--cycles 20] [--edit 0.05]
                [--sizes 1000,10000] [--patterns random,hot]

For each size N: generates bench.py's `fan` project (N independent
targets, mock model, which echoes its prompt, so each output is about the
size of its prompt), builds it, then runs --cycles edit-and-build cycles
that each append a line to --edit of the inputs: `random`, a different
random 5% each time (seeded), so a target gets about 2 runs on average; or
`hot`, the same 5% every time, so those targets get one run per cycle. Then it reports the store's size and file count before and
after `mkt gc` (default: the current outputs' runs plus the last 5 runs of
each target), the same after `mkt gc --keep-runs 1`, the wall time of each
gc, and that a build afterwards is still a no-op. At the largest size the
cycles are fewer (--big-cycles) so the run stays short; gc's time depends
on the number of files in the store, which is printed with it.

Needs only python3 and a release build of mkt (`cargo build --release`).
"""
import argparse
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the project generator)


def store_size(root):
    files = size = 0
    for d, _, names in os.walk(os.path.join(root, ".mkt")):
        for n in names:
            files += 1
            size += os.lstat(os.path.join(d, n)).st_size
    return files, size


def run(mkt, root, *args):
    t0 = time.perf_counter()
    p = subprocess.run([mkt, *args], cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"mkt {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return wall, p.stderr


def mib(n):
    return f"{n / 2**20:.1f} MiB"


def one_size(mkt, work, n, cycles, frac, pattern):
    root = os.path.join(work, f"gc-{n}-{pattern}")
    bench.gen(root, "mkt", "mock", "fan", n)
    run(mkt, root, "build", "-q", "-j", "2")
    rng = random.Random(n)
    k = max(1, round(n * frac))
    hot = rng.sample(range(n), k)
    for c in range(cycles):
        for i in hot if pattern == "hot" else rng.sample(range(n), k):
            with open(f"{root}/inputs/{i}.md", "a") as f:
                f.write(f"Edited in cycle {c}.\n")
        run(mkt, root, "build", "-q", "-j", "2")
    before = store_size(root)
    t_gc, out = run(mkt, root, "gc")
    after = store_size(root)
    t_gc1, _ = run(mkt, root, "gc", "--keep-runs", "1")
    after1 = store_size(root)
    t_again, _ = run(mkt, root, "gc")
    _, noop = run(mkt, root, "build")
    assert noop.startswith("0 ran, 0 cached"), noop
    print(f"N={n}, {pattern}: {cycles} cycles editing {k} inputs ({frac:.0%}) each")
    print(f"  store before gc:          {before[0]:>7} files  {mib(before[1])}")
    print(f"  after `mkt gc`:           {after[0]:>7} files  {mib(after[1])}   gc took {t_gc:.2f} s")
    print(f"  after `--keep-runs 1`:    {after1[0]:>7} files  {mib(after1[1])}   gc took {t_gc1:.2f} s")
    print(f"  `mkt gc` with nothing to remove: {t_again:.2f} s; next build: {noop.strip()}")
    sys.stdout.flush()
    return [n, cycles, k, before[0], before[1], after[0], after[1], t_gc, after1[0], after1[1], t_gc1, t_again]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mkt", default=os.path.join(here, "..", "target", "release", "mkt"))
    ap.add_argument("--work", default="/tmp/mkt-gc-bench")
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--big-cycles", type=int, default=5, help="cycles at sizes above 1000")
    ap.add_argument("--edit", type=float, default=0.05)
    ap.add_argument("--patterns", default="random,hot")
    a = ap.parse_args()
    mkt = os.path.abspath(a.mkt)
    os.makedirs(a.work, exist_ok=True)
    for n in [int(s) for s in a.sizes.split(",")]:
        for pattern in a.patterns.split(","):
            one_size(mkt, a.work, n, a.cycles if n <= 1000 else a.big_cycles, a.edit, pattern)


if __name__ == "__main__":
    main()
