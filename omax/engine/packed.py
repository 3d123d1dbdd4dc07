"""torch's own weight-only int4 kernels, per device: which a device has, how a weight is
packed for it, and the product.

Both compute ``x @ W.T`` with ``W[n, k] = (q - 8) * s + z`` per group of 32 ``k``'s
(``sz`` [K/32, N, 2] holds ``(s, z)`` in the activation dtype), so one set of 4-bit
GGUF codes and parameters serves either:

- CPU: ``_convert_weight_to_int4pack_for_cpu`` takes the codes as int32 [N, K];
  ``_weight_int4pack_mm_for_cpu`` multiplies.
- CUDA (compute capability 8.0 or newer): ``_convert_weight_to_int4pack`` takes them
  two to a byte, [N, K/2] uint8 with the even ``k`` in the high nibble, and tiles them
  for the tensor cores (tinygemm); ``_weight_int4pack_mm`` multiplies, bf16 only.

The CUDA layout cannot be read back row by row, so a weight that also serves lookups
(the embedding, ``refine_top``) keeps its nibbles beside it (``nibble_rows``): half a
byte per weight more, not a dense copy.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

GROUP = 32


def int4_device(device: torch.device) -> bool:
    """Whether ``device`` has one of torch's int4 kernels (CUDA: tried once)."""
    if device.type == "cpu":
        return True
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0) and _runs(str(device), "int4")


def int8_device(device: torch.device) -> bool:
    """Whether ``device`` has torch's int8 weight-only kernel, ``_weight_int8pack_mm``
    (CUDA: tried once)."""
    if device.type == "cpu":
        return True
    return device.type == "cuda" and torch.cuda.is_available() and _runs(str(device), "int8")


def int8_chosen(device: torch.device) -> bool:
    """Whether weights without a 4-bit layout take int8 on ``device`` rather than dense
    bf16. Chosen by measurement: on the CPU int8 halves the bytes a decode step reads;
    on CUDA torch's ``_weight_int8pack_mm`` ran a Llama-3.2-1B-shaped model 2.4x slower
    than bf16 matmuls (H200: 83 vs 196 tokens/s one stream, 349 vs 1624 at 16 streams;
    benchmarks/RESULTS.md "gpu_bench"), so there they stay bf16."""
    return device.type == "cpu"


@functools.cache
def _runs(device: str, kind: str) -> bool:
    """Whether this torch build runs the ``kind`` kernel on ``device``: a CUDA build
    may lack one for this GPU, and a model should then load dense, not fail."""
    try:
        x = torch.ones(2, 64, dtype=torch.bfloat16, device=device)
        if kind == "int4":
            codes = torch.zeros(16, 64, dtype=torch.uint8, device=device)
            sz = torch.ones(2, 16, 2, dtype=torch.bfloat16, device=device)
            int4_mm(x, pack_int4(codes), sz)
        else:
            w = torch.ones(16, 64, dtype=torch.int8, device=device)
            s = torch.ones(16, dtype=torch.bfloat16, device=device)
            torch.ops.aten._weight_int8pack_mm(x, w, s)
        return True
    except (RuntimeError, NotImplementedError) as err:
        log.warning(
            "no %s weight-only kernel on %s (%s): those weights run dense", kind, device, err
        )
        return False


def nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Codes [N, K] in 0..15 two to a byte, [N, K/2] uint8, even ``k`` high."""
    c = codes.to(torch.uint8)
    return (c[:, ::2] << 4) | c[:, 1::2]


def inner_k_tiles(k: int) -> int:
    """The widest tiling of ``k`` the CUDA packing takes (16 ``k``'s a tile)."""
    return next(t for t in (8, 4, 2) if k % (16 * t) == 0)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes [N, K] (on their device) packed for that device's kernel."""
    if codes.device.type == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    packed = nibbles(codes).contiguous()
    return torch.ops.aten._convert_weight_to_int4pack(packed, inner_k_tiles(codes.shape[1]))


def int4_mm(x: torch.Tensor, w: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:
    """``x`` [R, K] @ the packed ``w``.T -> [R, N], in ``x``'s dtype."""
    if x.device.type == "cpu":
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, w, GROUP, sz)
    return torch.ops.aten._weight_int4pack_mm(x, w, GROUP, sz)


def nibble_rows(nib: torch.Tensor, sz: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` of the weight whose codes ``nibbles`` gave ``nib``, as fp32 [I, K]."""
    b = nib[ids]  # [I, K/2]
    codes = torch.stack([b >> 4, b & 15], dim=-1).reshape(len(ids), -1, GROUP).float()
    s = sz[:, ids, 0].t().float()[..., None]  # [I, G, 1]
    z = sz[:, ids, 1].t().float()[..., None]
    return ((codes - 8) * s + z).reshape(len(ids), -1)
