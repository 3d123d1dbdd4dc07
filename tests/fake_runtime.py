"""``FakeRuntime``: a deterministic, in-memory ``Runtime`` for testing the HTTP layer.

It is a fake and is named as one. Generation yields scripted tokens (the default
script, or whatever ``enqueue`` queued), honours ``num_predict`` and ``stop``, and
records every request, completion and cancellation. Models: ``fake-chat`` (completion,
tools, thinking, vision), ``fake-tiny`` (completion only) and ``fake-embed``
(embedding). Blobs live in memory and are verified against their digest. Streaming methods are
async generators, so their up-front errors raise at the first item, as a real
runtime's do.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from omax.engine.request import (
    EmbedRequest,
    EmbedResult,
    GenerateChunk,
    GenerateRequest,
    Metrics,
    ToolCall,
)
from omax.errors import BlobNotFound, DigestMismatch, InvalidRequest, ModelNotFound, OmaxError
from omax.serve.runtime import (
    CreateRequest,
    Health,
    LoadedModel,
    ModelDetails,
    ModelInfo,
    Progress,
    ShowInfo,
)

DEFAULT_SCRIPT = ("Hello", " from", " the", " fake", " model", ".")
EPOCH = "2024-01-01T00:00:00Z"


@dataclass
class Script:
    """What the next generation yields."""

    tokens: tuple[str, ...] = DEFAULT_SCRIPT
    thinking: tuple[str, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    fail_after: int | None = None  # raise ``error`` after this many tokens
    error: OmaxError | None = None
    delay: float = 0.0  # seconds before each token


@dataclass
class _Model:
    info: ModelInfo
    capabilities: tuple[str, ...]
    template: str = "{{ .Prompt }}"
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


def full_name(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _model(name: str, family: str, caps: tuple[str, ...], size: int) -> _Model:
    details = ModelDetails(
        format="safetensors",
        family=family,
        families=(family,),
        parameter_size="1M",
        quantization_level="F16",
    )
    info = ModelInfo(
        name=full_name(name),
        digest=_digest(name.encode()),
        size=size,
        modified_at=EPOCH,
        details=details,
    )
    return _Model(info=info, capabilities=caps)


class FakeRuntime:
    """An in-memory Runtime with scripted tokens; see the module docstring."""

    def __init__(self) -> None:
        self.models: dict[str, _Model] = {
            m.info.name: m
            for m in (
                _model("fake-chat", "llama", ("completion", "tools", "thinking", "vision"), 1000),
                _model("fake-tiny", "llama", ("completion",), 100),
                _model("fake-embed", "bert", ("embedding",), 50),
            )
        }
        self.blobs: dict[str, bytes] = {}
        self.loaded: dict[str, tuple[float | None, str]] = {}
        self.scripts: deque[Script] = deque()
        self.requests: list[GenerateRequest] = []
        self.embed_requests: list[EmbedRequest] = []
        self.cancelled: list[str] = []
        self.completed: list[str] = []
        self.active = 0
        self.down = ""  # set to a reason: health answers that the scheduler is away

    def enqueue(self, script: Script | None = None, **kwargs: Any) -> None:
        """Queue what the next generation yields (``Script`` fields as keywords)."""
        self.scripts.append(script or Script(**kwargs))

    def _get(self, name: str) -> _Model:
        model = self.models.get(full_name(name))
        if model is None:
            raise ModelNotFound(name)
        return model

    def _touch(self, name: str, keep_alive: float | None) -> None:
        model = self._get(name)
        if keep_alive == 0:
            self.loaded.pop(model.info.name, None)
            return
        seconds = 300.0 if keep_alive is None else keep_alive
        expires = (
            "2262-04-11T23:47:16Z"
            if seconds < 0
            else _rfc3339(datetime.now(UTC) + timedelta(seconds=seconds))
        )
        self.loaded[model.info.name] = (keep_alive, expires)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        model = self._get(request.model)
        if "completion" not in model.capabilities:
            raise InvalidRequest(f'"{request.model}" does not support generate')
        self.requests.append(request)
        script = self.scripts.popleft() if self.scripts else Script()
        self._touch(request.model, request.keep_alive)
        started = time.perf_counter_ns()
        opts = request.options
        prompt = request.prompt or " ".join(m.content for m in request.messages or ())
        prompt_tokens = max(1, len(prompt.split()))
        self.active += 1
        text, count, reason = "", 0, "stop"
        try:
            if request.think:
                for piece in script.thinking or ("Let me think.",):
                    yield GenerateChunk(thinking=piece)
            for token in script.tokens:
                if script.fail_after is not None and count >= script.fail_after:
                    raise script.error or OmaxError("scripted failure")
                if script.delay:
                    await asyncio.sleep(script.delay)
                if 0 <= opts.num_predict <= count:
                    reason = "length"
                    break
                hit = _stop_hit(text + token, opts.stop)
                if hit is not None:
                    if hit > len(text):
                        yield GenerateChunk(text=(text + token)[len(text) : hit])
                    count += 1
                    break
                text += token
                count += 1
                yield GenerateChunk(text=token)
            if script.tool_calls:
                yield GenerateChunk(tool_calls=script.tool_calls)
            elapsed = time.perf_counter_ns() - started
            metrics = Metrics(
                total_duration=elapsed + 1,
                load_duration=1,
                prompt_eval_count=prompt_tokens,
                prompt_eval_duration=1,
                eval_count=count,
                eval_duration=max(1, elapsed),
            )
            context = tuple(range(prompt_tokens + count)) if request.prompt is not None else None
            self.completed.append(request.request_id)
            yield GenerateChunk(done=True, done_reason=reason, metrics=metrics, context=context)  # type: ignore[arg-type]
        except (asyncio.CancelledError, GeneratorExit):
            # like a real runtime, cleanup awaits (an RPC telling the actor to cancel)
            # before the cancellation is recorded: the HTTP layer must let it finish
            await asyncio.sleep(0.01)
            self.cancelled.append(request.request_id)
            raise
        finally:
            self.active -= 1

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        model = self._get(request.model)
        if "embedding" not in model.capabilities:
            raise InvalidRequest(f'"{request.model}" does not support embeddings')
        self.embed_requests.append(request)
        self._touch(request.model, request.keep_alive)
        vectors = tuple(
            _vector(text, request.dimensions, request.normalize) for text in request.inputs
        )
        count = sum(max(1, len(t.split())) for t in request.inputs)
        return EmbedResult(
            embeddings=vectors, prompt_eval_count=count, total_duration=1000, load_duration=1
        )

    async def load(self, model: str, keep_alive: float | None) -> None:
        self._touch(model, keep_alive)

    async def list_models(self) -> list[ModelInfo]:
        return [m.info for m in self.models.values()]

    async def show(self, model: str) -> ShowInfo:
        m = self._get(model)
        params = "\n".join(f"{k} {v}" for k, v in m.parameters.items())
        return ShowInfo(
            info=m.info,
            modelfile=f"FROM {m.info.name}\nTEMPLATE {m.template!r}\n",
            parameters=params,
            template=m.template,
            system=m.system,
            license="",
            model_info={
                "general.architecture": m.info.details.family,
                "general.parameter_count": 1_000_000,
            },
            capabilities=m.capabilities,
        )

    async def copy(self, source: str, destination: str) -> None:
        m = self._get(source)
        name = full_name(destination)
        self.models[name] = replace(m, info=replace(m.info, name=name))

    async def delete(self, model: str) -> None:
        self._get(model)
        del self.models[full_name(model)]
        self.loaded.pop(full_name(model), None)

    async def create(self, request: CreateRequest) -> AsyncIterator[Progress]:
        base = self._get(request.from_) if request.from_ else None
        for digest in request.files.values():
            if digest not in self.blobs:
                raise BlobNotFound(f"blob {digest} not found; upload it first")
        if base is None and not request.files:
            raise InvalidRequest("neither 'from' or 'files' was specified")
        for digest in request.files.values():
            yield Progress(status=f"using existing layer {digest}")
        yield Progress(status="writing manifest")
        name = full_name(request.model)
        caps = base.capabilities if base else ("completion",)
        if any(f.endswith(".safetensors") for f in request.files) and "sentence" in request.model:
            caps = ("embedding",)
        model = _model(request.model, base.info.details.family if base else "custom", caps, 10)
        model.system = request.system or (base.system if base else "")
        model.template = request.template or (base.template if base else model.template)
        model.parameters = dict(request.parameters)
        self.models[name] = model
        yield Progress(status="success")

    async def pull(self, model: str, insecure: bool = False) -> AsyncIterator[Progress]:
        if not model.startswith("fake-"):
            raise ModelNotFound(model)
        yield Progress(status="pulling manifest")
        digest = _digest(model.encode())
        for done in (0, 512, 1024):
            yield Progress(
                status=f"pulling {digest[7:19]}", digest=digest, total=1024, completed=done
            )
        yield Progress(status="verifying sha256 digest")
        yield Progress(status="writing manifest")
        self.models.setdefault(full_name(model), _model(model, "llama", ("completion",), 1024))
        yield Progress(status="success")

    async def push(
        self, model: str, destination: str | None = None, insecure: bool = False
    ) -> AsyncIterator[Progress]:
        m = self._get(model)
        yield Progress(status="retrieving manifest")
        yield Progress(
            status=f"pushing {m.info.digest[7:19]}",
            digest=m.info.digest,
            total=m.info.size,
            completed=m.info.size,
        )
        yield Progress(status="pushing manifest")
        yield Progress(status="success")

    async def has_blob(self, digest: str) -> bool:
        return digest in self.blobs

    async def put_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> bool:
        hasher, parts = hashlib.sha256(), []
        async for chunk in chunks:
            hasher.update(chunk)
            parts.append(chunk)
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise DigestMismatch(f"digest mismatch, expected {digest!r}, got {actual!r}")
        new = digest not in self.blobs
        self.blobs[digest] = b"".join(parts)
        return new

    async def ps(self) -> list[LoadedModel]:
        return [
            LoadedModel(
                info=self.models[name].info,
                expires_at=expires,
                size_vram=self.models[name].info.size,
                context_length=4096,
                worker="tcp://127.0.0.1:0",
                device="cpu",
            )
            for name, (_, expires) in self.loaded.items()
            if name in self.models
        ]

    async def cluster(self) -> dict[str, Any]:
        return {
            "scheduler": "fake://",
            "workers": [{"address": "tcp://127.0.0.1:0", "gpus": []}],
            "models": sorted(self.loaded),
        }

    async def health(self) -> Health:
        if self.down:
            return Health(scheduler=False, reason=self.down)
        return Health(scheduler=True, workers=1, models=tuple(sorted(self.loaded)))


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stop_hit(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _vector(text: str, dimensions: int | None, normalize: bool) -> tuple[float, ...]:
    raw = hashlib.sha256(text.encode()).digest()[:16]
    vec = [b / 255.0 - 0.5 for b in raw][: dimensions or None]
    if normalize:
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        vec = [v / norm for v in vec]
    return tuple(vec)
