"""A model on a CPU slot gets every core, although Dask starts workers with
OMP_NUM_THREADS=1 (``distributed.nanny.pre-spawn-environ``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import torch; from omax.engine.actor import _use_cpu_threads; "
    "_use_cpu_threads(); print(torch.get_num_threads())"
)


@pytest.mark.parametrize(("setting", "expected"), [(None, len(os.sched_getaffinity(0))), ("1", 1)])
def test_a_cpu_model_uses_the_configured_threads_in_a_one_thread_worker(setting, expected):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DASK_OMAX__WORKER__CPU_THREADS", None)
    if setting is not None:
        env["DASK_OMAX__WORKER__CPU_THREADS"] = setting
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert int(out.stdout.strip()) == expected
