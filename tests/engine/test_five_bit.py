"""5-bit GGUF blocks (Q5_0, Q5_1, Q5_K) kept at 6 bits a weight for the native step's
int4 kernel ("int5": the low four bits in torch's int4 layout, the fifth in a plane
beside them), instead of widened to int8 (``omax.engine.linear.Lin``)."""

from __future__ import annotations

import pytest
import torch

from omax.engine import native
from omax.engine.layouts import fifth_bit_plane
from omax.engine.linear import Lin
from omax.engine.weights import CodeBlocks
from tests.engine.test_gguf_types import random_blocks

N, K = 192, 512


@pytest.fixture(scope="module")
def built():
    """The module, built first where ``make install`` has not (a load where it has)."""
    return native.build()


def _blocks(gtype: str) -> CodeBlocks:
    return CodeBlocks.from_raw(random_blocks(gtype, N, K, scale=0.01))


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm())


@pytest.mark.parametrize("gtype", CodeBlocks.FIVE_BIT)
def test_five_bit_blocks_take_the_native_kernel_at_six_bits(built, gtype):
    blocks = _blocks(gtype)
    lin = Lin(blocks, "int4", torch.bfloat16, lookups=True)
    if not built.own_kernels:  # AVX2 or ARM: the layout is that kernel's alone
        assert lin.quant == "int8"
        return
    assert lin.quant == "int5" and lin.dense is None
    bits = sum(t.numel() * t.element_size() for t in lin.tensors()) * 8 / (N * K)
    assert bits == 6.0  # 4 + 1 + a bf16 scale and zero per 32; int8 takes 8 and more
    w = blocks.dequantize().double()
    int8 = Lin(blocks, "int8", torch.bfloat16)
    for rows in (1, 2, 3, 7, 16, 300):  # every kernel the native step picks by row count
        x = torch.randn(rows, K).bfloat16()
        want = x.double() @ w.T
        err = _rel(lin(x), want)
        assert err < 0.005, (rows, err)  # the output's bf16 rounding
        assert err < _rel(int8(x), want) / 2, rows  # closer than widening to int8


@pytest.mark.parametrize("gtype", CodeBlocks.FIVE_BIT)
def test_five_bit_rows_are_the_codes_at_bf16_scales(built, gtype):
    """Lookups (embedding, ``refine_top``) read ``(q - 8) * s + z`` with the kernel's
    own bf16 ``s`` and ``z``: within their rounding of the GGUF values."""
    if not built.own_kernels:
        pytest.skip("no native int4 kernel on this CPU: 5-bit blocks take int8")
    blocks = _blocks(gtype)
    lin = Lin(blocks, "int4", torch.bfloat16, lookups=True)
    ids = torch.tensor([0, 5, 63, 64, 100, 191, 5])
    s = blocks.scale.bfloat16().float()[..., None]
    z = (blocks.low + 8 * blocks.scale).bfloat16().float()[..., None]
    want = ((blocks.codes.float().view(N, -1, 32) - 8) * s + z).view(N, K)[ids]
    assert torch.equal(lin.rows(ids, torch.float32), want)
    # each of s and z within a bf16 rounding (2**-9 relative) of its fp32 value
    bound = ((blocks.codes.float().view(N, -1, 32) - 8).abs() * s.abs() + z.abs()).view(N, K)[ids]
    assert bool(((want - blocks.dequantize()[ids]).abs() <= 2**-8 * bound).all())


def test_a_seeded_row_is_the_same_alone_and_batched(built):
    if not built.own_kernels:
        pytest.skip("no native int4 kernel on this CPU: 5-bit blocks take int8")
    lin = Lin(_blocks("Q5_0"), "int4", torch.bfloat16)
    x = torch.randn(40, K).bfloat16()
    for r in (0, 5, 39):
        assert torch.equal(lin(x)[r : r + 1], lin(x[r : r + 1]))


def test_the_fifth_bit_plane_is_the_kernels_order():
    """Bit ``2 i`` (even k) and ``2 i + 1`` (odd k) of word ``q`` are row ``16 q + i``
    of the block, as native_decode.cpp's ``Int4Unpack`` adds them."""
    codes = torch.zeros(128, 64, dtype=torch.uint8)
    codes[64 + 16 * 2 + 3, 10] = 16  # block 1, word 2, row 3 of it, k 10: pair 5, even
    codes[5, 7] = 31  # block 0, word 0, row 5, k 7: pair 3, odd
    plane = fifth_bit_plane(codes)
    assert plane.shape == (2, 32, 4) and plane.dtype == torch.int32
    assert int(plane[1, 5, 2]) == 1 << 6 and int(plane[0, 3, 0]) == 1 << 11
    assert int((plane != 0).sum()) == 2
    codes[:] = 31  # every bit: the int32 -1
    assert bool((fifth_bit_plane(codes) == -1).all())
    # on a 64-byte line, as torch allocates: the kernel's vector loads of a plane that
    # straddled lines made a 5-bit model's decode ~6% slower
    assert fifth_bit_plane(torch.zeros(640, 2048, dtype=torch.uint8)).data_ptr() % 64 == 0


def test_five_bit_blocks_on_other_devices_take_int8_or_dense():
    """Without the native kernel (CUDA here, fp32 activations) a 5-bit weight is
    widened as any other non-4-bit weight: int8 on the CPU."""
    assert Lin(_blocks("Q5_1"), "int4", torch.float32).quant == "int8"
