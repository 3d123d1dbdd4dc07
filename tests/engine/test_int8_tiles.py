"""int8 weights in tiles of 8 rows (``omax.engine.linear.tile_int8``) where the native
kernels are built: the same products and rows as the row layout, bit for bit."""

from __future__ import annotations

import pytest
import torch

from omax.engine import native
from omax.engine.layouts import int8_rows, quantize_int8, tile_int8, untile_int8
from omax.engine.linear import Lin, Rows


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


def test_pinned_tiled_int8_rows_are_the_same_alone_and_batched(built):
    """A seeded request's rows (pinned: ``Rows``) take the one-row kernel, 4 rows a
    call, in any batch: their bits do not follow the batch."""
    lin = Lin(torch.randn(64, 256) * 0.02, "int8", torch.bfloat16)
    x = torch.randn(19, 256).bfloat16()
    both = lin(x, Rows(list(range(19))))
    for r in (0, 5, 18):
        assert torch.equal(both[r : r + 1], lin(x[r : r + 1]))


@pytest.mark.parametrize("rows", [5, 16, 37, 300])
def test_many_rows_of_tiled_int8_are_about_exact_and_each_rows_own(built, rows):
    """Past 4 rows (unpinned) tiled codes take the many-row kernel: x in 16-bit fixed
    point per row against the codes in exact integer sums, so each row's result is
    its own (the same bits in any batch of 5 or more) and closer to the exact product
    than bf16 rows could be, without a bf16 copy of the weight."""
    if not built.own_kernels:
        pytest.skip("tiles only where the native kernels are built (AVX512-BF16)")
    torch.manual_seed(rows)
    lin = Lin(torch.randn(264, 640) * 0.02, "int8", torch.bfloat16, lookups=True)
    assert lin.tiled
    codes = untile_int8(lin.w)
    x = torch.randn(rows, 640).bfloat16()
    x[0] *= 1e-3  # rows of very different sizes: each its own scale
    got = built.int8_many(x, lin.w, lin.s, True)
    want = x.double() @ (codes.double() * lin.s.double()[:, None]).T
    err = (got.double() - want).abs().amax(1) / want.abs().amax(1)
    assert err.max() < 1e-4, err.max()
    assert lin(x).dtype == torch.bfloat16 and torch.equal(lin(x).float(), got.bfloat16().float())
    for r in (0, rows - 1):
        alone = built.int8_many(torch.cat([x[r : r + 1]] * 5), lin.w, lin.s, True)
        assert torch.equal(alone[0], got[r])
    bad = x.clone()
    bad[1, 3] = float("nan")
    assert built.int8_many(bad, lin.w, lin.s, True)[1].isnan().all()  # not garbage
    assert torch.equal(built.int8_many(bad, lin.w, lin.s, True)[0], got[0])


def test_quantize_int8_writes_the_tiles_directly():
    """A load quantises straight into the tiled layout: the codes ``tile_int8`` makes
    of the row layout, the same scales, chunk edges and a ragged last chunk included."""
    torch.manual_seed(1)
    w = torch.randn(8 * 37, 64)
    codes, scales = quantize_int8(w, chunk=48)
    tiled, tiled_scales = quantize_int8(w, chunk=50, tiled=True)  # chunk rounded to 48
    assert tiled.shape == (37, 4, 8, 16)
    assert torch.equal(tiled, tile_int8(codes)) and torch.equal(tiled_scales, scales)
    assert torch.equal(codes, torch.round(w / scales[:, None]).to(torch.int8))
