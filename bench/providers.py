#!/usr/bin/env python3
"""How close `mkt build -j J` comes to the ideal wall time against a slow
network model: a fake OpenAI-compatible server on 127.0.0.1 answers every
chat completion after --latency seconds; mkt builds N independent targets
with -j J. The bound is N × latency / J (each worker waits for its
answers back to back); the ratio measured/bound shows what mkt's own work
(compilation, hashing, the store, HTTP) adds.

    bench/providers.py [--mkt target/release/mkt] [--n 200] [--jobs 32]
                       [--latency 0.2] [--runs 3]

Each run builds a fresh copy of the project (nothing cached). Prints the
wall time of each run, the median, and the ratio of the median to the
bound. Needs only python3.
"""
import argparse
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def make_handler(latency, counter):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            n = int(self.headers.get("content-length", "0"))
            body = json.loads(self.rfile.read(n))
            time.sleep(latency)
            last = body["messages"][-1]["content"]
            out = json.dumps({
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok: " + last[:40]},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 5},
            }).encode()
            with counter["lock"]:
                counter["n"] += 1
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    return Handler


def write_project(root, n, base_url):
    os.makedirs(os.path.join(root, "docs"))
    for i in range(n):
        with open(os.path.join(root, "docs", f"{i:04}.md"), "w") as f:
            f.write(f"Document {i}: some text to summarise.\n")
    with open(os.path.join(root, "t.md"), "w") as f:
        f.write("system:\nSummarise in one line.\nuser:\n{{ item.content }}\n")
    with open(os.path.join(root, "prompts.toml"), "w") as f:
        f.write(
            "[models.default]\n"
            'provider = "openai"\n'
            'model = "bench"\n'
            f'base_url = "{base_url}"\n'
            "\n[targets.s]\n"
            'foreach = "docs/*.md"\n'
            'template = "t.md"\n'
            'output = "out/{stem}.md"\n'
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mkt", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "mkt"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not os.path.exists(args.mkt):
        sys.exit(f"no mkt at {args.mkt}: run `cargo build --release` first or pass --mkt")

    counter = {"n": 0, "lock": threading.Lock()}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(args.latency, counter))
    server.daemon_threads = True
    server.request_queue_size = 256
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"

    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    bound = args.n * args.latency / args.jobs
    times = []
    for run in range(args.runs):
        root = tempfile.mkdtemp(prefix="mkt-bench-providers-")
        try:
            write_project(root, args.n, base_url)
            before = counter["n"]
            t = time.perf_counter()
            p = subprocess.run([args.mkt, "-C", root, "build", "-q", "-j", str(args.jobs)],
                               env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if p.returncode != 0:
                sys.exit(f"mkt build failed:\n{p.stderr}")
            calls = counter["n"] - before
            if calls != args.n:
                sys.exit(f"expected {args.n} model calls, the server answered {calls}")
            times.append(wall)
            print(f"run {run + 1}: {wall:.3f} s ({calls} requests)")
        finally:
            shutil.rmtree(root)
    med = statistics.median(times)
    print(f"{args.n} targets, -j {args.jobs}, {args.latency * 1000:.0f} ms per answer: "
          f"median {med:.3f} s, bound {bound:.3f} s, ratio {med / bound:.2f}")


if __name__ == "__main__":
    main()
