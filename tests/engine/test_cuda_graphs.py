"""The captured decode step (``omax.engine.cuda_graphs``): its padded, bucketed maths
gives the eager step's logits. The maths runs anywhere; capture and replay need CUDA
(benchmarks/gpu_bench.sh runs the CUDA test on a lent GPU machine)."""

from __future__ import annotations

import pytest
import torch

from omax.engine.cuda_graphs import GraphDecoder, bucket
from omax.engine.engine import Engine
from omax.engine.runner import FastRunner
from tests.archs import tiny_model

from .conftest import hf_folder_spec, safetensors_raw


def test_buckets_are_powers_of_two_within_bounds():
    assert [bucket(n, 1, 16) for n in (1, 2, 3, 5, 16)] == [1, 2, 4, 8, 16]
    assert [bucket(n, 64, 300) for n in (1, 64, 65, 299)] == [64, 64, 128, 300]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def folder(request, tmp_path_factory):
    """A tiny llama, and a gemma3 (sliding windows of 8, sandwich norms)."""
    return tiny_model(request.param, tmp_path_factory.mktemp(request.param))


def load(folder, device: str = "cpu", quant: str = "none"):
    """The fp32 (or ``quant``) fast-path decoder of ``folder`` on ``device``."""
    eng = Engine.load(
        hf_folder_spec(folder), safetensors_raw(folder), device=device, quant=quant, max_ctx=128
    )
    eng.close()  # only its model is wanted
    return eng.loaded.model


def with_spare_column(runner: FastRunner) -> FastRunner:
    """The cache as a CUDA runner allocates it (one column past max_len), the spare
    column NaN: a real row that read it would turn NaN."""

    def grow(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, torch.full_like(t[:, :, :1], float("nan"))], dim=2)

    runner.k, runner.v = [grow(t) for t in runner.k], [grow(t) for t in runner.v]
    return runner


def test_a_padded_bucketed_step_gives_the_eager_logits(folder):
    decoder = load(folder)
    eager = FastRunner(decoder, max_slots=4, max_len=96, native=False, graphs=False)
    staged = with_spare_column(FastRunner(decoder, max_slots=4, max_len=96, native=False))
    prompts = [list(range(3, 3 + n)) for n in (5, 17, 40)]  # past gemma3's window of 8
    for runner in (eager, staged):
        for slot, ids in enumerate(prompts):
            runner.prefill(ids, 0, slot=slot)
    tokens, positions = [7, 8, 9], [len(p) for p in prompts]
    want = eager.decode(tokens, positions)
    graphs = GraphDecoder(staged)
    rows, keys = graphs.stage(tokens, positions)
    assert (rows, keys) == (4, 64)  # 3 rows padded to 4; 41 keys rounded up to 64
    with torch.inference_mode():
        got = graphs._step(rows, keys)()[:3]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # the padding row wrote into the spare column and nowhere a real row reads
    assert not torch.isnan(staged.k[0][:3, :, :keys]).any()
    # the next step reads what this one wrote: the two runners' caches agree
    torch.testing.assert_close(staged.k[0][:3, :, :41], eager.k[0][:3, :, :41])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("quant", ["none", "bf16", "int8"])
def test_replayed_graphs_decode_as_the_eager_step_on_cuda(folder, quant):
    decoder = load(folder, "cuda:0", quant)
    eager = FastRunner(decoder, max_slots=4, max_len=96, native=False, graphs=False)
    graphed = FastRunner(decoder, max_slots=4, max_len=96, native=False, graphs=True)
    assert graphed.graphs is not None
    prompts = [list(range(3, 3 + n)) for n in (5, 17, 40)]
    for runner in (eager, graphed):
        for slot, ids in enumerate(prompts):
            runner.prefill(ids, 0, slot=slot)
    positions = [len(p) for p in prompts]
    for step in range(3):  # the second and third replay the first's graph
        tokens = [7 + step, 8, 9]
        want = eager.decode(tokens, positions)
        got = graphed.decode(tokens, positions)
        assert not graphed.graphs.failed
        # bf16: the padded bucket's row count may pick other matmul kernels; a wrong
        # index or stale input would be far off
        tol = 1e-4 if quant == "none" else 1e-1
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        positions = [p + 1 for p in positions]
    assert len(graphed.graphs.graphs) == 1
