"""Request bodies of every route, validated with pydantic, and the pure parsers they use.

Models are strict (``"5"`` is not an int) and ignore unknown top-level fields, as
Ollama does. ``parse_body`` turns raw bytes into a model or raises
``InvalidRequest`` with a message naming the field, so a bad body is always a 400.
``options`` keys that Ollama knows are typed; unknown ones are dropped with a
warning in the log. Converting a validated body into the internal
``GenerateRequest`` / ``EmbedRequest`` lives in ``omax.serve.convert``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from omax.config_values import parse_duration
from omax.errors import InvalidRequest

log = logging.getLogger(__name__)

Number = float | int
KeepAlive = Number | str | None
Think = bool | Literal["low", "medium", "high"] | None


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class Options(Body):
    """Ollama ``options``; every field optional, Ollama's defaults apply when unset."""

    model_config = ConfigDict(strict=True, extra="allow")

    num_ctx: int | None = Field(None, ge=1)
    num_batch: int | None = Field(None, ge=1)
    num_gpu: int | None = None
    main_gpu: int | None = None
    num_thread: int | None = None
    num_keep: int | None = None
    seed: int | None = None
    num_predict: int | None = None
    top_k: int | None = None
    top_p: Number | None = None
    min_p: Number | None = None
    typical_p: Number | None = None
    repeat_last_n: int | None = None
    temperature: Number | None = Field(None, ge=0)
    repeat_penalty: Number | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    stop: list[str] | None = None

    def known(self) -> dict[str, Any]:
        """Return the set known options; log and drop unknown ones."""
        for key in self.model_extra or {}:
            log.warning("ignoring unknown option %r", key)
        return {
            k: v
            for k, v in self.model_dump(exclude_unset=True).items()
            if k in type(self).model_fields and v is not None
        }


class ToolCallFunction(Body):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCallIn(Body):
    id: str = ""
    function: ToolCallFunction


class ChatMessage(Body):
    role: str = Field(min_length=1)
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_name: str = ""
    thinking: str = ""


class _ModelBody(Body):
    model: str = ""
    keep_alive: KeepAlive = None
    options: Options | None = None


class GenerateBody(_ModelBody):
    prompt: str | None = None
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None
    format: str | dict[str, Any] | None = None
    think: Think = None
    stream: bool = True


class ChatBody(_ModelBody):
    messages: list[ChatMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    format: str | dict[str, Any] | None = None
    think: Think = None
    stream: bool = True


class EmbedBody(_ModelBody):
    input: str | list[str] = Field(default_factory=list)
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1)


class EmbeddingsBody(_ModelBody):
    prompt: str = ""


class NamedBody(Body):
    """show / delete: ``model``, or the legacy ``name``."""

    model: str = ""
    name: str = ""
    verbose: bool = False

    @property
    def target(self) -> str:
        return self.model or self.name


class PullBody(NamedBody):
    insecure: bool = False
    stream: bool = True


class PushBody(PullBody):
    destination: str | None = None


class CopyBody(Body):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


class CreateBody(Body):
    model: str = ""
    name: str = ""
    from_: str | None = Field(None, alias="from")
    files: dict[str, str] = Field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    messages: list[ChatMessage] = Field(default_factory=list)
    license: str | list[str] | None = None
    quantize: str | None = None
    stream: bool = True


class OpenAIStreamOptions(Body):
    include_usage: bool = False


class OpenAIResponseFormat(Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class OpenAIFunctionCall(Body):
    name: str
    arguments: str = "{}"


class OpenAIToolCall(Body):
    id: str = ""
    type: str = "function"
    function: OpenAIFunctionCall


class OpenAIMessage(Body):
    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[OpenAIToolCall] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None


class _OpenAISampling(Body):
    model: str = ""
    stream: bool = False
    stream_options: OpenAIStreamOptions | None = None
    max_tokens: int | None = None
    temperature: Number | None = Field(None, ge=0)
    top_p: Number | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: Number | None = None
    presence_penalty: Number | None = None


class OpenAIChatBody(_OpenAISampling):
    messages: list[OpenAIMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    response_format: OpenAIResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    reasoning_effort: Literal["none", "low", "medium", "high"] | None = None


class OpenAICompletionBody(_OpenAISampling):
    prompt: str | list[str]
    suffix: str = ""


class OpenAIEmbeddingsBody(Body):
    model: str = ""
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


B = TypeVar("B", bound=BaseModel)


def parse_body(model: type[B], raw: bytes) -> B:
    """Validate a JSON body; raise InvalidRequest with a field-naming message."""
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as err:
        raise InvalidRequest(describe(err)) from None


def describe(err: ValidationError) -> str:
    """One line for the first problem of a ValidationError, naming the field."""
    first = err.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return "invalid JSON: " + first["ctx"]["error"] if "ctx" in first else "invalid JSON"
    where = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("function-", "json-")))
    where = _clean_loc(where)
    if first["type"] == "model_type" and not where:
        return "request body must be a JSON object"
    if where in _HINTS:
        return f"invalid {where}: {_HINTS[where]}"
    if first["type"] == "missing":
        return f"{where} is required"
    return f"invalid value for '{where}': {first['msg']}" if where else first["msg"]


_HINTS = {
    "think": 'must be true, false, "low", "medium" or "high"',
    "format": 'must be "json" or a JSON schema object',
    "keep_alive": 'must be a number of seconds or a duration such as "5m"',
}


def _clean_loc(where: str) -> str:
    # pydantic names union members ("options.temperature.float"); keep the field path
    parts = [
        p
        for p in where.split(".")
        if p
        not in {
            "float",
            "int",
            "str",
            "bool",
            "list[str]",
            "dict[str,any]",
            "literal['low','medium','high']",
        }
    ]
    return ".".join(parts)


def parse_keep_alive(value: Any) -> float | None:
    """Return keep_alive in seconds: None for the default, -1.0 for forever.

    A number is seconds; a string is a number of seconds or a Go-style duration
    (``"5m"``, ``"1h30m"``, ``"-1s"``). Anything negative means forever.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRequest(f"invalid keep_alive: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value.strip())
        except ValueError:
            raise InvalidRequest(
                f"invalid keep_alive: time: invalid duration {value.strip()!r}"
            ) from None
    else:
        raise InvalidRequest(f"invalid keep_alive: {value!r}")
    if math.isnan(seconds):
        raise InvalidRequest(f"invalid keep_alive: {value!r}")
    return -1.0 if seconds < 0 else seconds


def parse_format(value: Any) -> str | dict[str, Any] | None:
    """Return None, "json" or a JSON Schema dict; anything else is a 400."""
    if value is None or value == "":
        return None
    if value == "json" or isinstance(value, dict):
        return value
    raise InvalidRequest(f'invalid format: {value!r}; expected "json" or a JSON schema object')


def require_model(name: str) -> str:
    if not name:
        raise InvalidRequest("model is required")
    return name
