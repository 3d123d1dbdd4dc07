"""``OmaxClient``, the CLI's HTTP helper, against a real server over FakeRuntime."""

from __future__ import annotations

import socket

import pytest

from omax.cli.client import OmaxClient, ResponseError, ServerUnreachable, base_url


@pytest.mark.parametrize(
    "text,url",
    [
        (None, "http://127.0.0.1:11434"),
        ("example.com", "http://example.com:11434"),
        ("10.0.0.1:8080", "http://10.0.0.1:8080"),
        (":9000", "http://127.0.0.1:9000"),
        ("http://h:1/", "http://h:1"),
        ("https://h", "https://h"),
        ("[::1]:5000", "http://[::1]:5000"),
    ],
)
def test_base_url(monkeypatch, text, url):
    monkeypatch.delenv("OMAX_HOST", raising=False)
    assert base_url(text) == url


def test_reads_omax_host(monkeypatch, served):
    monkeypatch.setenv("OMAX_HOST", served.url.removeprefix("http://"))
    with OmaxClient() as client:
        assert client.url == served.url
        assert client.version()


def test_methods(served, tmp_path):
    with OmaxClient(served.url) as c:
        text = "".join(x["response"] for x in c.generate("fake-chat", "hi"))
        assert text
        assert (
            "".join(
                x["message"]["content"]
                for x in c.chat("fake-chat", [{"role": "user", "content": "x"}])
            )
            == text
        )
        assert len(c.embed("fake-embed", "x")["embeddings"]) == 1
        assert any(m["name"] == "fake-chat:latest" for m in c.list())
        assert c.show("fake-chat")["capabilities"]
        assert [x["status"] for x in c.pull("fake-cli")][-1] == "success"
        assert [x["status"] for x in c.push("fake-cli")][-1] == "success"
        f = tmp_path / "w.bin"
        f.write_bytes(b"abc" * 1000)
        digest = c.create_blob(f)
        assert c.has_blob(digest) and c.create_blob(f) == digest
        assert [x["status"] for x in c.create("cli-made", files={"w.gguf": digest})][
            -1
        ] == "success"
        c.copy("cli-made", "cli-copy")
        c.delete("cli-copy")
        assert isinstance(c.ps(), list)
        with pytest.raises(ResponseError) as err:
            c.show("missing")
        assert err.value.status == 404 and err.value.message == "model 'missing' not found"
        with pytest.raises(ResponseError):
            list(c.generate("missing"))


def test_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with OmaxClient(f"127.0.0.1:{port}") as c, pytest.raises(ServerUnreachable) as err:
        c.list()
    assert "\n" not in str(err.value) and str(port) in str(err.value)
    with OmaxClient(f"127.0.0.1:{port}") as c, pytest.raises(ServerUnreachable):
        list(c.pull("x"))
