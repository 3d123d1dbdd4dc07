"""The embedded cluster ``omax serve`` starts when no scheduler is given.

A Dask ``LocalCluster`` with the omax scheduler and worker plugins preloaded: one
worker per GPU, or with none one worker whose inference slot is the CPU.
"""

from __future__ import annotations

import logging

from distributed import LocalCluster

logger = logging.getLogger(__name__)


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


async def start_cluster(
    n_workers: int | None = None, dashboard_address: str = ":8787"
) -> LocalCluster:
    """Start the embedded cluster asynchronously; the caller closes it."""
    gpus = gpu_count()
    n = n_workers or max(gpus, 1)
    kwargs = {"resources": {"GPU": 1}} if gpus else {}
    cluster = await LocalCluster(
        n_workers=n,
        threads_per_worker=2,
        processes=True,
        asynchronous=True,
        dashboard_address=dashboard_address,
        scheduler_kwargs={"preload": ["omax.plugins.scheduler"]},
        preload=["omax.plugins.worker"],
        memory_limit=0,
        **kwargs,
    )
    logger.info(
        "embedded cluster: scheduler %s, %d worker(s), dashboard %s",
        cluster.scheduler_address,
        n,
        cluster.dashboard_link,
    )
    return cluster
