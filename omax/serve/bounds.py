"""Caps on what one request may ask of a model, checked at the front door.

A request past a cap is a 400 that names the cap and the limit, before any work is
queued: a thousand ``stop`` strings, a million messages or out-of-range ``context``
ids would otherwise cost the batching thread of every stream on the model. The caps
are ``omax.limits.*`` (``docs/security.md``); the engine adds its own limits on what
only it can see (template rendering time and size, prompt length before tokenising:
``omax.engine.templates``, ``omax.engine.engine``).

Pure: ``check_generate`` and ``check_embed`` take the internal request and a ``Bounds``.
"""

from __future__ import annotations

from dataclasses import dataclass

from omax.config import positive_int
from omax.engine.request import EmbedRequest, GenerateRequest
from omax.errors import InvalidRequest

TOKEN_ID_MAX = 2**31 - 1  # no tokenizer has more ids; the engine checks its own vocabulary


@dataclass(frozen=True)
class Bounds:
    stop: int = 16  # stop sequences in one request
    stop_length: int = 512  # characters of one stop sequence
    messages: int = 4096  # chat messages
    tools: int = 256  # tool definitions
    images: int = 16  # images across the prompt and every message
    context: int = 262144  # token ids in a ``context`` list
    template_length: int = 65536  # characters of a request's own ``template``
    inputs: int = 2048  # texts of one embed request

    @classmethod
    def configured(cls) -> Bounds:
        """The ``omax.limits`` section; a bad value raises ConfigError naming its key."""
        names = {f: f.replace("_", "-") for f in cls.__dataclass_fields__}
        return cls(**{field: positive_int(f"limits.{key}") for field, key in names.items()})


def _cap(what: str, count: int, limit: int) -> None:
    if count > limit:
        raise InvalidRequest(f"too many {what}: {count} (at most {limit})")


def check_generate(req: GenerateRequest, b: Bounds) -> None:
    """InvalidRequest if ``req`` passes a cap of ``b`` or carries an impossible token id."""
    stops = req.options.stop
    _cap("stop sequences", len(stops), b.stop)
    for s in stops:
        if len(s) > b.stop_length:
            raise InvalidRequest(
                f"stop sequence too long: {len(s)} characters (at most {b.stop_length})"
            )
    messages = req.messages or ()
    _cap("messages", len(messages), b.messages)
    _cap("tools", len(req.tools), b.tools)
    _cap("images", len(req.images) + sum(len(m.images) for m in messages), b.images)
    if req.template is not None and len(req.template) > b.template_length:
        raise InvalidRequest(
            f"template too long: {len(req.template)} characters (at most {b.template_length})"
        )
    context = req.context or ()
    _cap("context token ids", len(context), b.context)
    for t in context:
        if not 0 <= t <= TOKEN_ID_MAX:
            raise InvalidRequest(f"invalid context: token id {t} is out of range")


def check_embed(req: EmbedRequest, b: Bounds) -> None:
    _cap("inputs", len(req.inputs), b.inputs)
