"""The omax pages: which components each shows, and its JSON twin's content.

``DOCS`` maps each page's path to a Bokeh document function with distributed's
signature ``(scheduler, extra, doc)``; ``omax.plugins.dashboard`` serves them the
way distributed serves its own. ``as_json(name, monitor)`` is what
``/omax/<name>.json`` answers: the same rows the page's tables show.
"""

from __future__ import annotations

from typing import Any

from bokeh.layouts import column
from distributed.dashboard.components import add_periodic_callback
from distributed.dashboard.components.scheduler import BOKEH_THEME
from jinja2 import Template

from omax.dashboard import tables
from omax.dashboard.components import Latencies, Table, TokenRates, Totals
from omax.dashboard.snapshot import Monitor

UPDATE_MS = 500

# distributed's page template links its CSS and nav bar relative to the page; under
# /omax/<page> those would resolve below /omax/, so a <base> comes first.
TEMPLATE = Template(
    """<!DOCTYPE html>
<html><head><meta charset="utf-8"><base href="{{ prefix }}">
<title>{{ title }}</title>
<link rel="stylesheet" href="statics/css/base.css">
{{ bokeh_css | indent(4) if bokeh_css }}{{ bokeh_js | indent(4) if bokeh_js }}
</head><body>
<div class="navbar" id="myTopnav"><ul>
<li id="dask-logo"><a href="status"><img src="statics/images/dask-logo.svg"></a></li>
{% for page in pages %}<li{% if page == current %} class="active"{% endif %}>
<a href="{{ page }}">{{ page|title }}</a></li>
{% endfor %}</ul></div>
<div class="content">{{ plot_div }}{{ plot_script }}</div>
</body></html>"""
)

REPLICATION_COLUMNS = [
    ("model", "Model"),
    ("worker", "Worker"),
    ("state", "State"),
    ("percent", "%"),
    ("bytes_done", "Bytes done"),
    ("bytes_total", "Bytes total"),
    ("rate", "Bytes/s"),
    ("complete_replicas", "Complete replicas"),
    ("target", "Wanted"),
]
REQUEST_COLUMNS = [
    ("model", "Model"),
    ("worker", "Worker"),
    ("slot", "Slot"),
    ("state", "State"),
    ("in_flight", "In flight"),
    ("running", "Running"),
    ("waiting", "Queued"),
    ("tokens_per_s", "Tokens/s"),
    ("generated_tokens", "Tokens"),
    ("ttft_p50", "TTFT p50 (s)"),
    ("ttft_p95", "TTFT p95 (s)"),
    ("itl_p50", "ITL p50 (s)"),
    ("itl_p95", "ITL p95 (s)"),
    ("errors", "Errors"),
    ("cancelled", "Cancelled"),
    ("failed_replicas", "Failed (retried)"),
]
GPU_COLUMNS = [
    ("worker", "Worker"),
    ("slot", "Slot"),
    ("device", "Device"),
    ("models", "Models"),
    ("reserved", "Reserved bytes"),
    ("memory_used", "Used bytes (device)"),
    ("memory_free", "Free bytes (device)"),
    ("memory_total", "Total bytes"),
    ("utilization", "Utilisation %"),
]


def replication(snap: dict[str, Any], monitor: Monitor) -> list[dict[str, Any]]:
    return tables.replication_rows(snap, monitor.history.fetch_rates())


def requests(snap: dict[str, Any], monitor: Monitor) -> list[dict[str, Any]]:
    return tables.request_rows(snap, monitor.history.tokens_per_s())


def gpus(snap: dict[str, Any], monitor: Monitor) -> list[dict[str, Any]]:
    return tables.gpu_rows(snap)


def as_json(name: str, monitor: Monitor) -> dict[str, Any]:
    """The JSON twin of page ``name``: its rows, from a fresh snapshot."""
    snap = monitor.take()
    out: dict[str, Any] = {"time": snap["time"]}
    if name == "replication":
        out["rows"] = replication(snap, monitor)
        out["wanted"] = snap["wanted"]
    elif name == "requests":
        out["rows"] = requests(snap, monitor)
        out["latency_buckets_s"] = list(Latencies.LABELS)
        out["latency_counts"] = tables.latency_histograms(snap)
    elif name == "gpus":
        out["rows"] = gpus(snap, monitor)
        out["counters"] = snap["counters"]
    else:
        raise KeyError(name)
    return out


def _page(doc: Any, extra: dict[str, Any], name: str, components: list[Any]) -> None:
    for c in components:
        c.update()
        add_periodic_callback(doc, c, UPDATE_MS)
    doc.title = f"omax: {name}"
    doc.add_root(column(*[c.root for c in components], sizing_mode="stretch_width"))
    doc.template = TEMPLATE
    doc.template_variables.update(extra)
    doc.template_variables.update(title=doc.title, current=f"omax/{name}")
    doc.theme = BOKEH_THEME


def _monitor(scheduler: Any) -> Monitor:
    from omax.plugins.scheduler import plugin_of

    return plugin_of(scheduler).monitor


def replication_doc(scheduler: Any, extra: dict[str, Any], doc: Any) -> None:
    m = _monitor(scheduler)
    table = Table(m, replication, REPLICATION_COLUMNS, "Replicas and fetches")
    _page(doc, extra, "replication", [table])


def requests_doc(scheduler: Any, extra: dict[str, Any], doc: Any) -> None:
    m = _monitor(scheduler)
    table = Table(m, requests, REQUEST_COLUMNS, "Requests by model replica")
    _page(doc, extra, "requests", [table, TokenRates(m), Latencies(m)])


def gpus_doc(scheduler: Any, extra: dict[str, Any], doc: Any) -> None:
    m = _monitor(scheduler)
    table = Table(m, gpus, GPU_COLUMNS, "Inference slots")
    _page(doc, extra, "gpus", [table, Totals(m)])


DOCS = {
    "/omax/replication": replication_doc,
    "/omax/requests": requests_doc,
    "/omax/gpus": gpus_doc,
}
