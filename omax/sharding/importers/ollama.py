"""Import a model from a user's Ollama models folder (``~/.ollama/models`` or
``$OLLAMA_MODELS``): ``manifests/<registry>/<namespace>/<model>/<tag>`` names layers
stored as ``blobs/sha256-<hex>``.

The model layer (a GGUF) goes through the GGUF importer; the system, params, messages
and license layers become manifest fields. Ollama's template layer is a Go template,
which the engine cannot render: it is kept as the file ``ollama/template`` and the
GGUF's own jinja chat template stays the model's template. Every layer is hash-checked
against its digest before use.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omax.errors import ImportFailed
from omax.sharding.catalog import parse_name
from omax.sharding.importers.common import BlobWriter
from omax.sharding.importers.gguf import import_gguf
from omax.sharding.manifest import Manifest

MEDIA = "application/vnd.ollama.image."


def models_dir() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS", "~/.ollama/models")).expanduser()


def manifest_path(root: Path, ref: str) -> Path:
    host, namespace, model, tag = parse_name(ref.removeprefix("ollama://"))
    return root / "manifests" / host / namespace / model / tag


def _layer_path(root: Path, digest: str) -> Path:
    path = root / "blobs" / digest.replace(":", "-")
    if not path.exists():
        raise ImportFailed(f"{path}: Ollama blob missing")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    if "sha256:" + h.hexdigest() != digest:
        raise ImportFailed(f"{path}: Ollama blob does not match its digest")
    return path


def import_ollama(writer: BlobWriter, ref: str, root: Path | None = None) -> Manifest:
    """Import ``ref`` (``llama3.2:1b``, ``ollama://user/model:tag``) from ``root``."""
    root = root or models_dir()
    path = manifest_path(root, ref)
    try:
        doc = json.loads(path.read_text())
        layers = {layer["mediaType"].removeprefix(MEDIA): layer for layer in doc["layers"]}
    except FileNotFoundError:
        raise ImportFailed(f"{path}: no such Ollama model") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ImportFailed(f"{path}: corrupt Ollama manifest: {err}") from err
    if "model" not in layers:
        raise ImportFailed(f"{path}: no model layer")
    if "adapter" in layers or "projector" in layers:
        raise ImportFailed(f"{path}: adapters and projectors are not supported")
    base = import_gguf(writer, _layer_path(root, layers["model"]["digest"]))

    def text(kind: str) -> str | None:
        layer = layers.get(kind)
        return _layer_path(root, layer["digest"]).read_text() if layer else None

    params: dict[str, Any] | None = None
    if (raw := text("params")) is not None:
        params = json.loads(raw)
    messages = json.loads(raw) if (raw := text("messages")) is not None else None
    files = dict(base.files)
    if (template := text("template")) is not None:
        files["ollama/template"] = writer.put_bytes(template.encode())
    changed = base.with_changes(
        system=text("system"), parameters=params, messages=messages, license=text("license")
    )
    return Manifest(**{**changed.__dict__, "files": files})
