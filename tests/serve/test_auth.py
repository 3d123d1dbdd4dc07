"""Bearer auth (API keys and HS256 JWTs), tested in-process on a separate app."""

from __future__ import annotations

import jwt
from starlette.testclient import TestClient

from omax.serve.app import build_app
from omax.serve.fake import FakeRuntime


def test_api_keys_and_jwt():
    app = build_app(FakeRuntime(), api_keys=["k1"], jwt_secret="s" * 32)
    c = TestClient(app)
    assert c.get("/").status_code == 200
    r = c.get("/api/tags")
    assert r.status_code == 401 and r.json() == {"error": "unauthorized"}
    assert c.get("/v1/models").json()["error"]["type"] == "invalid_request_error"
    assert c.get("/api/tags", headers={"Authorization": "Bearer k1"}).status_code == 200
    assert c.get("/api/tags", headers={"Authorization": "Bearer nope"}).status_code == 401
    token = jwt.encode({"sub": "me"}, "s" * 32, algorithm="HS256")
    assert c.get("/api/tags", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    bad = jwt.encode({"sub": "me"}, "t" * 32, algorithm="HS256")
    assert c.get("/api/tags", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
