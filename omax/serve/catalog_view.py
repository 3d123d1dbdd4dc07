"""The model store seen through Ollama's API: tags rows, show pages, progress streams.

Pure translation from ``omax.sharding.modelstore.ModelStore`` and ``Manifest`` to the
``omax.serve.runtime`` types; blocking calls run in threads at the caller.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from omax.config import settings
from omax.errors import ModelNotFound, OmaxError
from omax.serve.runtime import CreateRequest, ModelDetails, ModelInfo, Progress, ShowInfo

EMBEDDING_ARCHITECTURES = ("BertModel", "XLMRobertaModel", "NomicBertModel", "MPNetModel")


def capabilities(manifest: Any) -> tuple[str, ...]:
    archs = tuple(manifest.config.get("architectures") or ())
    if any(a in EMBEDDING_ARCHITECTURES for a in archs) or "modules.json" in manifest.files:
        return ("embedding",)
    caps = ["completion"]
    if "tools" in (manifest.template or ""):
        caps.append("tools")
    return tuple(caps)


def details(manifest: Any) -> ModelDetails:
    d = manifest.details or {}
    family = d.get("family") or manifest.family
    return ModelDetails(
        format=d.get("format") or manifest.format,
        family=family,
        families=tuple(d.get("families") or (family,)),
        parameter_size=d.get("parameter_size", ""),
        quantization_level=d.get("quantization_level", ""),
        parent_model=d.get("parent_model", ""),
    )


def _info(entry: Any, manifest: Any) -> ModelInfo:
    return ModelInfo(
        name=entry.name,
        digest=entry.digest,
        size=entry.size,
        modified_at=entry.modified_at,
        details=details(manifest),
    )


def list_models(store: Any) -> list[ModelInfo]:
    out = []
    for entry in store.list():
        try:
            out.append(_info(entry, store.manifest(entry.digest)))
        except OmaxError:
            continue  # a damaged manifest must not hide every other model
    return out


def model_info(store: Any, name: str) -> ModelInfo:
    entry = store.catalog.get(name)
    return _info(entry, store.manifest(entry.digest))


def parameters_text(parameters: dict[str, Any]) -> str:
    lines = []
    for key, value in sorted(parameters.items()):
        for v in value if isinstance(value, list | tuple) else [value]:
            lines.append(f"{key:<30} {json.dumps(v) if isinstance(v, str) else v}")
    return "\n".join(lines)


def show(store: Any, name: str) -> ShowInfo:
    entry = store.catalog.get(name)
    manifest = store.manifest(entry.digest)
    return ShowInfo(
        info=_info(entry, manifest),
        modelfile=store.modelfile(name),
        parameters=parameters_text(manifest.parameters),
        template=manifest.template,
        system=manifest.system,
        license=manifest.license,
        model_info=dict(manifest.model_info),
        capabilities=capabilities(manifest),
        messages=tuple(manifest.messages),
    )


async def _progress_of(work: Callable[[Callable[..., None]], Any]) -> AsyncIterator[Progress]:
    """Run ``work(progress)`` in a thread and yield what it reports as it happens."""
    queue: asyncio.Queue[Progress | BaseException | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def report(
        status: str,
        digest: str | None = None,
        total: int | None = None,
        completed: int | None = None,
    ) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, Progress(status, digest, total, completed))

    async def run() -> None:
        try:
            await asyncio.to_thread(work, report)
            queue.put_nowait(None)
        except BaseException as e:
            queue.put_nowait(e)

    task = asyncio.create_task(run())
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if not task.done():
            await asyncio.shield(task)


def _forward(report: Callable[..., None]) -> Callable[[str, int, int], None]:
    """Adapt the store's ``progress(status, done, total)`` to Ollama's progress lines."""

    def progress(status: str, done: int, total: int) -> None:
        if status != "success":  # the stream's own last line says success
            report(status, None, total or None, done if total else None)

    return progress


async def create(store: Any, request: CreateRequest) -> AsyncIterator[Progress]:
    def work(report: Callable[..., None]) -> None:
        # The first line waits for the store's first progress: a model it refuses
        # (an architecture or tensor type omax cannot run) fails before any line is
        # sent, so the client gets a 400 even on a stream.
        started = False

        def first(status: str, *args: Any) -> None:
            nonlocal started
            if not started:
                started = True
                report("gathering model components")
            report(status, *args)

        result = store.create(
            request.model,
            from_=request.from_,
            files=request.files or None,
            template=request.template,
            system=request.system,
            parameters=request.parameters or None,
            messages=list(request.messages) or None,
            license=request.license,
            progress=_forward(first),
            import_roots=settings().import_roots,
        )
        first(dedup_status(result))

    async for p in _progress_of(work):
        yield p
    yield Progress("success")


def dedup_status(result: Any) -> str:
    """The line an import ends with: new bytes against bytes the store already held
    (blobs shared with other models, including a ``from`` model's whole weights)."""
    from omax.units import fmt_bytes

    shared = max(result.size - result.bytes_written, result.bytes_deduplicated)
    return f"wrote {fmt_bytes(result.bytes_written)} of new blobs, {fmt_bytes(shared)} deduplicated"


async def pull(store: Any, name: str, insecure: bool = False) -> AsyncIterator[Progress]:
    """Pull a model: ``ollama://name`` imports from the local Ollama folder,
    ``hf.co/...`` from the Hugging Face hub, any other name from the Ollama registry it
    names (``insecure``: plain HTTP). A model the store holds that did not come from a
    registry (imported from a file, created) is verified and reported complete."""
    yield Progress("pulling manifest")

    def work(report: Callable[..., None]) -> None:
        if name.startswith(("ollama://", "hf.co/", "huggingface.co/")):
            result = store.pull(name, progress=_forward(report))
            report(dedup_status(result))
            return
        local = _local_only(store, name)
        if local is None:
            store.pull(name, progress=_forward_registry(report), insecure=insecure, on_layer=report)
            return
        for blob, size in sorted(local.blob_sizes().items()):
            report(f"pulling {blob.split(':')[1][:12]}", blob, size, size)
        report("verifying sha256 digest")
        report("writing manifest")

    async for p in _progress_of(work):
        yield p
    yield Progress("success")


def local_name(ref: str) -> str:
    """The catalog name a pull of ``ref`` stores the model under."""
    if ref.startswith(("http://", "https://")):
        from omax.sharding.importers.registry import parse_ref

        return parse_ref(ref).name
    return ref.removeprefix("ollama://")


def _local_only(store: Any, name: str) -> Any:
    """The manifest of ``name`` when the store holds it from anywhere but a registry;
    None when it is absent or was pulled from a registry (then pull it again)."""
    from omax.sharding.importers.registry import MANIFEST_FILE

    try:
        _, manifest = store.resolve(local_name(name))
    except ModelNotFound:
        return None
    return None if MANIFEST_FILE in manifest.files else manifest


def _forward_registry(report: Callable[..., None]) -> Callable[[str, int, int], None]:
    """``_forward`` less the first "pulling manifest", which ``pull`` has sent."""
    forward = _forward(report)

    def progress(status: str, done: int, total: int) -> None:
        if status != "pulling manifest":
            forward(status, done, total)

    return progress


async def push(
    store: Any, name: str, destination: str | None, insecure: bool = False
) -> AsyncIterator[Progress]:
    """Push ``name`` to the registry ``destination`` (or its own name) names, layer by
    layer as it was pulled, or copy it into the store URL ``destination`` names."""
    yield Progress("retrieving manifest")

    def work(report: Callable[..., None]) -> None:
        store.push(name, destination, insecure=insecure, progress=report, on_layer=report)

    async for p in _progress_of(work):
        yield p
    yield Progress("success")
