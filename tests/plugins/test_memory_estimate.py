"""The memory a slot reserves for a model matches what the engine allocates: weights
as the quant holds them, and a KV row of the granted context per batch row. Pure."""

from __future__ import annotations

from types import SimpleNamespace

from omax.plugins.memory import granted_context, kv_bytes_per_token, model_memory

CONFIG = {
    "num_hidden_layers": 30,
    "hidden_size": 576,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
}


def tensor(shape, ggml_type="Q4_1"):
    return SimpleNamespace(shape=shape, ggml_type=ggml_type, dtype="quantized")


MANIFEST = SimpleNamespace(
    config=CONFIG,
    tensors=[tensor((576, 1536)), tensor((1536, 576), "Q8_0"), tensor((576,), "F32")],
)


def test_kv_grows_with_batch_rows_times_context():
    per_token = kv_bytes_per_token(CONFIG, 2)
    assert per_token == 2 * 30 * 3 * 64 * 2
    one = model_memory(MANIFEST, 4096, "float32", "int4", parallel=1)
    sixteen = model_memory(MANIFEST, 4096, "float32", "int4", parallel=16)
    assert sixteen - one == 15 * 4096 * per_token
    with_prefix = model_memory(MANIFEST, 4096, "float32", "int4", parallel=16, prefix_rows=4)
    assert with_prefix - sixteen == 4 * 4096 * per_token


def test_weights_are_counted_as_the_quant_holds_them():
    n = 576 * 1536
    none = model_memory(MANIFEST, 1, "float32", "none") - kv_bytes_per_token(CONFIG, 4)
    int4 = model_memory(MANIFEST, 1, "float32", "int4") - kv_bytes_per_token(CONFIG, 2)
    assert none == 2 * n * 4 + 576 * 4
    assert int4 == int(n * 0.625 + n * 1.03 + 576 * 4)  # Q4_1 as int4, Q8_0 as int8


def test_the_granted_context():
    assert granted_context(CONFIG, 4096, 4096) == 4096
    assert granted_context(CONFIG, 512, 4096) == 4096  # never below the default
    assert granted_context(CONFIG, 6000, 4096) == 6000
    assert granted_context(CONFIG, 100_000, 4096) == 8192  # the trained context


def test_placement_sees_gpu_memory_another_process_took():
    """A GPU's capacity follows its live free memory (the worker's heartbeat): what
    omax may reserve is at most that plus what its own models reserve there."""
    from omax.plugins import placement
    from omax.plugins.memory import with_live_capacity
    from omax.plugins.state import Slot, WorkerInfo

    gib = 2**30
    gpu = Slot("cuda:0", "cuda", "H100", memory_total=80 * gib, memory_free=80 * gib)
    cpu = Slot("cpu", "cpu", "CPU", memory_total=8 * gib, memory_free=8 * gib)
    # another process took 60 GiB; omax's own models reserve 10 GiB and use 8 of them
    live = [{"id": "cuda:0", "memory_free": 12 * gib, "utilization": 55.0}]
    refreshed = with_live_capacity((gpu, cpu), live, {"cuda:0": 10 * gib})
    assert refreshed[0].memory_total == 22 * gib and refreshed[0].utilization == 55.0
    assert refreshed[1] == cpu  # a CPU slot keeps its declared memory
    assert with_live_capacity((gpu,), None, {}) == (gpu,)  # no heartbeat yet

    need = placement.Need(digest="d", name="m", memory=30 * gib)
    fresh = WorkerInfo("tcp://w", "w", slots=(gpu,))
    assert isinstance(placement.place([fresh], [], need), placement.Place)
    busy = WorkerInfo("tcp://w", "w", slots=with_live_capacity((gpu,), live, {}))
    assert isinstance(placement.place([busy], [], need), placement.Refuse)
