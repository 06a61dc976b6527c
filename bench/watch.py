#!/usr/bin/env python3
"""Latency of `mkt watch`: from a saved edit to the start of the rebuild,
and to the end of it (output written, state saved), over repeated edits.

    bench/watch.py [--sizes 100,1000,10000] [--edits 20] [--debounce-ms 50]
                   [--mkt PATH] [--work DIR]

Each size is a `fan` project (bench.py's generator) with the mock model at
zero latency. The watcher is started once per size; each edit appends a
line to one input (a different one each time), then waits for the build's
summary line. "start" is the time from the write to the watcher's
`mkt watch: changed` line (which includes the debounce delay), "done" to
the summary line, which is printed after the output and the state are
written. Prints one CSV row per size with the median and the worst of each.
"""
import argparse
import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

SUMMARY = re.compile(r"^\d+ ran, \d+ cached, \d+ up to date")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--debounce-ms", type=int, default=50)
    ap.add_argument("--mkt", default=os.path.join(here, "..", "target", "release", "mkt"))
    ap.add_argument("--work", default="/tmp/mkt-watch-bench")
    a = ap.parse_args()
    print("n,debounce_ms,edits,start_median_ms,start_worst_ms,done_median_ms,done_worst_ms,"
          "beyond_debounce_median_ms")
    for n in map(int, a.sizes.split(",")):
        root = f"{a.work}/fan-{n}"
        bench.gen(root, "mkt", "mock", "fan", n)
        subprocess.run([a.mkt, "build", "-q", "-j", "2"], cwd=root, check=True)
        p = subprocess.Popen([a.mkt, "watch", "-q", "-j", "2", "--debounce-ms", str(a.debounce_ms)],
                             cwd=root, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        lines = queue.Queue()

        def read():
            for line in p.stderr:
                lines.put((time.perf_counter(), line.rstrip("\r\n")))

        threading.Thread(target=read, daemon=True).start()

        def wait(pattern, deadline=30):
            end = time.perf_counter() + deadline
            while True:
                t, line = lines.get(timeout=max(0.01, end - time.perf_counter()))
                # the status line (a terminal only) never appears: stderr is a pipe
                if re.search(pattern, line):
                    return t, line

        wait(SUMMARY.pattern)  # the first build
        starts, dones = [], []
        for k in range(a.edits):
            time.sleep(0.15)
            path = f"{root}/inputs/{(k * 7919) % n}.md"
            t0 = time.perf_counter()
            with open(path, "a") as f:
                f.write(f"Edit {k}.\n")
            t1, _ = wait(r"^mkt watch: changed")
            t2, line = wait(SUMMARY.pattern)
            if not line.startswith("1 ran"):
                sys.exit(f"expected one target to run, got: {line}")
            starts.append((t1 - t0) * 1e3)
            dones.append((t2 - t0) * 1e3)
        p.send_signal(2)
        p.wait(timeout=10)
        print(f"{n},{a.debounce_ms},{a.edits},{statistics.median(starts):.1f},{max(starts):.1f},"
              f"{statistics.median(dones):.1f},{max(dones):.1f},"
              f"{statistics.median(dones) - a.debounce_ms:.1f}", flush=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
