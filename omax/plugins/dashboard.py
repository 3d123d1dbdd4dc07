"""The omax pages on the Dask scheduler's dashboard (``http://<scheduler>:8787``).

Three live Bokeh pages, served and listed in the navigation bar the way distributed
serves its own (``distributed.dashboard.scheduler``: an ``applications`` dict of
document functions, a Bokeh server added to the scheduler's HTTP application, the
nav bar from ``template_variables(scheduler)["pages"]``):

- ``/omax/replication``: replicas and fetches per model and worker;
- ``/omax/requests``: requests per model replica, tokens/s, latency distributions;
- ``/omax/gpus``: per slot, memory reserved and by which model, device memory and
  utilisation, loads and evictions over time.

Each has a JSON twin for scripts (``/omax/replication.json`` ...); ``/omax.json`` is
the whole snapshot and ``/omax`` leads to the first page. It also registers the
scheduler's Prometheus collector (``omax.plugins.metrics``). What the pages show is
``omax.dashboard``; this module is wiring only.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tornado import web

from omax.dashboard.snapshot import Monitor

logger = logging.getLogger(__name__)

PAGES = ("omax/replication", "omax/requests", "omax/gpus")


class _Json(web.RequestHandler):
    def initialize(self, monitor: Monitor, page: str) -> None:
        self.monitor = monitor
        self.page = page

    def get(self) -> None:
        from omax.dashboard.pages import as_json

        body = self.monitor.take() if self.page == "" else as_json(self.page, self.monitor)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(body, default=str))


def register(scheduler: Any, plugin: Any) -> Monitor:
    """Start sampling, serve the pages and JSON routes and the Prometheus collector.

    Returns the plugin's ``Monitor``. Without a dashboard (no HTTP application, or no
    bokeh) the sampling and the collector still run."""
    from omax.plugins import metrics

    monitor = Monitor(plugin)
    plugin.monitor = monitor
    plugin.tasks.spawn(monitor.sample_forever(), name="omax: dashboard sampling")
    metrics.register_scheduler(monitor)
    app = getattr(scheduler, "http_application", None)
    if app is None:
        return monitor
    json_routes: list[Any] = [
        (rf"/omax/{name}\.json", _Json, {"monitor": monitor, "page": name})
        for name in ("replication", "requests", "gpus")
    ]
    json_routes += [
        (r"/omax\.json", _Json, {"monitor": monitor, "page": ""}),
        (r"/omax/?", web.RedirectHandler, {"url": "/omax/replication"}),
    ]
    app.add_application(web.Application(json_routes))
    try:
        _add_bokeh_pages(scheduler, app)
    except ImportError as e:  # no bokeh: no pages, the JSON routes stay
        logger.info("omax dashboard pages unavailable: %s", e)
    return monitor


def _add_bokeh_pages(scheduler: Any, app: Any) -> None:
    from distributed.dashboard.core import BokehApplication
    from distributed.dashboard.scheduler import template_variables
    from tornado.ioloop import IOLoop

    from omax.dashboard.pages import DOCS

    variables = template_variables(scheduler)  # memoized: distributed's pages share it
    pages = variables["pages"]
    pages[:] = [p for p in pages if p not in PAGES] + list(PAGES)
    bokeh_app = BokehApplication(DOCS, scheduler, prefix="", template_variables=variables)
    app.add_application(bokeh_app)
    bokeh_app.initialize(IOLoop.current())
    bokeh_app.start()
