"""The omax Bokeh pages, opened in headless Chromium on a real cluster with the demo
model loaded and a replication under way.

The cluster (``observed``, tests/plugins/conftest.py) is shared with
test_metrics_cluster.py. Screenshots land in ``$OMAX_TEST_ARTIFACTS/dashboard`` when that is set, otherwise
under the test's tmp path (docs/operations.md, "Dashboard and metrics").
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.plugins.observed_cluster import DEMO, generate, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = os.environ.get("OMAX_TEST_ARTIFACTS")
    path = Path(root) / "dashboard" if root else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: `make` installs it (the $(TESTDATA) step)")
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


def _open(browser, url: str):
    page = browser.new_page()
    page.goto(url, wait_until="load")
    return page


def test_replication_page_shows_the_fetch_in_progress(observed, browser, artifacts):
    page = _open(browser, observed.dashboard + "/omax/replication")
    # the live table: the slow model fetching, the demo model complete, wanted 1
    page.get_by_text("fetching").first.wait_for(timeout=20_000)
    page.get_by_text(DEMO).first.wait_for(timeout=20_000)
    page.get_by_text("complete").first.wait_for()
    # listed in the nav bar, beside distributed's own pages
    for name in ("replication", "requests", "gpus"):
        assert page.locator(f"a[href='omax/{name}']").count() == 1
    assert page.locator("a[href='status']").count() >= 1
    page.screenshot(path=str(artifacts / "replication.png"), full_page=True)

    rows = httpx.get(observed.dashboard + "/omax/replication.json").json()["rows"]
    by_digest = {r["digest"]: r for r in rows}
    slow, demo = by_digest[observed.slow], by_digest[observed.demo]
    assert slow["state"] == "fetching" and 0 < slow["bytes_done"] < slow["bytes_total"]
    assert demo["state"] == "complete" and demo["complete_replicas"] == 1
    assert demo["target"] >= 1 and demo["model"] == DEMO
    # the progress moves on the open page without a reload
    before = slow["bytes_done"]
    wait_for(lambda: _replication_cell(observed, observed.slow) > before, what="fetch progress")
    page.close()


def _replication_cell(observed, digest) -> int:
    rows = httpx.get(observed.dashboard + "/omax/replication.json").json()["rows"]
    return next(r["bytes_done"] for r in rows if r["digest"] == digest)


def test_requests_page_updates_live_with_traffic(observed, browser, artifacts):
    page = _open(browser, observed.dashboard + "/omax/requests")
    page.get_by_text(DEMO).first.wait_for(timeout=20_000)
    page.get_by_text("Requests by model replica").first.wait_for()
    assert page.locator("canvas").count() >= 3  # tokens/s, TTFT and ITL plots
    before = _tokens(observed)
    streams = generate(observed.client.scheduler.address, n=3, tokens=16)
    made = sum(chunks[-1].metrics.eval_count for chunks in streams)
    assert made > 0
    rows = wait_for(
        lambda: [
            r
            for r in httpx.get(observed.dashboard + "/omax/requests.json").json()["rows"]
            if r["generated_tokens"] >= before + made
        ],
        what=f"{made} tokens counted",
    )
    row = rows[0]
    assert row["model"] == DEMO and row["state"] == "ready" and row["errors"] == 0
    assert row["ttft_p50"] is not None and row["itl_p50"] is not None
    # the open page shows the new total without a reload (Bokeh pushes it)
    page.get_by_text(f"{row['generated_tokens']}", exact=True).first.wait_for(timeout=10_000)
    page.screenshot(path=str(artifacts / "requests.png"), full_page=True)
    page.close()


def _tokens(observed) -> int:
    rows = httpx.get(observed.dashboard + "/omax/requests.json").json()["rows"]
    return sum(r["generated_tokens"] for r in rows)


def test_gpus_page_shows_each_slot_and_its_models(observed, browser, artifacts):
    page = _open(browser, observed.dashboard + "/omax/gpus")
    page.get_by_text("Inference slots").first.wait_for(timeout=20_000)
    page.get_by_text(DEMO).first.wait_for(timeout=20_000)
    page.locator("canvas").first.wait_for()  # loads and evictions over time
    page.screenshot(path=str(artifacts / "gpus.png"), full_page=True)

    def counted() -> dict | None:
        body = httpx.get(observed.dashboard + "/omax/gpus.json").json()
        return body if body["counters"]["loads"] else None

    body = wait_for(counted, what="the load counted")
    [slot] = body["rows"]
    assert slot["models"] == DEMO and slot["reserved"] > 0
    assert slot["memory_total"] >= slot["memory_free"] >= 0
    assert body["counters"]["loads"] == 1 and body["counters"]["evictions"] == 0
    page.close()


def test_distributed_pages_list_the_omax_pages(observed, browser):
    page = _open(browser, observed.dashboard + "/workers")
    page.locator("a[href='omax/requests']").first.wait_for(timeout=20_000)
    page.locator("a[href='omax/requests']").first.click()
    page.get_by_text(DEMO).first.wait_for(timeout=20_000)
    assert page.url.endswith("/omax/requests")
    assert httpx.get(observed.dashboard + "/omax", follow_redirects=True).status_code == 200
    page.close()
