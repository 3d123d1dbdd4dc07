"""The narrow interface between the HTTP layer and whatever runs models.

The Starlette app only calls a ``Runtime``. ``ClusterRuntime`` (omax.serve.cluster)
is the real one: a Dask client, the scheduler plugin's RPC handlers and ModelActors.
``FakeRuntime`` (tests/fake_runtime.py) yields scripted tokens so the HTTP layer can
be tested exhaustively without a cluster; it is a fake and is named as one.

Errors are raised as ``omax.errors`` types and mapped to HTTP once, at the edge.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from omax.engine.request import EmbedRequest, EmbedResult, GenerateChunk, GenerateRequest


@dataclass(frozen=True)
class ModelDetails:
    format: str = ""  # "gguf" | "safetensors"
    family: str = ""
    families: tuple[str, ...] = ()
    parameter_size: str = ""
    quantization_level: str = ""
    parent_model: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """One row of /api/tags."""

    name: str  # "name:tag"
    digest: str  # "sha256:<hex>" of the manifest
    size: int  # bytes of all weights
    modified_at: str  # RFC 3339
    details: ModelDetails = field(default_factory=ModelDetails)


@dataclass(frozen=True)
class ShowInfo:
    """What /api/show answers."""

    info: ModelInfo
    modelfile: str
    parameters: str  # Ollama's "key value" lines
    template: str
    system: str
    license: str
    model_info: dict[str, Any]
    capabilities: tuple[str, ...]  # "completion", "embedding", "tools", "vision", "thinking"
    messages: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class LoadedModel:
    """One row of /api/ps."""

    info: ModelInfo
    expires_at: str  # RFC 3339
    size_vram: int
    context_length: int
    worker: str = ""
    device: str = ""


@dataclass(frozen=True)
class Progress:
    """One line of a pull/push/create progress stream, in Ollama's words."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


@dataclass(frozen=True)
class Health:
    """What ``GET /api/health`` answers: ready when the scheduler answers and at
    least one worker is connected; ``reason`` says why not."""

    scheduler: bool  # the scheduler answered
    workers: int = 0  # workers connected to it
    models: tuple[str, ...] = ()  # loaded models, "name:tag"
    reason: str = ""

    @property
    def ready(self) -> bool:
        return self.scheduler and self.workers > 0 and not self.reason


@dataclass(frozen=True)
class CreateRequest:
    model: str
    from_: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # filename -> "sha256:<hex>"
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: tuple[dict[str, Any], ...] = ()
    license: str | tuple[str, ...] | None = None
    quantize: str | None = None


class Runtime(Protocol):
    """Streaming methods are async generators: call them without await, iterate with
    ``async for``."""

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """Yield chunks; the last has done=True. Raise before the first chunk on
        ModelNotFound / ServerBusy / InvalidRequest. Closing the iterator early
        cancels the generation on the actor."""
        ...

    async def embed(self, request: EmbedRequest) -> EmbedResult: ...

    async def load(self, model: str, keep_alive: float | None) -> None:
        """Load (or with keep_alive == 0, unload) a model without generating."""
        ...

    async def list_models(self) -> list[ModelInfo]: ...

    async def show(self, model: str) -> ShowInfo: ...

    async def copy(self, source: str, destination: str) -> None: ...

    async def delete(self, model: str) -> None: ...

    def create(self, request: CreateRequest) -> AsyncIterator[Progress]: ...

    def pull(self, model: str, insecure: bool = False) -> AsyncIterator[Progress]: ...

    def push(
        self, model: str, destination: str | None = None, insecure: bool = False
    ) -> AsyncIterator[Progress]: ...

    async def has_blob(self, digest: str) -> bool: ...

    async def put_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> bool:
        """Store an uploaded blob, verifying it; True if it was new. DigestMismatch if not."""
        ...

    async def ps(self) -> list[LoadedModel]: ...

    async def cluster(self) -> dict[str, Any]: ...

    async def health(self) -> Health:
        """Whether this front door can serve now; never raises for an outage."""
        ...
