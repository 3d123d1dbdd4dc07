"""One request's state while the batcher holds it, and the output it produces.

A ``Sequence`` is owned by the batching thread from submission on: only that thread
reads or writes its fields. Its text passes, token by token, through the detokenizer,
the stop matcher and (for a request with tools) the tool-call stream; the pieces here
say what each sampled token shows and what the last chunk carries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from omax.engine.detokenizer import Detokenizer
from omax.engine.request import GenerateChunk, GenerateRequest, Metrics, ToolCall
from omax.engine.sampling import SamplerState
from omax.engine.stops import StopMatcher
from omax.engine.toolcalls import ToolCallStream
from omax.logs import LogContext, current_context


@dataclass
class Sequence:
    rid: str
    req: GenerateRequest
    prompt: list[int]
    limit: int  # the KV length this sequence may reach (num_ctx, capped by the cache)
    sampler: SamplerState
    detok: Detokenizer
    stops: StopMatcher
    load_duration: int = 0
    submitted: int = field(default_factory=time.perf_counter_ns)
    generated: list[int] = field(default_factory=list)
    slot: int = -1
    pos: int = 0  # tokens in the cache
    cached: int = 0  # prompt tokens whose KV was reused from the prefix cache
    last: int = -1  # sampled, not yet in the cache
    prefill_ns: int = 0
    eval_ns: int = 0
    tool_stream: ToolCallStream | None = None  # set when the request has tools
    emitted: bool = False  # a chunk was emitted
    # The submitter's log context (request id, model, worker): the batching thread's
    # lines about this sequence name it.
    log_context: LogContext | None = field(default_factory=current_context)
    last_token_ns: int = 0  # when its last token was sampled (0: none yet)

    def __post_init__(self) -> None:
        if self.req.tools and self.tool_stream is None:
            self.tool_stream = ToolCallStream()

    @property
    def pinned(self) -> bool:
        """A seeded request must give the same text alone and in any batch."""
        return self.req.options.seed >= 0

    @property
    def reserve(self) -> int:
        n = self.req.options.num_predict
        want = len(self.prompt) + (n if n > 0 else self.limit)
        return min(want, self.limit)

    def record(self, token: int) -> None:
        """``token`` was sampled: it is generated, and the next step's input."""
        self.generated.append(token)
        self.sampler.history.append(token)
        self.last = token

    def text_of(self, token: int) -> str:
        """The text ``token`` (just recorded) lets the client see now (may be empty)."""
        text = self.stops.push(self.detok.push(token))
        if text and self.tool_stream is not None:
            text = self.tool_stream.push(text)  # held back only from a possible tool call
        return text

    def at_length(self) -> bool:
        """``num_predict`` tokens are generated, or the next one would not fit ``limit``."""
        n = self.req.options.num_predict
        return (n > 0 and len(self.generated) >= n) or self.pos + 1 >= self.limit

    def tail(self) -> tuple[str, tuple[ToolCall, ...]]:
        """At the end: the text still held back, and the tool calls it made."""
        tail = (
            "" if self.stops.stopped else self.stops.push(self.detok.flush()) + self.stops.flush()
        )
        calls: tuple[ToolCall, ...] = ()
        if self.tool_stream is not None:
            tail = self.tool_stream.push(tail)
            rest, calls = self.tool_stream.finish()
            tail += rest
        return tail, calls

    def last_chunk(
        self, reason: str, calls: tuple[ToolCall, ...], include_last: bool
    ) -> GenerateChunk:
        """The ``done`` chunk: its metrics up to now, and for /api/generate the context
        (``include_last``: whether the last sampled token belongs to it)."""
        now = time.perf_counter_ns()
        metrics = Metrics(
            total_duration=now - self.submitted + self.load_duration,
            load_duration=self.load_duration,
            prompt_eval_count=len(self.prompt),
            prompt_eval_duration=self.prefill_ns,
            eval_count=len(self.generated),
            eval_duration=self.eval_ns,
            cached_tokens=self.cached,
        )
        context = None
        if self.req.messages is None:
            gen = self.generated if include_last else self.generated[:-1]
            context = tuple(self.prompt) + tuple(gen)
        return GenerateChunk(
            tool_calls=calls,
            done=True,
            done_reason=reason,  # type: ignore[arg-type]
            metrics=metrics,
            context=context,
        )
