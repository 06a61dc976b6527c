#!/usr/bin/env python3
"""mkt's own cost on a corpus-sized pipeline: one `foreach` target over N
documents and the `mock` model, so that only mkt's work is timed.

    bench/corpus.py [--mkt target/release/mkt] [--n 100000] [--jobs 16]
                    [--csv FILE] [--keep DIR]

Phases, each a process measured by its own rusage (os.wait4):
  full      the first build of all N targets
  noop1     the first build after it (nothing changed)
  noop2     the next one
  edit      after one document's text changed
  status    `mkt status`, nothing stale
Reported per phase: wall and CPU seconds (user, system), peak RSS, and for
the store the bytes of `.mkt/` with those of its packs (the prompts and
outputs live there) apart.
"""
import argparse
import json
import os
import shutil
import tempfile

import measure


def write_corpus(root, n):
    docs = os.path.join(root, "docs")
    for i in range(n):
        sub = os.path.join(docs, f"{i // 1000:04}")
        if i % 1000 == 0:
            os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"{i:07}.txt"), "w") as f:
            f.write(f"ticket {i}: the printer on floor {i % 17} jams on page {i % 23}.\n")
    with open(os.path.join(root, "t.md"), "w") as f:
        f.write("system:\nClassify the ticket in one word.\nuser:\n{{ item.content }}")
    with open(os.path.join(root, "prompts.toml"), "w") as f:
        f.write('[targets.label]\ntemplate = "t.md"\nforeach = "docs/**/*.txt"\n'
                'output = "out/{dir}/{stem}.md"\n')


def store_bytes(root):
    total = packs = 0
    for dirpath, _, names in os.walk(os.path.join(root, ".mkt")):
        for name in names:
            size = os.path.getsize(os.path.join(dirpath, name))
            total += size
            if name.endswith(".pack"):
                packs += size
    return total, packs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mkt", default="target/release/mkt")
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--csv")
    ap.add_argument("--keep", help="build in DIR and leave it there")
    args = ap.parse_args()
    mkt = os.path.abspath(args.mkt)
    root = args.keep or tempfile.mkdtemp(prefix="mkt-bench-corpus-")
    os.makedirs(root, exist_ok=True)
    rows = []
    try:
        write_corpus(root, args.n)
        build = [mkt, "build", "-q", "-j", str(args.jobs)]
        phases = [("full", build), ("noop1", build), ("noop2", build),
                  ("edit", build), ("status", [mkt, "status"])]
        for phase, cmd in phases:
            if phase == "edit":
                with open(os.path.join(root, "docs", "0000", "0000007.txt"), "a") as f:
                    f.write("and again on the next day.\n")
            code, wall, user, sys_, rss = measure.measured(cmd, root, ok=(0, 1))
            total, packs = store_bytes(root)
            rows.append({"n": args.n, "jobs": args.jobs, "phase": phase, "exit": code,
                         "wall_s": round(wall, 3), "user_s": round(user, 3),
                         "system_s": round(sys_, 3), "peak_rss_mib": round(rss, 1),
                         "store_bytes": total, "pack_bytes": packs})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    measure.write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
