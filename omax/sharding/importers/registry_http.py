"""HTTP with an Ollama registry, for pulls and pushes alike: the client, transport
errors and failed answers turned into ``OmaxError`` in Ollama's words, Ollama's
per-layer progress lines, and the resumable download of one layer.

A layer downloads to ``<dest>-partial`` and is renamed to ``dest`` once it has all its
bytes; an interrupted download resumes with a Range request, also on the next pull.
Whether the bytes hash to the layer's digest is the caller's to check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from omax.errors import ImportFailed, OmaxError

ATTEMPTS = 3  # per layer and pull; a later pull resumes from the partial file
CHUNK = 1 << 20

# on_layer(status, digest, total, completed): Ollama's per-layer progress line.
LayerProgress = Callable[[str, str, int, int], None]


def short(digest: str) -> str:
    """The 12 hex digits Ollama's progress lines name a layer by."""
    return digest.removeprefix("sha256:")[:12]


def http_client() -> httpx.Client:
    from omax import __version__

    return httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(60.0, connect=10.0),
        headers={"User-Agent": f"omax/{__version__}"},
    )


@contextlib.contextmanager
def talking(what: str, error: type[OmaxError] = ImportFailed) -> Iterator[None]:
    """Turn transport failures into ``error`` naming the step and the address."""
    try:
        yield
    except httpx.HTTPError as err:
        where = ""
        with contextlib.suppress(RuntimeError):  # no request attached
            where = f"{err.request.method} {err.request.url}: "
        raise error(f"{what}: {where}{err or type(err).__name__}") from err


def check_status(resp: httpx.Response, what: str, error: type[OmaxError] = ImportFailed) -> None:
    """Raise ``error`` for a failed answer, in Ollama's words where it has them."""
    if resp.status_code < 400:
        return
    if resp.status_code == 404:
        raise error(f"{what}: file does not exist")
    if resp.status_code == 401:
        raise error(f"{what}: unauthorized: omax does not authenticate to registries")
    body = resp.read()[:300].decode("utf-8", "replace")
    raise error(f"{what}: {resp.status_code}: {body}")


def download(
    client: httpx.Client, url: str, layer: dict[str, Any], dest: Path, on_layer: LayerProgress
) -> None:
    """Download ``layer`` from ``url`` to ``dest``, resuming ``dest-partial`` with a
    Range request; up to ``ATTEMPTS`` tries, then ImportFailed (the partial stays for
    the next pull). Two pulls of one layer take turns (a lock file), so neither
    appends to the other's partial."""
    digest, size = layer["digest"], layer["size"]
    status = f"pulling {short(digest)}"
    with _exclusive(dest.with_name(dest.name + ".lock")):
        if dest.exists():
            on_layer(status, digest, size, size)
            return
        partial = dest.with_name(dest.name + "-partial")
        last: Exception | None = None
        for _ in range(ATTEMPTS):
            have = partial.stat().st_size if partial.exists() else 0
            if have > size:
                partial.unlink()
                have = 0
            on_layer(status, digest, size, have)
            if have == size:
                break
            try:
                _get_range(client, url, partial, have, status, size, on_layer, digest)
            except (httpx.TransportError, httpx.StreamError) as err:
                last = err
        else:
            have = partial.stat().st_size if partial.exists() else 0
            if have != size:
                raise ImportFailed(
                    f"{status}: download interrupted at {have} of {size} bytes ({last}); "
                    "pull again to resume"
                )
        partial.rename(dest)


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    import fcntl

    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _get_range(
    client: httpx.Client,
    url: str,
    partial: Path,
    have: int,
    status: str,
    size: int,
    on_layer: LayerProgress,
    digest: str,
) -> None:
    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", url, headers=headers) as resp:
        if resp.status_code == 416:  # the partial is not a prefix we can extend
            partial.unlink(missing_ok=True)
            return
        check_status(resp, status)
        if resp.status_code != 206:
            have = 0  # the server ignored the Range: start over
        with open(partial, "ab" if have else "wb") as f:
            for chunk in resp.iter_bytes(CHUNK):
                f.write(chunk)
                have += len(chunk)
                on_layer(status, digest, size, min(have, size))
