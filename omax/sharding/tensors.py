"""A tensor as the store keeps it: raw stored bytes plus what they mean.

This is the hand-off between the model store (omax.sharding) and the engine
(omax.engine): the store yields ``RawTensor``s read through zarr; the engine turns
them into torch tensors (dequantising GGUF blocks, viewing uint16 as bfloat16).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RawTensor:
    """``data`` is exactly what is stored:

    - GGUF quantised (``ggml_type`` not in F32/F16/BF16): uint8 raw blocks, byte-identical
      to the GGUF file; ``shape`` is the logical (dequantised) shape in numpy order.
    - bfloat16: a uint16 view; ``dtype == "bfloat16"``.
    - otherwise: an array of ``dtype`` with ``shape``.
    """

    name: str
    data: np.ndarray
    dtype: str  # real dtype: "float32", "float16", "bfloat16", "int64", ... or "quantized"
    shape: tuple[int, ...]
    ggml_type: str | None = None  # e.g. "Q4_1", "Q8_0", "F32"; None for non-GGUF sources
