"""Torch's thread count, applied to the thread that runs the model.

``torch.set_num_threads`` sets a process-wide count that torch's own parallel loops
use, but it sets OpenMP's count only for the thread that calls it. oneDNN, which runs
torch's bf16 matmuls (a prompt's prefill, a batch's dense decode), sizes its parallel
regions by the calling thread's OpenMP count, and a new thread takes that from
``OMP_NUM_THREADS``, which Dask sets to 1 in its worker processes. So a model's
batching thread, or the thread an embedding runs in, must apply the count itself:
without it, a worker prefilled on one core whatever count torch was given.
"""

from __future__ import annotations

import torch


def adopt_torch_threads() -> None:
    """Apply torch's thread count to the calling thread's OpenMP (and MKL) count."""
    torch.set_num_threads(torch.get_num_threads())
