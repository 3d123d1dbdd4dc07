"""Model manifests: everything needed to rebuild a model, as canonical JSON.

A manifest names the architecture config (Hugging Face style, so the engine can build
a transformers model from it), the tokenizer, chat template, defaults and every tensor
with its chunk blobs. Its canonical JSON (sorted keys, no whitespace, UTF-8) is itself
stored as a blob, and that blob's digest is the model's digest. Two manifests with the
same content therefore have the same digest, and a manifest is never edited in place:
``with_changes`` returns a new one that shares every tensor blob.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from omax.errors import InvalidRequest

SCHEMA = "omax.manifest.v1"
FORMATS = ("gguf", "safetensors")
CHANGEABLE = ("system", "template", "parameters", "messages", "license")


@dataclass(frozen=True)
class TensorEntry:
    """One tensor stored as a zarr v3 array of chunk blobs.

    ``shape`` and ``dtype`` are the logical tensor (numpy order; ``dtype`` is
    ``"quantized"`` for GGUF block types, ``"bfloat16"`` for bf16). ``stored_shape`` and
    ``stored_dtype`` describe the zarr array actually kept: uint8 raw blocks for
    quantised tensors, uint16 for bfloat16. ``chunks`` maps a zarr chunk key
    (``"c/0/0"``) to ``(blob digest, blob size)``; ``codec`` is ``"raw"`` or ``"zstd"``.
    ``nbytes`` is the unpadded, uncompressed size of the stored array.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    stored_shape: tuple[int, ...]
    stored_dtype: str
    chunk_shape: tuple[int, ...]
    chunks: dict[str, tuple[str, int]]
    nbytes: int
    codec: str = "raw"
    ggml_type: str | None = None

    @property
    def chunk_grid(self) -> tuple[int, ...]:
        return tuple(-(-s // c) for s, c in zip(self.stored_shape, self.chunk_shape, strict=True))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunks"] = {k: list(v) for k, v in self.chunks.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorEntry:
        return cls(
            name=d["name"],
            shape=tuple(d["shape"]),
            dtype=d["dtype"],
            stored_shape=tuple(d["stored_shape"]),
            stored_dtype=d["stored_dtype"],
            chunk_shape=tuple(d["chunk_shape"]),
            chunks={k: (v[0], int(v[1])) for k, v in d["chunks"].items()},
            nbytes=int(d["nbytes"]),
            codec=d.get("codec", "raw"),
            ggml_type=d.get("ggml_type"),
        )


@dataclass(frozen=True)
class Manifest:
    """A model. Field meanings follow Ollama where Ollama has the concept.

    - ``config``: Hugging Face ``config.json`` content (model_type, architectures, ...).
    - ``files``: extra files by relative name -> ``(digest, size)``; always
      ``tokenizer.json`` when the model has a tokenizer, plus e.g. ``modules.json`` and
      ``1_Pooling/config.json`` for sentence-transformers models.
    - ``tokenizer_config``: bos/eos/pad/unk tokens, ``add_bos_token``, ``chat_template``.
    - ``template``: the chat template (jinja) the engine renders prompts with.
    - ``parameters``: default Ollama options (``stop`` is a list, numbers are numbers).
    - ``model_info``: ``/api/show`` ``model_info`` (``general.architecture``, ...).
    - ``details``: ``/api/tags`` details (format, family, parameter_size, ...).
    """

    format: str
    family: str
    config: dict[str, Any]
    tensors: tuple[TensorEntry, ...]
    files: dict[str, tuple[str, int]] = field(default_factory=dict)
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    template: str = ""
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: tuple[dict[str, Any], ...] = ()
    license: str = ""
    model_info: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InvalidRequest(f"unknown model format {self.format!r}")
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            raise InvalidRequest("manifest has duplicate tensor names")

    @property
    def tokenizer(self) -> str | None:
        """Digest of ``tokenizer.json``, or None."""
        entry = self.files.get("tokenizer.json")
        return entry[0] if entry else None

    def tensor(self, name: str) -> TensorEntry:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def blob_digests(self) -> set[str]:
        """Every blob this manifest references (not including itself)."""
        out = {d for d, _ in self.files.values()}
        for t in self.tensors:
            out.update(d for d, _ in t.chunks.values())
        return out

    def blob_sizes(self) -> dict[str, int]:
        out = {d: s for d, s in self.files.values()}
        for t in self.tensors:
            out.update(t.chunks.values())
        return out

    @property
    def total_size(self) -> int:
        """Bytes of every distinct blob the model needs, its manifest included."""
        return sum(self.blob_sizes().values()) + len(self.to_json())

    def with_changes(self, **changes: Any) -> Manifest:
        """A new manifest with only ``system``, ``template``, ``parameters``,
        ``messages`` or ``license`` changed; tensors and files are shared."""
        bad = set(changes) - set(CHANGEABLE)
        if bad:
            raise InvalidRequest(f"cannot change {sorted(bad)} of an existing model")
        changes = {k: v for k, v in changes.items() if v is not None}
        if "messages" in changes:
            changes["messages"] = tuple(dict(m) for m in changes["messages"])
        if "parameters" in changes:
            changes["parameters"] = dict(changes["parameters"])
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["tensors"] = [t.to_dict() for t in self.tensors]
        d["files"] = {k: list(v) for k, v in self.files.items()}
        d["messages"] = [dict(m) for m in self.messages]
        return d

    def to_json(self) -> bytes:
        """Canonical JSON: sorted keys, no whitespace, UTF-8. Its hash is the model digest."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        try:
            d = json.loads(data)
        except ValueError as err:
            raise InvalidRequest(f"manifest is not JSON: {err}") from err
        if d.get("schema") != SCHEMA:
            raise InvalidRequest(f"unknown manifest schema {d.get('schema')!r}")
        return cls(
            format=d["format"],
            family=d["family"],
            config=d["config"],
            tensors=tuple(TensorEntry.from_dict(t) for t in d["tensors"]),
            files={k: (v[0], int(v[1])) for k, v in d.get("files", {}).items()},
            tokenizer_config=d.get("tokenizer_config", {}),
            template=d.get("template", ""),
            system=d.get("system", ""),
            parameters=d.get("parameters", {}),
            messages=tuple(d.get("messages", ())),
            license=d.get("license", ""),
            model_info=d.get("model_info", {}),
            details=d.get("details", {}),
        )


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def format_parameter_count(n: int) -> str:
    """Ollama style: 135M, 1.2B, 22.7M."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            value = n / scale
            text = f"{value:.1f}".rstrip("0").rstrip(".") if value < 100 else f"{value:.0f}"
            return text + unit
    return str(n)
