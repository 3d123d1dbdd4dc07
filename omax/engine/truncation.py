"""Fitting a prompt into the context, as Ollama does, without tokenising all of it.

Two steps. Before the template renders, text past what the context could ever hold
is dropped by characters (no token is longer than ``CHARS_PER_TOKEN`` characters in
practice, so ``num_ctx * CHARS_PER_TOKEN`` characters hold at least ``num_ctx``
tokens): a chat loses its oldest messages first (system messages and the last one
stay, as Ollama's chat truncation keeps them), a prompt loses its beginning. This
bounds the tokeniser's work by the context, not by the request body. After
tokenising, ``truncate_ids`` keeps the first ``keep`` ids and the newest rest that
leaves room to generate.

Pure functions of plain data.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 32


def char_budget(num_ctx: int) -> int:
    """Characters of input that may matter to a context of ``num_ctx`` tokens."""
    return max(1, num_ctx) * CHARS_PER_TOKEN


def tail(text: str, budget: int) -> str:
    """The last ``budget`` characters of ``text``."""
    return text if len(text) <= budget else text[len(text) - budget :]


def fit_messages(messages: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """Drop the oldest non-system messages until the contents fit ``budget``
    characters; the last message stays, its beginning cut if it alone is too long."""

    def size(ms: list[dict[str, Any]]) -> int:
        return sum(len(m.get("content") or "") for m in ms)

    out = list(messages)
    i = 0
    while size(out) > budget and i < len(out) - 1:
        if out[i]["role"] == "system":
            i += 1
        else:
            del out[i]
    over = size(out) - budget
    if over > 0 and out:
        last = dict(out[-1])
        content = last.get("content") or ""
        last["content"] = tail(content, max(0, len(content) - over))
        out[-1] = last
    return out


def truncate_ids(ids: list[int], keep: int, num_ctx: int, num_predict: int) -> list[int]:
    """``ids`` fitted to ``num_ctx`` with room to generate: the first ``keep`` ids (at
    most half of what fits) and the newest of the rest."""
    room = max(1, min(num_predict, num_ctx // 2)) if num_predict > 0 else max(1, num_ctx // 4)
    target = num_ctx - room
    if len(ids) <= target:
        return ids
    keep = min(keep, target // 2)
    return ids[:keep] + ids[len(ids) - (target - keep) :]
