#!/usr/bin/env python3
"""How fast `mkt build` gets through a provider's rate limit, and that it
never fails for one: llmock (the API simulator from PyPI, pinned 0.2.2)
on 127.0.0.1 answers every chat completion after --latency seconds,
within a requests-per-minute and tokens-per-minute quota (a bucket that
starts full and refills continuously), with injected errors in one
scenario; mkt builds N independent targets with -j J and default model
settings (nothing about the limits is configured: mkt learns them from
the `x-ratelimit-*` headers).

    bench/rate_limits.py [--mkt target/release/mkt] [--llmock PATH]
                         [--n 300] [--jobs 64] [--latency 0.2]
                         [--csv FILE]

Scenarios, one build each on a fresh project and a fresh server:
  rpm        --rpm 200
  rpm+tpm    --rpm 200 --tpm 32000
  errors     --rpm 200, 20 % of answers 429 and 10 % 500 at random
  no-limit   no quota
The bound is what the quota allows: N requests at R a minute from a
bucket of R need (N - R) x 60 / R seconds (and likewise for tokens, each
request costing what llmock charges: a quarter of its body's bytes plus
max_tokens); with no quota it is N x latency / J. Reported: exit code,
outputs right, requests, answers of 429 for the quota (and injected ones),
wall time, bound, ratio. Needs python3 and llmock
(`pip install llmock==0.2.2`, e.g. in the venv `.ci/servers` makes).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import llmock
import measure

MAX_TOKENS = 100


def write_project(root, n, base_url):
    os.makedirs(os.path.join(root, "docs"))
    for i in range(n):
        with open(os.path.join(root, "docs", f"{i:04}.txt"), "w") as f:
            f.write(f"document {i}: " + "lorem ipsum dolor sit amet " * 7)
    with open(os.path.join(root, "t.md"), "w") as f:
        f.write("user:\nsummarise {{ item.content }}")
    with open(os.path.join(root, "prompts.toml"), "w") as f:
        f.write(
            '[targets.notes]\ntemplate = "t.md"\nforeach = "docs/*.txt"\n'
            'output = "out/{stem}.md"\nmodel = "m"\n\n'
            f'[models.m]\nprovider = "openai"\nmodel = "bench"\nbase_url = "{base_url}/v1"\n'
            f'max_tokens = {MAX_TOKENS}\n')


def journal(url):
    with urllib.request.urlopen(url + "/_llmock/requests", timeout=30) as r:
        return json.load(r)["requests"]


def bound(n, latency, jobs, rpm, tpm, answered):
    """Seconds the quota forces: the slower of requests and tokens."""
    if rpm is None and tpm is None:
        return n * latency / jobs
    b = 0.0
    if rpm is not None:
        b = max(b, (n - rpm) * 60 / rpm)
    if tpm is not None:
        # what llmock charged: the body as mkt sent it (compact JSON, in
        # mkt's key order, which the journal keeps), bytes // 4, plus max_tokens
        cost = sum(len(json.dumps(r["body"], separators=(",", ":"), ensure_ascii=False)
                       .encode()) // 4 + MAX_TOKENS for r in answered)
        b = max(b, (cost - tpm) * 60 / tpm)
    return max(b, latency)


def run(args, name, rpm, tpm, errors):
    flags = []
    if rpm:
        flags += ["--rpm", str(rpm)]
    if tpm:
        flags += ["--tpm", str(tpm)]
    for status, rate in errors:
        flags += ["--error-rate", f"{status}={rate}"]
    proc, url = llmock.start(args.llmock, ["--latency-ms", str(int(args.latency * 1000)), *flags])
    root = tempfile.mkdtemp(prefix="mkt-bench-rl-")
    try:
        write_project(root, args.n, url)
        env = dict(os.environ, OPENAI_API_KEY="")
        t = time.monotonic()
        done = subprocess.run([args.mkt, "build", "-q", "-j", str(args.jobs)], cwd=root,
                              env=env, capture_output=True, text=True)
        wall = time.monotonic() - t
        recs = journal(url)
        ok = [r for r in recs if r["status"] == 200]
        right = sum(
            1 for i in range(args.n)
            if open(os.path.join(root, "out", f"{i:04}.md")).read()
            # llmock echoes the first 120 characters of the prompt
            == "Hello! You said: " + ("summarise " + open(
                os.path.join(root, "docs", f"{i:04}.txt")).read())[:120]
        ) if done.returncode == 0 else 0
        quota = sum(1 for r in recs if (r["fault"] or "").startswith("ratelimit:"))
        injected_429 = sum(1 for r in recs if r["fault"] == "chaos:429")
        injected_500 = sum(1 for r in recs if r["fault"] == "chaos:500")
        b = bound(args.n, args.latency, args.jobs, rpm, tpm, ok)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
        return {
            "scenario": name, "n": args.n, "jobs": args.jobs, "latency_s": args.latency,
            "rpm": rpm or "", "tpm": tpm or "",
            "injected": " ".join(f"{s}={r}" for s, r in errors),
            "exit": done.returncode, "outputs_right": right, "requests": len(recs),
            "quota_429": quota, "quota_429_pct": round(100 * quota / max(1, len(recs)), 1),
            "injected_429": injected_429, "injected_500": injected_500,
            "wall_s": round(wall, 2), "bound_s": round(b, 2), "ratio": round(wall / b, 3),
        }
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mkt", default="target/release/mkt")
    ap.add_argument("--llmock", default=shutil.which("llmock") or "/tmp/mkt-ci-venv/bin/llmock")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--csv")
    ap.add_argument("--only", help="run only this scenario")
    args = ap.parse_args()
    args.mkt = os.path.abspath(args.mkt)
    scenarios = [
        ("rpm", 200, None, []),
        ("rpm+tpm", 200, 32000, []),
        ("errors", 200, None, [(429, 0.2), (500, 0.1)]),
        ("no-limit", None, None, []),
    ]
    rows = []
    for name, rpm, tpm, errors in scenarios:
        if args.only and name != args.only:
            continue
        row = run(args, name, rpm, tpm, errors)
        print(json.dumps(row), flush=True)
        rows.append(row)
    measure.write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
