"""A Dask ``LocalCluster`` with the omax plugins, for the tests that need one.

The scheduler runs in the test process and reads ``omax.*`` settings from
dask.config; the worker processes read them from the environment when they spawn.
``omax_cluster`` sets both from one dict and puts both back afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import dask.config
from distributed import Client, LocalCluster


def env_name(key: str) -> str:
    """``omax.worker.store`` -> ``DASK_OMAX__WORKER__STORE``."""
    return "DASK_" + key.replace(".", "__").replace("-", "_").upper()


@contextlib.contextmanager
def omax_cluster(
    settings: dict[str, Any], n_workers: int = 1, threads_per_worker: int = 1, **kwargs: Any
) -> Iterator[Client]:
    """A client of a ``LocalCluster`` (worker processes) with the omax scheduler and
    worker plugins, every worker started, ``settings`` (``omax.*`` keys) in force."""
    env = {env_name(k): str(v) for k, v in settings.items()}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # before the worker processes spawn
    try:
        with (
            dask.config.set(settings),  # the scheduler runs in this process
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                processes=True,
                dashboard_address=":0",
                scheduler_kwargs={"preload": ["omax.plugins.scheduler"]},
                preload=["omax.plugins.worker"],
                **kwargs,
            ) as lc,
            Client(lc) as client,
        ):
            client.wait_for_workers(n_workers, timeout=60)
            yield client
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
