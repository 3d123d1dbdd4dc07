"""Logging set up once for the CLI, the plugins and the app.

Human-readable lines by default; ``json`` gives one JSON object per line. A log
file rotates by size. ``setup_logging`` (the ``omax`` CLI) is idempotent: calling it
again replaces the handlers it installed before and leaves everyone else's alone.
``setup_plugin_logging`` (the preloads, in ``dask scheduler`` / ``dask worker``
processes that Dask's own logging config runs) gives only the ``omax`` logger a
stderr handler at ``omax.log.level``: without it omax's INFO lines (replication,
eviction, loads) never showed there.

Request context: ``log_context`` (a ``ContextVar``) holds what a log line about a
request must name: its request id, model and worker. The front door's request-id
middleware opens one per HTTP request (asyncio tasks and Starlette's stream tasks
copy it, and they share the one ``LogContext`` object, so ``bind`` from anywhere in
the request fills it for all); the model actor and the batching thread open one
around their lines about a request. ``ContextFilter``, on every handler installed
here, copies it onto each record (``request_id``, ``model``, ``worker``; an
``extra=`` of the same names wins), and both formatters print what is set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

_MARK = "_omax_handler"
_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
CONTEXT_FIELDS = ("request_id", "model", "worker")


@dataclass
class LogContext:
    """What log lines about one request name. Mutable on purpose: every task of the
    request shares this object, so a field bound late (the worker chosen after
    routing) reaches lines logged by tasks started earlier."""

    request_id: str = ""
    model: str = ""
    worker: str = ""


_context: ContextVar[LogContext | None] = ContextVar("omax_log_context", default=None)


def current_context() -> LogContext | None:
    """The request this code runs for, or None outside one."""
    return _context.get()


@contextlib.contextmanager
def log_context(request_id: str = "", model: str = "", worker: str = "") -> Iterator[LogContext]:
    """Lines logged inside name this request (a new context, restored on exit)."""
    ctx = LogContext(request_id, model, worker)
    token = _context.set(ctx)
    try:
        yield ctx
    finally:
        _context.reset(token)


@contextlib.contextmanager
def use_context(ctx: LogContext | None) -> Iterator[None]:
    """Lines logged inside name ``ctx``'s request (e.g. one captured on another
    thread); with None, nothing changes."""
    if ctx is None:
        yield
        return
    token = _context.set(ctx)
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: str) -> None:
    """Fill fields of the current request's context (nothing outside a request)."""
    ctx = _context.get()
    if ctx is not None:
        for name, value in fields.items():
            if name in CONTEXT_FIELDS and value:
                setattr(ctx, name, value)


class ContextFilter(logging.Filter):
    """Copy the current ``LogContext`` onto each record; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        for name in CONTEXT_FIELDS:
            if not getattr(record, name, ""):
                setattr(record, name, getattr(ctx, name, "") if ctx is not None else "")
        return True


def _context_of(record: logging.LogRecord) -> dict[str, str]:
    return {n: v for n in CONTEXT_FIELDS if (v := getattr(record, n, ""))}


class TextFormatter(logging.Formatter):
    """``_TEXT_FORMAT`` plus ``[request_id=... model=... worker=...]`` when known."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        line = super().formatMessage(record)
        fields = _context_of(record)
        if fields:
            line += " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the request's
    ``request_id`` / ``model`` / ``worker`` when known (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context_of(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def formatter_for(fmt: str) -> logging.Formatter:
    """The formatter of ``omax.log.format``: ``json`` or text."""
    return JsonFormatter() if fmt == "json" else TextFormatter()


def setup_logging(
    fmt: str = "text",
    level: str = "INFO",
    file: str = "",
    max_bytes: int = 10 * 2**20,
    backups: int = 3,
) -> None:
    """Route the ``omax``, ``distributed`` and ``uvicorn`` loggers through our handlers."""
    formatter = formatter_for(fmt)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file:
        handlers.append(
            logging.handlers.RotatingFileHandler(file, maxBytes=max_bytes, backupCount=backups)
        )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(ContextFilter())
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(level)
    _own_omax_handlers(logging.getLogger("omax"), [])
    # Dask and uvicorn install their own stderr handlers; let records reach ours instead.
    for name in ("distributed", "uvicorn", "uvicorn.access", "uvicorn.error"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
    logging.getLogger("distributed").setLevel(max(logging.getLevelName(level), logging.WARNING))
    # Per-request lines of HTTP clients are noise on a terminal.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _own_omax_handlers(lg: logging.Logger, handlers: list[logging.Handler]) -> None:
    """Replace the handlers ``setup_plugin_logging`` put on ``omax`` by ``handlers``."""
    for old in [h for h in lg.handlers if getattr(h, _MARK, False)]:
        lg.removeHandler(old)
        old.close()
    for handler in handlers:
        setattr(handler, _MARK, True)
        lg.addHandler(handler)


def setup_plugin_logging() -> None:
    """In a Dask process started by ``dask scheduler`` or ``dask worker``: omax's own
    records go to stderr in ``omax.log.format`` at ``omax.log.level``, beside Dask's
    lines (Dask configures its own loggers only, so the root has no handler there and
    nothing prints twice; records still propagate, e.g. to pytest's capture). Where
    ``setup_logging`` already routes everything (``omax serve`` and its embedded
    scheduler) this does nothing. ``omax.log.file`` is not used here: several
    processes would rotate one file."""
    if any(getattr(h, _MARK, False) for h in logging.getLogger().handlers):
        return
    from omax.config import settings

    cfg = settings()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(cfg.log_format))
    handler.addFilter(ContextFilter())
    lg = logging.getLogger("omax")
    _own_omax_handlers(lg, [handler])
    lg.setLevel(cfg.log_level.upper())
