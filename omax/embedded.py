"""The embedded cluster ``omax serve`` starts when no scheduler is given.

A Dask ``LocalCluster`` with the omax scheduler and worker plugins preloaded: one
worker per GPU, or with none one worker whose inference slot is the CPU. A GPU
worker sees only its own device (``CUDA_VISIBLE_DEVICES``) and is named for it
(``gpu0``, ``gpu1``...), so its replica folder (``omax.worker.store``'s ``{name}``)
is the same at every start.
"""

from __future__ import annotations

import logging
from typing import Any

import dask.config
from distributed import LocalCluster

logger = logging.getLogger(__name__)

# Dask housekeeping that wakes every process's event loop many times a second: the
# worker's statistical profiler (every 10 ms; it samples task threads, and a model
# actor's batching thread is not one) and the event-loop tick monitor (every 20 ms).
# Idle, they cost ~3% of a core in the worker and ~2% in the serve process; while a
# model decodes they compete with its batching thread for the GIL and for the cores.
# Applied only where the user left Dask's default.
QUIET_DASK: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
}


def quiet_dask_config() -> dict[str, Any]:
    """The ``QUIET_DASK`` keys whose value is still Dask's shipped default."""
    shipped = dask.config.merge(*dask.config.defaults)
    return {
        k: v
        for k, v in QUIET_DASK.items()
        if dask.config.get(k, None) == dask.config.get(k, None, config=shipped)
    }


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def on_loopback(address: str) -> str:
    """``address`` with a bare port (``:8787``) bound to 127.0.0.1, not every interface.

    The embedded scheduler and workers listen on 127.0.0.1 (``LocalCluster``'s
    default host); Dask would still bind a bare-port dashboard to 0.0.0.0, showing
    every task, log and worker to anyone who reaches the port. Exposing it is then
    a choice: ``--dashboard 0.0.0.0:8787``."""
    return f"127.0.0.1{address}" if address.startswith(":") else address


def gpu_worker_specs(base: dict[str, Any], gpus: int) -> dict[str, dict[str, Any]]:
    """One worker spec per GPU, from the cluster's ``new_spec``: each worker process
    sees only its device and offers one ``GPU`` resource."""
    specs = {}
    for i in range(gpus):
        options = {
            **base["options"],
            "env": {**base["options"].get("env", {}), "CUDA_VISIBLE_DEVICES": str(i)},
            "resources": {"GPU": 1},
            "name": f"gpu{i}",
        }
        specs[f"gpu{i}"] = {"cls": base["cls"], "options": options}
    return specs


async def start_cluster(
    n_workers: int | None = None, dashboard_address: str = ":8787"
) -> LocalCluster:
    """Start the embedded cluster asynchronously; the caller closes it."""
    gpus = gpu_count()
    n = n_workers or max(gpus, 1)
    per_gpu = bool(gpus) and n == gpus  # else (a chosen count) every worker sees every GPU
    kwargs = {"resources": {"GPU": 1}} if gpus and not per_gpu else {}
    with dask.config.set(quiet_dask_config()):  # workers get the config at their start
        cluster = await LocalCluster(
            n_workers=0 if per_gpu else n,
            threads_per_worker=2,
            processes=True,
            asynchronous=True,
            dashboard_address=on_loopback(dashboard_address),
            scheduler_kwargs={"preload": ["omax.plugins.scheduler"]},
            preload=["omax.plugins.worker"],
            memory_limit=0,
            **kwargs,
        )
        if per_gpu:
            cluster.worker_spec.update(gpu_worker_specs(cluster.new_spec, gpus))
            await cluster._correct_state()  # starts the workers just specified
    logger.info(
        "embedded cluster: scheduler %s, %d worker(s), dashboard %s",
        cluster.scheduler_address,
        n,
        cluster.dashboard_link,
    )
    return cluster
