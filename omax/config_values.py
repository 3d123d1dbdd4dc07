"""What a configuration value may be: parsers for sizes, durations, lists and choices.

Each parser takes the raw value (from YAML, an environment variable or
``dask.config.set``) and returns it typed, or raises ValueError; ``omax.config``
turns that into one ConfigError naming the key. Pure functions, no dask.config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

Parser = Callable[[Any], Any]

MIN_SECRET = 32  # characters of an HS256 secret (RFC 7518: a key as long as the hash)

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")


def parse_size(value: Any) -> int:
    """Return a byte count for ``8 GiB``, ``512MB``, ``1024`` or an int. ValueError if not."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(value)
        return int(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(value)
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: Any) -> float:
    """Return seconds for a Go-style duration (``5m``, ``1h30m``, ``-1``) or a number.

    Negative means forever; the caller decides what that means.
    """
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _DURATION_PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise ValueError(value)
    return sign * sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def nonnegative_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds < 0:
        raise ValueError(value)
    return seconds


def positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(value)
    return seconds


def choice(*options: str) -> Parser:
    def parse(value: Any) -> str:
        if str(value) not in options:
            raise ValueError(value)
        return str(value)

    return parse


def int_at_least(low: int) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or int(value) != float(value) or int(value) < low:
            raise ValueError(value)
        return int(value)

    return parse


def port(value: Any) -> int:
    number = int_at_least(0)(value)
    if number > 65535:
        raise ValueError(value)
    return number


def nonempty(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(value)
    return value


def text(value: Any) -> str:
    """Any string; an absent value (YAML ``~``) is the empty one."""
    return "" if value is None else str(value)


def string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # DASK_OMAX__SERVE__API_KEYS="a,b"
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(value)
    return tuple(v.strip() for v in value)


def secret(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or (value and len(value) < MIN_SECRET):
        raise ValueError(value)
    return value


def secret_list(value: Any) -> tuple[str, ...]:
    secrets = string_list(value)
    for each in secrets:
        secret(each)
    return secrets


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word not in {"true", "false", "1", "0", "yes", "no"}:
        raise ValueError(value)
    return word in {"true", "1", "yes"}


def log_level(value: Any) -> str:
    level = str(value).upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError(value)
    return level


def expand_path(url: str) -> str:
    """Expand ``~`` and environment variables in a local path; leave URLs alone."""
    if "://" in url:
        return url
    return os.path.expanduser(os.path.expandvars(url))


def local_path(value: Any) -> str:
    return expand_path(nonempty(value))


def path_list(value: Any) -> tuple[str, ...]:
    return tuple(expand_path(p) for p in string_list(value))
