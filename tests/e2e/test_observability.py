"""Observability end to end, on the real ``omax serve`` of the e2e tier: the front
door's, a worker's and the scheduler's ``/metrics`` move with traffic, answers carry
``X-Request-ID``, and every metric named by the alert rules and the Grafana dashboard
(monitoring/) is exported by the endpoint its job scrapes.

The worker and scheduler ``/metrics`` are Dask's dashboards: their addresses come
from a worker's identity (its scheduler) and the scheduler's ``scheduler_info``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from distributed import Client
from distributed.core import rpc
from prometheus_client.parser import text_string_to_metric_families

from .conftest import DEMO

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "monitoring" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "omax.json"
JOBS = ("omax-serve", "omax-scheduler", "omax-worker")  # as monitoring/prometheus/prometheus.yml
SYNTHETIC = {"up"}  # made by Prometheus itself, never by a target
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# A string, a range, or a name with its optional matchers and a following "(".
_TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"|\[[^\]]*\]'
    r"|\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\{[^}]*\})?(\s*\()?"
)
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_JOB = re.compile(r'\bjob\s*=\s*"([^"]*)"')


def metric_names(expr: str) -> set[tuple[str, str | None]]:
    """The metrics a PromQL expression reads: (name, the job it selects or None)."""
    out = set()
    for m in _TOKEN.finditer(_GROUPING.sub(" ", expr)):
        name, matchers, call = m.group(1), m.group(2), m.group(3)
        if name is None or call or name in KEYWORDS:
            continue  # a string, a range, a function or an aggregation, a keyword
        job = _JOB.search(matchers or "")
        out.add((name, job.group(1) if job else None))
    return out


def test_metric_names_are_parsed_from_promql():
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(a_seconds_bucket{job="j", x=~"5.."}'
        '[$__rate_interval]))) / sum(b_total) > 0.05 unless on (model) max(c) and up{job="w"}'
    )
    assert metric_names(expr) == {
        ("a_seconds_bucket", "j"),
        ("b_total", None),
        ("c", None),
        ("up", "w"),
    }


def exported(text: str) -> set[str]:
    """Every name a scrape can show: families (with a histogram's _bucket/_sum/_count
    and a counter's _total) whether or not they have a sample yet, and samples."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind in ("histogram", "gaugehistogram", "summary"):
                names |= {name + s for s in ("_bucket", "_sum", "_count")}
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group())
    return names


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def endpoints(server) -> dict[str, str]:
    """The ``/metrics`` URL of each job: this front door, its scheduler, a worker."""
    worker = httpx.get(server + "/api/cluster", timeout=30).json()["workers"][0]["address"]

    async def scheduler_of(addr: str) -> str:
        r = rpc(addr)
        try:
            return (await r.identity())["scheduler"]
        finally:
            await r.close_rpc()

    scheduler = asyncio.run(scheduler_of(worker))
    with Client(scheduler, timeout=30) as client:
        info = client.scheduler_info()
    host = scheduler.split("://")[1].rsplit(":", 1)[0]
    return {
        "omax-serve": server + "/metrics",
        "omax-scheduler": f"http://{host}:{info['services']['dashboard']}/metrics",
        "omax-worker": f"http://{host}:{info['workers'][worker]['services']['dashboard']}/metrics",
    }


def scrape(endpoints: dict[str, str]) -> dict[str, str]:
    return {job: httpx.get(url, timeout=30).text for job, url in endpoints.items()}


def generate(server: str, **fields: Any) -> httpx.Response:
    body = {"model": DEMO, "prompt": "Count: one, two,", "options": {"num_predict": 8}}
    r = httpx.post(server + "/api/generate", json={**body, **fields}, timeout=300)
    assert r.status_code == 200, r.text
    return r


