#!/usr/bin/env python3
"""Times one mkt command with two binaries, alternating them run by run (so
that the machine's load falls on both alike), each in its own project
directory (a binary reads the store it wrote), and prints the median,
minimum and maximum wall time of each.

    python3 bench/alternate.py RUNS BEFORE_BIN BEFORE_DIR AFTER_BIN AFTER_DIR -- ARGS...
"""
import statistics
import subprocess
import sys
import time


def main():
    runs = int(sys.argv[1])
    cfg = {"before": (sys.argv[2], sys.argv[3]), "after": (sys.argv[4], sys.argv[5])}
    if sys.argv[6] != "--":
        sys.exit("usage: alternate.py RUNS BEFORE_BIN BEFORE_DIR AFTER_BIN AFTER_DIR -- ARGS...")
    args = sys.argv[7:]
    times = {k: [] for k in cfg}
    codes = {}
    for i in range(runs):
        order = list(cfg.items())
        if i % 2:
            order.reverse()
        for name, (binary, cwd) in order:
            t = time.perf_counter()
            r = subprocess.run([binary, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - t)
            codes[name] = r.returncode
    for name, v in times.items():
        print(f"{name}: median {statistics.median(v):.3f} s, min {min(v):.3f}, max {max(v):.3f} (n={len(v)}, exit {codes[name]})")


if __name__ == "__main__":
    main()
