"""Push a model to an Ollama registry, as ``ollama push`` does (``server/upload.go``)::

    HEAD  /v2/<ns>/<model>/blobs/<digest>          200: the registry has it, skip
    POST  /v2/<ns>/<model>/blobs/uploads/          202, Location: <upload URL>
    PATCH <upload URL>   Content-Range: 0-<n-1>    the bytes; 202, Location: <next URL>
    PUT   <next URL>?digest=<digest>               201: the registry checked the digest
    PUT   /v2/<ns>/<model>/manifests/<tag>         the manifest, last

Only a model pulled from a registry can be pushed: omax publishes the very layers it
pulled (the registry manifest and small layers are kept as blobs; the GGUF is rebuilt
byte for byte from its skeleton and the zarr tensors, ``omax.sharding.gguflayout``),
so a pull back anywhere yields the same manifest and layer digests. The target is the
registry named by ``destination`` when given, else by the model's own name (Ollama's
way: ``omax cp`` a model to ``host/namespace/model:tag``, then push that name).

Errors: InvalidRequest for a model with no registry layers, OmaxError naming the step
for a registry that refuses or cannot be reached.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urljoin

import httpx

from omax.errors import InvalidRequest, OmaxError
from omax.sharding import gguflayout
from omax.sharding.blobs import BlobStore
from omax.sharding.importers.ollama import MEDIA
from omax.sharding.importers.registry import (
    MANIFEST_FILE,
    MANIFEST_TYPE,
    RegistryRef,
    changed_since_pull,
    check_scheme,
    layers_of,
    parse_ref,
)
from omax.sharding.importers.registry_http import (
    CHUNK,
    LayerProgress,
    check_status,
    http_client,
    short,
    talking,
)
from omax.sharding.manifest import Manifest


def push_registry(
    blobs: BlobStore,
    manifest: Manifest,
    target: str,
    insecure: bool = False,
    progress: Callable[[str], None] | None = None,
    on_layer: LayerProgress | None = None,
) -> None:
    """Publish ``manifest``'s registry layers and registry manifest as ``target``."""
    ref = parse_ref(target)
    check_scheme(ref, insecure, OmaxError)
    if MANIFEST_FILE not in manifest.files:
        raise InvalidRequest(
            "the model was not pulled from a registry, so omax keeps no Ollama layers to push"
        )
    raw = blobs.get(manifest.files[MANIFEST_FILE][0])
    layers = layers_of(raw)
    if changed := changed_since_pull(blobs, manifest, layers):
        raise InvalidRequest(
            f"the model's {', '.join(changed)} changed since it was pulled, and omax "
            "publishes only the layers it pulled"
        )
    report = on_layer or (lambda *args: None)
    with http_client() as client:
        for layer in layers:
            push_layer(client, ref, layer, _source(blobs, manifest, layer), insecure, report)
        if progress is not None:
            progress("pushing manifest")
        what = "pushing manifest"
        with talking(what, OmaxError):
            resp = client.put(
                ref.url(insecure, "manifests", ref.tag),
                content=raw,
                headers={"Content-Type": json.loads(raw).get("mediaType") or MANIFEST_TYPE},
            )
        check_status(resp, what, OmaxError)


def _source(blobs: BlobStore, manifest: Manifest, layer: dict[str, Any]) -> Iterable[bytes]:
    if layer.get("mediaType") == MEDIA + "model":
        return gguflayout.reassemble(blobs, manifest)
    return _blob_chunks(blobs, layer["digest"])


def _blob_chunks(blobs: BlobStore, digest: str) -> Iterator[bytes]:
    with blobs.open(digest) as f:
        while chunk := f.read(CHUNK):
            yield chunk


def push_layer(
    client: httpx.Client,
    ref: RegistryRef,
    layer: dict[str, Any],
    data: Iterable[bytes],
    insecure: bool,
    on_layer: LayerProgress,
) -> None:
    """Upload one layer unless the registry has it; the registry checks the digest."""
    digest, size = layer["digest"], layer["size"]
    status = f"pushing {short(digest)}"
    with talking(status, OmaxError):
        if client.head(ref.url(insecure, "blobs", digest)).status_code == 200:
            on_layer(status, digest, size, size)
            return
        on_layer(status, digest, size, 0)
        start = client.post(ref.url(insecure, "blobs", "uploads") + "/")
        check_status(start, status, OmaxError)
        if start.status_code == 201:  # mounted from another repository
            on_layer(status, digest, size, size)
            return
        url = _location(start)
        sent = client.patch(
            url,
            content=_counted(data, status, digest, size, on_layer),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
                "Content-Range": f"0-{size - 1}" if size else "0-0",
            },
        )
        check_status(sent, status, OmaxError)
        url = _location(sent) if _has_location(sent) else url
        done = client.put(
            url + ("&" if "?" in url else "?") + f"digest={digest}",
            headers={"Content-Type": "application/octet-stream", "Content-Length": "0"},
        )
        check_status(done, status, OmaxError)


def _has_location(resp: httpx.Response) -> bool:
    return "Docker-Upload-Location" in resp.headers or "Location" in resp.headers


def _location(resp: httpx.Response) -> str:
    """The upload URL an answer names, made absolute against the request's URL."""
    where = resp.headers.get("Docker-Upload-Location") or resp.headers.get("Location")
    if not where:
        raise OmaxError(f"registry answered {resp.status_code} with no upload location")
    return urljoin(str(resp.request.url), where)


def _counted(
    data: Iterable[bytes], status: str, digest: str, size: int, on_layer: LayerProgress
) -> Iterator[bytes]:
    sent = 0
    for chunk in data:
        if chunk:
            sent += len(chunk)
            on_layer(status, digest, size, sent)
            yield chunk


def is_store_url(destination: str) -> bool:
    """A destination that names an origin store (a path or an fsspec URL), not a
    registry model name."""
    if destination.startswith(("/", ".", "~")):
        return True
    return "://" in destination and not destination.startswith(("http://", "https://"))


def is_server_url(destination: str) -> bool:
    """``http(s)://host[:port]`` with no model path: another omax server."""
    for prefix in ("http://", "https://"):
        if destination.startswith(prefix):
            return "/" not in destination.removeprefix(prefix).rstrip("/")
    return False


def push_store(
    blobs: BlobStore,
    other: BlobStore,
    manifest: Manifest,
    digest: str,
    on_layer: LayerProgress | None = None,
) -> None:
    """Copy every blob of ``manifest`` and the manifest blob ``digest`` into ``other``,
    each verified on its way in; blobs ``other`` holds at their size are skipped. The
    caller names the model there last (its catalog), so a failed copy publishes nothing."""
    report = on_layer or (lambda *args: None)
    sizes = {**manifest.blob_sizes(), digest: len(manifest.to_json())}
    for blob, size in sorted(sizes.items()):
        status = f"pushing {short(blob)}"
        if not other.intact(blob, size):
            report(status, blob, size, 0)
            other.put_stream(_blob_chunks(blobs, blob), expected_digest=blob)
        report(status, blob, size, size)
