"""A stored model as the engine takes it: its ``ModelSpec`` and its tensors.

``store_source(blobs, digest)`` reads the manifest blob ``digest`` and returns the
engine's ``ModelSpec`` (config, tokenizer, template, defaults, pooling) plus a lazy
iterator of ``RawTensor`` read through the zarr store, so tensors stream into torch
one at a time instead of being held twice. Every blob is re-hashed as it is read: one
that does not verify raises DigestMismatch, possibly midway through the iteration.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from omax.engine.spec import ModelSpec
from omax.sharding.blobs import BlobStore
from omax.sharding.manifest import Manifest
from omax.sharding.tensors import RawTensor
from omax.sharding.zarrstore import read_tensors


def spec_of(manifest: Manifest, blobs: BlobStore) -> ModelSpec:
    """The engine's view of a manifest: config, tokenizer, template, defaults, pooling."""

    def text(name: str) -> str | None:
        entry = manifest.files.get(name)
        return blobs.get(entry[0]).decode() if entry else None

    pooling: dict[str, Any] | None = None
    pooling_json = text("1_Pooling/config.json")
    if pooling_json is not None:
        pooling = json.loads(pooling_json)
        st_config = text("sentence_bert_config.json")
        if st_config is not None:
            pooling.setdefault("max_seq_length", json.loads(st_config).get("max_seq_length"))
        pooling["normalize"] = "2_Normalize" in (text("modules.json") or "")
    return ModelSpec(
        config=dict(manifest.config),
        tokenizer_json=text("tokenizer.json") or "",
        tokenizer_config=dict(manifest.tokenizer_config),
        template=manifest.template,
        system=manifest.system,
        parameters=dict(manifest.parameters),
        pooling=pooling,
        format=manifest.format,  # type: ignore[arg-type]
    )


def store_source(blobs: BlobStore, digest: str) -> tuple[ModelSpec, Iterator[RawTensor]]:
    """The model whose manifest blob is ``digest`` in ``blobs``: spec and tensor stream."""
    manifest = Manifest.from_json(blobs.get(digest))
    return spec_of(manifest, blobs), read_tensors(blobs, manifest)
