#!/usr/bin/env python3
"""mkt's own cost on a corpus-sized pipeline: one `foreach` target over N
documents and the `mock` model, so that only mkt's work is timed.

    bench/corpus.py [--mkt target/release/mkt] [--n 100000] [--jobs 16]
                    [--csv FILE] [--keep DIR] [--ninja PATH]

Phases, each a process measured by its own rusage (os.wait4):
  full         the first build of all N targets
  noop1        the first build after it (nothing changed)
  noop2        the next one
  edit         after one document's text changed
  status       `mkt status`, nothing stale
  graph        `mkt graph --json`
  gc           `mkt gc`
  watch_start  `mkt watch` until it watches (then stopped)
With --ninja, the same corpus built by ninja too (a `cat` per document into
`out-ninja/`): full, no-op and the same edit, for the side-by-side figures.
Reported per phase: wall and CPU seconds (user, system), peak RSS, and for
the store the bytes of `.mkt/`, of its packs, and of the prompts and outputs
themselves (the payloads of the packs' objects), with what the store keeps
beyond those per target.

The corpus is written to a new directory and, unless --keep, removed at the
end: on ext4 a file created within minutes of a mass deletion costs several
times more (the allocator skips recently freed inodes), so a run that
follows another's cleanup is slower; leave a few minutes between runs.
"""
import argparse
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import tempfile
import time

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


PAYLOADS = {}  # (pack, size) -> its objects' payload bytes


def object_payload_bytes(pack):
    """The bytes of a pack's objects' payloads (prompts, outputs; not the
    action-cache entries), by walking its records (src/pack.rs)."""
    key = (pack, os.path.getsize(pack))
    if key not in PAYLOADS:
        PAYLOADS[key] = walk_pack(pack)
    return PAYLOADS[key]


def walk_pack(pack):
    # (read record by record: the benchmark's children inherit its peak
    # RSS, which a whole pack read at once would inflate)
    total = 0
    with open(pack, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        f.seek(end - 20)
        footer = f.read(20)
        if footer.endswith(b"MKTSEAL1"):
            end = struct.unpack("<Q", footer[:8])[0]
        pos = 8
        while pos + 69 <= end:
            f.seek(pos)
            head = f.read(5)
            length = struct.unpack("<I", head[1:5])[0]
            if head[0] == 1:
                total += length
            pos += 69 + length
    return total


def store_bytes(root):
    """Bytes of `.mkt/`: in all, of its packs, of the objects' payloads."""
    total = packs = objects = 0
    for dirpath, _, names in os.walk(os.path.join(root, ".mkt")):
        for name in names:
            path = os.path.join(dirpath, name)
            size = os.path.getsize(path)
            total += size
            if name.endswith(".pack"):
                packs += size
                objects += object_payload_bytes(path)
    return total, packs, objects


def watch_start(mkt, root):
    """`mkt watch`, timed until it is watching (its first build done and its
    directories watched: the `watching N directories` line, which it draws
    on a terminal only, hence the pty); then interrupted. Wall seconds."""
    master, slave = pty.openpty()
    t = time.monotonic()
    proc = subprocess.Popen([mkt, "watch"], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=slave)
    os.close(slave)
    seen = b""
    while b"watching" not in seen:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    wall = time.monotonic() - t
    proc.send_signal(signal.SIGINT)
    proc.wait()
    os.close(master)
    return wall


EDITED = os.path.join("docs", "0000", "0000007.txt")


def edit(root):
    with open(os.path.join(root, EDITED), "a") as f:
        f.write("and again on the next day.\n")


def ninja_rows(ninja, root, n, jobs):
    """The same corpus built by ninja, each output a `cat` of its document
    (`out-ninja/`): full, no-op, and after the same one-document edit."""
    docs = sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(os.path.join(root, "docs")) for f in fs)
    with open(os.path.join(root, "build.ninja"), "w") as f:
        f.write("rule cat\n  command = cat $in > $out\n")
        for doc in docs:
            out = os.path.join("out-ninja", os.path.splitext(doc)[0] + ".md")
            f.write(f"build {out}: cat {doc}\n")
    rows = []
    cmd = [ninja, "-j", str(jobs)]
    for phase in ("full", "noop2", "edit"):
        if phase == "edit":
            edit(root)
        code, wall, user, sys_, rss = measure.measured(cmd, root)
        rows.append({"tool": "ninja", "n": n, "jobs": jobs, "phase": phase, "exit": code,
                     "wall_s": round(wall, 3), "user_s": round(user, 3),
                     "system_s": round(sys_, 3), "peak_rss_mib": round(rss, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mkt", default="target/release/mkt")
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--csv")
    ap.add_argument("--keep", help="build in DIR and leave it there")
    ap.add_argument("--ninja", help="also build the corpus with this ninja, side by side")
    args = ap.parse_args()
    mkt = os.path.abspath(args.mkt)
    root = args.keep or tempfile.mkdtemp(prefix="mkt-bench-corpus-")
    os.makedirs(root, exist_ok=True)
    rows = []
    try:
        write_corpus(root, args.n)
        build = [mkt, "build", "-q", "-j", str(args.jobs)]
        phases = [("full", build), ("noop1", build), ("noop2", build),
                  ("edit", build), ("status", [mkt, "status"]),
                  ("graph", [mkt, "graph", "--json"]), ("gc", [mkt, "gc"]),
                  ("watch_start", None)]
        for phase, cmd in phases:
            if phase == "edit":
                edit(root)
            if cmd is None:
                code, wall, user, sys_, rss = 0, watch_start(mkt, root), "", "", ""
            else:
                code, wall, user, sys_, rss = measure.measured(cmd, root, ok=(0, 1))
                user, sys_, rss = round(user, 3), round(sys_, 3), round(rss, 1)
            total, packs, objects = store_bytes(root)
            rows.append({"tool": "mkt", "n": args.n, "jobs": args.jobs, "phase": phase,
                         "exit": code,
                         "wall_s": round(wall, 3), "user_s": user, "system_s": sys_,
                         "peak_rss_mib": rss, "store_bytes": total, "pack_bytes": packs,
                         "object_payload_bytes": objects,
                         "overhead_bytes_per_target": round((total - objects) / args.n)})
            print(json.dumps(rows[-1]), flush=True)
        if args.ninja:
            rows += ninja_rows(os.path.abspath(args.ninja), root, args.n, args.jobs)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    # (the ninja rows have no store columns: blank)
    for r in rows:
        for k in rows[0]:
            r.setdefault(k, "")
    measure.write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
