"""``/set`` and ``/show`` of the interactive session as pure functions: a ``Session``
and the words typed in, the text to print out. Tested without a server."""

from __future__ import annotations

from typing import Any

from omax.cli import help_text
from omax.cli.chat import Session
from omax.errors import InvalidRequest


def apply_set(s: Session, args: list[str]) -> str:
    """Apply ``/set ARGS`` (all but ``system``) to ``s``; return what to print."""
    if not args:
        return help_text.SET
    word, rest = args[0], args[1:]
    flags = {
        "wordwrap": ("wrap", True, "Set 'wordwrap' mode.\n"),
        "nowordwrap": ("wrap", False, "Set 'nowordwrap' mode.\n"),
        "verbose": ("verbose", True, "Set 'verbose' mode.\n"),
        "quiet": ("verbose", False, "Set 'quiet' mode.\n"),
        "noformat": ("format", None, "Disabled format.\n"),
        "nothink": ("think", False, "Set 'nothink' mode.\n"),
    }
    if word in flags:
        attr, value, said = flags[word]
        setattr(s, attr, value)
        return said
    if word in ("history", "nohistory"):
        return ""  # readline keeps history either way; accepted for Ollama's muscle memory
    if word == "think":
        s.think = rest[0] if rest else True
        return f"Set 'think' mode to '{rest[0]}'.\n" if rest else "Set 'think' mode.\n"
    if word == "format":
        if rest[:1] != ["json"]:
            return "Invalid or missing format. For 'json' mode use '/set format json'\n"
        s.format = "json"
        return "Set format to 'json' mode.\n"
    if word == "parameter":
        return _set_parameter(s, rest)
    return f"Unknown command '/set {word}'. Type /? for help\n"


def _set_parameter(s: Session, args: list[str]) -> str:
    from omax.sharding.modelfile import LIST_PARAMS, parse_parameter

    if len(args) < 2:
        return help_text.PARAMETERS
    key, values = args[0].lower(), args[1:]
    try:
        parsed = [parse_parameter(key, v) for v in values]
    except InvalidRequest as err:
        return f"Couldn't set parameter: {err}\n"
    s.options[key] = parsed if key in LIST_PARAMS else parsed[0]
    return f"Set parameter '{key}' to '{', '.join(values)}'\n"


def show_text(s: Session, info: dict[str, Any], what: str) -> str:
    """``/show WHAT`` (all but ``info``) for the session's model; ``info`` is /api/show."""
    if what == "license":
        text = info.get("license") or ""
        text = "\n".join(text) if isinstance(text, list) else text
        return text or "No license was specified for this model."
    if what == "modelfile":
        return info.get("modelfile") or ""
    if what == "system":
        text = s.system or info.get("system")
        return text + "\n" if text else "No system message was specified for this model."
    if what == "template":
        return info.get("template") or "No prompt template was specified for this model."
    if what == "parameters":
        return _parameters(s, info.get("parameters") or "")
    return f"Unknown command '/show {what}'. Type /? for help"


def _parameters(s: Session, model_params: str) -> str:
    lines = ["Model defined parameters:"]
    if model_params:
        lines += [f"  {line}" for line in model_params.splitlines()]
    else:
        lines.append("  No additional parameters were specified for this model.")
    lines.append("")
    if s.options:
        lines.append("User defined parameters:")
        lines += [f"  {k:<30} {v}" for k, v in s.options.items()]
        lines.append("")
    return "\n".join(lines)
