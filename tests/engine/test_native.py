"""The native decode step computes what the Python step does, faster.

It is compiled on this machine by ``make install`` (``omax native build``), or by the
``built`` fixture where it has not been; the Python step is the reference it must
agree with."""

from __future__ import annotations

import time

import dask.config
import pytest
import torch

from omax.engine import native
from omax.engine.engine import Engine
from omax.engine.layouts import untile_int8
from omax.engine.runner import FastRunner, Segment

from .test_generate import check_seeded_alone_and_batched


@pytest.fixture(scope="module")
def built():
    """The module, built first where ``make install`` has not (a load where it has):
    runners made after this take the native step."""
    return native.build()


def _runners(model, built):
    py = FastRunner(model, max_slots=16, max_len=512, native=False)
    nat = FastRunner(model, max_slots=16, max_len=512)
    assert py.native is None and nat.native is not None
    for slot in range(16):  # prompts of different lengths: rows at different positions
        prompt = list(range(100 + slot, 130 + 2 * slot))
        py.prefill(prompt, 0, slot)
        nat.prefill(prompt, 0, slot)
    return py, nat


def test_native_decode_matches_the_python_step(smollm2_int4_engine, built):
    model = smollm2_int4_engine.loaded.model
    py, nat = _runners(model, built)
    # Its own matmul and attention kernels sum in another order, so each layer's bf16
    # results may differ in the last bit, and 30 layers carry that into the logits
    # (~0.1 on average, up to ~0.8 measured): into the chosen token only where the
    # Python step's top two nearly tie (these prompts are arbitrary tokens).
    for step in range(4):
        a, b = py.decode([7 + step], [30 + step]), nat.decode([7 + step], [30 + step])
        assert (a - b).abs().max() < 2.0, (a - b).abs().max()
        chosen = int(b.argmax())
        assert chosen == int(a.argmax()) or a[0, chosen] > a.max() - 0.5, (step, a.topk(2))
    # 16 rows at their own positions (the Python step's dense kernels against the
    # native int4 ones, each row attending to its own keys): the same argmax
    agree = total = 0
    for step in range(4):
        positions = [30 + 2 * slot + step + (4 if slot == 0 else 0) for slot in range(16)]
        tokens = [11 + slot for slot in range(16)]
        a, b = py.decode(tokens, positions), nat.decode(tokens, positions)
        assert (a - b).abs().max() < 2.0
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += 16
    assert agree >= 0.9 * total


