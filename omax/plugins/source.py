"""Where a ModelActor's weights come from: the worker-local replica, through zarr.

``local_source(digest)`` runs inside a worker process: it finds the omax worker
plugin's local store, checks the replica is complete and returns the engine's
``ModelSpec`` plus a lazy iterator of ``RawTensor`` read through the zarr store, so
tensors stream into torch one at a time instead of being held twice. Every blob is
re-hashed as it is read; one that does not verify ends the load with DigestMismatch
after the worker plugin quarantined the replica's bad blobs (``damaged``), so the
scheduler fetches them again and retries the load instead of trusting the replica.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from omax.engine.spec import ModelSpec
from omax.errors import DigestMismatch, EngineError
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
    manifest = Manifest.from_json(blobs.get(digest))
    return spec_of(manifest, blobs), read_tensors(blobs, manifest)


def local_source(digest: str) -> tuple[ModelSpec, Iterator[RawTensor]]:
    """The model ``digest`` from this worker's complete local replica."""
    from distributed import get_worker

    from omax.plugins.worker import plugin_of

    plugin = plugin_of(get_worker())
    replicas = plugin.replicas
    assert replicas is not None
    if not replicas.is_complete(digest):
        raise EngineError(f"this worker holds no complete replica of {digest}")
    try:
        spec, tensors = store_source(replicas.store, digest)
    except DigestMismatch as err:
        raise plugin.damaged(digest, err) from err
    return spec, _checked(tensors, lambda err: plugin.damaged(digest, err))


def _checked(
    tensors: Iterator[RawTensor], damaged: Callable[[DigestMismatch], DigestMismatch]
) -> Iterator[RawTensor]:
    """``tensors``, with a blob that fails verification answered by ``damaged``."""
    try:
        yield from tensors
    except DigestMismatch as err:
        raise damaged(err) from err
