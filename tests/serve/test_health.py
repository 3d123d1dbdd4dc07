"""``GET /api/health`` (readiness) beside ``GET /`` (liveness), and the outage errors'
HTTP shapes, over ``FakeRuntime``."""

from __future__ import annotations

import dask.config
import pytest
from starlette.testclient import TestClient

from omax.config import settings
from omax.errors import ConfigError, DeadlineExceeded, Unavailable
from omax.serve.app import build_app
from omax.serve.upstream import Deadlines
from tests.fake_runtime import FakeRuntime


def test_ready_answers_200_with_workers_and_loaded_models():
    runtime = FakeRuntime()
    client = TestClient(build_app(runtime))
    assert client.get("/api/health").json() == {
        "status": "ok",
        "scheduler": True,
        "workers": 1,
        "models": [],
    }
    client.post("/api/generate", json={"model": "fake-tiny", "prompt": "", "keep_alive": "5m"})
    r = client.get("/api/health")
    assert r.status_code == 200
    assert r.json()["models"] == ["fake-tiny:latest"]


def test_unready_answers_503_with_the_same_shape_and_a_reason():
    runtime = FakeRuntime()
    runtime.down = "scheduler tcp://10.0.0.1:8786 is unreachable; reconnecting"
    client = TestClient(build_app(runtime))
    r = client.get("/api/health")
    assert r.status_code == 503
    assert r.json() == {
        "status": "unavailable",
        "scheduler": False,
        "workers": 0,
        "models": [],
        "reason": runtime.down,
    }
    assert client.get("/").text == "Ollama is running"  # liveness stays up
    assert client.head("/api/health").status_code == 503


def test_probes_stay_open_with_auth_on():
    client = TestClient(build_app(FakeRuntime(), api_keys=["k1"]))
    assert client.get("/").status_code == 200
    assert client.get("/api/health").status_code == 200
    assert client.get("/api/ps").status_code == 401


def test_openapi_describes_health():
    doc = TestClient(build_app(FakeRuntime())).get("/openapi.json").json()
    op = doc["paths"]["/api/health"]["get"]
    assert {"200", "503"} <= set(op["responses"])


class _Outage(FakeRuntime):
    """A fake whose generations fail as a front door without its scheduler does."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def generate(self, request):
        raise self.error
        yield  # an async generator, as the Runtime protocol says


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (Unavailable("scheduler tcp://x:8786 is unreachable; reconnecting"), 503),
        (DeadlineExceeded("scheduler call omax_ensure: no answer within 10 s"), 504),
    ],
)
def test_outage_errors_have_their_status_and_the_error_shape(error, status):
    client = TestClient(build_app(_Outage(error)))
    r = client.post("/api/generate", json={"model": "fake-chat", "prompt": "hi"})
    assert r.status_code == status
    assert r.json() == {"error": str(error)}
    messages = [{"role": "user", "content": "hi"}]
    r = client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": messages})
    assert r.status_code == status
    assert r.json()["error"]["message"] == str(error)


def test_deadlines_come_from_settings():
    assert Deadlines.from_settings() == Deadlines(10.0, 600.0, 0.5, 5.0)
    with dask.config.set({"omax.serve.rpc-timeout": "2s", "omax.serve.reconnect-max": "1m"}):
        assert Deadlines.from_settings() == Deadlines(2.0, 600.0, 0.5, 60.0)
    with dask.config.set({"omax.serve.rpc-timeout": "0"}), pytest.raises(ConfigError):
        settings()
