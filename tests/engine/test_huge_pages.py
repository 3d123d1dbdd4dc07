"""A CPU model's weights on transparent huge pages (omax.engine.huge_pages)."""

from __future__ import annotations

import gc

import dask
import pytest
import torch

from omax.engine import huge_pages


def mapping_of(ptr: int) -> dict[str, int] | None:
    """The /proc/self/smaps entry holding address ``ptr``: its start, end and
    AnonHugePages (bytes); None where no mapping holds it."""
    entry: dict[str, int] | None = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                entry = {"start": start, "end": end} if start <= ptr < end else None
            elif entry is not None and head == "AnonHugePages:":
                entry["huge"] = int(line.split()[1]) * 1024
                return entry
    return None


needs_thp = pytest.mark.skipif(
    not huge_pages.available(), reason="this kernel has no transparent huge pages to ask for"
)


def test_layout_aligns_every_storage_and_sums_what_it_needs():
    offsets, total = huge_pages.layout([100, 64, 1, 0, 130])
    assert offsets == [0, 128, 192, 256, 256]
    assert total == 448
    assert huge_pages.layout([]) == ([], 0)


def test_thp_mode_is_the_bracketed_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert huge_pages.thp_mode(f) == "madvise"
    f.write_text("[never] madvise always\n")
    assert huge_pages.thp_mode(f) == "never"
    assert huge_pages.thp_mode(tmp_path / "absent") == ""


@needs_thp
def test_moved_tensors_keep_values_views_and_dtypes_on_huge_pages():
    a = torch.randn(3 << 20)  # 12 MiB
    b = a[100:300]  # a view: it must keep sharing a's storage
    c = torch.arange(-500, 500, dtype=torch.int16).view(10, 100).t()  # strided
    with torch.inference_mode():  # the engine's weights are inference tensors
        d = torch.full((7,), 1.5, dtype=torch.bfloat16)
    want = [x.clone() for x in (a, b, c, d)]
    old, need = a.data_ptr(), a.nbytes + c.untyped_storage().nbytes() + d.nbytes

    moved = huge_pages.Arena().move([a, b, c, d])

    assert moved >= need
    assert c.untyped_storage().data_ptr() == a.untyped_storage().data_ptr()  # one mapping
    assert a.data_ptr() != old
    assert b.untyped_storage().data_ptr() == a.untyped_storage().data_ptr()
    assert b.data_ptr() == a.data_ptr() + 100 * 4
    for got, ref in zip((a, b, c, d), want, strict=True):
        assert got.dtype == ref.dtype and got.stride() == ref.stride()
        assert torch.equal(got, ref)
    b.fill_(7.0)  # still a view of a
    assert float(a[100]) == 7.0
    region = mapping_of(a.data_ptr())
    assert region is not None and region["huge"] >= 2 << 20, region


@needs_thp
def test_the_mapping_goes_back_when_its_tensors_go():
    a = torch.randn(4 << 20)  # 16 MiB
    huge_pages.Arena().move([a])
    ptr = a.data_ptr()
    assert mapping_of(ptr) is not None
    del a
    gc.collect()
    region = mapping_of(ptr)
    assert region is None or region["huge"] == 0  # unmapped (or the address reused)


@needs_thp
def test_an_arena_fills_its_mappings_part_by_part():
    arena = huge_pages.Arena(chunk=4 << 20)
    first = [torch.randn(256 << 10), torch.randn(1000)]  # a 1 MiB part
    assert arena.move(first) == (256 << 10) * 4 + 4032
    second = [torch.randn(1 << 20)]  # 4 MiB: no room left, a mapping of its own
    assert arena.move(second) == 4 << 20
    assert arena.move([*first, *second]) == 0  # in a mapping already: not moved again
    base = first[0].untyped_storage().data_ptr()
    assert first[1].untyped_storage().data_ptr() == base
    assert second[0].untyped_storage().data_ptr() != base
    assert torch.isfinite(first[0]).all() and torch.isfinite(second[0]).all()


@needs_thp
def test_a_model_loaded_with_huge_pages_on_decodes_from_them(smollm2_spec, smollm2_int4_engine):
    from omax.engine.engine import Engine
    from tests.engine.conftest import SMOLLM2_GGUF, gguf_tensors

    with dask.config.set({"omax.engine.huge-pages": "on"}):
        eng = Engine.load(smollm2_spec, gguf_tensors(SMOLLM2_GGUF), quant="int4", max_ctx=64)
    try:
        model = eng.loaded.model
        for w in (model.layers[0].gu.w, model.layers[-1].down.w, model.head.w, model.norm):
            region = mapping_of(w.data_ptr())
            assert region is not None and region["huge"] > 0, region
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        assert len(weights) <= 2  # all of them in one or two mappings
        # the same model on torch's allocations (the default) computes the same bits
        ids = list(range(1, 40))
        want = smollm2_int4_engine.loaded.model
        assert want.layers[0].gu.w.data_ptr() != model.layers[0].gu.w.data_ptr()
        assert torch.equal(last_logits(eng, ids), last_logits(smollm2_int4_engine, ids))
    finally:
        eng.close()


def test_huge_pages_are_off_by_default(smollm2_int4_engine):
    model = smollm2_int4_engine.loaded.model
    ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(ptrs) > 100  # each weight in its own allocation, none moved into one


def last_logits(engine, ids: list[int]) -> torch.Tensor:
    from omax.engine.runner import FastRunner

    runner = FastRunner(engine.loaded.model, max_slots=1, max_len=len(ids))
    return runner.prefill(ids, 0).float()
