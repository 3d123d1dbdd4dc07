"""A model on a CPU slot gets every core, although Dask starts workers with
OMP_NUM_THREADS=1 (``distributed.nanny.pre-spawn-environ``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


FAULTS = """
import resource, torch
from omax.engine.actor import _keep_step_buffers

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):  # a step's temporaries: allocated, filled, freed
        torch.ones(256 * 1024)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
dask_default = faults()
_keep_step_buffers()
faults()
print(dask_default, faults())
"""


def test_a_cpu_model_reuses_step_buffers_in_a_dask_worker_process():
    """Under Dask's MALLOC_TRIM_THRESHOLD_ every 1 MiB temporary is a fresh mmap
    (~256 page faults each); once a model loads they come from the heap again."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, check=True
    )
    dask_default, kept = map(int, out.stdout.split())
    assert dask_default > 50 * 200  # the problem is real under Dask's setting
    assert kept < 500


OPENMP = """
import ctypes, threading, torch
torch.set_num_threads(2)  # as the actor does, in the thread that loads the model
from omax.engine.engine import Engine
from omax.engine.request import EmbedRequest, GenerateRequest, SamplingOptions
from tests.engine.conftest import SMOLLM2_GGUF, gguf_spec, gguf_tensors

omp = ctypes.CDLL("libgomp.so.1")  # torch's OpenMP runtime, already loaded
eng = Engine.load(gguf_spec(SMOLLM2_GGUF), gguf_tensors(SMOLLM2_GGUF), quant="int4", max_ctx=256)
seen = []
step = eng.batcher.runner.step

def spy(*args, **kwargs):  # on the batching thread
    seen.append(omp.omp_get_max_threads())
    return step(*args, **kwargs)

eng.batcher.runner.step = spy
list(eng.generate(GenerateRequest(model="s", prompt="Hi", options=SamplingOptions(num_predict=2))))

def embed():  # as the actor runs embeddings: in a pool thread
    eng.embed(EmbedRequest(model="s", inputs=("hi",)))
    seen.append(omp.omp_get_max_threads())

worker = threading.Thread(target=embed)
worker.start()
worker.join()
eng.close()
print(min(seen))
"""


def test_the_model_threads_use_every_core_for_bf16_matmuls_in_a_one_thread_worker():
    """oneDNN (torch's bf16 matmuls: prefill, dense decode) sizes its work by the
    calling thread's OpenMP count, which a new thread takes from OMP_NUM_THREADS=1 in
    a Dask worker: the batching thread and an embedding's thread must apply torch's
    count, or a prompt is prefilled on one core."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # This short-lived process must not start the native build: killed at its exit
    # mid-build, it would leave torch's build lock behind for every later build.
    env["DASK_OMAX__ENGINE__NATIVE_DECODE"] = "off"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", OPENMP], env=env, cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) == 2
