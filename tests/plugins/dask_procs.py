"""`dask scheduler` and `dask worker` as subprocesses with the omax preloads, for the
tests that need real processes (killing, restarting, separate configuration)."""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import threading
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


def start_scheduler(env: dict, *args: str) -> tuple[subprocess.Popen, str]:
    """A scheduler with the omax plugin on a free port; returns (process, address).
    ``args`` are more ``dask scheduler`` options (``--protocol tls``)."""
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
            *args,
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    address = wait_for_line(r"Scheduler at:\s+((?:tcp|tls)://\S+)", proc).group(1)
    _drain(proc)
    return proc, address


def start_worker(address: str, env: dict, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [DASK, "worker", address, "--nthreads", "1", "--preload", "omax.plugins.worker", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _drain(proc)
    return proc


def _drain(proc: subprocess.Popen) -> None:
    """Keep reading ``proc``'s stderr so a chatty process never blocks on a full pipe;
    its last lines stay in ``proc.log`` for a failing test to show (see `tail`)."""
    proc.log = collections.deque(maxlen=200)  # type: ignore[attr-defined]

    def read() -> None:
        for line in proc.stderr:
            proc.log.append(line)  # type: ignore[attr-defined]

    threading.Thread(target=read, daemon=True).start()


def tail(*procs: subprocess.Popen, lines: int = 40) -> str:
    """The last ``lines`` stderr lines of each process, for an assertion message."""
    return "\n".join(
        f"--- {' '.join(p.args[1:3])} (exit {p.poll()}):\n" + "".join(list(p.log)[-lines:])
        for p in procs
    )


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def worker_records(client) -> dict:
    """Address -> the scheduler's record of each worker, fetched now.

    Not ``client.scheduler_info()["workers"]``: that returns the client's cached
    identity, which its periodic refresh (asked without workers) can overwrite
    between the fetch and the return, so it is sometimes empty."""
    return client.sync(client.scheduler.identity, n_workers=-1)["workers"]
