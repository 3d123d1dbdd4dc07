"""omax from a notebook: ``omax.connect()`` starts or joins a cluster and drives it.

    import omax
    om = omax.connect()                        # an embedded cluster, as `omax serve` starts
    om = omax.connect("tcp://scheduler:8786")  # or a running one (helm/, docs/operations.md)
    om.pull("smollm2:135m")                    # progress bars; replicates to the target
    om.list()                                  # a table in Jupyter
    om.chat("smollm2:135m", "Why is the sky blue?", num_predict=40)
    om.embed("all-minilm", ["a text", "another"])   # a numpy array, one row per text
    om.replication()                           # which worker holds which model, how far
    om.close()

``Omax`` is a thin synchronous face on ``ClusterRuntime``, the runtime the front door
serves HTTP with: the same routing, loading and replication, without the HTTP. The
runtime is asynchronous and a notebook's own event loop is busy running the cell, so
it lives on a private event loop in a background thread; each call waits for its
coroutine there (``_Loop``). Streams (pull, create, a streamed chat) come back one
item per hop. What the calls return is in omax.notebook_views.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from omax.engine.request import EmbedRequest, GenerateRequest, Message, SamplingOptions
from omax.notebook_views import ModelList, ProgressLines, Replication, Reply, replication
from omax.serve.runtime import CreateRequest, Health, Progress

if TYPE_CHECKING:
    import numpy as np
    from distributed import LocalCluster

    from omax.serve.cluster import ClusterRuntime

__all__ = ["Omax", "connect"]

T = TypeVar("T")


class _Loop:
    """An asyncio event loop on a daemon thread, and a way to wait on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="omax-notebook")
        self.thread.daemon = True
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        """A synchronous iterator over ``stream``, which runs on the loop. Left early,
        the stream is closed on the loop (a generation is cancelled on its actor)."""
        try:
            while True:
                try:
                    yield self.run(_anext(stream))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                self.run(aclose())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _anext(stream: AsyncIterator[T]) -> T:
    return await stream.__anext__()


def connect(
    address: str | None = None, *, workers: int | None = None, dashboard: str = ":0"
) -> Omax:
    """Join the omax cluster whose scheduler is at ``address``; with none, start an
    embedded one on this machine (``workers`` workers, default one per GPU or one CPU
    worker; its dashboard on 127.0.0.1, a free port unless ``dashboard`` says) with the
    bundled demo model imported, as ``omax serve`` does. ``close()`` stops what it
    started."""
    loop = _Loop()
    try:
        runtime, cluster = loop.run(_start(address, workers, dashboard))
    except BaseException:
        loop.stop()
        raise
    return Omax(loop, runtime, cluster)


async def _start(
    address: str | None, workers: int | None, dashboard: str
) -> tuple[ClusterRuntime, LocalCluster | None]:
    from omax.serve.cluster import ClusterRuntime

    cluster = None
    if address is None:
        from omax.embedded import start_cluster

        cluster = await start_cluster(workers, dashboard)
        address = cluster.scheduler_address
    try:
        runtime = await ClusterRuntime.connect(address)
        if cluster is not None:
            from omax.cli.serve import _ensure_demo

            await _ensure_demo(runtime)
    except BaseException:
        if cluster is not None:
            await cluster.close()  # type: ignore[misc]
        raise
    return runtime, cluster


def _messages(messages: str | Sequence[Message | dict[str, Any]]) -> tuple[Message, ...]:
    if isinstance(messages, str):
        return (Message("user", messages),)
    return tuple(
        m if isinstance(m, Message) else Message(m["role"], m.get("content", "")) for m in messages
    )


