"""What the benchmarks share: one process measured by its own rusage, and
the rows written as CSV."""
import csv
import os
import subprocess
import sys
import time


def measured(cmd, cwd, env=None, ok=(0,)):
    """Runs `cmd` in `cwd`; its exit code, wall seconds, user and system CPU
    seconds, and peak RSS in MiB (os.wait4: this process alone). Its stderr
    is shown when the exit code is not in `ok`."""
    t = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t
    code = os.waitstatus_to_exitcode(status)
    if code not in ok:
        print(err.decode(errors="replace")[-2000:], file=sys.stderr)
    return code, wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss / 1024


def write_csv(path, rows):
    """`rows` (dicts with the same keys) as CSV at `path`, when one is given."""
    if not path:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
