"""Import safetensors files and Hugging Face model folders.

A folder holds ``config.json``, tokenizer files, one or more ``*.safetensors`` (sharded
ones with ``model.safetensors.index.json``) and, for sentence-transformers models,
``modules.json``, ``1_Pooling/config.json`` and friends. Tensors are read straight from
the safetensors layout (8-byte header length, JSON header, raw little-endian data)
through a memory map, so bfloat16 and float8 need no framework: bf16 is stored as a
uint16 view and fp8 as uint8, with the real dtype recorded. Every small non-weight file
is kept as a blob under its relative name.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from omax.errors import ImportFailed
from omax.sharding.importers.common import BlobWriter, new_manifest
from omax.sharding.manifest import Manifest, TensorEntry, format_parameter_count
from omax.sharding.paths import inside

# safetensors dtype -> (stored numpy dtype, real dtype name)
DTYPES: dict[str, tuple[str, str]] = {
    "F64": ("float64", "float64"),
    "F32": ("float32", "float32"),
    "F16": ("float16", "float16"),
    "BF16": ("uint16", "bfloat16"),
    "F8_E4M3": ("uint8", "float8_e4m3fn"),
    "F8_E5M2": ("uint8", "float8_e5m2"),
    "I64": ("int64", "int64"),
    "I32": ("int32", "int32"),
    "I16": ("int16", "int16"),
    "I8": ("int8", "int8"),
    "U8": ("uint8", "uint8"),
    "BOOL": ("uint8", "bool"),
}
MAX_HEADER = 100 << 20
MAX_EXTRA_FILE = 64 << 20
SKIP_FILES = {"README.md", ".gitattributes"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx")


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """``(header, data_start)`` of a safetensors file; ImportFailed if malformed."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ImportFailed(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or 8 + n > size:
                raise ImportFailed(f"{path}: corrupt or truncated safetensors header")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as err:
        raise ImportFailed(f"{path}: corrupt safetensors header: {err}") from err
    if not isinstance(header, dict):
        raise ImportFailed(f"{path}: corrupt safetensors header")
    start = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            dtype = info["dtype"]
            shape = info["shape"]
        except (KeyError, TypeError, ValueError) as err:
            raise ImportFailed(f"{path}: bad entry for tensor {name}") from err
        if dtype not in DTYPES:
            raise ImportFailed(f"{path}: tensor {name} has unsupported dtype {dtype}")
        itemsize = np.dtype(DTYPES[dtype][0]).itemsize
        if end - begin != itemsize * int(np.prod(shape, dtype=np.int64)) or begin > end:
            raise ImportFailed(f"{path}: tensor {name} has inconsistent size")
        if start + end > size:
            raise ImportFailed(f"{path}: truncated (tensor {name} runs past the end of the file)")
    return header, start


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as err:
            raise ImportFailed(f"{index}: corrupt index: {err}") from err
        if not isinstance(weight_map, dict) or not all(
            isinstance(f, str) for f in weight_map.values()
        ):
            raise ImportFailed(f"{index}: corrupt index: weight_map must map names to files")
        files = sorted({inside(folder, f, index.name) for f in weight_map.values()})
        for f in files:
            if not f.exists():
                raise ImportFailed(f"{index}: names missing shard {f.name}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ImportFailed(f"{folder}: no *.safetensors weights")
    return files


def import_safetensors(writer: BlobWriter, path: str | Path) -> Manifest:
    """Import one ``.safetensors`` file or a Hugging Face folder."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    files = weight_files(path) if path.is_dir() else [path]
    headers = [(f, *read_header(f)) for f in files]
    writer.total = sum(f.stat().st_size for f in files)
    writer.stage("importing tensors")
    entries: list[TensorEntry] = []
    seen: set[str] = set()
    n_params = 0
    dtypes: dict[str, int] = {}
    for f, header, start in headers:
        mm = np.memmap(f, dtype=np.uint8, mode="r")
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if name in seen:
                raise ImportFailed(f"{f}: tensor {name} appears in more than one file")
            seen.add(name)
            stored_dtype, real = DTYPES[info["dtype"]]
            begin, end = info["data_offsets"]
            shape = tuple(info["shape"])
            arr = mm[start + begin : start + end].view(stored_dtype).reshape(shape)
            entries.append(writer.tensor(name, arr, dtype=real))
            count = int(np.prod(shape, dtype=np.int64))
            n_params += count
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + count
        del mm
    extra = _extra_files(writer, folder) if path.is_dir() else {}
    config = _load_json(folder / "config.json") if path.is_dir() else {}
    tok_config = _tokenizer_config(folder) if path.is_dir() else {}
    template = tok_config.get("chat_template") or ""
    if (folder / "chat_template.jinja").exists() and path.is_dir():
        template = (folder / "chat_template.jinja").read_text()
    family = str(config.get("model_type") or "unknown")
    quant = max(dtypes, key=lambda k: dtypes[k]) if dtypes else "unknown"
    return new_manifest(
        "safetensors",
        family,
        config,
        entries,
        extra,
        tok_config,
        _model_info(config, family, n_params),
        parameter_size=format_parameter_count(n_params),
        quantization_level=quant,
        template=template,
    )


def _extra_files(writer: BlobWriter, folder: Path) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        if (
            not f.is_file()
            or f.name in SKIP_FILES
            or f.name.endswith(WEIGHT_SUFFIXES)
            or any(p.startswith(".") for p in f.relative_to(folder).parts)
            or f.stat().st_size > MAX_EXTRA_FILE
        ):
            continue
        if f.suffix == ".json":
            _load_json(f)  # a corrupt config must fail the import, not the engine
        out[rel] = writer.put_file(f)
    return out


def _load_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ImportFailed(f"{path}: not valid JSON: {err}") from err
    return value if isinstance(value, dict) else {"value": value}


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    config = _load_json(folder / "tokenizer_config.json")
    config.pop("added_tokens_decoder", None)
    special = _load_json(folder / "special_tokens_map.json")
    for key, value in special.items():
        config.setdefault(key, value.get("content") if isinstance(value, dict) else value)
    return config


def _model_info(config: dict[str, Any], family: str, n_params: int) -> dict[str, Any]:
    info: dict[str, Any] = {"general.architecture": family, "general.parameter_count": n_params}
    for key, hf_key in (
        ("context_length", "max_position_embeddings"),
        ("embedding_length", "hidden_size"),
        ("block_count", "num_hidden_layers"),
        ("feed_forward_length", "intermediate_size"),
        ("attention.head_count", "num_attention_heads"),
        ("attention.head_count_kv", "num_key_value_heads"),
        ("vocab_size", "vocab_size"),
    ):
        if hf_key in config:
            info[f"{family}.{key}"] = config[hf_key]
    return info
