"""The official ollama and openai clients, and omax's own, with a key from `omax key create`,
against a real uvicorn server on 127.0.0.1 with auth on."""

from __future__ import annotations

from collections.abc import Iterator

import dask.config
import ollama
import openai
import pytest
from click.testing import CliRunner

from omax.auth.policy import AuthConfig
from omax.cli.client import OmaxClient, ResponseError
from omax.cli.main import cli
from omax.cli.main import main as _main  # noqa: F401  (registers every command)
from omax.serve.app import build_app
from tests.fake_runtime import FakeRuntime
from tests.serve.conftest import _start


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("auth-origin"))


@pytest.fixture(scope="module")
def keys(origin) -> dict[str, str]:
    """Made before the server starts, so the first look at the store sees them all
    (a key made later is honoured within seconds: tests/serve/test_auth.py)."""
    return {
        name: make_key(origin, name, role)
        for name, role in [("ollama-user", "user"), ("openai-user", "user"), ("cli", "viewer")]
    }


@pytest.fixture(scope="module")
def url(origin, keys) -> Iterator[str]:

    auth_config = AuthConfig.build(store_url=origin, required=True)
    server, thread, url = _start(build_app(FakeRuntime(), auth=auth_config))
    yield url
    server.should_exit = True
    thread.join(timeout=5)


def make_key(origin: str, name: str, role: str) -> str:
    from omax.cli import auth  # noqa: F401  (registers `omax key`)

    with dask.config.set({"omax.store.url": origin}):
        result = CliRunner().invoke(cli, ["key", "create", "--name", name, "--role", role])
    assert result.exit_code == 0, result.output
    return result.output.strip()


def test_ollama_client_with_a_created_key(url, keys):
    key = keys["ollama-user"]
    client = ollama.Client(host=url, headers={"Authorization": f"Bearer {key}"})
    assert [m.model for m in client.list().models]
    reply = client.chat(model="fake-chat", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("fake-chat")
    assert err.value.status_code == 403 and "operator" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=url).list()
    assert err.value.status_code == 401


def test_openai_client_with_a_created_key(url, keys):
    key = keys["openai-user"]
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    assert [m.id for m in client.models.list().data]
    out = client.chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert out.choices[0].message.content
    bad = openai.OpenAI(base_url=url + "/v1", api_key="omax_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.status_code == 401


def test_omax_client_sends_omax_api_key(url, keys, monkeypatch):
    key = keys["cli"]
    monkeypatch.delenv("OMAX_API_KEY", raising=False)
    monkeypatch.setenv("OLLAMA_API_KEY", key)
    with OmaxClient(url) as c:
        assert c.list()
    monkeypatch.setenv("OMAX_API_KEY", "omax_wrong")  # wins over OLLAMA_API_KEY
    with OmaxClient(url) as c, pytest.raises(ResponseError) as err:
        c.list()
    assert err.value.status == 401
