#!/usr/bin/env python3
"""A paired one-edit comparison of mkt and ninja on the shared harness's
projects: each round appends a line to `inputs/0.md` in both copies and
times one build of each, the two tools in alternating order, so that both
see the same minute of a noisy machine. Prints each tool's median and the
median and quartiles of the per-round ratio mkt / ninja.

    bench/pair.py BENCH_WORK/fan-10000 [--rounds 30] [--mkt PATH] [--ninja PATH]

The directory is one the harness made (`../shared/bench/run.sh mkt 10000
fan` and `... ninja 10000 fan` with the same BENCH_WORK), holding `mkt/`
and `ninja/`, each already built.

With `--full SHAPE --n N`, each round times a full build instead, of
projects generated into DIR/round-K (`gen.py gen`) before the first round
(all of them first: deleting a round's files before the next would time
ext4's allocator after a mass deletion, see README). Each
build's CPU time (user + system, its children included) is printed too:
with the `command` model a full build is bound by the CPU its programs
take, so that column says how far below ninja a build can go.

    bench/pair.py /tmp/pair-full --full fan --n 10000 --rounds 4

With `--bound` as well, each round also times what a full build cannot
go below on this machine: the programs alone (`spawn_floor`: N runs of
`cat` with a prompt-sized input, 2 at a time, nothing else) and mkt's own
work alone (a full build of a copy with the `mock` model: read, render,
hash, store and write, no spawns). Their CPU time over the 2 cores, as a
share of ninja's time in the same round, is the lowest ratio any mkt could
reach, even one whose own work cost no spawn overhead at all.

    bench/pair.py /tmp/pair-bound --full fan --n 10000 --rounds 3 --bound
"""
import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="a harness project directory holding mkt/ and ninja/")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--mkt", default="target/release/mkt")
    ap.add_argument("--ninja", default="/tmp/peers-venv/bin/ninja")
    ap.add_argument("--full", metavar="SHAPE", help="time full builds of a fresh SHAPE project")
    ap.add_argument("--n", type=int, default=10000, help="targets, with --full")
    ap.add_argument("--bound", action="store_true", help="with --full: also time the floor (see above)")
    ap.add_argument("--floor", default="target/release/examples/spawn_floor")
    ap.add_argument("--gen", default=os.path.join(os.path.dirname(__file__), "../../shared/bench/gen.py"))
    a = ap.parse_args()
    tools = [
        ("mkt", os.path.join(a.dir, "mkt"), [os.path.abspath(a.mkt), "build", "-j", "2", "-q"]),
        ("ninja", os.path.join(a.dir, "ninja"), [a.ninja, "-j", "2", "--quiet"]),
    ]
    if a.full:
        if os.path.exists(a.dir):
            raise SystemExit(f"{a.dir} exists: give --full a new directory")
        for i in range(a.rounds):
            subprocess.run(["python3", a.gen, "gen", os.path.join(a.dir, f"round-{i + 1}"),
                            "--shape", a.full, "--n", str(a.n), "--tools", "mkt,ninja"],
                           check=True, stdout=subprocess.DEVNULL)
            if a.bound:
                mock = os.path.join(a.dir, f"round-{i + 1}", "mock")
                shutil.copytree(os.path.join(a.dir, f"round-{i + 1}", "mkt"), mock)
                toml = os.path.join(mock, "prompts.toml")
                with open(toml) as f:
                    text = f.read()
                text = re.sub(r'(?m)^provider = "command"\ncommand = .*$', 'provider = "mock"', text)
                with open(toml, "w") as f:
                    f.write(text)
        os.sync()  # the new files' writeback is not left to the builds
    times = {name: [] for name, _, _ in tools}
    ratios = []
    bounds = []
    for i in range(a.rounds):
        took = {}
        if a.full:
            base = os.path.join(a.dir, f"round-{i + 1}")
            tools = [(name, os.path.join(base, name), cmd) for name, _, cmd in tools]
        for name, d, cmd in tools if i % 2 == 0 else tools[::-1]:
            if not a.full:
                with open(os.path.join(d, "inputs/0.md"), "a") as f:
                    f.write(f"paired edit {i}\n")
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=d, check=True)
            took[name] = time.perf_counter() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            times[name].append(took[name] * 1e3)
            if a.full:
                print(f"round {i + 1} {name}: {took[name]:.2f} s, CPU {cpu:.2f} s ({cpu / took[name]:.2f} cores)")
        ratios.append(took["mkt"] / took["ninja"])
        if a.bound:
            base = os.path.join(a.dir, f"round-{i + 1}")
            floor_cpu = cpu_of([os.path.abspath(a.floor), str(a.n), "2", "cat"], base, "floor", i)
            mock_cpu = cpu_of(tools[0][2], os.path.join(base, "mock"), "mkt, mock model", i)
            bound = (floor_cpu + mock_cpu) / 2 / took["ninja"]
            bounds.append(bound)
            print(f"round {i + 1}: (floor CPU + own-work CPU) / 2 cores = {bound:.2f} x ninja")
    for name, v in times.items():
        print(f"{name}: median {statistics.median(v):.1f} ms, min {min(v):.1f} ms")
    q = statistics.quantiles(ratios, n=4)
    print(f"mkt / ninja per round: median {statistics.median(ratios):.2f}, quartiles {q[0]:.2f} {q[2]:.2f}")
    if bounds:
        print(f"lowest reachable ratio per round: median {statistics.median(bounds):.2f}")


def cpu_of(cmd: list, cwd: str, what: str, i: int) -> float:
    """Runs `cmd` in `cwd`; prints and returns its CPU seconds (children included)."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(f"round {i + 1} {what}: {took:.2f} s, CPU {cpu:.2f} s")
    return cpu


if __name__ == "__main__":
    main()
