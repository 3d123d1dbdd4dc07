"""omax configuration: dask.config under the namespace ``omax``.

Defaults live in ``omax.yaml`` beside this file and are registered with dask.config
on import, so Dask's usual YAML locations and ``DASK_OMAX__...`` environment
variables override them. ``settings()`` reads and checks every key listed in
``omax.config_keys`` into a frozen ``Settings``; an invalid value raises
``ConfigError`` naming the key, the value and what is allowed, so start-up stops
with one clear line. What a value may be is ``omax.config_values``; the
configuration page is written from ``omax.yaml`` and the key table by
``python -m omax.config_doc``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.config
import yaml

from omax.config_keys import BY_NAME, KEYS
from omax.config_values import Parser, expand_path, int_at_least
from omax.errors import ConfigError

_DEFAULTS_FILE = Path(__file__).with_name("omax.yaml")

with _DEFAULTS_FILE.open() as _f:
    _DEFAULTS: dict[str, Any] = yaml.safe_load(_f)

dask.config.update_defaults(_DEFAULTS)


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
    huge_pages: str
    cuda_graphs: str
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


def _check(key: str, parse: Parser, allowed: str) -> Any:
    value = _get(key)
    try:
        return parse(value)
    except (ValueError, TypeError):
        raise ConfigError(
            f"invalid configuration omax.{key}={value!r}: expected {allowed}"
        ) from None


def positive_int(key: str) -> int:
    """``omax.<key>`` as an integer >= 1; ConfigError naming the key if it is not."""
    return int(_check(key, int_at_least(1), "an integer >= 1"))


def setting(name: str) -> Any:
    """One key, ``omax.<name>``, read and checked as ``settings`` does (a fraction of a
    millisecond, where ``settings`` reads every key: for a check made per weight)."""
    key = BY_NAME[name]
    return _check(key.name, key.parse, key.allowed)


def settings() -> Settings:
    """Read and check every key of the ``omax`` namespace (``config_keys.KEYS``).
    Raises ConfigError naming the first bad key, its value and what is allowed."""
    values = {key.name: _check(key.name, key.parse, key.allowed) for key in KEYS}
    fields = {key.field: values[key.name] for key in KEYS if key.field}
    fields["jwt_secret"] = fields["jwt_secret"] or values["serve.jwt-secret"]
    return Settings(**fields)


def worker_store_path(template: str, name: str, address: str = "") -> str:
    """The worker-local store folder for one worker: ``{name}`` (the worker's name,
    stable across restarts) and ``{address}`` filled in safely."""

    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "worker"

    path = template.replace("{name}", safe(name)).replace("{address}", safe(address or name))
    return expand_path(path)
