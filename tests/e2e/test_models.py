"""Model management end to end: uploads, create, embeddings, copy, delete, CLI."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from omax.sharding.bundled import minilm_folder_path
from tests.e2e.conftest import DEMO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

OMAX = str(Path(sys.executable).with_name("omax"))


@pytest.fixture
def client(server, monkeypatch):
    import ollama

    monkeypatch.setenv("OLLAMA_HOST", server)
    return ollama.Client(timeout=300)


@pytest.fixture(scope="module")
def minilm(server):
    """all-MiniLM-L6-v2 created from its files uploaded as blobs, as the ollama client
    does for a safetensors folder."""
    import ollama

    c = ollama.Client(host=server, timeout=300)
    folder = minilm_folder_path()
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "README.md":
            files[str(path.relative_to(folder))] = c.create_blob(path)
    last = None
    for progress in c.create(model="all-minilm", files=files, stream=True):
        last = progress
    assert last.status == "success"
    return "all-minilm"


def test_embed_with_minilm(client, minilm):
    out = client.embed(
        model=minilm,
        input=["The cat sat on the mat.", "A feline rested on a rug.", "Stock prices fell."],
    )
    a, b, c = out.embeddings
    assert len(a) == 384
    assert abs(sum(x * x for x in a) - 1) < 1e-4  # L2-normalised
    dot = lambda u, v: sum(x * y for x, y in zip(u, v, strict=True))  # noqa: E731
    assert dot(a, b) > dot(a, c) + 0.2
    legacy = client.embeddings(model=minilm, prompt="The cat sat on the mat.")
    norm = sum(x * x for x in legacy.embedding) ** 0.5
    cos = dot(legacy.embedding, a) / norm
    assert cos > 0.9999


def test_openai_embeddings(server, minilm):
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    out = client.embeddings.create(model=minilm, input=["hello", "world"])
    assert [len(d.embedding) for d in out.data] == [384, 384]


def test_show_and_capabilities(client, minilm):
    shown = client.show(DEMO)
    assert shown.modelinfo and shown.modelinfo.get("general.architecture") == "llama"
    assert "completion" in shown.capabilities
    assert shown.template
    assert "embedding" in client.show(minilm).capabilities


def test_copy_and_delete(client):
    client.copy(DEMO, "demo-copy:1")
    names = [m.model for m in client.list().models]
    assert "demo-copy:1" in names
    copied = {m.model: m.digest for m in client.list().models}
    assert copied["demo-copy:1"] == copied[DEMO]
    client.delete("demo-copy:1")
    assert "demo-copy:1" not in [m.model for m in client.list().models]
    r = httpx.request(
        "DELETE", client._client.base_url.join("/api/delete"), json={"model": "demo-copy:1"}
    )
    assert r.status_code == 404


def test_create_that_only_changes_system_adds_almost_nothing(server, tmp_path):
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {DEMO}\nSYSTEM You are a pirate. Answer like one.\n")
    env = {**os.environ, "OMAX_HOST": server}
    out = subprocess.run(
        [OMAX, "create", "pirate", "-f", str(modelfile)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    line = [x for x in out.stdout.splitlines() if x.startswith("wrote ")][0]
    written = line.split("wrote ")[1].split(" of new blobs")[0]
    assert written.endswith(("B", "KiB")), line  # a manifest, not weights
    assert "MiB deduplicated" in line
    shown = httpx.post(server + "/api/show", json={"model": "pirate"}).json()
    assert shown["system"] == "You are a pirate. Answer like one."


def test_pull_of_a_stored_model_streams_progress(client):
    statuses = [p.status for p in client.pull(DEMO, stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert any(s.startswith("pulling ") and s != "pulling manifest" for s in statuses)


def test_omax_run_one_answer(server):
    env = {**os.environ, "OMAX_HOST": server}
    out = subprocess.run(
        [OMAX, "run", DEMO, "What is the capital of France? One word."],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip()) > 2  # sampled at the default temperature: any answer


def test_keep_alive_zero_unloads_after_the_request(client):
    client.generate(model=DEMO, prompt="Hi", options={"num_predict": 2}, keep_alive=0)
    loaded = lambda: [m.model for m in client.ps().models]  # noqa: E731
    deadline = time.time() + 10
    while time.time() < deadline and DEMO in loaded():
        time.sleep(0.2)
    assert DEMO not in loaded()
    # and the next request loads it again
    out = client.generate(model=DEMO, prompt="Hi", options={"num_predict": 2})
    assert out.done and out.load_duration > 0


def test_api_keys_from_configuration(tmp_path):
    """A server configured with api-keys refuses a client without the key, and the
    ollama client with OLLAMA_API_KEY gets in."""
    import ollama

    from tests.e2e.conftest import start_server, stop_server

    proc, url, log = start_server(
        tmp_path, "--no-demo", env={"DASK_OMAX__SERVE__API_KEYS": "s3cret,other"}
    )
    try:
        assert httpx.get(url + "/api/tags").status_code == 401
        assert httpx.get(url + "/").status_code == 200
        os.environ["OLLAMA_API_KEY"] = "s3cret"
        try:
            assert ollama.Client(host=url).list().models == []
        finally:
            del os.environ["OLLAMA_API_KEY"]
    finally:
        assert stop_server(proc) == 0, log.read_text()[-3000:]


def test_omax_pull_from_a_local_ollama_folder(tmp_path):
    """`omax pull ollama://NAME:TAG` imports a model the user already has in Ollama,
    with its system prompt and parameters, and replicates it to a worker."""
    from omax.sharding.bundled import smollm2_gguf_path
    from tests.e2e.conftest import start_server, stop_server
    from tests.sharding.test_ollama_import import _ollama_folder

    models = tmp_path / "ollama-models"
    _ollama_folder(models, smollm2_gguf_path(), model="smol")
    proc, url, log = start_server(tmp_path, "--no-demo", env={"OLLAMA_MODELS": str(models)})
    try:
        env = {**os.environ, "OMAX_HOST": url}
        out = subprocess.run(
            [OMAX, "pull", "ollama://smol:135m"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        assert "success" in out.stdout
        shown = httpx.post(url + "/api/show", json={"model": "smol:135m"}).json()
        assert shown["system"] == "You are Smol."
        assert "temperature" in shown["parameters"]
        cluster = httpx.get(url + "/api/cluster").json()
        digest = httpx.get(url + "/api/tags").json()["models"][0]["digest"]
        assert any(
            r["complete"]
            for w in cluster["workers"]
            for d, r in w["replicas"].items()
            if d == digest
        )
    finally:
        assert stop_server(proc) == 0, log.read_text()[-3000:]
