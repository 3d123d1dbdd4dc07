"""What ``omax.connect()``'s methods return, shown as tables in Jupyter.

Plain data with a ``_repr_html_`` (Jupyter's rich display) and a readable ``__repr__``
(a terminal): ``Reply`` (a chat or generate answer), ``ModelList`` (``list()``),
``Replication`` (which worker holds which model, and how far each copy is), and
``ProgressLines``, which shows a pull's or create's progress stream as it comes.
Nothing here talks to the cluster.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from omax.serve.runtime import ModelInfo, Progress

__all__ = ["ModelList", "ProgressLines", "Replica", "Replication", "Reply"]


def _size(n: int) -> str:
    from omax.units import fmt_bytes

    return str(fmt_bytes(n))


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


@dataclass(frozen=True)
class Reply:
    """One answer: its text, why it stopped, and Ollama's counters."""

    model: str
    text: str
    done_reason: str
    prompt_tokens: int = 0
    tokens: int = 0
    seconds: float = 0.0  # decoding time, load and prompt excluded

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Reply({self.model}: {self.text!r}, {self._stats()})"

    def _stats(self) -> str:
        rate = f", {self.tokens_per_second:.1f} tokens/s" if self.seconds else ""
        return f"{self.tokens} tokens, {self.done_reason}{rate}"

    def _repr_html_(self) -> str:
        text = html.escape(self.text).replace("\n", "<br>")
        stats = html.escape(f"{self.model} · {self._stats()}")
        return f"<div>{text}</div><div style='color:gray;font-size:smaller'>{stats}</div>"


class ModelList(list[ModelInfo]):
    """The store's models, as ``/api/tags`` lists them."""

    def names(self) -> list[str]:
        return [m.name for m in self]

    def _rows(self) -> list[tuple[str, str, str, str, str]]:
        return [
            (
                m.name,
                m.digest.removeprefix("sha256:")[:12],
                _size(m.size),
                m.details.family,
                m.details.quantization_level,
            )
            for m in self
        ]

    def __repr__(self) -> str:
        return "\n".join("  ".join(r) for r in self._rows()) or "(no models)"

    def _repr_html_(self) -> str:
        rows = [[html.escape(c) for c in r] for r in self._rows()]
        return _table(("name", "id", "size", "family", "quantization"), rows)


@dataclass(frozen=True)
class Replica:
    """One worker's copy of one model."""

    model: str
    worker: str
    completed: int
    total: int
    complete: bool

    @property
    def fraction(self) -> float:
        return 1.0 if self.complete else (self.completed / self.total if self.total else 0.0)


class Replication(list[Replica]):
    """Every copy of every model on the cluster's workers, with its progress."""

    def of(self, model: str) -> list[Replica]:
        return [r for r in self if r.model == model]

    def complete(self, model: str) -> int:
        """How many workers hold a complete copy of ``model``."""
        return sum(r.complete for r in self.of(model))

    def __repr__(self) -> str:
        return "\n".join(f"{r.model}  {r.worker}  {r.fraction:.0%}" for r in self) or "(none)"

    def _repr_html_(self) -> str:
        rows = [
            (
                html.escape(r.model),
                html.escape(r.worker),
                f"<progress value='{r.fraction:.3f}' max='1'></progress> {r.fraction:.0%}",
                _size(r.total),
            )
            for r in self
        ]
        return _table(("model", "worker", "copied", "size"), rows)


def replication(state: dict[str, Any], names: dict[str, str]) -> Replication:
    """A ``Replication`` from the scheduler's ``omax_cluster`` answer; ``names`` maps a
    manifest digest to a model name (digests nobody names are shown as digests)."""
    out = Replication()
    for w in state["workers"]:
        moving = {r["digest"]: r for r in w.get("replicating", [])}
        for digest, r in sorted(w.get("replicas", {}).items()):
            m = moving.pop(digest, None)
            done = m["completed"] if m and not r["complete"] else r["bytes_done"]
            total = m["total"] if m and not r["complete"] else r["bytes_total"]
            out.append(Replica(names.get(digest, digest), w["address"], done, total, r["complete"]))
        for digest, m in moving.items():
            out.append(
                Replica(names.get(digest, digest), w["address"], m["completed"], m["total"], False)
            )
    return out


class ProgressLines:
    """Shows a progress stream as it comes: one bar for the blobs of a pull (however
    many there are), one per other status that counts bytes (a replication to one
    worker), a line per status that does not. ``quiet`` only collects. Text bars
    (tqdm), so a notebook needs no widgets."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.lines: list[Progress] = []
        self._bars: dict[str, Any] = {}
        self._parts: dict[str, dict[str, tuple[int, int]]] = {}
        self._last = ""

    def __call__(self, p: Progress) -> None:
        self.lines.append(p)
        if self.quiet:
            return
        if p.total:
            self._bar(p)
        elif p.status != self._last:
            print(p.status)
        self._last = p.status

    def _bar(self, p: Progress) -> None:
        from tqdm import tqdm

        label = "pulling" if p.status.startswith("pulling ") else p.status
        parts = self._parts.setdefault(label, {})
        parts[p.digest or p.status] = (p.completed or 0, p.total or 0)
        done, total = (sum(x) for x in zip(*parts.values(), strict=True))
        bar = self._bars.get(label)
        if bar is None:
            bar = tqdm(desc=label, unit="B", unit_scale=True, leave=True, mininterval=0.5)
            self._bars[label] = bar
        bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
