"""Logging set up once for the CLI, the plugins and the app.

Human-readable lines by default; ``json`` gives one JSON object per line. A log
file rotates by size. ``setup_logging`` (the ``omax`` CLI) is idempotent: calling it
again replaces the handlers it installed before and leaves everyone else's alone.
``setup_plugin_logging`` (the preloads, in ``dask scheduler`` / ``dask worker``
processes that Dask's own logging config runs) gives only the ``omax`` logger a
stderr handler at ``omax.log.level``: without it omax's INFO lines (replication,
eviction, loads) never showed there.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time

_MARK = "_omax_handler"
_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(
    fmt: str = "text",
    level: str = "INFO",
    file: str = "",
    max_bytes: int = 10 * 2**20,
    backups: int = 3,
) -> None:
    """Route the ``omax``, ``distributed`` and ``uvicorn`` loggers through our handlers."""
    formatter: logging.Formatter = (
        JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT)
    )
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
    handler.setFormatter(
        JsonFormatter() if cfg.log_format == "json" else logging.Formatter(_TEXT_FORMAT)
    )
    lg = logging.getLogger("omax")
    _own_omax_handlers(lg, [handler])
    lg.setLevel(cfg.log_level.upper())
