#!/usr/bin/env python3
"""A paired one-edit comparison of mkt and ninja on the shared harness's
projects: each round appends a line to `inputs/0.md` in both copies and
times one build of each, the two tools in alternating order, so that both
see the same minute of a noisy machine. Prints each tool's median and the
median and quartiles of the per-round ratio mkt / ninja.

    bench/pair.py BENCH_WORK/fan-10000 [--rounds 30] [--mkt PATH] [--ninja PATH]

The directory is one the harness made (`../shared/bench/run.sh mkt 10000
fan` and `... ninja 10000 fan` with the same BENCH_WORK), holding `mkt/`
and `ninja/`, each already built.
"""
import argparse
import os
import statistics
import subprocess
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="a harness project directory holding mkt/ and ninja/")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--mkt", default="target/release/mkt")
    ap.add_argument("--ninja", default="/tmp/peers-venv/bin/ninja")
    a = ap.parse_args()
    tools = [
        ("mkt", os.path.join(a.dir, "mkt"), [os.path.abspath(a.mkt), "build", "-j", "2", "-q"]),
        ("ninja", os.path.join(a.dir, "ninja"), [a.ninja, "-j", "2", "--quiet"]),
    ]
    times = {name: [] for name, _, _ in tools}
    ratios = []
    for i in range(a.rounds):
        took = {}
        for name, d, cmd in tools if i % 2 == 0 else tools[::-1]:
            with open(os.path.join(d, "inputs/0.md"), "a") as f:
                f.write(f"paired edit {i}\n")
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=d, check=True)
            took[name] = time.perf_counter() - t0
            times[name].append(took[name] * 1e3)
        ratios.append(took["mkt"] / took["ninja"])
    for name, v in times.items():
        print(f"{name}: median {statistics.median(v):.1f} ms, min {min(v):.1f} ms")
    q = statistics.quantiles(ratios, n=4)
    print(f"mkt / ninja per round: median {statistics.median(ratios):.2f}, quartiles {q[0]:.2f} {q[2]:.2f}")


if __name__ == "__main__":
    main()
