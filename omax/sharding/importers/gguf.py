"""Import a GGUF file: tensors stay byte-identical blocks, metadata becomes HF config.

- Tensors: quantised types are stored as their raw uint8 blocks (``ggml_type`` and the
  logical shape recorded), F32/F16 and integer types as typed arrays, BF16 as a uint16
  view. Only the types in ``omax.sharding.support`` are accepted.
- Config: ``ggufconfig.hf_config``, the config transformers' ``load_gguf_checkpoint``
  builds; an architecture transformers cannot map or build is refused.
- Tokenizer: ``gguftokenizer.tokenizer_files``, the ``tokenizer.json`` transformers'
  GGUF converter writes; the chat template is ``tokenizer.chat_template``.

Every refusal (corrupt file, tensor type, architecture, tokenizer kind) is an
ImportFailed raised before the first blob is written. The tokenizer's conversion (a
second or two for a 262k vocabulary, mostly Python) then runs in a thread while the
tensors are written (mostly hashing and I/O, which release the GIL). The derived config
and tokenizer are cached per file identity (device, inode, size, mtime) so importing
one file under two names in one process builds them once.
"""

from __future__ import annotations

import concurrent.futures
import copy
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from omax.errors import ImportFailed
from omax.sharding import support
from omax.sharding.importers.common import BlobWriter, new_manifest
from omax.sharding.importers.ggufconfig import hf_config, supported_architectures
from omax.sharding.importers.ggufheader import GGUFFile, TensorInfo, open_gguf
from omax.sharding.importers.gguftokenizer import tokenizer_job
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


def import_gguf(writer: BlobWriter, path: str | Path) -> Manifest:
    """Store every tensor of the GGUF file at ``path``; return its manifest."""
    path = Path(path)
    file = _open(path)
    arch = file.metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ImportFailed(f"{path}: no general.architecture in GGUF metadata")
    sizes = _check_tensors(file)
    with concurrent.futures.ThreadPoolExecutor(1, "omax-gguf-tokenizer") as pool:
        metadata = _metadata(path, _file_key(path), file, pool)
        writer.total = sum(sizes)
        writer.stage("importing tensors")
        entries = [
            _write_tensor(writer, file, t, n) for t, n in zip(file.tensors, sizes, strict=True)
        ]
        config, tokenizer_json, tokenizer_config = metadata.result()
    files: dict[str, tuple[str, int]] = {}
    if tokenizer_json is not None:
        files["tokenizer.json"] = writer.put_bytes(tokenizer_json)
    template = tokenizer_config.get("chat_template") or ""
    n_params = sum(t.n_elements for t in file.tensors)
    quant = _quantization_level(file)
    model_info = _model_info(file, n_params)
    license = file.metadata.get("general.license")
    return new_manifest(
        "gguf",
        arch,
        config,
        entries,
        files,
        tokenizer_config,
        model_info,
        parameter_size=file.metadata.get("general.size_label") or format_parameter_count(n_params),
        quantization_level=quant,
        template=template,
        license=license,
    )


def _open(path: Path) -> GGUFFile:
    if not path.is_file():
        raise ImportFailed(f"{path}: no such file")
    if not is_gguf(path):
        raise ImportFailed(f"{path}: not a GGUF file (bad magic)")
    return open_gguf(path)


def _type_name(type_id: int) -> str:
    try:
        return QT(type_id).name
    except ValueError:
        return f"unknown type id {type_id}"


def _check_tensors(file: GGUFFile) -> list[int]:
    """Each tensor's size in bytes, once every type is supported and every tensor lies
    inside the file."""
    names = [(t.name, _type_name(t.type_id)) for t in file.tensors]
    unsupported = support.unsupported_tensor_types(names)
    if unsupported:
        raise ImportFailed(f"{file.path}: {support.describe_unsupported_types(unsupported)}")
    sizes = []
    for t in file.tensors:
        block, block_bytes = gguf.GGML_QUANT_SIZES[QT(t.type_id)]
        if block > 1 and (not t.dims or t.dims[0] % block):
            raise ImportFailed(
                f"{file.path}: corrupt GGUF: tensor {t.name} of shape {t.shape} "
                f"does not split into {QT(t.type_id).name} blocks"
            )
        n_bytes = t.n_elements // block * block_bytes
        if t.offset + n_bytes > file.size:
            raise ImportFailed(
                f"{file.path}: truncated (tensor {t.name} runs past the end of the file)"
            )
        sizes.append(n_bytes)
    return sizes


