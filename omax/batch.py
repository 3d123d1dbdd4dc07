"""Batch inference over Dask collections: ``omax.batch.generate`` and ``omax.batch.embed``.

    import dask.bag as db, omax
    answers = omax.batch.generate(db.from_sequence(prompts, npartitions=8),
                                  "smollm2:135m", options={"temperature": 0, "seed": 1})
    answers.compute()  # ["...", "...", Failed(...), ...] in the prompts' order

The input is a ``dask.bag.Bag`` or a ``dask.dataframe.Series`` of strings; the result is
a lazy collection of the same kind and partitioning, item for item in order. Each
partition is one Dask task (``omax-generate-…`` / ``omax-embed-…`` in the progress bar
and the dashboard) that runs on any worker of the omax cluster (docs/batch.md). The task opens a
``ClusterRuntime`` to the scheduler, exactly as a front door does, asks for the model
(loading it if needed: a model that cannot be resolved or loaded fails the task), then
sends its items concurrently, at most ``IN_FLIGHT`` requests per worker process. Each
item is routed like an HTTP request (the less busy of the model's loaded replicas, a
dead actor retried elsewhere), and an actor batches the items it receives together.
``omax.placement.loaded-replicas`` sets how many replicas share the work.

A failed item does not fail the computation: its place holds a ``Failed`` carrying the
error's type and message (an item that is not a string; an input the engine refuses).

Policy (validating items, cutting embedding requests, putting results back in order) is
the pure functions below; ``_run`` and the partition functions only execute it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from omax.errors import InvalidRequest, OmaxError

if TYPE_CHECKING:
    from distributed import Client

    from omax.engine.request import SamplingOptions
    from omax.serve.cluster import ClusterRuntime

__all__ = ["Failed", "embed", "generate"]

T = TypeVar("T")

IN_FLIGHT = 64  # requests one worker process keeps on the actors at once (an engine batches 16)
EMBED_CHUNK = 64  # texts in one embed request
COALESCE_S = 0.25  # a batch needs whole answers, not tokens as they come: fewer polls


@dataclass(frozen=True)
class Failed:
    """The result of an item that failed: ``type`` names the error class
    (``InvalidRequest``, ``EngineError``, …), ``error`` is its message."""

    error: str
    type: str = "OmaxError"

    @classmethod
    def of(cls, exc: BaseException) -> Failed:
        return cls(str(exc) or repr(exc), type(exc).__name__)


# ---- policy: plain data in, plain data out ------------------------------------------


def check_items(items: Sequence[Any]) -> list[Failed | None]:
    """Per item, a ``Failed`` when it cannot be sent (not a string), else None."""
    return [
        None
        if isinstance(x, str)
        else Failed(
            f"item {i} of the partition is a {type(x).__name__}, not a string", "InvalidRequest"
        )
        for i, x in enumerate(items)
    ]


def chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    """``indices`` cut into consecutive runs of at most ``size``."""
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


def merge(checked: Sequence[Failed | None], answers: dict[int, Any]) -> list[Any]:
    """The partition's results in its order: an item's ``Failed`` from ``check_items``
    or its answer."""
    return [c if c is not None else answers[i] for i, c in enumerate(checked)]


def sampling_options(options: dict[str, Any] | None) -> SamplingOptions:
    """Ollama ``options`` validated as the HTTP API validates them (InvalidRequest)."""
    from pydantic import ValidationError

    from omax.serve.convert import sampling
    from omax.serve.schemas import Options

    try:
        return sampling(Options.model_validate(options or {}))
    except ValidationError as e:
        raise InvalidRequest(f"invalid options: {e}") from None


# ---- the public functions -------------------------------------------------------------


def generate(
    prompts: Any, model: str, options: dict[str, Any] | None = None, client: Client | None = None
) -> Any:
    """Generate a completion for every prompt of a Bag or Series, lazily.

    Each prompt is sent as ``/api/generate`` sends it (the model's template applied);
    ``options`` are Ollama options for every item, validated now; with
    ``{"temperature": 0, "seed": 1}`` each answer is the one the prompt gets alone
    (a seed pins batch-invariant kernels). The result holds the response text of each
    item, or a ``Failed``. ``client`` (default: the current Dask client, if any) is used
    to check now that the model exists; without one the check happens at compute time.
    """
    sampling = sampling_options(options)
    _check_model(model, client)
    return _map(prompts, "omax-generate", _generate_partition, model, sampling)


def embed(texts: Any, model: str, client: Client | None = None, *, truncate: bool = True) -> Any:
    """Embed every text of a Bag or Series, lazily: a list of floats per item (the
    model's normalised embedding), or a ``Failed``. With ``truncate=False`` a text over
    the model's context fails alone instead of being cut. ``client`` as in ``generate``."""
    _check_model(model, client)
    return _map(texts, "omax-embed", _embed_partition, model, truncate)


def _map(collection: Any, token: str, fn: Callable[..., list[Any]], *args: Any) -> Any:
    """``fn`` over each partition of a Bag or a Series, keeping the kind and order."""
    import dask.bag as db

    if isinstance(collection, db.Bag):
        return collection.map_partitions(_on_list, fn, *args, token=token)
    if _is_series(collection):
        import pandas as pd

        meta = pd.Series([], dtype=object, name=collection.name)
        return collection.map_partitions(_on_series, fn, *args, meta=meta, token=token)
    kind = type(collection).__name__
    raise TypeError(f"omax.batch takes a dask.bag.Bag or a dask.dataframe.Series, not {kind}")


def _is_series(collection: Any) -> bool:
    try:
        import dask.dataframe as dd
    except ImportError:  # without the dataframe extra (pandas) it cannot be a Series
        return False
    return isinstance(collection, dd.Series)


def _on_list(items: Iterable[Any], fn: Callable[..., list[Any]], *args: Any) -> list[Any]:
    return fn(list(items), *args)


def _on_series(series: Any, fn: Callable[..., list[Any]], *args: Any) -> Any:
    import pandas as pd

    return pd.Series(fn(series.tolist(), *args), index=series.index, name=series.name, dtype=object)


def _check_model(model: str, client: Client | None) -> None:
    """Resolve ``model`` on the scheduler now (ModelNotFound) when a synchronous client
    is at hand; the partitions resolve it again when they run."""
    if client is None:
        from distributed import default_client

        try:
            client = default_client()
        except ValueError:
            return
    if client.asynchronous:
        return
    client.run_on_scheduler(_resolve_on_scheduler, model)


async def _resolve_on_scheduler(name: str, dask_scheduler: Any = None) -> str:
    from omax.plugins.scheduler import PLUGIN_NAME
    from omax.sharding.modelstore import ModelStore

    plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
    if plugin is None:
        raise OmaxError("this Dask cluster does not run the omax scheduler plugin")
    digest, _ = await asyncio.to_thread(lambda: ModelStore(plugin.cfg.store_url).resolve(name))
    return digest


# ---- the partition tasks ---------------------------------------------------------------


def _generate_partition(prompts: list[Any], model: str, sampling: SamplingOptions) -> list[Any]:
    return _run(_generate_all, prompts, model, sampling)


def _embed_partition(texts: list[Any], model: str, truncate: bool) -> list[Any]:
    return _run(_embed_all, texts, model, truncate)


def _run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(runtime, *args)`` on this worker's event loop.

    The task secedes from the worker's thread pool first: a model actor is started as
    a task too, and partitions waiting for a load while they held every thread of the
    worker chosen for it would wait forever. Seceded partitions all run at once; the
    requests they have in flight are bounded per worker process (``_gate``)."""
    from distributed import get_worker, secede
    from distributed.utils import sync

    try:
        worker = get_worker()
    except ValueError:
        raise OmaxError(
            "omax.batch collections are computed on an omax Dask cluster: "
            "connect a distributed.Client to it first"
        ) from None
    secede()

    async def main() -> T:
        async with _runtime(worker.scheduler.address) as runtime:
            return await fn(runtime, *args)

    return sync(worker.loop, main)


@contextlib.asynccontextmanager
async def _runtime(address: str) -> AsyncIterator[ClusterRuntime]:
    """A ``ClusterRuntime`` of this partition's own, on a client that is nobody's default."""
    from distributed import Client

    from omax.serve.cluster import ClusterRuntime

    client = await Client(  # type: ignore[misc]
        address, asynchronous=True, direct_to_workers=True, set_as_default=False
    )
    try:
        runtime = await ClusterRuntime.connect(client, coalesce=COALESCE_S)
    except BaseException:
        await client.close()
        raise
    try:
        yield runtime
    finally:
        await runtime.close()


_gates: dict[int, asyncio.Semaphore] = {}  # id(event loop) -> this process's gate


def _gate() -> asyncio.Semaphore:
    """The bound on requests in flight from this worker process, all partitions together."""
    loop = id(asyncio.get_running_loop())
    if loop not in _gates:
        _gates[loop] = asyncio.Semaphore(IN_FLIGHT)
    return _gates[loop]


async def _gated_gather(calls: list[Callable[[], Awaitable[T]]]) -> list[T]:
    gate = _gate()

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return await asyncio.gather(*(one(c) for c in calls))


async def _generate_all(
    runtime: ClusterRuntime, prompts: list[Any], model: str, sampling: SamplingOptions
) -> list[Any]:
    from omax.engine.request import GenerateRequest

    await runtime.load(model, None)  # unknown or unloadable: the task fails here
    checked = check_items(prompts)
    todo = [i for i, c in enumerate(checked) if c is None]

    async def one(i: int) -> str | Failed:
        request = GenerateRequest(model=model, prompt=prompts[i], options=sampling)
        parts = []
        try:
            async for chunk in runtime.generate(request):
                if chunk.error:
                    return Failed(chunk.error, "EngineError")
                parts.append(chunk.text)
        except Exception as e:  # the item's own failure; the others go on
            return Failed.of(e)
        return "".join(parts)

    answers = await _gated_gather([functools.partial(one, i) for i in todo])
    return merge(checked, dict(zip(todo, answers, strict=True)))


async def _embed_all(
    runtime: ClusterRuntime, texts: list[Any], model: str, truncate: bool
) -> list[Any]:
    """Texts go ``EMBED_CHUNK`` to a request; a request that fails is sent again one
    text at a time, so only the texts that fail alone carry the error."""
    from omax.engine.request import EmbedRequest

    await runtime.load(model, None)
    checked = check_items(texts)
    todo = [i for i, c in enumerate(checked) if c is None]

    async def some(idx: list[int]) -> list[list[float] | Failed]:
        request = EmbedRequest(model=model, inputs=tuple(texts[i] for i in idx), truncate=truncate)
        try:
            result = await runtime.embed(request)
        except Exception as e:
            if len(idx) == 1:
                return [Failed.of(e)]
            return [r for i in idx for r in await some([i])]
        return [list(v) for v in result.embeddings]

    parts = await _gated_gather([functools.partial(some, c) for c in chunks(todo, EMBED_CHUNK)])
    answers = [a for part in parts for a in part]
    return merge(checked, dict(zip(todo, answers, strict=True)))
