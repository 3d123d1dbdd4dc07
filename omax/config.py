"""omax configuration: dask.config under the namespace ``omax``.

Defaults live in ``omax.yaml`` beside this file and are registered with dask.config
on import, so Dask's usual YAML locations and ``DASK_OMAX__...`` environment
variables override them. ``settings()`` reads and validates the whole namespace into
a frozen ``Settings``; an invalid value raises ``ConfigError`` naming the key, the
value and what is allowed, so start-up stops with one clear line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.config
import yaml

from omax.errors import ConfigError

_DEFAULTS_FILE = Path(__file__).with_name("omax.yaml")

with _DEFAULTS_FILE.open() as _f:
    _DEFAULTS: dict[str, Any] = yaml.safe_load(_f)

dask.config.update_defaults(_DEFAULTS)

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


def _nonnegative_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds < 0:
        raise ValueError(value)
    return seconds


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(value)
    return seconds


@dataclass(frozen=True)
class Settings:
    store_url: str
    import_roots: tuple[str, ...]
    worker_store: str
    slot_memory: int
    disk_budget: int
    cpu_threads: int
    device: str
    request_lease: float
    engine_dtype: str
    engine_quant: str
    prefix_cache: str
    native_decode: str
    parallel: int
    context_length: int
    host: str
    port: int
    keep_alive: float
    max_queue: int
    stream_coalesce: float
    max_body: int
    api_keys: tuple[str, ...]
    jwt_secret: str  # omax.auth.jwt-secret, else the older omax.serve.jwt-secret
    jwt_accepted: tuple[str, ...]
    public_key: str
    auth_required: bool
    metrics_access: str
    rpc_timeout: float
    start_timeout: float
    reconnect_min: float
    reconnect_max: float
    origins: tuple[str, ...]
    replication_target: int
    loaded_replicas: int
    max_loaded_per_slot: int
    drain_grace: float
    log_format: str
    log_level: str
    log_file: str
    log_max_bytes: int
    log_backups: int


MIN_SECRET = 32  # characters of an HS256 secret (RFC 7518: a key as long as the hash)


# Ollama's environment variables, honoured for an omax key left at its default (an
# explicit omax setting, in YAML or DASK_OMAX__..., wins).
OLLAMA_ENV = {
    "engine.parallel": "OLLAMA_NUM_PARALLEL",
    "engine.context-length": "OLLAMA_CONTEXT_LENGTH",
    "placement.max-loaded-per-slot": "OLLAMA_MAX_LOADED_MODELS",
    "serve.max-queue": "OLLAMA_MAX_QUEUE",
    "serve.keep-alive": "OLLAMA_KEEP_ALIVE",
}


def _default(key: str) -> Any:
    node: Any = _DEFAULTS["omax"]
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _get(key: str) -> Any:
    value = dask.config.get(f"omax.{key}")
    env = OLLAMA_ENV.get(key)
    if env and os.environ.get(env, "").strip() and value == _default(key):
        return os.environ[env].strip()
    return value


def _check(key: str, parse: Any, allowed: str) -> Any:
    value = _get(key)
    try:
        return parse(value)
    except (ValueError, TypeError):
        raise ConfigError(
            f"invalid configuration omax.{key}={value!r}: expected {allowed}"
        ) from None


def positive_int(key: str) -> int:
    """``omax.<key>`` as an integer >= 1; ConfigError naming the key if it is not."""
    return int(_check(key, _int_at_least(1), "an integer >= 1"))


def _choice(*options: str) -> Any:
    def parse(value: Any) -> str:
        if str(value) not in options:
            raise ValueError(value)
        return str(value)

    return parse


def _int_at_least(low: int) -> Any:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or int(value) != float(value) or int(value) < low:
            raise ValueError(value)
        return int(value)

    return parse


def _port(value: Any) -> int:
    port = _int_at_least(0)(value)
    if port > 65535:
        raise ValueError(value)
    return port


def _nonempty(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(value)
    return value


def _string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # DASK_OMAX__SERVE__API_KEYS="a,b"
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(value)
    return tuple(v.strip() for v in value)


def _secret(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or (value and len(value) < MIN_SECRET):
        raise ValueError(value)
    return value


def _secret_list(value: Any) -> tuple[str, ...]:
    secrets = _string_list(value)
    for secret in secrets:
        _secret(secret)
    return secrets


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in {"true", "false", "1", "0", "yes", "no"}:
        raise ValueError(value)
    return text in {"true", "1", "yes"}


def _level(value: Any) -> str:
    level = str(value).upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError(value)
    return level


def expand_path(url: str) -> str:
    """Expand ``~`` and environment variables in a local path; leave URLs alone."""
    if "://" in url:
        return url
    return os.path.expanduser(os.path.expandvars(url))


def settings() -> Settings:
    """Read and validate the ``omax`` namespace. Raises ConfigError on a bad value."""
    return Settings(
        store_url=expand_path(_check("store.url", _nonempty, "an fsspec URL or path")),
        import_roots=tuple(
            expand_path(p) for p in _check("store.import-roots", _string_list, "a list of paths")
        ),
        worker_store=_check("worker.store", _nonempty, "a path"),
        slot_memory=_check("worker.slot-memory", parse_size, "a size such as '8 GiB'"),
        disk_budget=_check(
            "worker.disk-budget", parse_size, "a size such as '200 GiB' (0: no limit)"
        ),
        cpu_threads=_check("worker.cpu-threads", _int_at_least(0), "an integer >= 0"),
        device=_check("worker.device", _choice("auto", "cpu", "cuda"), "auto, cpu or cuda"),
        request_lease=_check(
            "worker.request-lease", _positive_duration, "a duration > 0 such as '15s'"
        ),
        engine_dtype=_check("engine.dtype", _choice("float32", "bfloat16"), "float32 or bfloat16"),
        engine_quant=_check(
            "engine.quant", _choice("none", "int8", "int4", "bf16"), "none, int8, int4 or bf16"
        ),
        prefix_cache=_check("engine.prefix-cache", _choice("auto", "on", "off"), "auto, on or off"),
        native_decode=_check("engine.native-decode", _choice("auto", "off"), "auto or off"),
        parallel=_check("engine.parallel", _int_at_least(1), "an integer >= 1"),
        context_length=_check("engine.context-length", _int_at_least(16), "an integer >= 16"),
        host=_check("serve.host", _nonempty, "a host name or address"),
        port=_check("serve.port", _port, "a port number 0-65535"),
        keep_alive=_check(
            "serve.keep-alive", parse_duration, "a duration such as '5m', '30s' or -1"
        ),
        max_queue=_check("serve.max-queue", _int_at_least(1), "an integer >= 1"),
        stream_coalesce=_check(
            "serve.stream-coalesce", _nonnegative_duration, "a duration such as '40ms' or 0"
        ),
        max_body=_check("serve.max-body", parse_size, "a size such as '64 MiB'"),
        api_keys=_check("serve.api-keys", _string_list, "a list of strings"),
        jwt_secret=_check("auth.jwt-secret", _secret, f"{MIN_SECRET}+ characters, or empty")
        or _check("serve.jwt-secret", _secret, f"{MIN_SECRET}+ characters, or empty"),
        jwt_accepted=_check(
            "auth.jwt-accepted", _secret_list, f"a list of secrets of {MIN_SECRET}+ characters"
        ),
        public_key=str(_get("auth.public-key") or ""),
        auth_required=_check("auth.required", _bool, "true or false"),
        metrics_access=_check("auth.metrics", _choice("open", "viewer"), "open or viewer"),
        rpc_timeout=_check("serve.rpc-timeout", _positive_duration, "a duration > 0 such as '10s'"),
        start_timeout=_check(
            "serve.start-timeout", _positive_duration, "a duration > 0 such as '10m'"
        ),
        reconnect_min=_check(
            "serve.reconnect-min", _positive_duration, "a duration > 0 such as '0.5s'"
        ),
        origins=_check("serve.origins", _string_list, "a list of origin patterns"),
        reconnect_max=_check(
            "serve.reconnect-max", _positive_duration, "a duration > 0 such as '5s'"
        ),
        replication_target=_check("replication.target", _int_at_least(1), "an integer >= 1"),
        loaded_replicas=_check("placement.loaded-replicas", _int_at_least(1), "an integer >= 1"),
        max_loaded_per_slot=_check(
            "placement.max-loaded-per-slot", _int_at_least(0), "an integer >= 0"
        ),
        drain_grace=_check(
            "placement.drain-grace", _nonnegative_duration, "a duration such as '30s' or 0"
        ),
        log_format=_check("log.format", _choice("text", "json"), "text or json"),
        log_level=_check("log.level", _level, "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
        log_file=str(_get("log.file") or ""),
        log_max_bytes=_check("log.max-bytes", parse_size, "a size such as '10 MiB'"),
        log_backups=_check("log.backups", _int_at_least(0), "an integer >= 0"),
    )


def worker_store_path(template: str, name: str, address: str = "") -> str:
    """The worker-local store folder for one worker: ``{name}`` (the worker's name,
    stable across restarts) and ``{address}`` filled in safely."""

    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "worker"

    path = template.replace("{name}", safe(name)).replace("{address}", safe(address or name))
    return expand_path(path)
