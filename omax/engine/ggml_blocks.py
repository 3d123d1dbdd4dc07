"""ggml's quantised block layouts (ggml-common.h) decoded with torch.

A GGUF tensor of a block type is ``[blocks, bytes per block]`` (``blocks``); these
unpack a block's fields (``fields``: ggml's bit-field order), its 4- and 5-bit codes
with their scales (``code_fields``, kept as blocks by ``weights.CodeBlocks``) and
whole values (``dequant_blocks``, the same ops in the same order as ``gguf.quants``,
so the same bits). The unpacking runs on every load: numpy's bit (un)packing and
preallocated outputs keep it to a few tens of ms for a 250 MB model.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from omax.sharding.tensors import RawTensor


def as_torch(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only memmaps: we never write to them
        return torch.from_numpy(np.ascontiguousarray(array))


# ggml type -> (values, bytes) per block, for the types decoded below (ggml-common.h).
BLOCKS = {
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}


def blocks(raw: RawTensor, gtype: str) -> torch.Tensor:
    """``raw``'s bytes as ``[blocks, bytes per block]`` uint8 (no copy when contiguous)."""
    return as_torch(raw.data.view(np.uint8)).reshape(-1, BLOCKS[gtype][1])


def half(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The fp16 field at byte ``at`` of every block, as float32 ``[blocks, 1]`` (exact)."""
    return blocks[:, at : at + 2].contiguous().view(torch.float16).float()


def fields(data: torch.Tensor, width: int, bits: int) -> torch.Tensor:
    """Unpack ``bits``-wide fields, ggml's layout: ``data [nb, n]`` is read as runs of
    ``width`` bytes; a run yields ``width`` values from its lowest field, then ``width``
    from the next, and so on. ``[nb, n * 8 / bits]`` uint8."""
    nb = data.shape[0]
    if bits == 1:  # numpy unpacks a byte's bits lowest first: [nb, runs, width, 8]
        flat = np.unpackbits(data.contiguous().numpy(), axis=-1, bitorder="little")
        return torch.from_numpy(flat).view(nb, -1, width, 8).transpose(2, 3).reshape(nb, -1)
    src = data.reshape(nb, -1, 1, width)
    out = torch.empty(nb, src.shape[1], 8 // bits, width, dtype=torch.uint8)
    if bits == 4:  # (the same values; ~4x faster than the general shift-and-mask)
        torch.bitwise_and(src, 15, out=out[:, :, :1])
        torch.bitwise_right_shift(src, 4, out=out[:, :, 1:])
    else:
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8).view(1, 1, -1, 1)
        torch.bitwise_right_shift(src, shifts, out=out).bitwise_and_((1 << bits) - 1)
    return out.view(nb, -1)


def k_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit mins (get_scale_min_k4)."""
    sc = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], dim=1)
    mn = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], dim=1)
    return sc.float(), mn.float()


def code_fields(gtype: str, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4- and 5-bit blocks -> ``(codes [nb, values], scale [nb, groups], low [nb, groups])``."""
    if gtype == "Q4_0":
        d = half(b, 0)
        return fields(b[:, 2:], 16, 4), d, d * -8.0
    if gtype == "Q4_1":
        return fields(b[:, 4:], 16, 4), half(b, 0), half(b, 2)
    if gtype in ("Q5_0", "Q5_1"):
        at = 2 if gtype == "Q5_0" else 4
        q = fields(b[:, at + 4 :], 16, 4) | (fields(b[:, at : at + 4], 1, 1) << 4)
        d = half(b, 0)
        return q, d, (d * -16.0 if gtype == "Q5_0" else half(b, 2))
    sc, mn = k_scales(b[:, 4:16])
    if gtype == "Q5_K":
        q = fields(b[:, 48:176], 32, 4) | (fields(b[:, 16:48], 32, 1) << 4)
    else:
        q = fields(b[:, 16:], 32, 4)
    return q, half(b, 0) * sc, -(half(b, 2) * mn)


def affine(
    q: torch.Tensor, scale: torch.Tensor, low: torch.Tensor | None, group: int
) -> torch.Tensor:
    """``q * scale + low`` per group of ``group`` values, each op rounded to float32.

    ``q`` is integer ``[nb, values]``, ``scale``/``low`` float32 ``[nb, groups]``. These
    are gguf's numpy ops in gguf's order; ``x + (-y)`` is ``x - y`` bit for bit, so a
    negated ``low`` gives gguf's ``d * q - dmin * m``.
    """
    nb = q.shape[0]
    w = q.to(torch.float32).view(nb, -1, group).mul_(scale.view(nb, -1, 1))
    if low is not None:
        w.add_(low.view(nb, -1, 1))
    return w.view(nb, -1)


def signed(q: torch.Tensor, offset: int) -> torch.Tensor:
    """uint8 ``q`` -> int8 ``q - offset`` (uint8 arithmetic wraps; the result fits)."""
    return (q - offset).view(torch.int8)


def dequant_blocks(gtype: str, b: torch.Tensor) -> torch.Tensor:
    """Blocks of ``gtype`` -> float32 ``[nb, values]``, the same ops in the same order as
    ``gguf.quants`` (so the same bits); the integer unpacking is exact either way."""
    if gtype == "Q8_0":
        return affine(b[:, 2:].view(torch.int8), half(b, 0), None, 32)
    if gtype == "Q4_0":
        return affine(signed(fields(b[:, 2:], 16, 4), 8), half(b, 0), None, 32)
    if gtype in ("Q4_1", "Q4_K", "Q5_1", "Q5_K"):
        return affine(*code_fields(gtype, b), 32)
    if gtype == "Q5_0":
        q, d, _ = code_fields(gtype, b)
        return affine(signed(q, 16), d, None, 32)
    if gtype == "Q2_K":
        s = b[:, 0:16]
        scale, low = half(b, 80) * (s & 15).float(), -(half(b, 82) * (s >> 4).float())
        return affine(fields(b[:, 16:80], 32, 2), scale, low, 16)
    if gtype == "Q3_K":
        s = b[:, 96:108]
        sc = fields(s[:, 0:8], 8, 4) | (fields(s[:, 8:12], 4, 2) << 4)
        scale = half(b, 108) * signed(sc, 32).float()
        # the high bit is an inverted borrow: 4 is subtracted where the mask bit is clear
        q = signed(fields(b[:, 32:96], 32, 2) | (fields(b[:, 0:32], 32, 1) << 2), 4)
        return affine(q, scale, None, 16)
    if gtype == "Q6_K":
        scale = half(b, 208) * b[:, 192:208].view(torch.int8).float()
        q = fields(b[:, 0:128], 64, 4) | (fields(b[:, 128:192], 32, 2) << 4)
        return affine(signed(q, 32), scale, None, 16)
    raise KeyError(gtype)
