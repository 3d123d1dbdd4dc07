"""Every ``omax.*`` configuration key: how its value is checked and which process reads it.

The defaults and what each key means live in ``omax.yaml`` (the one source of
defaults); this table adds what only code knows. ``omax.config.settings()`` checks
every key through it, and ``omax.config_doc`` writes the configuration page from
both. A key in ``omax.yaml`` without an entry here fails ``tests/test_config.py``.

Which process reads a key matters in a cluster: a key read by the scheduler must be
set where ``dask scheduler`` runs (it hands engine settings to the model actors it
starts), one read by workers on every ``dask worker`` host.
"""

from __future__ import annotations

from dataclasses import dataclass

from omax import config_values as v

FRONT_DOOR = "front door"  # omax serve, omax.connect() in a notebook
SCHEDULER = "scheduler"  # dask scheduler --preload omax.plugins.scheduler
WORKER = "worker"  # dask worker --preload omax.plugins.worker, and its model actors
CLI = "CLI"  # omax commands that work on the store or sign tokens themselves
EVERY = (FRONT_DOOR, SCHEDULER, WORKER, CLI)


@dataclass(frozen=True)
class Key:
    """One key under ``omax.``: ``name`` as in YAML (``serve.max-queue``), ``parse``
    turns the raw value into the typed one or raises ValueError, ``allowed`` says
    what would have passed, ``readers`` the processes that read it, ``field`` the
    ``Settings`` attribute (empty: read on its own, like ``limits.*``)."""

    name: str
    parse: v.Parser
    allowed: str
    readers: tuple[str, ...]
    field: str = ""


_DURATION = "a duration such as '{}'"
_POSITIVE = "a duration > 0 such as '{}'"
_INT1 = "an integer >= 1"
_INT0 = "an integer >= 0"
_SECRET = f"{v.MIN_SECRET}+ characters, or empty"


def _limit(name: str) -> Key:
    return Key(f"limits.{name}", v.int_at_least(1), _INT1, (FRONT_DOOR,))


