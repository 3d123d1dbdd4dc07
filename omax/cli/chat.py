"""One conversation as ``omax run`` holds it, and the streaming of one reply.

``Session`` is plain data (model, options, system, format, think, messages, display
flags); ``reply`` sends it and prints the answer as it arrives. Ctrl-C while a reply
streams closes the response (the server cancels the generation when its client goes)
and ``reply`` returns None: the session lives on.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import click

from omax.cli.client import OmaxClient
from omax.cli.render import Writer, summary


@dataclass
class Session:
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    format: str | dict[str, Any] | None = None
    think: bool | str | None = None
    hide_thinking: bool = False
    keep_alive: str | None = None
    wrap: bool = True
    verbose: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        """The request fields every call of this session carries (not messages/prompt)."""
        out: dict[str, Any] = {}
        if self.options:
            out["options"] = self.options
        if self.format:
            out["format"] = self.format
        if self.think is not None:
            out["think"] = self.think
        if self.keep_alive is not None:
            out["keep_alive"] = self.keep_alive
        return out


def parse_format(text: str | None) -> str | dict[str, Any] | None:
    """``--format``: ``json`` or a JSON Schema object given as JSON text."""
    if not text:
        return None
    if text == "json":
        return "json"
    try:
        schema = json.loads(text)
    except json.JSONDecodeError:
        schema = None
    if not isinstance(schema, dict):
        raise click.BadParameter("use 'json' or a JSON Schema object", param_hint="--format")
    return schema


def parse_think(text: str | None) -> bool | str | None:
    """``--think``: absent → None (the model's default), ``true``/``false`` or a level."""
    if text is None:
        return None
    if text in ("", "true"):
        return True
    if text == "false":
        return False
    if text in ("high", "medium", "low"):
        return text
    raise click.BadParameter("must be true, false, high, medium or low", param_hint="--think")


def chat_once(c: OmaxClient, s: Session) -> dict[str, Any] | None:
    """Send the session's messages; print the reply; return the assistant message,
    or None if Ctrl-C cancelled it."""
    chunks = c.chat(s.model, s.messages, **s.fields())
    shown = _show(chunks, s, lambda ch: ch.get("message") or {})
    if shown is None:
        return None
    content, thinking, last = shown
    click.echo("\n")
    if s.verbose and last.get("done"):
        summary(last)
    message = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    return message


def generate_once(c: OmaxClient, s: Session, prompt: str) -> bool:
    """One answer to ``prompt`` (``omax run MODEL PROMPT``); False if Ctrl-C stopped it."""
    body = s.fields()
    if s.system:
        body["system"] = s.system
    shown = _show(c.generate(s.model, prompt, **body), s, lambda ch: ch)
    if shown is None:
        return False
    if prompt:
        click.echo("\n" if sys.stdout.isatty() else "")
    if s.verbose and shown[2].get("done"):
        summary(shown[2])
    return True


def _show(
    chunks: Iterator[dict[str, Any]], s: Session, part: Callable[[dict[str, Any]], dict[str, Any]]
) -> tuple[str, str, dict[str, Any]] | None:
    """Print a stream (thinking, then content); (content, thinking, last) or None on Ctrl-C."""
    writer = Writer(s.wrap)
    content: list[str] = []
    thinking: list[str] = []
    last: dict[str, Any] = {}
    in_thought = False
    try:
        for chunk in chunks:
            last = chunk
            p = part(chunk)
            think_text = p.get("thinking") or ""
            text = p.get("content") if "content" in p else p.get("response", "")
            text = text or ""
            if think_text and not s.hide_thinking:
                if not in_thought:
                    writer.write("Thinking...\n")
                    in_thought = True
                writer.write(think_text)
            thinking.append(think_text)
            if in_thought and text:
                writer.write("\n...done thinking.\n\n")
                in_thought = False
            content.append(text)
            writer.write(text)
    except KeyboardInterrupt:
        writer.close()
        click.echo()
        return None
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # a generator: closing it closes the HTTP response
    writer.close()
    return "".join(content), "".join(thinking), last
