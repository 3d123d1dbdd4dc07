"""torch's int4/int8 weight-only kernels per device (``omax.engine.packed``) and the quant
each device runs. The CUDA tests run where a CUDA device is (benchmarks/gpu_bench.sh runs
them on a lent GPU machine); on the CPU they have no device to run on."""

from __future__ import annotations

import pytest
import torch

from omax.engine.fast_builder import device_quant
from omax.engine.linear import Lin
from omax.engine.packed import inner_k_tiles, int8_chosen, nibble_rows, nibbles
from omax.engine.weights import CodeBlocks
from tests.engine.test_gguf_types import random_blocks

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def test_nibble_rows_read_back_the_gguf_values():
    q4 = CodeBlocks.from_raw(random_blocks("Q4_K", 64, 512, scale=0.01))
    sz = torch.stack([q4.scale, q4.low + 8 * q4.scale], dim=-1).transpose(0, 1).contiguous()
    nib = nibbles(q4.codes)
    assert nib.shape == (64, 256) and nib.dtype == torch.uint8
    ids = torch.tensor([0, 7, 63, 7])
    assert torch.allclose(nibble_rows(nib, sz, ids), q4.dequantize()[ids], atol=1e-6)


def test_cuda_tiling_takes_the_widest_that_divides():
    assert [inner_k_tiles(k) for k in (4096, 576, 640, 96)] == [8, 4, 8, 2]


def test_devices_without_packed_kernels_run_dense_bf16():
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert [device_quant(q, cpu) for q in ("int4", "int8", "bf16")] == ["int4", "int8", "bf16"]
    assert [device_quant(q, meta) for q in ("int4", "int8", "bf16")] == ["bf16"] * 3
    if not CUDA:  # no CUDA runtime here: a "cuda" model could only be dense
        cuda = torch.device("cuda", 0)
        assert [device_quant(q, cuda) for q in ("int4", "int8")] == ["bf16"] * 2


@needs_cuda
def test_cuda_runs_int4_and_int8_packed():
    cuda = torch.device("cuda", 0)
    assert device_quant("int4", cuda) == "int4"
    assert device_quant("int8", cuda) == "bf16"  # measured slower than bf16 there
    dense = torch.randn(32, 64, device=cuda)  # e.g. a Q6_K tensor of a Q4_K_M file
    assert Lin(dense, "int4", torch.bfloat16).quant == "none"


def test_int8_is_chosen_where_it_measured_faster_than_bf16():
    assert int8_chosen(torch.device("cpu"))
    assert not int8_chosen(torch.device("cuda", 0))
    # a dense weight asked for int4 (a Q6_K tensor of a Q4_K_M file) takes int8 there
    assert Lin(torch.randn(32, 64), "int4", torch.bfloat16).quant == "int8"


@needs_cuda
@pytest.mark.parametrize("gtype", CodeBlocks.FOUR_BIT)
def test_cuda_int4_kernel_runs_the_blocks(gtype):
    """The CUDA product of 4-bit GGUF blocks is the GGUF weights' within bf16, row
    invariant, and equal to the CPU kernel's within bf16 rounding."""
    q4 = CodeBlocks.from_raw(random_blocks(gtype, 96, 512, scale=0.01))
    w = q4.dequantize()
    lin = Lin(q4.map_rows(lambda t: t.cuda()), "int4", torch.bfloat16)
    assert lin.quant == "int4" and lin.dense is None
    for rows in (1, 16, 300):
        x = torch.randn(rows, 512).bfloat16()
        ref = x.double() @ w.double().T
        got = lin(x.cuda()).double().cpu()
        assert (got - ref).norm() / ref.norm() < 0.01, (gtype, rows)
    x = torch.randn(16, 512).bfloat16().cuda()
    assert torch.equal(lin(x)[5:6], lin(x[5:6]))


@needs_cuda
def test_cuda_int4_lookups_read_rows_as_the_cpu_does():
    q4 = CodeBlocks.from_raw(random_blocks("Q4_1", 128, 256, scale=0.01))
    cpu = Lin(q4, "int4", torch.bfloat16, lookups=True)
    gpu = Lin(q4.map_rows(lambda t: t.cuda()), "int4", torch.bfloat16, lookups=True)
    assert gpu.nib is not None and gpu.dense is None
    ids = torch.tensor([3, 64, 127])
    assert torch.equal(gpu.rows(ids.cuda(), torch.float32).cpu(), cpu.rows(ids, torch.float32))


@needs_cuda
def test_cuda_int8_kernel_is_close_to_dense():
    torch.manual_seed(0)
    w = torch.randn(256, 512) * 0.02
    lin = Lin(w.cuda(), "int8", torch.bfloat16)
    assert lin.quant == "int8"
    for rows in (1, 16, 300):
        x = torch.randn(rows, 512).bfloat16()
        ref = x.float() @ w.T
        got = lin(x.cuda()).float().cpu()
        assert (got - ref).norm() / ref.norm() < 0.02, rows
