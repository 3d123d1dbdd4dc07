"""Convert validated Ollama and OpenAI bodies into the one internal request type.

Both adapters end in ``GenerateRequest`` / ``EmbedRequest``; nothing below this
module knows which API a request came in on. OpenAI's differences are applied here:
``max_tokens`` is ``num_predict``, an unset ``temperature`` / ``top_p`` is 1.0,
``response_format`` becomes ``format`` and tool-call arguments arrive as JSON strings.
"""

from __future__ import annotations

import json
from typing import Any

from omax.engine.request import (
    EmbedRequest,
    GenerateRequest,
    Message,
    SamplingOptions,
    ToolCall,
)
from omax.errors import InvalidRequest
from omax.serve.requestid import engine_request_id
from omax.serve.schemas import (
    ChatBody,
    ChatMessage,
    EmbedBody,
    EmbeddingsBody,
    GenerateBody,
    OpenAIChatBody,
    OpenAICompletionBody,
    OpenAIEmbeddingsBody,
    OpenAIMessage,
    Options,
    parse_format,
    parse_keep_alive,
    require_model,
)

_SAMPLING_KEYS = set(SamplingOptions.__dataclass_fields__)


def sampling(options: Options | None, **overrides: Any) -> SamplingOptions:
    """SamplingOptions from Ollama ``options`` (unknown keys logged and dropped)."""
    values = options.known() if options is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    fields = {k: v for k, v in values.items() if k in _SAMPLING_KEYS}
    if "stop" in fields:
        fields["stop"] = tuple(fields["stop"])
    for key in (
        "temperature",
        "top_p",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
    ):
        if key in fields:
            fields[key] = float(fields[key])
    return SamplingOptions(**fields)


def _message(m: ChatMessage) -> Message:
    calls = tuple(
        ToolCall(name=c.function.name, arguments=c.function.arguments, id=c.id)
        for c in m.tool_calls or ()
    )
    return Message(
        role=m.role,
        content=m.content,
        images=tuple(m.images or ()),
        tool_calls=calls,
        tool_name=m.tool_name,
        thinking=m.thinking,
    )


def request_id() -> str:
    """The actor's id for this request: the HTTP request's ``X-Request-ID``
    (``omax.serve.requestid``), or a new one outside an HTTP request."""
    return engine_request_id()


def from_generate(body: GenerateBody) -> GenerateRequest:
    if body.raw and (body.template or body.system or body.context):
        raise InvalidRequest("raw mode does not support template, system, or context")
    return GenerateRequest(
        model=require_model(body.model),
        prompt=body.prompt or "",
        suffix=body.suffix,
        system=body.system,
        template=body.template,
        raw=body.raw,
        images=tuple(body.images or ()),
        format=parse_format(body.format),
        think=body.think,
        options=sampling(body.options),
        keep_alive=parse_keep_alive(body.keep_alive),
        context=tuple(body.context) if body.context is not None else None,
        request_id=request_id(),
    )


def from_chat(body: ChatBody) -> GenerateRequest:
    return GenerateRequest(
        model=require_model(body.model),
        messages=tuple(_message(m) for m in body.messages),
        format=parse_format(body.format),
        tools=tuple(body.tools or ()),
        think=body.think,
        options=sampling(body.options),
        keep_alive=parse_keep_alive(body.keep_alive),
        request_id=request_id(),
    )


def from_embed(body: EmbedBody) -> EmbedRequest:
    inputs = (body.input,) if isinstance(body.input, str) else tuple(body.input)
    return EmbedRequest(
        model=require_model(body.model),
        inputs=inputs,
        truncate=body.truncate,
        dimensions=body.dimensions,
        keep_alive=parse_keep_alive(body.keep_alive),
        options=sampling(body.options),
    )


def from_embeddings(body: EmbeddingsBody) -> EmbedRequest:
    return EmbedRequest(
        model=require_model(body.model),
        inputs=(body.prompt,),
        normalize=False,
        keep_alive=parse_keep_alive(body.keep_alive),
        options=sampling(body.options),
    )


def _openai_options(
    body: OpenAIChatBody | OpenAICompletionBody, max_tokens: int | None
) -> SamplingOptions:
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return sampling(
        None,
        num_predict=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=stop,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
    )


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        raise InvalidRequest(f"tool call arguments are not valid JSON: {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise InvalidRequest("tool call arguments must be a JSON object")
    return value


def _openai_message(m: OpenAIMessage, tool_names: dict[str, str]) -> Message:
    text: list[str] = []
    images: list[str] = []
    if isinstance(m.content, str):
        text.append(m.content)
    for part in m.content if isinstance(m.content, list) else ():
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            text.append(part["text"])
        elif kind == "image_url":
            images.append(_image_url(part.get("image_url")))
        else:
            raise InvalidRequest(f"invalid message content part type: {kind!r}")
    calls = tuple(
        ToolCall(name=c.function.name, arguments=_arguments(c.function.arguments), id=c.id)
        for c in m.tool_calls or ()
    )
    for call in calls:
        tool_names[call.id] = call.name
    tool_name = tool_names.get(m.tool_call_id or "", m.name or "") if m.role == "tool" else ""
    return Message(
        role=m.role,
        content="".join(text),
        images=tuple(images),
        tool_calls=calls,
        tool_name=tool_name,
        thinking=m.reasoning or "",
    )


def _image_url(value: Any) -> str:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise InvalidRequest("image_url must carry a url")
    if url.startswith("data:"):
        _, _, data = url.partition(",")
        return data
    raise InvalidRequest("only base64 data: URLs are supported for images")


def _response_format(body: OpenAIChatBody) -> str | dict[str, Any] | None:
    rf = body.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return "json"
    schema = (rf.json_schema or {}).get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest("response_format.json_schema.schema must be a JSON schema object")
    return schema


def from_openai_chat(body: OpenAIChatBody) -> GenerateRequest:
    names: dict[str, str] = {}
    effort = body.reasoning_effort
    return GenerateRequest(
        model=require_model(body.model),
        messages=tuple(_openai_message(m, names) for m in body.messages),
        format=_response_format(body),
        tools=tuple(body.tools or ()),
        think=None if effort is None else (False if effort == "none" else effort),
        options=_openai_options(body, body.max_completion_tokens or body.max_tokens),
        request_id=request_id(),
    )


def from_openai_completion(body: OpenAICompletionBody) -> GenerateRequest:
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequest("prompt must be a string or a list with exactly one string")
        prompt = prompt[0]
    return GenerateRequest(
        model=require_model(body.model),
        prompt=prompt,
        suffix=body.suffix,
        options=_openai_options(body, body.max_tokens),
        request_id=request_id(),
    )


def from_openai_embeddings(body: OpenAIEmbeddingsBody) -> EmbedRequest:
    inputs = (body.input,) if isinstance(body.input, str) else tuple(body.input)
    if not inputs:
        raise InvalidRequest("invalid input: must not be empty")
    return EmbedRequest(model=require_model(body.model), inputs=inputs, dimensions=body.dimensions)
