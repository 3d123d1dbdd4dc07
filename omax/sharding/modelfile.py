"""Ollama Modelfiles: parse to a plain dataclass, and write one back.

Supported: FROM, TEMPLATE, SYSTEM, PARAMETER, MESSAGE, LICENSE (repeatable), comments
(``#``), and values quoted with ``"..."`` or ``\"\"\"...\"\"\"`` (multi-line). ADAPTER is
refused (no LoRA support). Commands are case-insensitive, as in Ollama.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from omax.errors import InvalidRequest

INT_PARAMS = {
    "num_ctx", "num_predict", "num_keep", "seed", "top_k", "repeat_last_n", "num_batch",
    "num_gpu", "num_thread", "main_gpu", "mirostat",
}  # fmt: skip
FLOAT_PARAMS = {
    "temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
    "frequency_penalty", "mirostat_tau", "mirostat_eta", "tfs_z",
}  # fmt: skip
BOOL_PARAMS = {"penalize_newline", "numa", "use_mmap", "use_mlock", "low_vram", "f16_kv"}
LIST_PARAMS = {"stop"}
ROLES = {"system", "user", "assistant", "tool"}


@dataclass
class Modelfile:
    from_: str | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)


def parse_parameter(key: str, value: str) -> Any:
    key = key.lower()
    try:
        if key in INT_PARAMS:
            return int(value)
        if key in FLOAT_PARAMS:
            return float(value)
        if key in BOOL_PARAMS:
            if value.lower() not in ("true", "false"):
                raise ValueError(value)
            return value.lower() == "true"
    except ValueError:
        raise InvalidRequest(f"invalid value for parameter {key}: {value!r}") from None
    if key in LIST_PARAMS:
        return value
    raise InvalidRequest(f"unknown parameter {key!r}")


def add_parameter(params: dict[str, Any], key: str, value: Any) -> None:
    key = key.lower()
    if key in LIST_PARAMS:
        params.setdefault(key, [])
        params[key].extend(value if isinstance(value, list) else [value])
    else:
        params[key] = value


def parse(text: str) -> Modelfile:
    """Parse Modelfile text; InvalidRequest names the line that is wrong."""
    mf = Modelfile()
    pos, n, line_no = 0, len(text), 1
    while pos < n:
        end = text.find("\n", pos)
        end = n if end == -1 else end
        line = text[pos:end].strip()
        start_line = line_no
        line_no += 1
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        command, _, rest = line.partition(" ")
        command = command.upper()
        rest = rest.lstrip()
        quote = rest.find('"""')
        if quote != -1:
            # The value runs to the next closing triple quote, possibly lines later.
            line_start = text.rfind("\n", 0, end) + 1
            body_start = text.find('"""', line_start) + 3
            close = text.find('"""', body_start)
            if close == -1:
                raise InvalidRequest(f'Modelfile line {start_line}: unterminated """')
            nl = text.find("\n", close)
            pos = n if nl == -1 else nl + 1
            line_no = text.count("\n", 0, pos) + 1
            prefix = rest[:quote].strip()
            value = text[body_start:close]
            mf_apply(mf, command, f"{prefix} {value}" if prefix else value, start_line, raw=True)
        else:
            mf_apply(mf, command, rest, start_line, raw=False)
    if mf.from_ is None:
        raise InvalidRequest("Modelfile has no FROM line")
    return mf


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def mf_apply(mf: Modelfile, command: str, value: str, line: int, raw: bool) -> None:
    v = value if raw else _unquote(value)
    if command == "FROM":
        mf.from_ = v.strip()
    elif command == "TEMPLATE":
        mf.template = v
    elif command == "SYSTEM":
        mf.system = v
    elif command == "LICENSE":
        mf.license.append(v)
    elif command == "ADAPTER":
        raise InvalidRequest(f"Modelfile line {line}: ADAPTER is not supported")
    elif command == "PARAMETER":
        key, _, pv = value.strip().partition(" ")
        if not pv.strip():
            raise InvalidRequest(f"Modelfile line {line}: PARAMETER needs a name and a value")
        add_parameter(mf.parameters, key, parse_parameter(key, _unquote(pv.strip())))
    elif command == "MESSAGE":
        role, _, content = value.lstrip().partition(" ")
        if role.lower() not in ROLES:
            raise InvalidRequest(f"Modelfile line {line}: unknown MESSAGE role {role!r}")
        content = content if raw else _unquote(content.strip())
        mf.messages.append({"role": role.lower(), "content": content})
    else:
        raise InvalidRequest(f"Modelfile line {line}: unknown command {command!r}")


def _quote(text: str) -> str:
    return f'"""{text}"""'


def render(
    from_: str,
    template: str = "",
    system: str = "",
    parameters: dict[str, Any] | None = None,
    messages: tuple[dict[str, Any], ...] | list[dict[str, Any]] = (),
    license: str = "",
    header: str = "",
) -> str:
    """Modelfile text Ollama's ``show --modelfile`` would print for these values."""
    lines = [header] if header else []
    lines.append(f"FROM {from_}")
    if template:
        lines.append(f"TEMPLATE {_quote(template)}")
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    for key, value in sorted((parameters or {}).items()):
        for item in value if isinstance(value, list) else [value]:
            text = json.dumps(item) if isinstance(item, str | bool) else str(item)
            lines.append(f"PARAMETER {key} {text.lower() if isinstance(item, bool) else text}")
    for m in messages:
        lines.append(f"MESSAGE {m.get('role')} {_quote(str(m.get('content', '')))}")
    if license:
        lines.append(f"LICENSE {_quote(license)}")
    return "\n".join(lines) + "\n"
