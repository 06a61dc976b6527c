#!/usr/bin/env python3
"""Seeds fuzz/corpus/ from the repository's own files and a real store.

Usage: fuzz/seed.py STORE_DIR   (a `.mkt/` left by `mkt build` of the
example, ideally after a second build that appended to `state.log`).

Inputs of `store_readers` start with a byte choosing the reader; odd
choices are bodies that the target wraps in a valid header and checksum,
so their seeds are the real files with header and checksum cut off (see
fuzz_targets/store_readers.rs).
"""
import glob
import hashlib
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def put(target, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    # content-named like libFuzzer's own files, so re-seeding is idempotent
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def read(p):
    with open(p, "rb") as f:
        return f.read()


def main():
    store = sys.argv[1]
    for p in ["prompts.toml"] + sorted(glob.glob("fixtures/*/prompts.toml", root_dir=REPO)):
        put("project_toml", read(os.path.join(REPO, p)))
    for pat in ["example/templates/*.md", "example/partials/*.md", "fixtures/*/templates/*.md"]:
        for p in sorted(glob.glob(pat, root_dir=REPO)):
            put("template_analysis", read(os.path.join(REPO, p)))

    def pick(n, data):
        put("store_readers", bytes([n]) + data)

    for p in sorted(glob.glob(os.path.join(store, "ac", "*", "*.json")))[:2]:
        pick(0, read(p))
    for p in sorted(glob.glob(os.path.join(store, "runs", "*.json")))[:1]:
        pick(0, read(p))
    pick(1, read(os.path.join(store, "history.jsonl")))
    state = read(os.path.join(store, "state"))
    pick(2, state)
    pick(3, state[20:-32])  # magic, version, u64 length | body | checksum
    noop = read(os.path.join(store, "noop"))
    vlen = struct.unpack_from("<I", noop, 8)[0]
    pick(4, noop)
    pick(5, noop[8 + 4 + vlen : -32])  # magic, str version | body | checksum
    graph = read(os.path.join(store, "graph"))
    pick(6, graph)
    pick(7, graph[8 + 4 + vlen + 32 : -32])  # magic, version, key
    cache = read(os.path.join(store, "project-cache.json"))
    pick(8, cache)
    pick(9, cache[8 + 32 + 4 + vlen : -32])  # magic, key, version
    log_path = os.path.join(store, "state.log")
    if os.path.exists(log_path):
        log = read(log_path)
        pick(10, log)
        n = struct.unpack_from("<Q", log, 40)[0]  # after magic and snapshot id
        pick(11, log[48 : 48 + n])


main()
