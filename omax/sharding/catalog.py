"""The catalog: ``name:tag`` -> model digest, size and modified time.

Stored in the origin store as a sequence of immutable generation documents,
``<root>/catalog/gen-<n:012d>.json``, each the whole catalog. The current catalog is
the highest generation. A change reads generation ``n``, computes the new document and
creates ``gen-<n+1>`` *exclusively*; if another writer created it first, the change
raises CatalogConflict and ``update`` retries on fresh state. So no update is ever lost
and readers never see a half-written document.

Exclusive create is truly atomic per backend:

- local filesystem: write a temporary file, then ``os.link`` it to the final name;
  ``link`` fails with EEXIST if the name exists and the content is complete before the
  name appears (works on NFSv3+ too, unlike O_EXCL on old NFS).
- S3 (s3fs): a single PUT with ``If-None-Match: *`` (``pipe_file(mode="create")``).
- memory:// (tests, one process): check-and-set under a process lock.

Other filesystems are refused with StoreError rather than given a racy catalog.
Old generations beyond ``KEEP`` are pruned after a successful write.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from omax.errors import CatalogConflict, InvalidRequest, ModelNotFound, StoreError
from omax.sharding.blobs import check_digest, open_fs
from omax.sharding.manifest import canonical_json

KEEP = 16
RETRIES = 64
GEN_RE = re.compile(r"gen-(\d{12})\.json$")
_MEMORY_LOCK = threading.Lock()

# Ollama's types/model/name.go: host/namespace/model:tag, defaults filled in.
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
_MAX = {"host": 350, "namespace": 80, "model": 80, "tag": 80}


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    digest: str
    size: int
    modified_at: str  # RFC 3339, UTC


def _valid_part(kind: str, part: str) -> bool:
    if not 1 <= len(part) <= _MAX[kind]:
        return False
    for i, c in enumerate(part):
        if c.isascii() and (c.isalnum() or c == "_"):
            continue
        if i == 0:
            return False
        if c == "-":
            continue
        if c == "." and kind != "namespace":
            continue
        if c == ":" and kind == "host":
            continue
        return False
    return True


def parse_name(name: str) -> tuple[str, str, str, str]:
    """Split ``[host/][namespace/]model[:tag]`` into its four parts, defaults filled in.

    Raises InvalidRequest for a name Ollama would reject.
    """
    if not isinstance(name, str) or not name or name.strip() != name:
        raise InvalidRequest(f"invalid model name {name!r}")
    rest, tag = name, DEFAULT_TAG
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
    parts = rest.split("/")
    if len(parts) > 3:
        raise InvalidRequest(f"invalid model name {name!r}: too many '/'")
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        (model,) = parts
    for kind, part in (("host", host), ("namespace", namespace), ("model", model), ("tag", tag)):
        if not _valid_part(kind, part):
            raise InvalidRequest(f"invalid model name {name!r}: bad {kind} {part!r}")
    return host, namespace, model, tag


def normalize_name(name: str) -> str:
    """The short display form Ollama lists: defaults omitted, tag always present.

    ``llama3`` -> ``llama3:latest``; ``library/x:1`` -> ``x:1``;
    ``hf.co/user/repo:Q4_K_M`` stays as is. Names compare case-insensitively.
    """
    host, namespace, model, tag = parse_name(name)
    if host == DEFAULT_HOST and namespace == DEFAULT_NAMESPACE:
        return f"{model}:{tag}"
    if host == DEFAULT_HOST:
        return f"{namespace}/{model}:{tag}"
    return f"{host}/{namespace}/{model}:{tag}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Catalog:
    """The catalog under a store URL. Safe for any number of concurrent writers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = open_fs(url)
        self.dir = f"{root}/catalog"
        protos = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        if "file" in protos or "local" in protos:
            self._kind = "local"
            os.makedirs(self.dir, exist_ok=True)
        elif "memory" in protos:
            self._kind = "memory"
        elif "s3" in protos or "s3a" in protos:
            self._kind = "s3"
        else:
            raise StoreError(
                f"{url}: no atomic exclusive create on {protos[0]!r}; cannot keep a catalog"
            )

    def read(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """``(generation, {name: {digest, size, modified_at}})``; generation 0 is empty."""
        for _ in range(RETRIES):
            gen = self._latest()
            if gen == 0:
                return 0, {}
            try:
                data = self.fs.cat_file(self._path(gen))
            except FileNotFoundError:
                continue  # pruned between list and read: list again
            doc = json.loads(data)
            return gen, doc["models"]
        raise StoreError(f"{self.url}: cannot read the catalog")

    def get(self, name: str) -> CatalogEntry:
        key = normalize_name(name)
        _, models = self.read()
        found = _lookup(models, key)
        if found is None:
            raise ModelNotFound(name)
        return CatalogEntry(name=found, **models[found])

    def list(self) -> builtins.list[CatalogEntry]:
        _, models = self.read()
        return [CatalogEntry(name=k, **v) for k, v in sorted(models.items())]

    def update(self, change: Callable[[dict[str, dict[str, Any]]], None]) -> int:
        """Apply ``change`` (mutates a copy of the models dict) by compare-and-swap,
        retrying on conflict; return the new generation. ``change`` may raise to abort."""
        for attempt in range(RETRIES):
            gen, models = self.read()
            change(models)
            try:
                self.swap(gen, models)
                return gen + 1
            except CatalogConflict:
                time.sleep(min(0.05, 0.001 * (attempt + 1)))
        raise CatalogConflict(f"{self.url}: catalog stayed contended after {RETRIES} tries")

    def swap(self, expected_gen: int, models: dict[str, dict[str, Any]]) -> None:
        """Write ``models`` as generation ``expected_gen + 1``; CatalogConflict if taken."""
        new = expected_gen + 1
        doc = canonical_json({"generation": new, "models": models})
        self._create_exclusive(self._path(new), doc)
        self._prune(new)

    def set(self, name: str, digest: str, size: int) -> None:
        key = normalize_name(name)
        check_digest(digest)

        def change(models: dict[str, dict[str, Any]]) -> None:
            old = _lookup(models, key)
            if old is not None:
                del models[old]
            models[key] = {"digest": digest, "size": int(size), "modified_at": now()}

        self.update(change)

    def delete(self, name: str) -> CatalogEntry:
        key = normalize_name(name)
        removed: builtins.list[CatalogEntry] = []

        def change(models: dict[str, dict[str, Any]]) -> None:
            removed.clear()
            old = _lookup(models, key)
            if old is None:
                raise ModelNotFound(name)
            removed.append(CatalogEntry(name=old, **models.pop(old)))

        self.update(change)
        return removed[0]

    def _path(self, gen: int) -> str:
        return f"{self.dir}/gen-{gen:012d}.json"

    def _generations(self) -> builtins.list[int]:
        try:
            names = (
                self.fs.ls(self.dir, detail=False, refresh=True)
                if self._kind == "s3"
                else self.fs.ls(self.dir, detail=False)
            )
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := GEN_RE.search(n)))

    def _latest(self) -> int:
        gens = self._generations()
        return gens[-1] if gens else 0

    def _create_exclusive(self, path: str, data: bytes) -> None:
        try:
            if self._kind == "local":
                tmp = f"{self.dir}/.tmp-{uuid.uuid4().hex}"
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)
                finally:
                    os.unlink(tmp)
            elif self._kind == "memory":
                with _MEMORY_LOCK:
                    if self.fs.exists(path):
                        raise FileExistsError(path)
                    self.fs.pipe_file(path, data)
            else:
                self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            raise CatalogConflict(f"catalog generation {path} already written") from None
        except OSError as err:
            raise StoreError(f"cannot write catalog {path}: {err}") from err

    def _prune(self, latest: int) -> None:
        for gen in self._generations():
            if gen <= latest - KEEP:
                with contextlib.suppress(FileNotFoundError, OSError):
                    self.fs.rm_file(self._path(gen))


def _lookup(models: dict[str, Any], key: str) -> str | None:
    if key in models:
        return key
    lower = key.lower()
    for k in models:
        if k.lower() == lower:
            return k
    return None
