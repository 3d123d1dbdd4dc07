"""Pull a model from an Ollama registry (``registry.ollama.ai`` or any host speaking its
protocol) by the names Ollama accepts: ``llama3.2`` is
``registry.ollama.ai/library/llama3.2:latest``; ``library/llama3.2:1b`` and
``host:port/namespace/model:tag`` work too, as does an ``http://`` prefix.

The protocol (Ollama's ``server/images.go`` and ``download.go``)::

    GET  /v2/<namespace>/<model>/manifests/<tag>   Accept: application/vnd.docker...v2+json
    GET  /v2/<namespace>/<model>/blobs/<digest>    Range: bytes=<have>- to resume

The manifest lists layers by media type (``application/vnd.ollama.image.model``, a
GGUF; ``.template``, ``.params``, ``.system``, ``.license``, ``.messages``) plus a
config blob. Layers download into a staging folder laid out as an Ollama models folder
(``blobs/sha256-<hex>``; a partial download is ``...-partial`` and resumes with a
Range request, also on the next pull: ``registry_http.download``), each is checked
against its sha256, and the folder is handed to the ``ollama://`` importer. The omax
manifest then also keeps what a push needs to publish the same bytes again: the
registry manifest (``ollama/manifest.json``), every non-model layer and the config
(``ollama/blobs/<hex>``), and the GGUF's skeleton and layout (``omax.sharding.gguflayout``).

``insecure`` means plain HTTP, as in Ollama; an ``http://`` name needs it. Registry
authentication (Ollama signs a challenge with its key) is not spoken: a 401 says so.
Errors: ImportFailed naming the step (Ollama's wording where it has one, e.g.
"pull model manifest: file does not exist"), DigestMismatch for a layer whose bytes do
not hash to its digest (the bad download is removed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from omax.errors import DigestMismatch, ImportFailed, OmaxError
from omax.sharding import gguflayout
from omax.sharding.blobs import BlobStore, check_digest
from omax.sharding.catalog import normalize_name, parse_name
from omax.sharding.importers.common import BlobWriter
from omax.sharding.importers.ollama import MEDIA, import_ollama
from omax.sharding.importers.registry_http import (
    LayerProgress,
    check_status,
    download,
    http_client,
    short,
    talking,
)
from omax.sharding.manifest import Manifest

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
MANIFEST_FILE = "ollama/manifest.json"
LAYER_PREFIX = "ollama/blobs/"
UNSUPPORTED = ("adapter", "projector", "tensor", "draft")


@dataclass(frozen=True)
class RegistryRef:
    """A model name resolved to its registry: ``scheme://host/v2/namespace/model``."""

    scheme: str  # "https", or "http" when the name said so
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def name(self) -> str:
        """The local catalog name (Ollama's short form)."""
        return normalize_name(f"{self.host}/{self.namespace}/{self.model}:{self.tag}")

    def url(self, insecure: bool, *path: str) -> str:
        scheme = "http" if insecure else self.scheme
        return "/".join([f"{scheme}://{self.host}/v2", self.namespace, self.model, *path])


def parse_ref(ref: str) -> RegistryRef:
    """``[http(s)://][host/][namespace/]model[:tag]`` with Ollama's defaults."""
    scheme = "https"
    for prefix in ("https://", "http://"):
        if ref.startswith(prefix):
            scheme, ref = prefix[:-3], ref.removeprefix(prefix)
    host, namespace, model, tag = parse_name(ref)
    return RegistryRef(scheme, host, namespace, model, tag)


def check_scheme(ref: RegistryRef, insecure: bool, error: type[OmaxError] = ImportFailed) -> None:
    if ref.scheme == "http" and not insecure:
        raise error("insecure protocol http (pass insecure to allow it)")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return "sha256:" + h.hexdigest()


def staging_dir(blobs: BlobStore) -> Path:
    """Where downloads stage: beside a local store (so partials survive restarts),
    else a folder of the user's cache."""
    if blobs._local:
        return Path(blobs.root) / "registry-downloads"
    digest = hashlib.sha256(str(blobs.root).encode()).hexdigest()[:16]
    return Path("~/.cache/omax/registry-downloads").expanduser() / digest


def stale_downloads(blobs: BlobStore, older_than_s: float) -> list[tuple[Path, int]]:
    """``(path, bytes)`` of what abandoned pulls left in the staging folder (partial
    downloads a later pull would have resumed, their locks) and nothing wrote for
    ``older_than_s``."""
    folder = staging_dir(blobs) / "blobs"
    now = time.time()
    stale = []
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):  # a pull finished meanwhile
            st = path.stat()
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime >= older_than_s:
                stale.append((path, st.st_size))
    return stale


def fetch_manifest(client: httpx.Client, ref: RegistryRef, insecure: bool) -> bytes:
    what = "pull model manifest"
    with talking(what):
        resp = client.get(
            ref.url(insecure, "manifests", ref.tag), headers={"Accept": MANIFEST_TYPE}
        )
    check_status(resp, what)
    return resp.content


