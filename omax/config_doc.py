"""Write the key tables of ``docs/configuration.md`` from ``omax.yaml`` and the key table.

``omax.yaml`` holds each key's default and, in the comment above it (or after it on
its line), what it means; ``omax.config_keys`` says which processes read it. The
page's tables sit between two markers and are replaced whole::

    python -m omax.config_doc          # rewrite docs/configuration.md
    python -m omax.config_doc --check  # exit 1 if the page is out of date

``tests/test_config.py`` runs the check, so a key added to ``omax.yaml`` reaches the
page in the same change.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from omax.config_keys import BY_NAME

YAML_FILE = Path(__file__).with_name("omax.yaml")
PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
BEGIN = "<!-- keys: written by `python -m omax.config_doc` from omax/omax.yaml -->"
END = "<!-- end of keys -->"

_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_-]+):(?P<rest>.*)$")


@dataclass
class Commented:
    """What ``omax.yaml`` says around its keys: sections' and keys' comments."""

    sections: dict[str, str]
    keys: dict[str, str]


def read_comments(text: str) -> Commented:
    """The comment lines above each key (and after it on its line), joined, by the
    key's dotted name under ``omax.``; a section's comment by its name."""
    sections: dict[str, str] = {}
    keys: dict[str, str] = {}
    path: list[str] = []
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = _LINE.match(line)
        if not match:
            pending = []
            continue
        depth = len(match["indent"]) // 2
        path = [*path[:depth], match["key"]]
        value, _, inline = match["rest"].partition(" #")
        words = " ".join([*pending, inline.strip()]).strip()
        name = ".".join(path[1:])
        if value.strip():
            keys[name] = words
        elif name:
            sections[name] = words
        pending = []
    return Commented(sections, keys)


def _default(value: Any) -> str:
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


def leaves(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out += leaves(value, f"{name}.") if isinstance(value, dict) else [(name, value)]
    return out


def tables(yaml_text: str) -> str:
    """One table a section: key, default, the processes that read it, its meaning."""
    comments = read_comments(yaml_text)
    defaults = yaml.safe_load(yaml_text)["omax"]
    parts: list[str] = []
    for section, tree in defaults.items():
        parts += [f"### `omax.{section}`", ""]
        if comments.sections.get(section):
            parts += [comments.sections[section], ""]
        parts += ["| key | default | read by | meaning |", "|---|---|---|---|"]
        for name, value in leaves(tree, f"{section}."):
            readers = ", ".join(BY_NAME[name].readers)
            meaning = comments.keys.get(name, "").replace("|", "\\|")
            parts.append(f"| `omax.{name}` | {_default(value)} | {readers} | {meaning} |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def render(page: str, yaml_text: str) -> str:
    """``page`` with the text between the markers replaced by fresh tables."""
    head, _, rest = page.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n\n{tables(yaml_text)}\n{END}{tail}"


def main(argv: list[str]) -> int:
    page, fresh = PAGE.read_text(), render(PAGE.read_text(), YAML_FILE.read_text())
    if "--check" in argv:
        if page != fresh:
            print(f"{PAGE} is out of date: run python -m omax.config_doc", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