class Omax:
    """A connection to an omax cluster (``omax.connect()`` makes one)."""

    def __init__(self, loop: _Loop, runtime: ClusterRuntime, cluster: LocalCluster | None) -> None:
        self._loop = loop
        self.runtime = runtime
        self.cluster = cluster  # the embedded cluster this connection started, if any

    # ---- the cluster ---------------------------------------------------------------

    @property
    def scheduler(self) -> str:
        return str(self.runtime.client.scheduler.address)

    @property
    def dashboard_link(self) -> str:
        """Dask's dashboard (its status page)."""
        return str(self.runtime.client.dashboard_link)

    @property
    def omax_page(self) -> str:
        """omax's own dashboard page: replication, requests, GPUs."""
        return self.dashboard_link.rsplit("/status", 1)[0] + "/omax"

    def health(self) -> Health:
        return self._loop.run(self.runtime.health())

    def workers(self) -> builtins.list[str]:
        state = self._loop.run(self.runtime.cluster())
        return [w["address"] for w in state["workers"]]

    def close(self) -> None:
        """Disconnect; stop the embedded cluster if this connection started it."""
        if self._loop.thread.is_alive():
            self._loop.run(self._close())
            self._loop.stop()

    async def _close(self) -> None:
        await self.runtime.close()
        if self.cluster is not None:
            await self.cluster.close()  # type: ignore[misc]

    def __enter__(self) -> Omax:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Omax scheduler={self.scheduler} dashboard={self.omax_page}>"

    def _repr_html_(self) -> str:
        h = self.health()
        state = "ready" if h.ready else f"not ready: {h.reason}"
        link = f"<a href='{self.omax_page}' target='_blank'>{self.omax_page}</a>"
        kind = "embedded cluster" if self.cluster is not None else "cluster"
        return (
            f"<b>omax</b> {kind} at <code>{self.scheduler}</code>: {h.workers} worker(s) "
            f"with an inference slot, {state}<br>dashboard: {link}"
        )

    # ---- models --------------------------------------------------------------------

    def list(self) -> ModelList:
        return ModelList(self._loop.run(self.runtime.list_models()))

    def ps(self) -> builtins.list[Any]:
        """The loaded models, with the worker and device each runs on."""
        return self._loop.run(self.runtime.ps())

    def pull(self, model: str, quiet: bool = False) -> builtins.list[Progress]:
        """Pull ``model`` into the origin store (a model it already holds is verified),
        then replicate it to ``omax.replication.target`` workers, showing progress."""
        return self._show(self.runtime.pull(model), quiet)

    def create(self, model: str, quiet: bool = False, **fields: Any) -> builtins.list[Progress]:
        """Ollama's create: ``from_`` (a model name), ``system``, ``template``,
        ``parameters``, ``messages``... as ``CreateRequest`` names them."""
        return self._show(self.runtime.create(CreateRequest(model=model, **fields)), quiet)

    def import_path(self, path: str | Path, model: str) -> Any:
        """Import a local GGUF file or Hugging Face folder as ``model`` into the origin
        store, from this process (the server's create refuses paths outside
        ``omax.store.import-roots``; a notebook importing its own files is the owner)."""
        return self._loop.run(asyncio.to_thread(self.runtime.store.import_path, path, model))

    def _show(self, stream: AsyncIterator[Progress], quiet: bool) -> builtins.list[Progress]:
        view = ProgressLines(quiet)
        try:
            for p in self._loop.iterate(stream):
                view(p)
        finally:
            view.close()
        return view.lines

    # ---- replication ---------------------------------------------------------------

    def replication(self) -> Replication:
        """Every worker's copies of every model, and how far each has come."""
        state = self._loop.run(self.runtime.cluster())
        names = {m.digest: m.name for m in self.list()}
        return replication(state, names)

    def wait_replicated(self, model: str, copies: int, timeout: float = 300) -> Replication:
        """Wait until ``copies`` workers hold all of ``model``; TimeoutError past
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.replication()
            if view.complete(model) >= copies:
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"{model}: {view.complete(model)} of {copies} copies")
            time.sleep(0.25)

    # ---- inference -----------------------------------------------------------------

    def chat(
        self, model: str, messages: str | Sequence[Message | dict[str, Any]], **options: Any
    ) -> Reply:
        """One chat answer. ``messages``: a user prompt, or ``Message``s / Ollama's
        ``{"role", "content"}`` dicts. ``options``: ``SamplingOptions`` fields."""
        request = GenerateRequest(
            model=model, messages=_messages(messages), options=SamplingOptions(**options)
        )
        return self._reply(request)

    def generate(self, model: str, prompt: str, **options: Any) -> Reply:
        request = GenerateRequest(model=model, prompt=prompt, options=SamplingOptions(**options))
        return self._reply(request)

    def stream(
        self, model: str, messages: str | Sequence[Message | dict[str, Any]], **options: Any
    ) -> Iterator[str]:
        """A chat answer's text, piece by piece as the model writes it."""
        request = GenerateRequest(
            model=model, messages=_messages(messages), options=SamplingOptions(**options)
        )
        for chunk in self._loop.iterate(self.runtime.generate(request)):
            if chunk.error:
                raise RuntimeError(chunk.error)
            if chunk.text:
                yield chunk.text

    def _reply(self, request: GenerateRequest) -> Reply:
        from omax.errors import EngineError

        chunks = self._loop.run(_collect(self.runtime.generate(request)))
        last = chunks[-1]
        if last.error:
            raise EngineError(last.error)
        m = last.metrics
        return Reply(
            model=request.model,
            text="".join(c.text for c in chunks),
            done_reason=str(last.done_reason or ""),
            prompt_tokens=m.prompt_eval_count if m else 0,
            tokens=m.eval_count if m else 0,
            seconds=m.eval_duration / 1e9 if m else 0.0,
        )

    def embed(self, model: str, texts: str | Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` (normalized), one row per text."""
        import numpy as np

        inputs = (texts,) if isinstance(texts, str) else tuple(texts)
        result = self._loop.run(self.runtime.embed(EmbedRequest(model=model, inputs=inputs)))
        return np.asarray(result.embeddings, dtype=np.float32)


async def _collect(stream: AsyncIterator[T]) -> list[T]:
    return [x async for x in stream]
