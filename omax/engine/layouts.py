"""Weight layouts only the native kernels read, and the int8 quantisation that writes
them on a load: int8 codes in tiles of 8 rows (``tile_int8``) and the fifth bits of
5-bit codes in a plane beside their nibbles (``fifth_bit_plane``); ``quantize_int8``
makes per-row int8 codes, tiled or not. ``linear.Lin`` chooses among them.
"""

from __future__ import annotations

import numpy as np
import torch

from omax.engine.weights import BlockRows, CodeBlocks

INT8_TILE = 8  # rows a tile of a tiled int8 weight (native_decode.cpp's kTile)
INT8_ROWS = 4  # rows the native one-row int8 kernel takes (native_decode.cpp's kInt8Rows)


def tile_int8(codes: torch.Tensor) -> torch.Tensor:
    """int8 ``codes`` [N, K] in tiles of ``INT8_TILE`` rows, [N / 8, K / 16, 8, 16]: the
    8 rows' 16 codes at each k one after another, so that the native one-row kernel
    streams a tile as one run of memory (rows K bytes apart streamed at about half the
    speed; benchmarks/RESULTS.md). Only the native kernels read this layout; a load
    writes it directly (``quantize_int8(tiled=True)``)."""
    n, k = codes.shape
    return codes.view(n // INT8_TILE, INT8_TILE, k // 16, 16).permute(0, 2, 1, 3).contiguous()


def _by_rows(tiles: torch.Tensor) -> torch.Tensor:
    """A tiled weight [N / 8, K / 16, 8, 16] viewed as [N / 8, 8, K / 16, 16]: row
    ``8 t + r`` is ``[t, r]``, to write rows into tiles."""
    return tiles.permute(0, 2, 1, 3)


def untile_int8(w: torch.Tensor) -> torch.Tensor:
    """int8 codes [N, K] of a weight, tiled (``tile_int8``) or not."""
    if w.dim() == 2:
        return w
    t, c, r, e = w.shape
    return w.permute(0, 2, 1, 3).reshape(t * r, c * e)


def int8_rows(w: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` of int8 codes, tiled or not, as [I, K]."""
    if w.dim() == 2:
        return w[ids]
    flat = ids.reshape(-1)
    rows = w[flat // INT8_TILE, :, flat % INT8_TILE, :]  # [I, K / 16, 16]
    return rows.reshape(*ids.shape, -1)


def fifth_bit_plane(codes: torch.Tensor) -> torch.Tensor:
    """The fifth bits of 5-bit ``codes`` [N, K] as native_decode.cpp's ``Int4Unpack``
    reads them: int32 [N / 64, K / 2, 4], word ``q`` of a block's pair of k's holding
    rows ``16 q + i`` at bit ``2 i`` (the even k) and ``2 i + 1`` (the odd one)."""
    n, k = codes.shape
    bits = (codes >> 4).to(torch.uint8).view(n // 64, 4, 16, k // 2, 2)  # blk, q, i, pair, j
    bits = bits.permute(0, 3, 1, 2, 4).reshape(n // 64, k // 2, 4, 32)
    # bit 2 i + j of a little-endian int32 is bit (2 i + j) % 8 of its byte (2 i + j) / 8
    packed = np.packbits(bits.cpu().numpy(), axis=-1, bitorder="little")
    # cloned into torch's allocator, which aligns to 64 bytes (numpy's buffer sits 16
    # bytes past a page: every vector load of the plane would straddle cache lines)
    return torch.from_numpy(packed).view(torch.int32).reshape(n // 64, k // 2, 4).clone()


def plane_bits(hb: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
    """Rows ``ids`` [I] of a ``fifth_bit_plane`` as int32 bits [I, K]."""
    words = hb[ids // 64, :, (ids % 64) // 16]  # [I, K/2]
    shift = (2 * (ids % 16)).to(torch.int32)[:, None, None] + torch.arange(2, dtype=torch.int32)
    return ((words[..., None] >> shift) & 1).reshape(len(ids), k)


def quantize_int8(
    w: torch.Tensor | CodeBlocks | BlockRows, chunk: int = 1024, tiled: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` [N, K] as int8 codes and fp32 per-row scales (symmetric: ``|w|max / 127``);
    ``tiled``: the codes in ``tile_int8``'s layout, written there directly (N a multiple
    of ``INT8_TILE``, K of 16, as ``Lin`` checks before it asks for tiles).

    Rows go ``chunk`` at a time, and a ``BlockRows`` source is decoded that way too: a
    262k-row embedding (Gemma 3) never takes a full-size fp32 copy, only small ones
    that stay in cache (1024 rows measured fastest on it). ``w`` (the caller's) is not
    modified."""
    if isinstance(w, CodeBlocks):
        w = w.dequantize()
    n, k = w.shape
    device = w.device if isinstance(w, torch.Tensor) else torch.device("cpu")
    if tiled:
        out = torch.empty(n // INT8_TILE, k // 16, INT8_TILE, 16, dtype=torch.int8, device=device)
        # a tile row's 16 codes move as one 16-byte element (complex128): torch copies
        # that pattern ~4x faster than as 16 int8 elements (Gemma 3's 168M-code head:
        # ~0.015 s against ~0.06 s)
        codes = _by_rows(out.view(torch.complex128))
        chunk = max(INT8_TILE, chunk // INT8_TILE * INT8_TILE)
    else:
        out = codes = torch.empty(n, k, dtype=torch.int8, device=device)
    scales = torch.empty(n, dtype=torch.float32, device=device)
    for first in range(0, n, chunk):
        rows = w.rows(first, chunk) if isinstance(w, BlockRows) else w[first : first + chunk]
        part = rows.float()
        r = part.shape[0]
        # max |x| as max(max x, -min x): two reductions, no |x| copy (same value)
        top = torch.maximum(part.amax(dim=1), part.amin(dim=1).neg_())
        s = top.clamp_(min=1e-8).div_(127.0)
        q = torch.div(part, s[:, None]).round_()
        if tiled:
            q = q.to(torch.int8).view(torch.complex128).view(r // INT8_TILE, INT8_TILE, -1, 1)
            codes[first // INT8_TILE : (first + r) // INT8_TILE] = q
        else:
            codes[first : first + r] = q
        scales[first : first + r] = s
    return out, scales
