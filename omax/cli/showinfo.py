"""``omax show MODEL`` and ``/show info``: the sections the ollama CLI prints for a
``/api/show`` answer (Model, Capabilities, Parameters, Metadata with ``--verbose``,
Tensors with ``--verbose``, System, License)."""

from __future__ import annotations

from typing import Any, TextIO

import click


def print_info(info: dict[str, Any], verbose: bool = False, out: TextIO | None = None) -> None:
    """Print ``info`` (a ``/api/show`` body) as indented, column-aligned sections."""
    for header, rows in sections(info, verbose):
        click.echo(f"  {header}", file=out)
        widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
        for row in rows:
            cells = [c.ljust(widths[i]) for i, c in enumerate(row)]
            click.echo(("    " + "    ".join(cells)).rstrip(), file=out)
        click.echo(file=out)


def sections(info: dict[str, Any], verbose: bool) -> list[tuple[str, list[list[str]]]]:
    """The sections as (header, rows of cells); empty sections are left out."""
    details = info.get("details") or {}
    mi = info.get("model_info") or {}
    arch = str(mi.get("general.architecture") or details.get("family") or "")
    model = [["architecture", arch], ["parameters", str(details.get("parameter_size", ""))]]
    for key, label in (
        ("context_length", "context length"),
        ("embedding_length", "embedding length"),
    ):
        if f"{arch}.{key}" in mi:
            model.append([label, str(mi[f"{arch}.{key}"])])
    model.append(["quantization", str(details.get("quantization_level", ""))])
    out: list[tuple[str, list[list[str]]]] = [("Model", model)]
    if info.get("capabilities"):
        out.append(("Capabilities", [[c] for c in info["capabilities"]]))
    params = [line.split(None, 1) for line in (info.get("parameters") or "").splitlines()]
    if any(params):
        out.append(("Parameters", [p for p in params if p]))
    if verbose and mi:
        out.append(("Metadata", [[k, _value(mi[k])] for k in sorted(mi)]))
    if verbose and info.get("tensors"):
        rows = [
            [t["name"], str(t.get("type", "")), str(t.get("shape", ""))] for t in info["tensors"]
        ]
        out.append(("Tensors", rows))
    for key, header in (("system", "System"), ("license", "License")):
        text = info.get(key)
        text = "\n".join(text) if isinstance(text, list) else text
        if text:
            out.append((header, _head(text, 2)))
    return out


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        shown = ", ".join(map(str, v[:3]))
        return f"[{shown} ...+{len(v) - 3} more]" if len(v) > 3 else f"[{shown}]"
    text = str(v).replace("\n", "\\n")
    return text if len(text) <= 100 else text[:97] + "..."


def _head(text: str, n: int) -> list[list[str]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    rows = [[line] for line in lines[:n]]
    return rows + [["..."]] if len(lines) > n else rows
