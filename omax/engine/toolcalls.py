"""Tool calls in generated text: parsed whole (``parse_tool_calls``) or held back from a
stream until they can be (``ToolCallStream``).

A call is JSON (``{"name": ..., "arguments": {...}}``, a list of those, or the
OpenAI-style ``{"function": {...}}``) inside ``<tool_call>`` tags, or bare JSON as the
whole text. What does not parse as a call stays content.
"""

from __future__ import annotations

import json
import re
from typing import Any

from omax.engine.request import ToolCall
from omax.engine.stops import first_match, partial_suffix

_TOOL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def _calls_from(obj: Any) -> list[ToolCall]:
    items = obj if isinstance(obj, list) else [obj]
    calls = []
    for it in items:
        if not isinstance(it, dict):
            continue
        fn = it.get("function", it)
        name = fn.get("name")
        args = fn.get("arguments", fn.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                continue
        if isinstance(name, str) and isinstance(args, dict):
            calls.append(ToolCall(name=name, arguments=args))
    return calls


def parse_tool_calls(text: str) -> tuple[str, tuple[ToolCall, ...]]:
    """Split generated text into (remaining content, tool calls)."""
    calls: list[ToolCall] = []
    for m in _TOOL_TAG.finditer(text):
        try:
            calls += _calls_from(json.loads(m.group(1)))
        except json.JSONDecodeError:
            pass
    if calls:
        return _TOOL_TAG.sub("", text).strip(), tuple(calls)
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            calls = _calls_from(json.loads(stripped))
        except json.JSONDecodeError:
            calls = []
        if calls:
            return "", tuple(calls)
    return text, ()


TOOL_OPENERS = ("<tool_call>",)


class ToolCallStream:
    """Stream a tool-enabled generation's text, holding back only possible tool calls.

    ``push`` returns the text that can be shown now. Text is buffered from the first
    tool-call opener (``<tool_call>``), or from the start when the first visible
    character is ``{`` or ``[`` (a bare JSON call); a tail that could still become an
    opener is held until it cannot. ``finish`` parses what was buffered and returns
    ``(content not yet shown, tool calls)``; text that parses as no call is returned
    as content, so nothing is lost.
    """

    def __init__(self, openers: tuple[str, ...] = TOOL_OPENERS) -> None:
        self.openers = openers
        self._held = ""
        self.buffering = False
        self._started = False  # visible (non-whitespace) text has been emitted

    def push(self, text: str) -> str:
        buf = self._held + text
        if self.buffering:
            self._held = buf
            return ""
        if not self._started:
            visible = buf.lstrip()
            if not visible:  # leading whitespace: it may precede a bare JSON call
                self._held = buf
                return ""
            if visible[0] in "{[":
                self.buffering, self._held = True, buf
                return ""
        cut = first_match(buf, self.openers)
        if cut >= 0:
            self.buffering, self._held = True, buf[cut:]
            out = buf[:cut]
        else:
            hold = partial_suffix(buf, self.openers)
            self._held = buf[len(buf) - hold :]
            out = buf[: len(buf) - hold]
        self._started = self._started or bool(out.strip())
        return out

    def finish(self) -> tuple[str, tuple[ToolCall, ...]]:
        held, self._held = self._held, ""
        if not self.buffering:
            return held, ()
        return parse_tool_calls(held)
