"""The one internal request type for generation and embedding, and what comes back.

Both the Ollama and the OpenAI adapters convert into ``GenerateRequest`` /
``EmbedRequest``; the engine, the actor and the router only ever see these. Every
field is msgpack-friendly (str, int, float, bool, None, tuples, dicts of those) so the
objects cross Dask RPC unchanged. Durations are nanoseconds, as Ollama reports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

DoneReason = Literal["stop", "length", "load", "unload", "cancel", "error"]


@dataclass(frozen=True)
class SamplingOptions:
    """Ollama ``options`` after validation; defaults are Ollama's."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    num_predict: int = -1
    num_ctx: int = 4096
    num_keep: int = 0
    num_batch: int = 512
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""


@dataclass(frozen=True)
class Message:
    role: str
    content: str = ""
    images: tuple[str, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_name: str = ""
    thinking: str = ""


@dataclass(frozen=True)
class GenerateRequest:
    """One generation. Exactly one of ``messages`` (chat) or ``prompt`` (generate).

    ``system`` / ``template`` override the model's own; ``raw`` sends ``prompt``
    to the model untouched. ``format`` is None, ``"json"`` or a JSON Schema dict.
    ``keep_alive`` is seconds (None = configured default, negative = forever).
    ``context`` is the token list a previous /api/generate returned.
    """

    model: str
    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    raw: bool = False
    images: tuple[str, ...] = ()
    format: str | dict[str, Any] | None = None
    tools: tuple[dict[str, Any], ...] = ()
    think: bool | str | None = None
    options: SamplingOptions = field(default_factory=SamplingOptions)
    keep_alive: float | None = None
    context: tuple[int, ...] | None = None
    request_id: str = ""


@dataclass(frozen=True)
class Metrics:
    """Ollama's timing fields, in nanoseconds, measured for real."""

    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache (OpenAI's)


@dataclass(frozen=True)
class GenerateChunk:
    """A piece of a generation's output. The last one has ``done=True``."""

    text: str = ""
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    done: bool = False
    done_reason: DoneReason | None = None
    metrics: Metrics | None = None
    context: tuple[int, ...] | None = None
    error: str | None = None


@dataclass(frozen=True)
class EmbedRequest:
    model: str
    inputs: tuple[str, ...]
    truncate: bool = True
    dimensions: int | None = None
    normalize: bool = True
    keep_alive: float | None = None
    options: SamplingOptions = field(default_factory=SamplingOptions)


@dataclass(frozen=True)
class EmbedResult:
    embeddings: tuple[tuple[float, ...], ...]
    prompt_eval_count: int = 0
    total_duration: int = 0
    load_duration: int = 0
