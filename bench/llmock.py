"""llmock (the API simulator from PyPI, pinned 0.2.2) for the benchmarks:
started on a free port of 127.0.0.1, ready when its journal answers."""
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(llmock, flags=()):
    """Starts llmock with `flags` (echo answers, quiet log); (process, URL)."""
    port = free_port()
    log = open(os.devnull, "w")
    proc = subprocess.Popen(
        [llmock, "serve", "--host", "127.0.0.1", "--port", str(port),
         "--response-style", "echo", "--log-level", "warning", *flags],
        stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(url + "/_llmock/requests", timeout=1)
            return proc, url
        except Exception:
            time.sleep(0.2)
    proc.kill()
    sys.exit(f"llmock did not answer at {url} within 30 s")
