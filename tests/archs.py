"""Tiny random decoders of every fast-path family, as Hugging Face folders and as GGUF.

``tiny_model(family, folder)`` writes a folder transformers and llama.cpp's converter
both read: ``config.json``, ``model.safetensors`` and a real tokenizer (the files the
family's converter route wants). ``tiny_gguf(folder, outtype)`` converts it with
llama.cpp's own ``convert_hf_to_gguf.py``; ``tiny_ggufs`` converts many in one
process. The 4-bit and 5-bit types the converter cannot write (it has no
``--outtype q4_0``; that needs the compiled ``llama-quantize``) are its F32 file with
every 2-D weight re-quantised by ``gguf.quants``, all metadata copied.

Tokenizers: a small SentencePiece BPE with byte fallback, trained here on
standard-library docstrings, with gemma's special ids for gemma2/gemma3 and llama's for
the rest; ``tokenizer.model`` for the converter (every family's route takes one: llama,
qwen2 and qwen3 try SentencePiece first; gemma2 and phi3 require it) and
``tokenizer.json`` as transformers builds it from the same pieces. The tokenizer does
not change a model's maths. A GPT-2 BPE the converter knows (SmolLM2's, 49,152 tokens)
converts for llama and qwen3, but ``gguf.GGUFReader`` and transformers parse a token
list that long element by element, far too slowly for a test that reads dozens of
files; and for qwen2 transformers tokenizes with Qwen2's split regex whatever
tokenizer.json says, so the converter sees a pre-tokenizer hash it does not know.

Every norm weight and bias gets noise on top of transformers' init (ones or zeros),
so a converter or loader that drops or mis-shifts one changes the output.

The converter ships in llama-cpp-python's source distribution, which ``make install``
downloads to ``<venv>/share/llama-cpp-src``; its files are unpacked beside it once.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")  # convert_hf_to_gguf.py --outtype
REQUANT_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1")  # from the F32 file with gguf.quants

# where the Makefile downloads the sdist (it pins the version); OMAX_LLAMA_CPP_SRC
# elsewhere (benchmarks/gpu_bench.sh on a machine whose Python has no such folder)
LLAMA_CPP_SRC = Path(
    os.environ.get("OMAX_LLAMA_CPP_SRC") or Path(sys.prefix) / "share" / "llama-cpp-src"
)
SP_VOCAB = 1024
NOISE = 0.1  # std of the noise added to every norm weight and bias


class ConverterMissing(RuntimeError):
    """llama-cpp-python's source distribution is not where ``make install`` puts it."""


# ---- models ----------------------------------------------------------------------


def tiny_model(family: str, folder: Path, vocab: int = SP_VOCAB) -> Path:
    """Write a tiny random ``family`` decoder with its tokenizer of ``vocab`` tokens to
    ``folder``; return it. A folder that already holds a model is returned as it is.
    """
    folder = Path(folder)
    if (folder / "model.safetensors").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if family in ("gemma2", "gemma3"):
        style, ids = "gemma", {"bos": 2, "eos": 1, "pad": 0}
    else:
        style, ids = "llama", {"bos": 1, "eos": 2, "pad": 0}
    vocab = _sentencepiece_tokenizer(folder, style, vocab)
    config = _config(family, vocab, ids)
    torch.manual_seed(FAMILIES.index(family))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * NOISE)
    model.save_pretrained(folder)
    return folder


def _config(family: str, vocab: int, ids: dict[str, int]):
    """Small shapes that a short prompt still exercises: windows of 8 tokens, GQA, an
    explicit head_dim where the family has one, and the family's own options."""
    import transformers as tf

    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.1,  # clearer argmax margins than the default 0.02
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    rope = {"rope_type": "default", "rope_theta": 50000.0}
    if family == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=False, rope_parameters=rope)
    if family == "mistral":
        return tf.MistralConfig(**common, head_dim=16, sliding_window=8, rope_parameters=rope)
    if family == "qwen2":  # biases on q/k/v; the second layer slides
        return tf.Qwen2Config(
            **common,
            tie_word_embeddings=True,
            use_sliding_window=True,
            sliding_window=8,
            max_window_layers=1,
            rope_parameters=rope,
        )
    if family == "qwen3":  # q/k norms; head_dim wider than hidden / heads
        return tf.Qwen3Config(**common, head_dim=128, tie_word_embeddings=False)
    if family == "gemma2":
        return tf.Gemma2Config(
            **common | {"num_hidden_layers": 3},
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=8,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        )
    if family == "gemma3":
        return tf.Gemma3TextConfig(
            **common | {"num_hidden_layers": 3},
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 100000.0},
            },
        )
    if family == "phi3":
        return tf.Phi3Config(**common, sliding_window=8, tie_word_embeddings=False)
    raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")


# ---- tokenizers ------------------------------------------------------------------


