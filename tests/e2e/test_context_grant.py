"""num_ctx is honoured up to the model's trained context, and /api/ps shows what was
granted (the real server, SmolLM2: trained for 8192 tokens)."""

from __future__ import annotations

import httpx

from .conftest import DEMO


def _generate(server: str, **options) -> dict:
    r = httpx.post(
        f"{server}/api/generate",
        json={
            "model": DEMO,
            "prompt": "Hi",
            "stream": False,
            "options": {"num_predict": 1, "temperature": 0, **options},
        },
        timeout=300,
    )
    assert r.status_code == 200, r.text
    return r.json()


def _unload(server: str) -> None:
    r = httpx.post(f"{server}/api/generate", json={"model": DEMO, "keep_alive": 0}, timeout=120)
    assert r.status_code == 200, r.text


def _granted(server: str) -> list[int]:
    return [m["context_length"] for m in httpx.get(f"{server}/api/ps").json()["models"]]


def test_a_larger_num_ctx_is_granted_up_to_the_trained_context(server):
    _unload(server)
    try:
        _generate(server, num_ctx=6000)
        assert _granted(server) == [6000]
        _generate(server, num_ctx=100_000)  # a loaded model keeps its context
        assert _granted(server) == [6000]
        _unload(server)
        _generate(server, num_ctx=100_000)
        assert _granted(server) == [8192]  # SmolLM2's trained context
        _unload(server)
        _generate(server, num_ctx=512)  # never below omax.engine.context-length
        assert _granted(server) == [4096]
    finally:
        _unload(server)
