"""`omax pull`/`omax push` against a real Ollama-style registry on 127.0.0.1 serving the
bundled SmolLM2 GGUF (tests/registry_server.py), through a real `omax serve`."""

from __future__ import annotations

import json
import os
import subprocess

import httpx
import pytest

from omax.sharding.bundled import smollm2_gguf_path
from omax.sharding.modelstore import ModelStore
from tests.e2e.conftest import OMAX
from tests.registry_server import Registry


@pytest.fixture(scope="module")
def registries(tmp_path_factory):
    source = Registry(tmp_path_factory.mktemp("registry"))
    source.publish_gguf(
        "library/smolreg",
        "q4_1",
        smollm2_gguf_path(),
        system="You are Smol, a helpful assistant.",
        params=json.dumps({"stop": ["<|im_end|>"], "num_predict": 32}),
    )
    target = Registry(tmp_path_factory.mktemp("registry2"))
    yield source, target
    source.close()
    target.close()


def omax(server: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMAX_HOST": server}
    return subprocess.run(
        [OMAX, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def test_pull_run_push_and_pull_back_digest_for_digest(server, registries, tmp_path):
    source, target = registries
    name = f"{source.host}/library/smolreg:q4_1"

    refused = omax(server, "pull", name)  # plain HTTP needs --insecure
    assert refused.returncode != 0, refused

    pulled = omax(server, "pull", name, "--insecure")
    assert pulled.returncode == 0, pulled.stderr
    assert "success" in pulled.stdout + pulled.stderr

    with httpx.stream(  # again, through the API: up to date, in Ollama's stream format
        "POST",
        server + "/api/pull",
        json={"model": f"http://{name}", "insecure": True},
        timeout=300,
    ) as resp:
        lines = [json.loads(line) for line in resp.iter_lines() if line.strip()]
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    gguf = json.loads(source.manifest("library/smolreg", "q4_1"))["layers"][0]
    layer = next(line for line in lines if line["status"] == f"pulling {gguf['digest'][7:19]}")
    assert layer["digest"] == gguf["digest"] and layer["total"] == gguf["size"]
    assert layer["completed"] == gguf["size"]
    assert statuses.index("verifying sha256 digest") < statuses.index("writing manifest")

    answer = omax(server, "run", name, "What is the capital of France? One word.")
    assert answer.returncode == 0, answer.stderr
    assert len(answer.stdout.strip()) > 2, answer  # sampled: any answer

    copy = f"{target.host}/team/smolcopy:v1"
    copied = omax(server, "cp", name, copy)
    assert copied.returncode == 0, copied.stderr
    pushed = omax(server, "push", copy, "--insecure")
    assert pushed.returncode == 0, pushed.stderr
    assert target.manifest("team/smolcopy", "v1") == source.manifest("library/smolreg", "q4_1")
    assert {r[0] for r in target.requests} >= {"POST", "PATCH", "PUT"}  # really uploaded

    tags = {m["name"]: m["digest"] for m in httpx.get(server + "/api/tags").json()["models"]}
    second = ModelStore(str(tmp_path / "second"))
    report = second.pull(copy, insecure=True)
    assert report.digest == tags[name] == tags[copy]
