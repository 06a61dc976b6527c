#!/usr/bin/env python3
"""How long a fully cached build from the remote cache takes: machine A
builds N independent targets (mock model) and publishes them; machine B, a
copy with an empty `.mkt/`, builds with zero model calls, every target
served from the remote. Prints the wall time of each, per backend.

    bench/remote.py [--n 1000] [--mkt PATH] [--backends file,s3,webdav]

Backends: `file` (a directory, always), `s3` (needs MKT_TEST_S3_ENDPOINT,
e.g. moto on 127.0.0.1, as `.ci/run` starts it) and `webdav` (needs
MKT_TEST_WEBDAV_URL, nginx); a backend whose variable is unset is skipped.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request


def project(root, n, cache):
    os.makedirs(os.path.join(root, "inputs"))
    with open(os.path.join(root, "t.md"), "w") as f:
        f.write("Summarise:\n{{ item.content }}\n")
    for i in range(n):
        with open(os.path.join(root, "inputs", f"{i}.md"), "w") as f:
            f.write(f"document {i}\n")
    with open(os.path.join(root, "prompts.toml"), "w") as f:
        f.write(
            '[targets.s]\nforeach = "inputs/*.md"\ntemplate = "t.md"\n'
            'output = "out/{stem}.md"\n\n[cache]\n' + cache + "\n"
        )


def run(mkt, cwd, env):
    t = time.perf_counter()
    p = subprocess.run([mkt, "build"], cwd=cwd, env=env,
                       capture_output=True, text=True)
    took = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"mkt build failed in {cwd}:\n{p.stderr}")
    return took, p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--mkt", default="target/release/mkt")
    ap.add_argument("--backends", default="file,s3,webdav")
    a = ap.parse_args()
    a.mkt = os.path.abspath(a.mkt)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
               AWS_REGION="us-east-1")
    env.pop("MKT_REMOTE_CACHE", None)
    work = tempfile.mkdtemp(prefix="mkt-bench-remote-")
    print("backend,n,publish_s,fully_cached_from_remote_s")
    try:
        for b in a.backends.split(","):
            tag = f"b{os.getpid()}{b}"
            if b == "file":
                cache = f'remote = "file://{work}/remote"'
            elif b == "s3":
                ep = os.environ.get("MKT_TEST_S3_ENDPOINT")
                if not ep:
                    print("# s3 skipped: MKT_TEST_S3_ENDPOINT is not set", file=sys.stderr)
                    continue
                urllib.request.urlopen(urllib.request.Request(f"{ep}/{tag}", method="PUT"))
                cache = f'remote = "s3://{tag}/cache"\nendpoint = "{ep}"'
            elif b == "webdav":
                url = os.environ.get("MKT_TEST_WEBDAV_URL")
                if not url:
                    print("# webdav skipped: MKT_TEST_WEBDAV_URL is not set", file=sys.stderr)
                    continue
                cache = 'remote = "webdav+' + url.rstrip("/") + f'/{tag}"'
            else:
                sys.exit(f"unknown backend {b}")
            pa, pb = os.path.join(work, b, "a"), os.path.join(work, b, "b")
            project(pa, a.n, cache)
            project(pb, a.n, cache)
            publish, _ = run(a.mkt, pa, env)
            served, err = run(a.mkt, pb, env)
            summary = err.strip().splitlines()[-1]
            if f"0 ran, {a.n} cached, 0 up to date, {a.n} from the remote cache" not in summary:
                sys.exit(f"{b}: machine B did not build from the remote:\n{err[-2000:]}")
            print(f"{b},{a.n},{publish:.2f},{served:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