def _sentencepiece_tokenizer(folder: Path, style: str, vocab: int) -> int:
    """A SentencePiece BPE model (``tokenizer.model``) with gemma's or llama's special
    ids, its ``tokenizer.json`` and config; its vocab size."""
    import sentencepiece as spm
    from gguf import TokenType
    from transformers.integrations.gguf import convert_gguf_tokenizer

    if style == "gemma":
        special = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}
        ids = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3)
        extra = ["<start_of_turn>", "<end_of_turn>"]
    else:
        special = {"unk": "<unk>", "bos": "<s>", "eos": "</s>"}
        ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
        extra = []
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=model,
        vocab_size=vocab,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
        user_defined_symbols=extra,
        pad_piece="<pad>",
        bos_piece=special["bos"],
        eos_piece=special["eos"],
        unk_piece="<unk>",
        **ids,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]

    def kind(i: int) -> TokenType:
        if sp.is_control(i):
            return TokenType.CONTROL
        if sp.is_unknown(i):
            return TokenType.UNKNOWN
        if sp.is_byte(i):
            return TokenType.BYTE
        return TokenType.USER_DEFINED if pieces[i] in extra else TokenType.NORMAL

    tok_dict = {  # what transformers reads from a GGUF's tokenizer.ggml.* keys
        "tokenizer_type": "llama",
        "tokens": pieces,
        "scores": [sp.get_score(i) for i in range(n)],
        "token_type": [int(kind(i)) for i in range(n)],
    }
    fast, _ = convert_gguf_tokenizer("gemma2" if style == "gemma" else "llama", tok_dict)
    (folder / "tokenizer.json").write_text(fast.to_str())
    klass = "GemmaTokenizer" if style == "gemma" else "LlamaTokenizer"
    config = {f"{k}_token": v for k, v in special.items()}
    config |= {"tokenizer_class": klass, "add_bos_token": True, "add_eos_token": False}
    _write_json(folder / "tokenizer_config.json", config)
    return n


def _corpus() -> list[str]:
    """Training text: docstrings of a few standard-library modules (offline, stable)."""
    import argparse
    import collections
    import inspect
    import json as json_module
    import logging
    import pathlib
    import re
    import typing

    lines: list[str] = []
    for module in (argparse, collections, json_module, logging, pathlib, re, typing, os):
        for obj in (module, *vars(module).values()):
            if obj is module or callable(obj):
                lines += (inspect.getdoc(obj) or "").splitlines()
    return [line for line in lines if line.strip()]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


# ---- GGUF ------------------------------------------------------------------------


def gguf_path(folder: Path, outtype: str) -> Path:
    """Where ``tiny_gguf`` writes ``folder``'s model as ``outtype``."""
    return Path(folder) / f"model-{outtype}.gguf"


def tiny_gguf(folder: Path, outtype: str) -> Path:
    """``folder``'s model as a GGUF of ``outtype`` (``CONVERTER_TYPES`` or
    ``REQUANT_TYPES``); an existing file is returned as it is."""
    return tiny_ggufs([(folder, outtype)])[0]


def tiny_ggufs(jobs: Iterable[tuple[Path, str]]) -> list[Path]:
    """Convert every ``(folder, outtype)`` not yet converted, in one converter process."""
    jobs = [(Path(f), t) for f, t in jobs]
    for _, t in jobs:
        if t not in CONVERTER_TYPES + REQUANT_TYPES:
            raise ValueError(f"unknown outtype {t!r}")
    needed = {(f, "f32" if t in REQUANT_TYPES else t) for f, t in jobs}
    todo = sorted((f, t) for f, t in needed if not gguf_path(f, t).exists())
    if todo:
        _convert(todo)
    for f, t in jobs:
        if t in REQUANT_TYPES and not gguf_path(f, t).exists():
            requantize(gguf_path(f, "f32"), gguf_path(f, t), t)
    return [gguf_path(f, t) for f, t in jobs]


def llama_cpp_dir() -> Path:
    """The unpacked ``vendor/llama.cpp`` of the sdist (converter, conversion/, gguf-py/)."""
    sdists = sorted(LLAMA_CPP_SRC.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        raise ConverterMissing(
            f"no llama-cpp-python sdist in {LLAMA_CPP_SRC}: `make install` downloads it "
            "(llama.cpp's convert_hf_to_gguf.py ships in it)"
        )
    sdist = sdists[-1]
    root = LLAMA_CPP_SRC / sdist.name.removesuffix(".tar.gz")
    done = root / ".unpacked"
    if not done.exists():
        prefix = f"{root.name}/vendor/llama.cpp/"
        wanted = (prefix + "convert_hf_to_gguf.py", prefix + "conversion/", prefix + "gguf-py/")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(wanted)]
            tar.extractall(LLAMA_CPP_SRC, members=members, filter="data")
        done.touch()
    return root / "vendor" / "llama.cpp"


# One process for many conversions: the converter's imports (torch, transformers) cost
# more than converting a tiny model. It puts its own gguf-py first on sys.path, so it
# runs with the gguf it was written for, not the one omax uses.
_DRIVER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import convert_hf_to_gguf as c
for folder, outtype, out in json.loads(sys.argv[2]):
    sys.argv = ["convert_hf_to_gguf.py", folder, "--outtype", outtype, "--outfile", out]
    c.main()
"""


def _convert(jobs: list[tuple[Path, str]]) -> None:
    here = llama_cpp_dir()
    spec = json.dumps([(str(f), t, str(gguf_path(f, t))) for f, t in jobs])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("NO_LOCAL_GGUF", None)
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(here), spec],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{proc.stderr[-6000:]}")


def requantize(src: Path, dst: Path, outtype: str) -> Path:
    """Copy GGUF ``src`` to ``dst`` with every 2-D F32 tensor whose rows split into
    32-value blocks quantised to ``outtype``, as ``llama-quantize --pure`` does (1-D
    norms and biases stay F32), and every metadata key copied but the file type."""
    import gguf
    from gguf import GGMLQuantizationType as QT

    qtype = QT[outtype.upper()]
    ftype = gguf.LlamaFileType[f"MOSTLY_{outtype.upper()}"]
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value = ftype.value if field.name == gguf.Keys.General.FILE_TYPE else field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    for t in reader.tensors:
        data = np.asarray(t.data)
        if t.tensor_type == QT.F32 and data.ndim == 2 and data.shape[-1] % 32 == 0:
            writer.add_tensor(t.name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
