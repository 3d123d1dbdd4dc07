"""Logging set up once for the CLI, the plugins and the app.

Human-readable lines by default; ``json`` gives one JSON object per line. A log
file rotates by size. ``setup_logging`` is idempotent: calling it again replaces the
handlers it installed before and leaves everyone else's alone.
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
    # Dask and uvicorn install their own stderr handlers; let records reach ours instead.
    for name in ("distributed", "uvicorn", "uvicorn.access", "uvicorn.error"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
    logging.getLogger("distributed").setLevel(max(logging.getLevelName(level), logging.WARNING))
    # Per-request lines of HTTP clients are noise on a terminal.
    logging.getLogger("httpx").setLevel(logging.WARNING)
