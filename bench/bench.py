#!/usr/bin/env python3
"""mkt's own benchmark: full, no-op and one-edit incremental builds of a
synthetic pipeline of N targets, with the mock model and with the `command`
model, side by side with ninja running the same commands, in one run.

    bench/bench.py [--sizes 100,1000,10000] [--shapes fan,layers] [--mkt PATH]
                   [--ninja PATH] [--runs 10] [--work DIR] [--csv OUT]

Shapes (the same as ../shared/bench/gen.py, so figures compare):
  fan     N independent targets; target i renders templates/t<i>.md, the
          shared text followed by inputs/i.md
  layers  N targets in layers of width max(10, isqrt(N)); target (k, p) also
          consumes the outputs of (k-1, p) and (k-1, (p+1) % W), through
          `cksum` so outputs stay small

Models: `mock` (provider mock, no latency; fan only, since it echoes its
prompt and layers prompts contain both parents' outputs) and `command`
(`cat` for fan, `cksum` for layers: the compiled prompt is byte-for-byte
what ninja's `cat` reads, so both tools do the same work per target).

Phases: full, noop, status (`mkt status` / `ninja -n` with nothing
changed), status-edited (the same after one input edit), incremental.
Each phase is a fresh process: wall time from the clock, peak RSS from
wait4(). no-op and incremental are medians over --runs runs (at least 3).
Prints one CSV row per (tool, model, shape, n, phase) and, per size, the
ratio mkt/ninja. Needs only python3; ninja is optional (pip install ninja).
"""
import argparse
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

SHARED = (
    "You are a careful technical editor. Summarise the document below in\n"
    "three bullet points, keep every number exact, do not invent facts, and\n"
    "answer in plain Markdown. If the document references earlier summaries,\n"
    "reconcile them and note any contradiction in a final line.\n"
    "---\n"
)
WORDS = "alpha beta gamma delta build cache prompt model token graph node edge layer input output hash".split()


def deps_of(shape, n):
    deps = [[] for _ in range(n)]
    if shape == "layers":
        w = max(10, math.isqrt(n))
        for i in range(w, n):
            k, p = divmod(i, w)
            base = (k - 1) * w
            deps[i] = [base + p, base + (p + 1) % w]
    return deps


def write(path, text):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def gen(root, tool, model, shape, n):
    """One project directory for one tool."""
    if os.path.exists(root):
        shutil.rmtree(root)
    deps = deps_of(shape, n)
    for i in range(n):
        rng = random.Random(i)
        text = f"# Document {i}\n\n" + " ".join(rng.choice(WORDS) for _ in range(40)) + f" ({i}).\n"
        write(f"{root}/inputs/{i}.md", text)
    os.makedirs(f"{root}/out", exist_ok=True)
    prog = "cksum" if shape == "layers" else "cat"
    if tool == "ninja":
        write(f"{root}/templates/t.md", SHARED)
        rule = f"cat $in | {prog} > $out" if shape == "layers" else "cat $in > $out"
        lines = ["rule step", f"  command = {rule}", ""]
        for i in range(n):
            srcs = ["templates/t.md", f"inputs/{i}.md"] + [f"out/{d}.md" for d in deps[i]]
            lines.append(f"build out/{i}.md: step {' '.join(srcs)}")
        write(f"{root}/build.ninja", "\n".join(lines) + "\n")
        return
    if model == "mock":
        toml = ["[models.m]", 'provider = "mock"', ""]
    else:
        toml = ["[models.m]", 'provider = "command"', f'command = ["{prog}"]', ""]
    for i in range(n):
        refs = "".join("{{ targets.t%d }}" % d for d in deps[i])
        write(f"{root}/templates/t{i}.md", SHARED + "{{ inputs.doc }}" + refs)
        toml += [f"[targets.t{i}]", f'template = "templates/t{i}.md"',
                 f'inputs = {{ doc = "inputs/{i}.md" }}', f'output = "out/{i}.md"', 'model = "m"', ""]
    write(f"{root}/prompts.toml", "\n".join(toml))


TIME = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None


