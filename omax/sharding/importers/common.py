"""What every importer shares: a blob writer that counts written versus deduplicated
bytes and reports progress, the manifest a file import builds, and the report an
import ends with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omax.errors import StoreError
from omax.sharding.blobs import BlobStore
from omax.sharding.manifest import Manifest, TensorEntry
from omax.sharding.zarrstore import CHUNK_BYTES, write_tensor

# progress(status, completed, total): Ollama's progress triple (bytes, or 0/0 for a stage).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ImportReport:
    """How an import or create went. ``bytes_written`` are new blob bytes;
    ``bytes_deduplicated`` were already in the store (shared chunks, copies)."""

    name: str
    digest: str
    size: int
    bytes_written: int
    bytes_deduplicated: int
    blobs_written: int
    blobs_deduplicated: int
    seconds: float
    source: str = ""


class BlobWriter:
    """Writes blobs for one import, counting what was new and what was shared."""

    def __init__(
        self,
        blobs: BlobStore,
        progress: Progress | None = None,
        total: int = 0,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.blobs = blobs
        self.chunk_bytes = chunk_bytes
        self.progress = progress
        self.total = total
        self.done = 0
        self.bytes_written = 0
        self.bytes_deduplicated = 0
        self.blobs_written = 0
        self.blobs_deduplicated = 0
        self.status = "importing"

    def count(self, nbytes: int, created: bool) -> None:
        if created:
            self.bytes_written += nbytes
            self.blobs_written += 1
        else:
            self.bytes_deduplicated += nbytes
            self.blobs_deduplicated += 1

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self.progress is not None:
            self.progress(self.status, self.done, max(self.total, self.done))

    def stage(self, status: str) -> None:
        self.status = status
        if self.progress is not None:
            self.progress(status, 0, 0)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        digest, created = self.blobs.put_stream([data])
        self.count(len(data), created)
        return digest, len(data)

    def put_file(self, path: Path) -> tuple[str, int]:
        try:
            digest, created = self.blobs.put_file(path)
        except StoreError as err:
            raise StoreError(f"{path.name}: {err}") from err
        size = path.stat().st_size
        self.count(size, created)
        return digest, size

    def tensor(self, name: str, array: np.ndarray, **kwargs) -> TensorEntry:
        kwargs.setdefault("chunk_bytes", self.chunk_bytes)
        try:
            entry = write_tensor(self.blobs, name, array, on_chunk=self.count, **kwargs)
        except StoreError as err:
            raise StoreError(f"tensor {name}: {err}") from err
        self.advance(int(array.nbytes))
        return entry


def new_manifest(
    format: str,
    family: str,
    config: dict[str, Any],
    tensors: list[TensorEntry],
    files: dict[str, tuple[str, int]],
    tokenizer_config: dict[str, Any],
    model_info: dict[str, Any],
    parameter_size: str,
    quantization_level: str,
    template: object = "",
    license: object = "",
) -> Manifest:
    """The manifest of a model imported from its weight files, with Ollama's
    ``details``. A ``template`` or ``license`` that is not a string counts as none."""
    return Manifest(
        format=format,
        family=family,
        config=config,
        tensors=tuple(tensors),
        files=files,
        tokenizer_config=tokenizer_config,
        template=template if isinstance(template, str) else "",
        license=license if isinstance(license, str) else "",
        model_info=model_info,
        details={
            "format": format,
            "family": family,
            "families": [family],
            "parameter_size": parameter_size,
            "quantization_level": quantization_level,
            "parent_model": "",
        },
    )