def _write_tensor(writer: BlobWriter, file: GGUFFile, t: TensorInfo, n_bytes: int) -> TensorEntry:
    qt = QT(t.type_id)
    data = file.tensor_bytes(t, n_bytes)
    if qt in PLAIN_TYPES:
        stored = data.view(PLAIN_TYPES[qt]).reshape(t.shape)
        return writer.tensor(t.name, stored, dtype=PLAIN_TYPES[qt], ggml_type=qt.name)
    if qt == QT.BF16:
        stored = data.view(np.uint16).reshape(t.shape)
        return writer.tensor(t.name, stored, dtype="bfloat16", ggml_type=qt.name)
    block, block_bytes = gguf.GGML_QUANT_SIZES[qt]
    rows = data.reshape(*t.shape[:-1], t.shape[-1] // block * block_bytes)
    return writer.tensor(t.name, rows, dtype="quantized", shape=t.shape, ggml_type=qt.name)


def _file_key(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


# (HF config, tokenizer.json bytes or None, tokenizer_config)
Metadata = tuple[dict, bytes | None, dict]
_METADATA_CACHE: dict[tuple, Metadata] = {}


def _derived_metadata(path: Path, key: tuple, file: GGUFFile | None = None) -> Metadata:
    """The file's ``Metadata``, cached by file identity ``key``."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return _metadata(path, key, file, pool).result()


def _metadata(
    path: Path, key: tuple, file: GGUFFile | None, pool: concurrent.futures.Executor
) -> concurrent.futures.Future[Metadata]:
    """The file's ``Metadata`` (copies of the cached one): the config, and every
    refusal, now; the tokenizer's conversion in ``pool``."""
    out: concurrent.futures.Future[Metadata] = concurrent.futures.Future()
    if key in _METADATA_CACHE:
        out.set_result(_copy(_METADATA_CACHE[key]))
        return out
    config, build = _parse_metadata(file or _open(path))

    def finish() -> Metadata:
        tokenizer_json, tokenizer_config = _built_tokenizer(path, build)
        if len(_METADATA_CACHE) >= 8:
            _METADATA_CACHE.pop(next(iter(_METADATA_CACHE)))
        encoded = tokenizer_json.encode() if tokenizer_json is not None else None
        _METADATA_CACHE[key] = (config, encoded, _jsonable(tokenizer_config))
        return _copy(_METADATA_CACHE[key])

    return pool.submit(finish)


def _copy(metadata: Metadata) -> Metadata:
    config, tokenizer_json, tokenizer_config = metadata
    return copy.deepcopy(config), tokenizer_json, copy.deepcopy(tokenizer_config)


def _parse_metadata(file: GGUFFile) -> tuple[dict, Callable[[], tuple[str | None, dict]]]:
    """The HF config, and the tokenizer's build (``gguftokenizer.tokenizer_job``), once
    the architecture and the tokenizer kind are known to be supported."""
    path = file.path
    config = hf_config(path, file.metadata, [t.name for t in file.tensors])
    config = _jsonable({k: v for k, v in config.items() if not k.startswith("_")})
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise ImportFailed(f"{path}: GGUF metadata gives no model type")
    problem = support.build_problem(model_type, support.transformers_classes())
    if problem is not None:
        raise ImportFailed(
            f"{path}: architecture {file.metadata['general.architecture']!r} cannot run: "
            f"{problem}; supported architectures: {', '.join(supported_architectures())}"
        )
    config.setdefault("architectures", [_architecture_class(model_type)])
    config.update(_unmapped(file.metadata, config))
    return config, _built_tokenizer(path, lambda: tokenizer_job(path, file.metadata))


def _built_tokenizer(path: Path, step: Callable[[], Any]) -> Any:
    """``step()``, its errors named as the tokenizer's."""
    try:
        return step()
    except ImportFailed as err:
        raise ImportFailed(f"{path}: {err}") from err
    except Exception as err:
        raise ImportFailed(f"{path}: cannot convert the GGUF tokenizer: {err}") from err


# Keys llama.cpp writes that transformers' GGUF config tables do not read, without
# which the model computes something else (gemma2's soft-capping, phi3's window).
UNMAPPED = {
    "gemma2.attn_logit_softcapping": "attn_logit_softcapping",
    "gemma2.final_logit_softcapping": "final_logit_softcapping",
    "phi3.attention.sliding_window": "sliding_window",
}


def _unmapped(metadata: Any, config: dict[str, Any]) -> dict[str, Any]:
    """``UNMAPPED``'s keys, and the head size where ``config`` has none: llama.cpp
    writes every family's (``attention.key_length``), transformers' tables read it for
    a few, and without it a Qwen3 config assumes 128 whatever the model's is."""
    out = {hf: _jsonable(metadata[key]) for key, hf in UNMAPPED.items() if key in metadata}
    key_length = f"{metadata.get('general.architecture')}.attention.key_length"
    if key_length in metadata and "head_dim" not in config:
        out["head_dim"] = int(metadata[key_length])
    return out


def _architecture_class(model_type: str) -> str:
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
        if isinstance(name, str):
            return name
    except ImportError:
        pass
    return "".join(p.capitalize() for p in model_type.split("_")) + "ForCausalLM"


def _model_info(file: GGUFFile, n_params: int) -> dict[str, Any]:
    """``/api/show`` model_info: every metadata key; big tokenizer arrays as null."""
    info: dict[str, Any] = {}
    for key, value in file.metadata.items():
        big = key.startswith(BIG_ARRAY_PREFIX) and isinstance(value, list | np.ndarray)
        info[key] = None if big else _jsonable(value)
    info["general.parameter_count"] = n_params
    return info


def _quantization_level(file: GGUFFile) -> str:
    ft = file.metadata.get("general.file_type")
    if isinstance(ft, int):
        try:
            return gguf.LlamaFileType(ft).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    counts = Counter(_type_name(t.type_id) for t in file.tensors)
    return counts.most_common(1)[0][0] if counts else "unknown"


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