def layers_of(raw: bytes) -> list[dict[str, Any]]:
    """Every blob a manifest names (layers, then the config), checked."""
    try:
        doc = json.loads(raw)
        layers = [dict(layer) for layer in doc["layers"]]
        if doc.get("config", {}).get("digest"):
            layers.append(dict(doc["config"]))
        for layer in layers:
            check_digest(layer["digest"])
            layer["size"] = int(layer["size"])
    except (ValueError, KeyError, TypeError, OmaxError) as err:
        raise ImportFailed(f"pull model manifest: not a registry manifest: {err}") from err
    kinds = [str(layer.get("mediaType", "")).removeprefix(MEDIA) for layer in layers]
    if kinds.count("model") > 1:
        raise ImportFailed("pull model manifest: more than one model layer")
    if "model" not in kinds:
        raise ImportFailed(
            "pull model manifest: no GGUF model layer (safetensors pulls are not supported)"
        )
    if bad := sorted(set(kinds) & set(UNSUPPORTED)):
        raise ImportFailed(f"the model has {', '.join(bad)} layers, which omax cannot run")
    return layers


def changed_since_pull(
    blobs: BlobStore, manifest: Manifest, layers: list[dict[str, Any]]
) -> list[str]:
    """The fields of ``manifest`` that differ from what its registry layers gave at pull
    (``omax create`` FROM a pulled model shares its layers but not its fields)."""
    texts: dict[str, str] = {}
    for layer in layers:  # the last layer of a kind wins, as in the importer
        kind = str(layer.get("mediaType", "")).removeprefix(MEDIA)
        if kind in ("system", "params", "messages", "license"):
            data = blobs.get(layer["digest"]).decode()
            texts[kind] = data.replace("\r\n", "\n").replace("\r", "\n")  # as read_text
    license = texts.get("license", manifest.model_info.get("general.license") or "")
    pulled = {
        "system": texts.get("system", ""),
        "parameters": json.loads(texts["params"]) if "params" in texts else {},
        "messages": json.loads(texts["messages"]) if "messages" in texts else [],
        "license": license,
        "template": manifest.tokenizer_config.get("chat_template") or "",
    }
    now = {
        "system": manifest.system,
        "parameters": manifest.parameters,
        "messages": [dict(m) for m in manifest.messages],
        "license": manifest.license,
        "template": manifest.template,
    }
    return [key for key in pulled if pulled[key] != now[key]]


def import_registry(
    writer: BlobWriter,
    ref: str,
    staging: Path,
    insecure: bool = False,
    on_layer: LayerProgress | None = None,
    current: Manifest | None = None,
) -> Manifest:
    """Pull ``ref`` and return its omax manifest (blobs written through ``writer``).

    ``current`` is the model the store already holds under the name: when it came from
    the same registry manifest, nothing is downloaded and it is returned as is."""
    r = parse_ref(ref)
    check_scheme(r, insecure)
    report = on_layer or _as_progress(writer)
    writer.stage("pulling manifest")
    with http_client() as client:
        raw = fetch_manifest(client, r, insecure)
        layers = layers_of(raw)
        if current is not None and _up_to_date(writer.blobs, current, raw, layers):
            for layer in layers:
                report(
                    f"pulling {short(layer['digest'])}",
                    layer["digest"],
                    layer["size"],
                    layer["size"],
                )
            writer.stage("verifying sha256 digest")
            return current
        blobs_dir = staging / "blobs"
        blobs_dir.mkdir(parents=True, exist_ok=True)
        paths = {layer["digest"]: blobs_dir / layer["digest"].replace(":", "-") for layer in layers}
        for layer in layers:
            url = r.url(insecure, "blobs", layer["digest"])
            download(client, url, layer, paths[layer["digest"]], report)
    writer.stage("verifying sha256 digest")
    for digest, path in paths.items():
        if sha256_file(path) != digest:
            path.unlink(missing_ok=True)
            raise DigestMismatch(
                f"pulling {short(digest)}: digest mismatch, the download was removed"
            )
    try:
        return _import_staged(writer, r, raw, layers, paths, staging)
    finally:
        for path in paths.values():
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".lock").unlink(missing_ok=True)


def _up_to_date(
    blobs: BlobStore, current: Manifest, raw: bytes, layers: list[dict[str, Any]]
) -> bool:
    """Whether ``current`` is what pulling ``raw`` would give (same registry manifest,
    no field changed since)."""
    if current.files.get(MANIFEST_FILE, ("",))[0] != digest_of(raw):
        return False
    return not changed_since_pull(blobs, current, layers)


def _as_progress(writer: BlobWriter) -> LayerProgress:
    """Layer lines through the writer's plain progress, for callers without ``on_layer``."""

    def report(status: str, digest: str, total: int, completed: int) -> None:
        if writer.progress is not None:
            writer.progress(status, completed, total)

    return report


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _import_staged(
    writer: BlobWriter,
    r: RegistryRef,
    raw: bytes,
    layers: list[dict[str, Any]],
    paths: dict[str, Path],
    staging: Path,
) -> Manifest:
    """Import the verified staging folder, then record what a push needs."""
    mpath = staging / "manifests" / r.host / r.namespace / r.model / r.tag
    mpath.parent.mkdir(parents=True, exist_ok=True)
    mpath.write_bytes(raw)
    try:
        base = import_ollama(writer, f"{r.host}/{r.namespace}/{r.model}:{r.tag}", staging)
    finally:
        mpath.unlink(missing_ok=True)
    files = dict(base.files)
    files[MANIFEST_FILE] = writer.put_bytes(raw)
    for layer in layers:
        path = paths[layer["digest"]]
        if layer.get("mediaType") == MEDIA + "model":
            skeleton, layout = gguflayout.split(path, layer["digest"])
            files[gguflayout.SKELETON] = writer.put_bytes(skeleton)
            files[gguflayout.LAYOUT] = writer.put_bytes(layout)
        else:
            files[LAYER_PREFIX + layer["digest"].removeprefix("sha256:")] = writer.put_file(path)
    return Manifest(**{**base.__dict__, "files": files})