def timed(cmd, cwd, ok=(0,)):
    """Wall time, and peak RSS in kB from GNU time (a child forked from
    Python would report Python's own RSS through wait4), or NA."""
    rss_file = os.path.join(cwd, ".bench-rss")
    full = [TIME, "-f", "%M", "-o", rss_file] + cmd if TIME else cmd
    t0 = time.perf_counter()
    p = subprocess.run(full, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if p.returncode not in ok:
        sys.exit(f"{' '.join(cmd)} failed in {cwd} ({p.returncode}):\n{p.stderr.decode(errors='replace')}")
    rss = "NA"
    if TIME:
        with open(rss_file) as f:
            rss = int(f.read().split()[-1])
        os.remove(rss_file)
    return wall, rss


def edit(root, k):
    with open(f"{root}/inputs/0.md", "a") as f:
        f.write(f"Edited ({k}).\n")


def measure(cmd, root, runs, status_cmd):
    rows = {}
    rows["full"] = timed(cmd, root)
    rss = 0
    walls = []
    timed(cmd, root)  # warm-up (also settles mkt's racy stat entries)
    for _ in range(runs):
        w, r = timed(cmd, root)
        walls.append(w)
        rss = r if r == "NA" else max(rss, r)
    rows["noop"] = (statistics.median(walls), rss)
    # what will run, with nothing changed (mkt status; ninja -n), then with
    # one input edited (exit code 1 for mkt: something is stale)
    for phase, ok in (("status", (0,)), ("status-edited", (0, 1))):
        if phase == "status-edited":
            edit(root, "status")
        walls, rss = [], 0
        for _ in range(runs):
            w, r = timed(status_cmd, root, ok)
            walls.append(w)
            rss = r if r == "NA" else max(rss, r)
        rows[phase] = (statistics.median(walls), rss)
    walls, rss = [], 0
    for k in range(max(3, runs // 2)):
        edit(root, k)
        w, r = timed(cmd, root)
        walls.append(w)
        rss = r if r == "NA" else max(rss, r)
    rows["incremental"] = (statistics.median(walls), rss)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--shapes", default="fan,layers")
    ap.add_argument("--models", default="mock,command")
    ap.add_argument("--mkt", default=os.path.join(here, "..", "target", "release", "mkt"))
    ap.add_argument("--ninja", default=shutil.which("ninja") or "/tmp/peers-venv/bin/ninja")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", default="/tmp/mkt-own-bench")
    ap.add_argument("--csv", default=None)
    a = ap.parse_args()
    have_ninja = os.path.exists(a.ninja)
    out = open(a.csv, "w") if a.csv else sys.stdout
    print("tool,model,shape,n,phase,wall_s,peak_rss_kb", file=out, flush=True)
    for shape in a.shapes.split(","):
        for n in map(int, a.sizes.split(",")):
            results = {}
            # the mock echoes its prompt, and a layers prompt holds both
            # parents' outputs: sizes would double every layer (the peers
            # and the command model use cksum for the same reason)
            models = [m for m in a.models.split(",") if not (shape == "layers" and m == "mock")]
            tools = [("mkt", m) for m in models] + ([("ninja", "-")] if have_ninja else [])
            for tool, model in tools:
                root = f"{a.work}/{shape}-{n}/{tool}-{model}"
                gen(root, tool, model, shape, n)
                cmd = [a.ninja, "-j", str(a.jobs), "--quiet"] if tool == "ninja" else [a.mkt, "build", "-j", str(a.jobs), "-q"]
                status_cmd = [a.ninja, "-n", "--quiet"] if tool == "ninja" else [a.mkt, "status"]
                rows = measure(cmd, root, a.runs, status_cmd)
                results[(tool, model)] = rows
                for phase, (wall, rss) in rows.items():
                    print(f"{tool},{model},{shape},{n},{phase},{wall:.4f},{rss}", file=out, flush=True)
            if have_ninja and ("mkt", "command") in results:
                nj, mk = results[("ninja", "-")], results[("mkt", "command")]
                ratios = ", ".join(f"{ph} {mk[ph][0] / nj[ph][0]:.2f}" for ph in ("full", "noop", "incremental", "status"))
                print(f"# {shape} n={n}: mkt(command)/ninja wall ratio: {ratios}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
