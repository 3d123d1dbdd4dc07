"""Bounded requests against the real `omax serve` (embedded cluster, SmolLM2).

What an unprivileged caller could once do to every other stream on a model, or to
the server's disk, is now a 400 or 403 that leaves the model serving.
"""

from __future__ import annotations

import time

import httpx

from .conftest import DEMO


def _ok(server: str) -> None:
    r = httpx.post(
        f"{server}/api/generate",
        json={"model": DEMO, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True


def test_a_looping_template_is_a_400_and_the_model_keeps_serving(server):
    loop = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    r = httpx.post(
        f"{server}/api/generate",
        json={"model": DEMO, "prompt": "hi", "template": loop, "stream": True},
        timeout=120,
    )
    assert r.status_code == 400, r.text
    assert "template took longer than" in r.json()["error"]
    assert time.monotonic() - started < 60
    _ok(server)


def test_a_huge_prompt_is_truncated_to_the_context(server):
    prompt = "All work and no play makes Jack a dull boy. " * 400_000  # ~18 MB
    r = httpx.post(
        f"{server}/api/generate",
        json={
            "model": DEMO,
            "prompt": prompt,
            "stream": False,
            "options": {"num_predict": 2, "num_ctx": 512, "temperature": 0},
        },
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert 0 < r.json()["prompt_eval_count"] <= 512


def test_create_from_a_server_path_is_refused_by_default(server):
    r = httpx.post(
        f"{server}/api/create", json={"model": "x", "from": "/etc/passwd", "stream": False}
    )
    assert r.status_code == 400
    assert "server path" in r.json()["error"]
    r = httpx.post(
        f"{server}/api/create",
        json={"model": "x", "files": {"../../x.gguf": "sha256:" + "0" * 64}, "stream": False},
    )
    assert r.status_code == 400
    assert "invalid file name" in r.json()["error"]


def test_caps_and_foreign_hosts_on_the_real_server(server):
    r = httpx.post(
        f"{server}/api/chat",
        json={
            "model": DEMO,
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"stop": [str(i) for i in range(1000)]},
        },
    )
    assert r.status_code == 400 and "too many stop sequences" in r.json()["error"]
    r = httpx.get(f"{server}/api/tags", headers={"Host": "rebound.example.com"})
    assert r.status_code == 403
    r = httpx.get(f"{server}/api/tags", headers={"Origin": "https://evil.example.com"})
    assert r.status_code == 403
    _ok(server)
