"""Bokeh components of the omax pages, in the style of distributed's
``DashboardComponent`` (not subclassed: its ``update`` takes messages): each has a ``root`` (what the page lays out) and an
``update()`` that a periodic callback calls, which re-reads the scheduler's
``Monitor`` and replaces its sources' data (Bokeh sends the change to the browser:
no reload). The rows come from ``omax.dashboard.tables``; nothing here decides.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from bokeh.layouts import row
from bokeh.models import ColumnDataSource, FactorRange
from bokeh.models.widgets import Div
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from omax.dashboard import tables
from omax.dashboard.snapshot import Monitor
from omax.engine.counters import BUCKETS_S
from omax.units import fmt_bytes

Rows = Callable[[dict[str, Any], Monitor], list[dict[str, Any]]]


class Table:
    """A table of ``rows(snapshot, monitor)`` with the given ``columns`` (field, title),
    as HTML in a Bokeh ``Div``: each update replaces its text, which Bokeh sends to
    the browser. (A Bokeh ``DataTable`` kept showing its first rows in Chromium when
    its source's data changed in place.)"""

    def __init__(
        self, monitor: Monitor, rows: Rows, columns: list[tuple[str, str]], title: str
    ) -> None:
        self.monitor = monitor
        self.rows = rows
        self.columns = columns
        self.title = title
        self.root = Div(text="", sizing_mode="stretch_width")

    def update(self) -> None:
        rows = self.rows(self.monitor.latest(), self.monitor)
        text = render_table(self.title, self.columns, rows)
        if text != self.root.text:
            self.root.text = text


def render_table(title: str, columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> str:
    """``rows`` as an HTML table headed ``title``; "none" when there are none."""
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(f, r.get(f)))}</td>" for f, _ in columns) + "</tr>"
        for r in rows
    )
    table = f"<table class=omax><tr>{head}</tr>{body}</table>" if rows else "<p>none</p>"
    return f"<style>{_STYLE}</style><h3>{html.escape(title)}</h3>{table}"


_STYLE = (
    "table.omax{border-collapse:collapse;font-size:13px}"
    "table.omax td,table.omax th{padding:3px 10px;text-align:left;border-bottom:1px solid #ddd}"
)


def _fmt(field: str, v: Any) -> str:
    if v is None:
        return ""
    if field == "rate":
        return fmt_bytes(v) + "/s"
    if isinstance(v, float):
        return f"{v:,.3g}" if field.startswith(("ttft", "itl")) else f"{v:,.1f}"
    if (
        isinstance(v, int)
        and not isinstance(v, bool)
        and field.startswith(("bytes", "memory", "reserved"))
    ):
        return fmt_bytes(v)
    return str(v)


class TokenRates:
    """Tokens per second of each model over the last minutes."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.source = ColumnDataSource({"xs": [], "ys": [], "model": [], "color": []})
        fig = _time_figure("Tokens/s by model", height=240)
        fig.multi_line("xs", "ys", color="color", legend_field="model", source=self.source)
        self.root = fig

    def update(self) -> None:
        series = self.monitor.history.token_series()
        names = sorted(series)
        self.source.data = {
            "xs": [[t * 1000 for t in series[n][0]] for n in names],
            "ys": [series[n][1] for n in names],
            "model": names,
            "color": [Category10_10[i % 10] for i in range(len(names))],
        }


class Latencies:
    """Time-to-first-token and inter-token latency: requests per bucket, all models."""

    LABELS = [f"≤{b:g}s" for b in BUCKETS_S] + [f">{BUCKETS_S[-1]:g}s"]

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        zeros = [0] * len(self.LABELS)
        self.source = ColumnDataSource({"bucket": self.LABELS, "ttft": zeros, "itl": zeros})
        figs = []
        for key, title in (("ttft", "Time to first token"), ("itl", "Inter-token latency")):
            fig = figure(
                x_range=FactorRange(factors=self.LABELS),
                title=title,
                height=220,
                sizing_mode="stretch_width",
                tools="",
                toolbar_location=None,
            )
            fig.vbar(x="bucket", top=key, width=0.8, source=self.source)
            fig.xaxis.major_label_orientation = 0.8
            figs.append(fig)
        self.root = row(*figs, sizing_mode="stretch_width")

    def update(self) -> None:
        h = tables.latency_histograms(self.monitor.latest())
        zeros = [0] * len(self.LABELS)
        self.source.data = {
            "bucket": self.LABELS,
            "ttft": h.get("ttft") or zeros,
            "itl": h.get("itl") or zeros,
        }


class Totals:
    """Loads, unloads and evictions since the scheduler started, over time."""

    NAMES = ("loads", "unloads", "evictions")

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.source = ColumnDataSource({"time": [], **{n: [] for n in self.NAMES}})
        fig = _time_figure("Model loads and evictions", height=220)
        for n, color in zip(self.NAMES, Category10_10, strict=False):
            fig.step("time", n, color=color, legend_label=n, source=self.source)
        self.root = fig

    def update(self) -> None:
        data = self.monitor.history.counter_series(self.NAMES)
        data["time"] = [t * 1000 for t in data["time"]]
        self.source.data = data


def _time_figure(title: str, height: int) -> Any:
    """A full-width time-series figure without a toolbar, as every omax page draws."""
    return figure(
        title=title,
        x_axis_type="datetime",
        height=height,
        sizing_mode="stretch_width",
        tools="",
        toolbar_location=None,
    )
