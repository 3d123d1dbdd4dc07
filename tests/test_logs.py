"""Log lines about a request name it: request id, model and worker, in text and JSON,
from the request's own task, tasks it starts, and the front door's access log."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import httpx
import pytest
import uvicorn

from omax.logs import (
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    bind,
    log_context,
    setup_logging,
    use_context,
)
from omax.serve.app import build_app
from omax.serve.requestid import HEADER
from tests.fake_runtime import FakeRuntime


class Lines(logging.Handler):
    """Formatted lines, as a handler ``setup_logging`` installs would write them."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(formatter)
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logger():
    lg = logging.getLogger("omax.test.logs")
    lg.setLevel(logging.INFO)
    yield lg
    lg.handlers.clear()


def test_text_lines_name_the_request_only_inside_its_context(logger):
    out = Lines(TextFormatter())
    logger.addHandler(out)
    logger.info("before")
    with log_context("r1", model="m:1", worker="tcp://w:1"):
        logger.info("during")
    logger.info("after")
    assert out.lines[0].endswith("omax.test.logs: before")
    assert out.lines[1].endswith("during [request_id=r1 model=m:1 worker=tcp://w:1]")
    assert out.lines[2].endswith("after")


def test_json_lines_carry_the_fields_and_extra_wins(logger):
    out = Lines(JsonFormatter())
    logger.addHandler(out)
    with log_context("r2", model="m"):
        logger.warning("one")
        logger.warning("two", extra={"request_id": "other"})
    one, two = (json.loads(line) for line in out.lines)
    assert one["request_id"] == "r2" and one["model"] == "m" and "worker" not in one
    assert one["message"] == "one" and one["level"] == "WARNING"
    assert two["request_id"] == "other"


def test_bind_reaches_tasks_started_before_it(logger):
    out = Lines(TextFormatter())
    logger.addHandler(out)

    async def main() -> None:
        with log_context("r3"):
            started = asyncio.Event()
            bound = asyncio.Event()

            async def child() -> None:  # a copy of the context, sharing its LogContext
                started.set()
                await bound.wait()
                logger.info("child")

            task = asyncio.create_task(child())
            await started.wait()
            bind(model="late-model", worker="w9", unknown="ignored")
            bound.set()
            await task
        bind(model="outside")  # no request: nothing happens

    asyncio.run(main())
    assert out.lines == [out.lines[0]] and out.lines[0].endswith(
        "child [request_id=r3 model=late-model worker=w9]"
    )


def test_a_context_captured_on_one_thread_names_lines_on_another(logger):
    out = Lines(JsonFormatter())
    logger.addHandler(out)
    with log_context("r4", model="m") as ctx:
        captured = ctx
    t = threading.Thread(target=lambda: _log_in(logger, captured))
    t.start()
    t.join()
    assert json.loads(out.lines[0])["request_id"] == "r4"


def _log_in(logger: logging.Logger, ctx) -> None:
    with use_context(ctx):
        logger.info("on the batching thread")


def test_setup_logging_writes_the_fields_to_its_file(tmp_path):
    path = tmp_path / "omax.log"
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging(fmt="json", level="INFO", file=str(path))
        with log_context("r5", model="smol", worker="tcp://1"):
            logging.getLogger("omax.serve.cluster").warning("retrying")
    finally:
        setup_logging()  # remove our file handler
        for h in [h for h in root.handlers if h not in saved[0]]:
            root.removeHandler(h)
            h.close()
        root.setLevel(saved[1])
    entry = json.loads(path.read_text().splitlines()[-1])
    assert entry["request_id"] == "r5" and entry["model"] == "smol"
    assert entry["worker"] == "tcp://1" and entry["logger"] == "omax.serve.cluster"


def test_the_front_doors_access_log_names_each_request_and_its_model():
    """uvicorn's access line is written in the response's send path: it must see
    the id the middleware made and the model the service bound, streams included."""
    out = Lines(JsonFormatter())
    access = logging.getLogger("uvicorn.access")
    access.addHandler(out)
    level = access.level
    access.setLevel(logging.INFO)
    with socket_port() as port:
        config = uvicorn.Config(  # no log_config, as ``omax serve`` runs it
            build_app(FakeRuntime()), host="127.0.0.1", port=port, lifespan="off", log_config=None
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            streamed = http.post("/api/generate", json={"model": "fake-chat", "prompt": "x"})
            given = http.post(
                "/api/chat",
                json={
                    "model": "fake-tiny",
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": False,
                },
                headers={HEADER: "mine-1"},
            )
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        access.removeHandler(out)
        access.setLevel(level)
    entries = [json.loads(line) for line in out.lines]
    by_id = {e.get("request_id"): e for e in entries}
    assert by_id[streamed.headers[HEADER]]["model"] == "fake-chat"
    assert "POST /api/generate" in by_id[streamed.headers[HEADER]]["message"]
    assert by_id["mine-1"]["model"] == "fake-tiny" and given.headers[HEADER] == "mine-1"


class socket_port:  # noqa: N801 (used as a context manager, reads as a phrase)
    """A free local port (closed again before the server binds it)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_refused_request_is_logged_with_its_reason(caplog):
    """The access line says 404; the line before it says which model was missing."""
    from starlette.testclient import TestClient

    with (
        caplog.at_level(logging.INFO, logger="omax.serve.errors"),
        TestClient(build_app(FakeRuntime())) as client,
    ):
        r = client.post("/api/chat", json={"model": "nowhere:7b", "messages": []})
    assert r.status_code == 404
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "omax.serve.errors"]
    assert lines == ["POST /api/chat refused (404): model 'nowhere:7b' not found"]
