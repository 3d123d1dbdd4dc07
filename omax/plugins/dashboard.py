"""The omax page on the Dask dashboard: ``http://<scheduler>:8787/omax``.

One auto-refreshing page with a panel per worker: its inference slots and the memory
loaded models reserve, replication in progress as progress bars (bytes per model and
worker), complete and partial replicas, and loaded models with requests in flight
and their expiry. It reads the scheduler plugin's registry; it changes nothing.
"""

from __future__ import annotations

import html
import time
from typing import Any

from tornado import web

from omax.plugins.placement import fmt_bytes

_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em} h2{font-size:1.05em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.2em 0 .8em} td,th{padding:.15em .8em;text-align:left}
th{border-bottom:1px solid #999;font-weight:600} progress{width:16em}
.muted{color:#777}
"""


def _short(digest: str) -> str:
    return digest.split(":")[-1][:12]


def _table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "<p class=muted>none</p>"
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _bar(done: int, total: int) -> str:
    pct = 100 * done / total if total else 100
    return (
        f"<progress value={done} max={max(total, 1)}></progress> {pct:.0f}% of {fmt_bytes(total)}"
    )


def render(state: dict[str, Any], now: float) -> str:
    """The page for an ``omax_cluster()`` snapshot. Pure, so it tests without a server."""
    parts = [f"<h1>omax: {len(state.get('workers', ()))} worker(s)</h1>"]
    for w in state.get("workers", ()):
        parts.append(f"<h2>{html.escape(w['address'])}</h2>")
        reserved: dict[str, int] = {}
        for m in w.get("loaded", ()):
            reserved[m["slot"]] = reserved.get(m["slot"], 0) + m["memory"]
        parts.append(
            _table(
                ["slot", "device", "reserved"],
                [
                    [
                        s["id"],
                        html.escape(s["name"]),
                        _bar(reserved.get(s["id"], 0), s["memory_total"]),
                    ]
                    for s in w.get("slots", ())
                ],
            )
        )
        replicating = [
            [_short(r["digest"]), _bar(r["completed"], r["total"])]
            for r in w.get("replicating", ())
        ]
        if replicating:
            parts.append("<b>replicating</b>" + _table(["model", "progress"], replicating))
        parts.append(
            "<b>replicas</b>"
            + _table(
                ["model", "state", "bytes"],
                [
                    [
                        _short(d),
                        "complete" if r["complete"] else "partial",
                        f"{fmt_bytes(r['bytes_done'])} / {fmt_bytes(r['bytes_total'])}",
                    ]
                    for d, r in w.get("replicas", {}).items()
                ],
            )
        )
        parts.append(
            "<b>loaded models</b>"
            + _table(
                ["model", "slot", "memory", "requests", "state", "unloads"],
                [_loaded_row(m, now) for m in w.get("loaded", ())],
            )
        )
    return (
        "<!doctype html><html><head><meta http-equiv=refresh content=2>"
        f"<title>omax</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )


def _loaded_row(m: dict[str, Any], now: float) -> list[str]:
    expires = m.get("expires_at", -1)
    until = "forever" if expires < 0 else f"in {max(0, expires - now):.0f} s"
    return [
        html.escape(m["name"]),
        m["slot"],
        fmt_bytes(m["memory"]),
        str(m.get("in_flight", 0)),
        "ready" if m.get("ready") else "loading",
        until,
    ]


class OmaxPage(web.RequestHandler):
    def initialize(self, plugin: Any) -> None:
        self.plugin = plugin

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(render(self.plugin.omax_cluster(), time.time()))


def register(scheduler: Any, plugin: Any) -> None:
    """Add the page to the scheduler's dashboard server, when it has one."""
    app = getattr(scheduler, "http_application", None)
    if app is not None:
        app.add_application(web.Application([(r"/omax", OmaxPage, {"plugin": plugin})]))