@pytest.mark.parametrize("positions", [[0], [63], [700], [40, 9, 300, 0]])
def test_native_attention_matches_sdpa(built, positions):
    """Each row attends to exactly its own keys 0..position, as torch's SDPA does
    with the padding masked."""
    torch.manual_seed(0)
    nh, nkv, hd, rows = 9, 3, 64, len(positions)
    k = torch.randn(rows + 2, nkv, 1024, hd).bfloat16()
    v = torch.randn(rows + 2, nkv, 1024, hd).bfloat16()
    q = torch.randn(rows, nh * hd).bfloat16()
    length = max(positions) + 1
    keys = torch.arange(length).unsqueeze(0)
    mask = (keys <= torch.tensor(positions).unsqueeze(1))[:, None, None, :]
    want = torch.nn.functional.scaled_dot_product_attention(
        q.view(rows, nkv, nh // nkv, hd), k[:rows, :, :length], v[:rows, :, :length], mask
    ).view(rows, -1)
    got = built.attend(q, k, v, positions, length, nh, nkv, hd)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    assert (got.float() - want.float()).abs().max() < 0.01


@pytest.mark.parametrize(("nh", "nkv", "hd"), [(9, 3, 64), (8, 2, 64), (4, 2, 128), (6, 3, 256)])
def test_native_attention_rows_keep_their_bits_in_a_batch(built, nh, nkv, hd):
    """16 rows attend as they would alone (each alone takes a head at a time; 16 take a
    GQA group's heads together where the shape has that kernel): the same bits, and
    SDPA's result to bf16's last bits."""
    torch.manual_seed(nh)
    rows = 16
    k = torch.randn(rows, nkv, 512, hd).bfloat16()
    v = torch.randn(rows, nkv, 512, hd).bfloat16()
    q = torch.randn(rows, nh * hd).bfloat16()
    positions = [17 * i + 3 for i in range(rows)]
    got = built.attend(q, k, v, positions, max(positions) + 1, nh, nkv, hd)
    for i, p in enumerate(positions):
        alone = built.attend(q[i : i + 1], k[i : i + 1], v[i : i + 1], [p], p + 1, nh, nkv, hd)
        assert torch.equal(got[i], alone[0]), i
        want = torch.nn.functional.scaled_dot_product_attention(
            q[i].view(nkv, nh // nkv, hd), k[i, :, : p + 1], v[i, :, : p + 1]
        ).reshape(-1)
        assert (got[i].float() - want.float()).abs().max() < 0.01


@pytest.mark.parametrize("rows", [1, 16])
def test_native_decode_is_faster(smollm2_int4_engine, built, rows):
    """One stream and a full batch of 16: the native step beats the Python one (whose
    16-row step runs torch's dense bf16 matmuls)."""
    py, nat = _runners(smollm2_int4_engine.loaded.model, built)
    tokens = [5 + i for i in range(rows)]

    def ms_per_step(runner: FastRunner) -> float:
        t0 = time.perf_counter()
        for i in range(12):
            runner.decode(tokens, [40 + i + slot for slot in range(rows)])
        return (time.perf_counter() - t0) / 12 * 1000

    times = {"py": [], "nat": []}
    for _ in range(3):
        times["py"].append(ms_per_step(py))
        times["nat"].append(ms_per_step(nat))
    # measured (AMD EPYC, 2 cores): 1 row ~14 vs ~5 ms; 16 rows ~45 vs ~23 ms
    assert min(times["nat"]) < min(times["py"]), times


def test_native_decode_off_keeps_python(smollm2_int4_engine, built):
    with dask.config.set({"omax.engine.native-decode": "off"}):
        runner = FastRunner(smollm2_int4_engine.loaded.model, max_slots=2, max_len=64)
    assert runner.native is None


def test_a_pinned_row_computes_the_same_bits_alone_and_in_any_batch(smollm2_int4_engine, built):
    """A seeded request's decode rows take the native step too: every kernel computes
    a row alike for any row count, and a pinned pass keeps the int8 head's kernel past
    the 4 rows where an unpinned one switches to bf16."""
    _, nat = _runners(smollm2_int4_engine.loaded.model, built)
    alone = nat.decode([5], [30], pinned=[True])[0]
    for rows in (2, 5, 16):
        batch = nat.decode(
            [5, *range(6, 5 + rows)],
            [30 + slot for slot in range(rows)],
            pinned=[True] + [False] * (rows - 1),
        )
        assert torch.equal(batch[0], alone), rows
    unpinned = nat.decode([5, *range(6, 21)], [30 + slot for slot in range(16)])[0]
    assert not torch.equal(unpinned, alone)  # the bf16 head: the pin is what holds it


def test_seeded_requests_on_the_native_step_same_alone_and_batched(smollm2_int4_engine, built):
    """End to end through an engine whose runner has the native step (made after the
    build): seeded decode rows run natively, also in steps that prefill others."""
    eng = Engine(smollm2_int4_engine.loaded, quant="int4", max_ctx=2048)
    try:
        assert eng.batcher is not None and eng.batcher.runner.native is not None
        check_seeded_alone_and_batched(eng)
    finally:
        eng.close()


@pytest.mark.parametrize("rows", [1, 2, 3, 7, 16])
def test_native_packed_matmuls_match_torch(smollm2_int4_engine, built, rows):
    """The native int4 and int8 kernels read torch's packed weights and give torch's
    products, up to the last bit of a bf16 result: one or two rows straight from the
    weights, more in tiles that share each group's unpacking (int8: up to 4 rows)."""
    model = smollm2_int4_engine.loaded.model
    torch.manual_seed(rows)
    for lin in (model.layers[0].qkv, model.layers[3].down):  # int4: K 576 and 1536
        x = torch.randn(rows, lin.w.shape[1] * 2).bfloat16()
        want = torch.ops.aten._weight_int4pack_mm_for_cpu(x, lin.w, 32, lin.s).float()
        got = built.int4_mm(x, lin.w, lin.s).float()
        assert got.shape == want.shape
        assert ((got - want).abs() <= 0.02 * want.abs() + 0.02).all(), (got - want).abs().max()
    head = model.head  # int8, per-row scales, kept in tiles of 8 rows
    assert head.w.dim() == 4
    codes = untile_int8(head.w)  # [N, K], torch's layout
    x = torch.randn(min(rows, 4), codes.shape[1]).bfloat16()
    want = torch.ops.aten._weight_int8pack_mm(x, codes, head.s).float()
    got = built.int8_mm(x, head.w, head.s).float()
    assert ((got - want).abs() <= 0.02 * want.abs() + 0.02).all(), (got - want).abs().max()
    # the row layout's kernel sums in the same order: the same bits
    assert torch.equal(
        built.int8_mm(x, codes, head.s, True), built.int8_mm(x, head.w, head.s, True)
    )


@pytest.mark.parametrize("rows", [1, 5, 16, 21])
def test_native_dense_matmul_matches_torch(built, rows):
    """The bf16 kernel for many rows (a lane per row; a head past the int8 kernel's
    rows, bf16 models) gives F.linear's product, any row and output count (here 1000:
    not a multiple of its 16-row blocks), and unrounded fp32 sums when asked."""
    torch.manual_seed(rows)
    w = torch.randn(1000, 576).bfloat16()
    x = torch.randn(rows, 576).bfloat16()
    want = torch.nn.functional.linear(x, w).float()
    got = built.dense_mm(x, w)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    assert ((got.float() - want).abs() <= 0.01 * want.abs() + 0.02).all()
    exact = x.double() @ w.double().T
    got32 = built.dense_mm(x, w, True)
    assert got32.dtype == torch.float32
    assert ((got32.double() - exact).abs() <= 1e-5 * exact.abs() + 1e-3).all()


@pytest.mark.parametrize("rows", [1, 2])
def test_native_packed_matmuls_give_fp32_logits(smollm2_int4_engine, built, rows):
    """Asked for fp32 (the head), the kernels return their sums unrounded: as close to
    an fp32 product of the same weights as fp32 sums in another order get, far closer
    than bf16's 1/8 steps between 16 and 32 (which made greedy tokens tie)."""
    model = smollm2_int4_engine.loaded.model
    torch.manual_seed(rows)
    head = model.head  # int8: w * s per row
    codes = untile_int8(head.w)
    x = torch.randn(rows, codes.shape[1]).bfloat16()
    want = x.float() @ (codes.float() * head.s.float()[:, None]).T
    got = built.int8_mm(x, head.w, head.s, True)
    assert got.dtype == torch.float32
    assert ((got - want).abs() <= 1e-4 * want.abs() + 1e-3).all(), (got - want).abs().max()
    lin = model.layers[0].qkv  # int4
    x = torch.randn(rows, lin.w.shape[1] * 2).bfloat16()
    got = built.int4_mm(x, lin.w, lin.s, True)
    bf16 = built.int4_mm(x, lin.w, lin.s)
    assert got.dtype == torch.float32
    assert ((got - bf16.float()).abs() <= 0.01 * got.abs() + 1e-2).all()
    assert not torch.equal(got, bf16.float())  # not merely widened


def _torch_rope(y, freqs, pos, nh, nkv, hd, q_norm, k_norm, eps):
    r = y.shape[0]
    qk = y[:, : (nh + nkv) * hd].reshape(r, nh + nkv, hd)
    if q_norm is not None:
        F = torch.nn.functional
        qk = torch.cat(
            [
                F.rms_norm(qk[:, :nh], (hd,), q_norm, eps),
                F.rms_norm(qk[:, nh:], (hd,), k_norm, eps),
            ],
            dim=1,
        )
    c = torch.view_as_complex(qk.reshape(r, nh + nkv, hd // 2, 2).float())
    return torch.view_as_real(c * freqs[pos].unsqueeze(1)).bfloat16().view(r, nh + nkv, hd)


@pytest.mark.parametrize("rows", [1, 7, 37])
def test_native_row_ops_give_torchs_results_row_by_row(built, rows):
    """The prompt step's row-wise parts (``fastpath.RowOps``) on the native kernels give
    what torch's ops give (silu bit for bit; RMSNorm, gelu and rotary to about the
    last bit of bf16: their sums and products round in another order), and each row
    the same bits alone as among others."""
    if not getattr(built, "own_kernels", False):
        pytest.skip("this CPU lacks AVX512-BF16: the prompt step keeps torch's ops")
    F = torch.nn.functional
    torch.manual_seed(rows)
    h, w = (torch.randn(rows, 576) * 3).bfloat16(), (torch.rand(576) + 0.5).bfloat16()
    got, want = built.rms_norm(h, w, 1e-5).float(), F.rms_norm(h, (576,), w, 1e-5).float()
    assert ((got - want).abs() <= want.abs() / 64 + 1e-3).all()
    assert torch.equal(built.rms_norm(h[-1:], w, 1e-5)[0], built.rms_norm(h, w, 1e-5)[-1])
    gu = (torch.randn(rows, 3072) * 2).bfloat16()
    assert torch.equal(built.act_mul(gu, False), F.silu(gu[:, :1536]) * gu[:, 1536:])
    gelu = F.gelu(gu[:, :1536], approximate="tanh") * gu[:, 1536:]
    got = built.act_mul(gu, True)
    assert ((got.float() - gelu.float()).abs() <= gelu.float().abs() / 64 + 1e-3).all()
    nh, nkv, hd = 9, 3, 64
    y = torch.randn(rows, (nh + 2 * nkv) * hd).bfloat16()
    freqs = torch.polar(torch.ones(1000, hd // 2), torch.rand(1000, hd // 2) * 6)
    pos = list(range(900, 900 + rows))
    for norms in (None, ((torch.rand(hd) + 0.5).bfloat16(), (torch.rand(hd) + 0.5).bfloat16())):
        qn, kn = norms or (None, None)
        got = built.rope_qk(y, freqs, pos, nh, nkv, hd, qn, kn, 1e-6)
        want = _torch_rope(y, freqs, pos, nh, nkv, hd, qn, kn, 1e-6)
        assert ((got.float() - want.float()).abs() <= want.float().abs() / 64 + 1e-3).all()
        last = built.rope_qk(y[-1:], freqs, pos[-1:], nh, nkv, hd, qn, kn, 1e-6)
        assert torch.equal(last[0], got[-1])
    assert torch.equal(built.act_mul(gu[-1:], True)[0], built.act_mul(gu, True)[-1])
    with pytest.raises(RuntimeError, match="contiguous bf16"):
        built.act_mul(gu[:, 1:], False)


def test_native_step_runs_prompts_with_decode_rows(smollm2_int4_engine, built):
    """SmolLM2 (head_dim 64): a step of 16 decode rows and two prompts (one whole, one
    chunk in the staging row) is one native call, with the Python step's greedy tokens
    (test_native_families.py holds every family to its logits); the prompt's keys are
    in the cache for its first decode."""
    model = smollm2_int4_engine.loaded.model
    py, nat = _runners(model, built)
    prompt = list(range(200, 260))
    segments = [Segment(prompt, 0, 15), Segment(prompt[:40], 0, nat.staging)]
    assert nat._native_prompts(segments, [False] * 15)
    tokens, positions = [11 + s for s in range(15)], [30 + 2 * s for s in range(15)]
    (a, a_lasts), (b, b_lasts) = (
        py.step(tokens, positions, segments),
        nat.step(tokens, positions, segments),
    )
    assert b is not None and len(b_lasts) == 2
    # last-bit differences carried through 30 layers, as in the decode test above
    # (measured here: 0.23 on average, 2.4 at most over 15 rows of 49152 logits)
    assert (a - b).abs().mean() < 0.5 and (a - b).abs().max() < 4.0
    assert int((a.argmax(-1) == b.argmax(-1)).sum()) >= 14
    for x, y in zip(a_lasts, b_lasts, strict=True):
        assert (x - y).abs().max() < 2.0 and int(x.argmax()) == int(y.argmax())
    c, d = (r.decode([*tokens, 9], [p + 1 for p in positions] + [60]) for r in (py, nat))
    assert (c[-1] - d[-1]).abs().max() < 2.0 and int(c[-1].argmax()) == int(d[-1].argmax())


def test_native_step_refuses_rows_past_the_cache_and_the_vocabulary(smollm2_int4_engine, built):
    nat = FastRunner(smollm2_int4_engine.loaded.model, max_slots=2, max_len=64)
    assert nat.native is not None and nat.native.prompts
    with pytest.raises(RuntimeError, match="past the cache"):
        nat.native.step(torch.tensor([5]), [64], [0], [0])
    with pytest.raises(RuntimeError, match="past the cache"):
        nat.native.step(torch.tensor([5]), [3], [nat.n_rows], [0])
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        nat.native.step(torch.tensor([10**6]), [3], [0], [0])
