"""`dask scheduler` and `dask worker` as subprocesses with the omax preloads, for the
tests that need real processes (killing, restarting, separate configuration)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

DASK = str(Path(sys.executable).with_name("dask"))


def wait_for_line(pattern: str, proc: subprocess.Popen, timeout: float = 60) -> re.Match:
    """Read ``proc``'s stderr until a line matches ``pattern``."""
    deadline = time.time() + timeout
    lines = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise AssertionError(f"{pattern!r} not seen:\n{''.join(lines)}")


def start_scheduler(env: dict) -> tuple[subprocess.Popen, str]:
    """A scheduler with the omax plugin on a free port; returns (process, address)."""
    proc = subprocess.Popen(
        [
            DASK,
            "scheduler",
            "--port",
            "0",
            "--dashboard-address",
            ":0",
            "--preload",
            "omax.plugins.scheduler",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    return proc, wait_for_line(r"Scheduler at:\s+(tcp://\S+)", proc).group(1)


def start_worker(address: str, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [DASK, "worker", address, "--nthreads", "1", "--preload", "omax.plugins.worker", *args],
        stderr=subprocess.DEVNULL,
        env=env,
    )


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
