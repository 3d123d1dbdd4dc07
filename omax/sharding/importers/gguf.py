"""Import a GGUF file: tensors stay byte-identical blocks, metadata becomes HF config.

- Tensors: quantised types are stored as their raw uint8 blocks (``ggml_type`` and the
  logical shape recorded), F32/F16 and integer types as typed arrays, BF16 as a uint16
  view. Only types ``gguf.quants`` can dequantise are accepted.
- Config: transformers' ``load_gguf_checkpoint(path, return_tensors=False)``, so every
  architecture transformers can build from GGUF is supported and nothing else.
- Tokenizer: transformers' GGUF tokenizer converter writes ``tokenizer.json``; the chat
  template is ``tokenizer.chat_template``.

Metadata parsing costs seconds (tens of thousands of vocabulary strings); it is cached
per file identity (device, inode, size, mtime) so importing one file under two names in
one process parses it once.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from omax.errors import ImportFailed
from omax.sharding.importers.common import BlobWriter
from omax.sharding.manifest import Manifest, TensorEntry, format_parameter_count

GGUF_MAGIC = b"GGUF"
PLAIN_TYPES = {
    QT.F32: "float32",
    QT.F16: "float16",
    QT.F64: "float64",
    QT.I8: "int8",
    QT.I16: "int16",
    QT.I32: "int32",
    QT.I64: "int64",
}
BIG_ARRAY_PREFIX = "tokenizer.ggml."


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def supported_types() -> set[QT]:
    from gguf import quants

    return set(PLAIN_TYPES) | {QT.BF16} | set(quants._type_traits)


def import_gguf(writer: BlobWriter, path: str | Path) -> Manifest:
    """Store every tensor of the GGUF file at ``path``; return its manifest."""
    path = Path(path)
    reader = _open_reader(path)
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str):
        raise ImportFailed(f"{path}: no general.architecture in GGUF metadata")
    _check_tensors(path, reader)
    config, tokenizer_json, tokenizer_config = _derived_metadata(path, _file_key(path))
    writer.total = sum(int(t.n_bytes) for t in reader.tensors)
    writer.stage("importing tensors")
    entries = [_write_tensor(writer, t) for t in reader.tensors]
    files: dict[str, tuple[str, int]] = {}
    if tokenizer_json is not None:
        files["tokenizer.json"] = writer.put_bytes(tokenizer_json)
    template = tokenizer_config.get("chat_template") or ""
    n_params = int(sum(t.n_elements for t in reader.tensors))
    quant = _quantization_level(reader)
    model_info = _model_info(reader, n_params)
    return Manifest(
        format="gguf",
        family=arch,
        config=config,
        tensors=tuple(entries),
        files=files,
        tokenizer_config=tokenizer_config,
        template=template if isinstance(template, str) else "",
        license=_license(reader),
        model_info=model_info,
        details={
            "format": "gguf",
            "family": arch,
            "families": [arch],
            "parameter_size": _field(reader, "general.size_label")
            or format_parameter_count(n_params),
            "quantization_level": quant,
            "parent_model": "",
        },
    )


def _open_reader(path: Path) -> gguf.GGUFReader:
    if not path.is_file():
        raise ImportFailed(f"{path}: no such file")
    if not is_gguf(path):
        raise ImportFailed(f"{path}: not a GGUF file (bad magic)")
    try:
        return gguf.GGUFReader(path)
    except Exception as err:  # the reader raises ValueError, IndexError, struct errors...
        raise ImportFailed(f"{path}: corrupt or truncated GGUF: {err}") from err


def _check_tensors(path: Path, reader: gguf.GGUFReader) -> None:
    size = path.stat().st_size
    allowed = supported_types()
    for t in reader.tensors:
        if t.tensor_type not in allowed:
            raise ImportFailed(
                f"{path}: tensor {t.name} has unsupported quantisation type {t.tensor_type.name}"
            )
        if int(t.data_offset) + int(t.n_bytes) > size or t.data.nbytes != t.n_bytes:
            raise ImportFailed(f"{path}: truncated (tensor {t.name} runs past the end of the file)")


def _write_tensor(writer: BlobWriter, t: Any) -> TensorEntry:
    qt = QT(int(t.tensor_type))
    shape = tuple(int(s) for s in reversed(t.shape.tolist()))
    data = np.asarray(t.data)
    if qt in PLAIN_TYPES:
        stored = data.reshape(shape)
        return writer.tensor(t.name, stored, dtype=PLAIN_TYPES[qt], ggml_type=qt.name)
    if qt == QT.BF16:
        stored = data.view(np.uint8).view(np.uint16).reshape(shape)
        return writer.tensor(t.name, stored, dtype="bfloat16", ggml_type=qt.name)
    return writer.tensor(
        t.name, data.view(np.uint8), dtype="quantized", shape=shape, ggml_type=qt.name
    )


def _file_key(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


_METADATA_CACHE: dict[tuple, tuple[dict, bytes | None, dict]] = {}


def _derived_metadata(path: Path, key: tuple) -> tuple[dict, bytes | None, dict]:
    """(HF config, tokenizer.json bytes or None, tokenizer_config), cached by file identity."""
    if key not in _METADATA_CACHE:
        if len(_METADATA_CACHE) >= 8:
            _METADATA_CACHE.pop(next(iter(_METADATA_CACHE)))
        _METADATA_CACHE[key] = _parse_metadata(path)
    config, tokenizer_json, tokenizer_config = _METADATA_CACHE[key]
    return copy.deepcopy(config), tokenizer_json, copy.deepcopy(tokenizer_config)


def _parse_metadata(path: Path) -> tuple[dict, bytes | None, dict]:
    try:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        parsed = load_gguf_checkpoint(os.fspath(path), return_tensors=False)
    except ValueError as err:
        raise ImportFailed(f"{path}: {err}") from err
    except Exception as err:
        raise ImportFailed(f"{path}: cannot read GGUF metadata: {err}") from err
    config = {k: v for k, v in parsed["config"].items() if not k.startswith("_")}
    config = _jsonable(config)
    model_type = config.get("model_type")
    if model_type:
        config.setdefault("architectures", [_architecture_class(model_type)])
    try:
        tokenizer_json, tokenizer_config = _tokenizer(path)
    except ImportFailed:
        raise
    except Exception as err:
        raise ImportFailed(f"{path}: cannot convert the GGUF tokenizer: {err}") from err
    return config, tokenizer_json, _jsonable(tokenizer_config)


def _tokenizer(path: Path) -> tuple[bytes | None, dict]:
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            convert_gguf_tokenizer,
            get_gguf_tokenizer,
        )
    except ImportError:  # older transformers
        from transformers.integrations.ggml import (  # type: ignore[attr-defined,no-redef]
            convert_gguf_tokenizer,
        )
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        parsed = load_gguf_checkpoint(os.fspath(path), return_tensors=False)
        arch = parsed["config"]["model_type"]
        tok, extra = convert_gguf_tokenizer(arch, parsed["tokenizer"])
        return tok.to_str().encode(), {**parsed["tokenizer_config"], **extra}
    arch, tokenizer_dict, tokenizer_config = get_gguf_tokenizer(os.fspath(path))
    if not tokenizer_dict.get("tokens"):
        return None, tokenizer_config
    tok, extra = convert_gguf_tokenizer(arch, tokenizer_dict)
    return tok.to_str().encode(), {**tokenizer_config, **extra}


def _architecture_class(model_type: str) -> str:
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
        if isinstance(name, str):
            return name
    except ImportError:
        pass
    return "".join(p.capitalize() for p in model_type.split("_")) + "ForCausalLM"


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:
        return None


def _model_info(reader: gguf.GGUFReader, n_params: int) -> dict[str, Any]:
    """``/api/show`` model_info: every metadata key; big tokenizer arrays as null."""
    info: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if key.startswith(BIG_ARRAY_PREFIX) and f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
            info[key] = None
            continue
        info[key] = _jsonable(_field(reader, key))
    info["general.parameter_count"] = n_params
    return info


def _quantization_level(reader: gguf.GGUFReader) -> str:
    ft = _field(reader, "general.file_type")
    if isinstance(ft, int):
        try:
            return gguf.LlamaFileType(ft).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    counts = Counter(t.tensor_type.name for t in reader.tensors)
    return counts.most_common(1)[0][0] if counts else "unknown"


def _license(reader: gguf.GGUFReader) -> str:
    lic = _field(reader, "general.license")
    return lic if isinstance(lic, str) else ""


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
