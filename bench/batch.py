#!/usr/bin/env python3
"""What a batch build costs mkt itself: N `foreach` targets sent through
one provider batch to llmock (the API simulator from PyPI, pinned 0.2.2)
on 127.0.0.1, which ends a batch about 3 s after it is created.

    bench/batch.py [--mkt target/release/mkt] [--llmock PATH]
                   [--n 10000] [--provider openai|anthropic] [--csv FILE]

Two processes are measured, each by its own rusage (os.wait4):
  submit    `mkt build --batch --detach`: compile every target, store the
            prompts, record the batch, upload it (OpenAI: a JSONL file,
            then the batch; Anthropic: one JSON body)
  collect   `mkt build` once the batch has ended: poll, download the
            answers, store each as a run, write the outputs, save the state
Reported per phase: mkt's CPU seconds (user + system), wall seconds, peak
RSS; and that every output is right and no ordinary call was made.
Needs python3 and llmock (`pip install llmock==0.2.2`, e.g. in the venv
`.ci/servers` makes).
"""
import argparse
import json
import os
import shutil
import tempfile
import time
import urllib.request

import llmock
import measure


def write_project(root, n, provider, base_url):
    os.makedirs(os.path.join(root, "docs"))
    for i in range(n):
        with open(os.path.join(root, "docs", f"{i:05}.txt"), "w") as f:
            f.write(f"document {i}: " + "lorem ipsum dolor sit amet " * 7)
    with open(os.path.join(root, "t.md"), "w") as f:
        f.write("user:\nsummarise {{ item.content }}")
    path = "/v1" if provider == "openai" else "/anthropic/v1"
    with open(os.path.join(root, "prompts.toml"), "w") as f:
        f.write(
            '[targets.notes]\ntemplate = "t.md"\nforeach = "docs/*.txt"\n'
            'output = "out/{stem}.md"\nmodel = "m"\n\n'
            f'[models.m]\nprovider = "{provider}"\nmodel = "bench"\n'
            f'base_url = "{base_url}{path}"\napi_key_env = "BENCH_KEY"\nmax_tokens = 100\n')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mkt", default="target/release/mkt")
    ap.add_argument("--llmock", default=shutil.which("llmock") or "/tmp/mkt-ci-venv/bin/llmock")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--provider", default="openai", choices=["openai", "anthropic"])
    ap.add_argument("--csv")
    args = ap.parse_args()
    mkt = os.path.abspath(args.mkt)
    proc, url = llmock.start(args.llmock)
    root = tempfile.mkdtemp(prefix="mkt-bench-batch-")
    rows = []
    try:
        write_project(root, args.n, args.provider, url)
        env = dict(os.environ, BENCH_KEY="sk-bench")
        for phase, cmd in [("submit", [mkt, "build", "-q", "--batch", "--detach"]),
                           ("collect", [mkt, "build", "-q"])]:
            if phase == "collect":
                time.sleep(4)  # llmock ends a batch 3 s after its creation
            code, wall, user, sys_, rss = measure.measured(cmd, root, env)
            cpu = user + sys_
            rows.append({"provider": args.provider, "n": args.n, "phase": phase,
                         "exit": code, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                         "peak_rss_mib": round(rss, 1)})
            print(json.dumps(rows[-1]), flush=True)
        with urllib.request.urlopen(url + "/_llmock/requests", timeout=60) as r:
            recs = json.load(r)["requests"]
        ordinary = sum(1 for r in recs
                       if r["path"].endswith(("/chat/completions", "/v1/messages")))
        right = sum(
            1 for i in range(args.n)
            if open(os.path.join(root, "out", f"{i:05}.md")).read()
            == "Hello! You said: " + ("summarise " + open(
                os.path.join(root, "docs", f"{i:05}.txt")).read())[:120])
        for row in rows:
            row["outputs_right"] = right
            row["ordinary_calls"] = ordinary
        print(json.dumps({"outputs_right": right, "ordinary_calls": ordinary}))
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(root, ignore_errors=True)
    measure.write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