KEYS: tuple[Key, ...] = (
    Key("store.url", v.local_path, "an fsspec URL or path", EVERY, "store_url"),
    Key("store.import-roots", v.path_list, "a list of paths", (FRONT_DOOR,), "import_roots"),
    Key("worker.store", v.nonempty, "a path", (WORKER,), "worker_store"),
    Key("worker.slot-memory", v.parse_size, "a size such as '8 GiB'", (WORKER,), "slot_memory"),
    Key("worker.disk-budget", v.parse_size, "a size (0: no limit)", (WORKER,), "disk_budget"),
    Key("worker.cpu-threads", v.int_at_least(0), _INT0, (WORKER,), "cpu_threads"),
    Key("worker.device", v.choice("auto", "cpu", "cuda"), "auto, cpu or cuda", (WORKER,), "device"),
    Key(
        "worker.request-lease",
        v.positive_duration,
        _POSITIVE.format("15s"),
        (SCHEDULER, WORKER),
        "request_lease",
    ),
    Key(
        "engine.dtype",
        v.choice("float32", "bfloat16"),
        "float32 or bfloat16",
        (SCHEDULER,),
        "engine_dtype",
    ),
    Key(
        "engine.quant",
        v.choice("none", "int8", "int4", "bf16"),
        "none, int8, int4 or bf16",
        (SCHEDULER,),
        "engine_quant",
    ),
    Key(
        "engine.prefix-cache",
        v.choice("auto", "on", "off"),
        "auto, on or off",
        (SCHEDULER,),
        "prefix_cache",
    ),
    Key("engine.native-decode", v.choice("auto", "off"), "auto or off", (WORKER,), "native_decode"),
    Key("engine.huge-pages", v.choice("on", "off"), "on or off", (WORKER,), "huge_pages"),
    Key("engine.cuda-graphs", v.choice("auto", "off"), "auto or off", (WORKER,), "cuda_graphs"),
    Key("engine.parallel", v.int_at_least(1), _INT1, (SCHEDULER,), "parallel"),
    Key(
        "engine.context-length",
        v.int_at_least(16),
        "an integer >= 16",
        (SCHEDULER,),
        "context_length",
    ),
    Key("serve.host", v.nonempty, "a host name or address", (FRONT_DOOR,), "host"),
    Key("serve.port", v.port, "a port number 0-65535", (FRONT_DOOR, CLI), "port"),
    Key(
        "serve.keep-alive",
        v.parse_duration,
        "a duration such as '5m', '30s' or -1",
        (SCHEDULER,),
        "keep_alive",
    ),
    Key("serve.max-queue", v.int_at_least(1), _INT1, (FRONT_DOOR,), "max_queue"),
    Key(
        "serve.stream-coalesce",
        v.nonnegative_duration,
        "a duration such as '40ms' or 0",
        (FRONT_DOOR,),
        "stream_coalesce",
    ),
    Key("serve.max-body", v.parse_size, "a size such as '64 MiB'", (FRONT_DOOR,), "max_body"),
    Key("serve.api-keys", v.string_list, "a list of strings", (FRONT_DOOR,), "api_keys"),
    Key("serve.jwt-secret", v.secret, _SECRET, (FRONT_DOOR, CLI)),
    Key(
        "serve.rpc-timeout",
        v.positive_duration,
        _POSITIVE.format("10s"),
        (FRONT_DOOR,),
        "rpc_timeout",
    ),
    Key(
        "serve.start-timeout",
        v.positive_duration,
        _POSITIVE.format("10m"),
        (FRONT_DOOR, SCHEDULER),
        "start_timeout",
    ),
    Key(
        "serve.reconnect-min",
        v.positive_duration,
        _POSITIVE.format("0.5s"),
        (FRONT_DOOR,),
        "reconnect_min",
    ),
    Key(
        "serve.reconnect-max",
        v.positive_duration,
        _POSITIVE.format("5s"),
        (FRONT_DOOR,),
        "reconnect_max",
    ),
    Key("serve.origins", v.string_list, "a list of origin patterns", (FRONT_DOOR,), "origins"),
    *(
        _limit(name)
        for name in (
            "stop",
            "stop-length",
            "messages",
            "tools",
            "images",
            "context",
            "template-length",
            "inputs",
        )
    ),
    Key("auth.required", v.boolean, "true or false", (FRONT_DOOR,), "auth_required"),
    Key("auth.jwt-secret", v.secret, _SECRET, (FRONT_DOOR, CLI), "jwt_secret"),
    Key(
        "auth.jwt-accepted",
        v.secret_list,
        f"a list of secrets of {v.MIN_SECRET}+ characters",
        (FRONT_DOOR,),
        "jwt_accepted",
    ),
    Key("auth.public-key", v.text, "a PEM key or its path", (FRONT_DOOR,), "public_key"),
    Key(
        "auth.metrics",
        v.choice("open", "viewer"),
        "open or viewer",
        (FRONT_DOOR,),
        "metrics_access",
    ),
    Key("placement.loaded-replicas", v.int_at_least(1), _INT1, (SCHEDULER,), "loaded_replicas"),
    Key(
        "placement.max-loaded-per-slot",
        v.int_at_least(0),
        _INT0,
        (SCHEDULER,),
        "max_loaded_per_slot",
    ),
    Key(
        "placement.drain-grace",
        v.nonnegative_duration,
        _DURATION.format("30s") + " or 0",
        (SCHEDULER,),
        "drain_grace",
    ),
    Key("replication.target", v.int_at_least(1), _INT1, (SCHEDULER,), "replication_target"),
    Key("log.format", v.choice("text", "json"), "text or json", EVERY, "log_format"),
    Key(
        "log.level",
        v.log_level,
        "DEBUG, INFO, WARNING, ERROR or CRITICAL",
        EVERY,
        "log_level",
    ),
    Key("log.file", v.text, "a path, or empty", (FRONT_DOOR, CLI), "log_file"),
    Key(
        "log.max-bytes", v.parse_size, "a size such as '10 MiB'", (FRONT_DOOR, CLI), "log_max_bytes"
    ),
    Key("log.backups", v.int_at_least(0), _INT0, (FRONT_DOOR, CLI), "log_backups"),
)

BY_NAME = {key.name: key for key in KEYS}
