"""int8 weights in tiles of 8 rows (``omax.engine.linear.tile_int8``) where the native
kernels are built: the same products and rows as the row layout, bit for bit."""

from __future__ import annotations

import pytest
import torch

from omax.engine import native
from omax.engine.linear import Lin, int8_rows, tile_int8, untile_int8


@pytest.fixture(scope="module")
def built():
    """The module, built first where ``make install`` has not (a load where it has)."""
    return native.build()


def test_tiles_round_trip():
    codes = torch.randint(-127, 128, (24, 48), dtype=torch.int8)
    tiled = tile_int8(codes)
    assert tiled.shape == (3, 3, 8, 16)
    assert torch.equal(tiled[1, 2, 5], codes[13, 32:48])  # tile 1, k 32.., row 5 of it
    assert torch.equal(untile_int8(tiled), codes)
    ids = torch.tensor([0, 13, 23, 13])
    assert torch.equal(int8_rows(tiled, ids), codes[ids])


def test_tiled_int8_gives_the_row_layouts_bits(built):
    torch.manual_seed(0)
    w = torch.randn(264, 640) * 0.02  # 33 tiles
    lin = Lin(w, "int8", torch.bfloat16, lookups=True)
    assert lin.quant == "int8" and lin.dense is None
    if not built.own_kernels:  # AVX2 or ARM: torch's kernel and its layout
        assert lin.w is not None and lin.w.dim() == 2
        return
    assert lin.w is not None and lin.w.dim() == 4
    codes = untile_int8(lin.w)
    for rows in (1, 2, 3, 4):  # every tile pass the one-row kernel takes
        x = torch.randn(rows, 640).bfloat16()
        got = built.int8_mm(x, lin.w, lin.s, True)
        assert torch.equal(got, built.int8_mm(x, codes, lin.s, True)), rows
        want = x.double() @ (codes.double() * lin.s.double()[:, None]).T
        assert (got.double() - want).abs().max() <= 1e-4 * want.abs().max()
    ids = torch.tensor([0, 7, 8, 263])
    assert torch.equal(
        lin.rows(ids, torch.float32), codes[ids].float() * lin.s[ids].float()[:, None]
    )


def test_tiled_int8_rows_are_the_same_alone_and_batched(built):
    """The Python step's packed call (up to 48 rows, 4 a kernel call) keeps a row's bits
    whatever the batch, as a seeded request needs."""
    lin = Lin(torch.randn(64, 256) * 0.02, "int8", torch.bfloat16)
    x = torch.randn(19, 256).bfloat16()
    both = lin(x)
    for r in (0, 5, 18):
        assert torch.equal(both[r : r + 1], lin(x[r : r + 1]))