def test_every_endpoint_moves_with_traffic(server, endpoints):
    tags = httpx.get(server + "/api/tags", timeout=30).json()["models"]
    digest = next(m["digest"] for m in tags if m["model"] == DEMO)
    mine = {"model": digest}  # the worker labels by digest; other tests' models stay out
    generate(server, keep_alive=0)  # unloaded: the next request loads it again
    # A worker's counters are its actors' and go with them: wait until this one's are.
    deadline = time.monotonic() + 60
    while total(scrape(endpoints)["omax-worker"], "omax_generation_tokens_total", **mine):
        assert time.monotonic() < deadline, "the model was not unloaded"
        time.sleep(0.5)
    before = scrape(endpoints)
    r = generate(server, stream=True)
    rid = r.headers["X-Request-ID"]
    last = json.loads(r.text.splitlines()[-1])
    after = scrape(endpoints)
    n, p = last["eval_count"], last["prompt_eval_count"]
    assert n > 0 and p > 0 and re.fullmatch(r"[0-9a-f]{32}", rid)

    def moved(job: str, name: str, **labels: str) -> float:
        return total(after[job], name, **labels) - total(before[job], name, **labels)

    serve = {"model": DEMO}
    assert moved("omax-serve", "omax_generation_tokens_total", **serve) == n
    assert moved("omax-serve", "omax_prompt_tokens_total", **serve) == p
    assert moved("omax-serve", "omax_time_to_first_token_seconds_count", **serve) == 1
    assert moved("omax-serve", "omax_e2e_request_latency_seconds_count", **serve) == 1
    ended = {"reason": last["done_reason"]}
    assert moved("omax-serve", "omax_generate_requests_total", **serve, **ended) == 1
    # The worker counts the same tokens in its engine, the scheduler the load; both
    # report what the worker's last heartbeat carried, so they may lag a little.
    deadline = time.monotonic() + 30
    while moved("omax-worker", "omax_generation_tokens_total", **mine) < n:
        assert time.monotonic() < deadline, "the worker's /metrics did not move"
        time.sleep(0.5)
        after = scrape(endpoints)
    assert moved("omax-worker", "omax_generation_tokens_total", **mine) == n
    assert moved("omax-worker", "omax_time_to_first_token_seconds_count", **mine) == 1
    while moved("omax-scheduler", "omax_model_loads_total") < 1:  # sampled once a second
        assert time.monotonic() < deadline, "the scheduler's /metrics did not count the load"
        time.sleep(0.5)
        after = scrape(endpoints)
    assert moved("omax-scheduler", "omax_model_loads_total") == 1
    assert total(after["omax-scheduler"], "omax_models_loaded", state="ready") >= 1


def test_the_log_names_a_clients_request_id_model_and_worker(server, tmp_path_factory):
    port = server.rsplit(":", 1)[1]
    (log,) = tmp_path_factory.getbasetemp().glob(f"omax-e2e[0-9]*/serve-{port}.log")
    r = httpx.post(
        server + "/api/chat",
        json={
            "model": DEMO,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
            "options": {"num_predict": 8},  # the log line is the point, not the reply
        },
        headers={"X-Request-ID": "obs-e2e-1"},
        timeout=300,
    )
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "obs-e2e-1"
    deadline = time.monotonic() + 10
    while "request_id=obs-e2e-1" not in log.read_text():
        assert time.monotonic() < deadline, "no log line names the request"
        time.sleep(0.2)
    line = next(x for x in log.read_text().splitlines() if "request_id=obs-e2e-1" in x)
    assert '"POST /api/chat HTTP/1.1" 200' in line
    assert re.search(rf"\[request_id=obs-e2e-1 model={re.escape(DEMO)} worker=tcp://\S+\]$", line)


def _expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert rule and dashboard query in monitoring/."""
    out = []
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        out += [(f"alerts.yml {r['alert']}", r["expr"]) for r in group["rules"]]
    stack = list(json.loads(DASHBOARD.read_text())["panels"])
    while stack:
        panel = stack.pop()
        stack += panel.get("panels", [])
        out += [(f"omax.json {panel['title']!r}", t["expr"]) for t in panel.get("targets", [])]
    return out


def test_alerts_and_dashboard_name_only_exported_metrics(server, endpoints):
    generate(server)  # a loaded model: the workers' per-model families have samples
    names = {job: exported(text) for job, text in scrape(endpoints).items()}
    everywhere = set().union(*names.values())
    missing = []
    for where, expr in _expressions():
        for name, job in sorted(metric_names(expr)):
            if name in SYNTHETIC:
                continue
            if job is not None and job not in names:
                missing.append(f"{where}: unknown job {job!r}")
            elif name not in (names[job] if job else everywhere):
                missing.append(f"{where}: {name} (job {job})")
    assert not missing, "named but not exported:\n" + "\n".join(missing)


def test_alert_rules_are_well_formed():
    """What promtool would check first (it is not installed here): the structure."""
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert len({r["alert"] for r in rules}) == len(rules) >= 5
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", r.get("for", "0s")), r["alert"]
        assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]
    wanted = {"Replica", "Queue", "Error", "WorkerLost", "Replication"}
    assert all(any(w in r["alert"] for r in rules) for w in wanted)


def test_dashboard_is_importable_json():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and doc["schemaVersion"] >= 30
    targets = [t for p in doc["panels"] for t in p.get("targets", [])]
    assert targets and all(t["expr"].count("(") == t["expr"].count(")") for t in targets)
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
