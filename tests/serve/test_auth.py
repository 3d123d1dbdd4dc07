"""Auth in-process: every route against the role table, and each way a token or key fails.

Apps over ``FakeRuntime`` with Starlette's TestClient; the store is a temp folder.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from starlette.routing import Route
from starlette.testclient import TestClient

from omax.auth.policy import AuthConfig
from omax.auth.roles import PREFIX_ROLES, ROUTE_ROLES, Role, required_role
from omax.auth.store import AuthStore
from omax.auth.tokens import create_token, secret_kid
from omax.serve import ollama, openai
from omax.serve.app import build_app
from tests.fake_runtime import FakeRuntime

SECRET = "s" * 32
OTHER = "t" * 32


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def token(role: Role | str = Role.admin, secret: str = SECRET, **kwargs) -> str:
    role = role if isinstance(role, Role) else Role[role]
    return create_token("tester", role, 3600, secret=secret, **kwargs)[0]


@pytest.fixture
def store(tmp_path) -> AuthStore:
    return AuthStore(str(tmp_path / "origin"))


@pytest.fixture
def client(store) -> TestClient:
    auth = AuthConfig.build(secret=SECRET, store_url=store.url)
    return TestClient(build_app(FakeRuntime(), auth=auth))


def _concrete(path: str) -> str:
    return path.replace("{digest}", "sha256:" + "0" * 64).replace("{model:path}", "fake-chat")


ROUTES = [
    (method, _concrete(route.path))
    for route in [*ollama.routes, *openai.routes]
    if isinstance(route, Route)
    for method in sorted(route.methods or ())
    if method != "HEAD" or route.methods == {"HEAD"}
] + [("GET", "/metrics"), ("GET", "/openapi.json")]
GUARDED = [(m, p) for m, p in ROUTES if required_role(p) is not None]
BELOW = [(m, p) for m, p in GUARDED if required_role(p) != Role.viewer]


def test_every_route_is_in_the_table():
    for _, path in ROUTES:
        listed = path in ROUTE_ROLES or any(path.startswith(p) for p, _ in PREFIX_ROLES)
        assert listed or path == "/metrics", path


def test_the_roles_of_the_issue():
    assert required_role("/") is None and required_role("/api/health") is None
    assert {p for p, r in ROUTE_ROLES.items() if r == Role.viewer} >= {
        "/api/tags",
        "/api/show",
        "/api/ps",
        "/api/version",
    }
    for path in ("/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/v1/models"):
        assert required_role(path) == Role.user
    for path in ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"):
        assert required_role(path) == Role.operator
    assert required_role("/api/blobs/sha256:00") == Role.operator
    assert required_role("/api/something-new") == Role.admin
    assert required_role("/metrics") is None and required_role("/metrics", "viewer") == Role.viewer


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_401_without_credentials(client, method, path):
    r = client.request(method, path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    if path.startswith("/v1/"):
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and "message" in err and "code" in err
    elif method != "HEAD":
        assert isinstance(r.json()["error"], str)


@pytest.mark.parametrize(("method", "path"), BELOW)
def test_403_for_a_role_below_the_route(client, method, path):
    needed = required_role(path)
    assert needed is not None
    r = client.request(method, path, headers=bearer(token(Role(needed - 1))))
    assert r.status_code == 403
    body = r.json()["error"]
    message = body["message"] if path.startswith("/v1/") else body
    assert needed.name in message


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_the_needed_role_gets_past_auth(client, method, path):
    needed = required_role(path)
    assert needed is not None
    r = client.request(method, path, headers=bearer(token(needed)), json={})
    assert r.status_code not in (401, 403), r.text


def test_probes_and_metrics_policy(store):
    open_app = TestClient(build_app(FakeRuntime(), auth=AuthConfig.build(secret=SECRET)))
    assert open_app.get("/").status_code == 200
    assert open_app.get("/api/health").status_code == 200
    assert open_app.get("/metrics").status_code == 200
    closed = AuthConfig.build(secret=SECRET, metrics="viewer")
    c = TestClient(build_app(FakeRuntime(), auth=closed))
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers=bearer(token(Role.viewer))).status_code == 200


def _tamper(value: str) -> str:
    head, payload, sig = value.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{raw}.{sig}"


def _bad_tokens() -> dict[str, str]:
    kid = {"kid": secret_kid(SECRET)}
    now = int(time.time())
    claims = {"sub": "x", "role": "admin", "exp": now + 3600, "jti": "j"}
    return {
        "expired": create_token("x", Role.admin, 60, secret=SECRET, now=now - 3600)[0],
        "missing exp": jwt.encode({"sub": "x", "role": "admin"}, SECRET, headers=kid),
        "missing role": jwt.encode({"sub": "x", "exp": now + 60}, SECRET, headers=kid),
        "unknown role": jwt.encode({**claims, "role": "root"}, SECRET, headers=kid),
        "not yet valid": token(extra={"nbf": now + 3600}),
        "wrong signature": jwt.encode(claims, OTHER, headers=kid),
        "alg none": jwt.encode(claims, None, algorithm="none", headers=kid),
        "unknown kid": jwt.encode(claims, SECRET, headers={"kid": "nope"}),
        "other secret": token(secret=OTHER),
        "tampered": _tamper(token(Role.viewer)),
        "garbage": "a.b.c",
        "unknown key": "omax_not-a-key",
    }


@pytest.mark.parametrize("kind", list(_bad_tokens()))
def test_bad_tokens_are_refused(client, kind):
    value = _bad_tokens()[kind]
    for path in ("/api/tags", "/v1/models"):
        r = client.get(path, headers=bearer(value))
        assert r.status_code == 401, (kind, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_a_tampered_token_is_otherwise_good(client):
    assert client.get("/api/tags", headers=bearer(token(Role.viewer))).status_code == 200


def _wait_refused(client, path, value, limit=5.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit + 1:
        if client.get(path, headers=bearer(value)).status_code == 401:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"still accepted after {limit + 1} s")


def test_revoked_token_is_refused_within_5s(client, store):
    value, claims = create_token("x", Role.user, 3600, secret=SECRET)
    assert client.get("/api/tags", headers=bearer(value)).status_code == 200
    store.revoke_token(claims["jti"], claims["exp"])
    assert _wait_refused(client, "/api/tags", value) < 5.0
    assert client.get("/v1/models", headers=bearer(value)).json()["error"]["message"]


def test_store_keys_carry_roles_and_revoked_key_is_refused_within_5s(client, store):
    key = store.create_key("ci", Role.viewer)
    assert key.startswith("omax_") and len(key) > 40
    assert client.get("/api/tags", headers=bearer(key)).status_code == 200
    assert client.post("/api/chat", headers=bearer(key), json={}).status_code == 403
    store.revoke_key("ci")
    assert _wait_refused(client, "/api/tags", key) < 5.0


def test_keys_store_only_hashes(store):
    key = store.create_key("bob", Role.user)
    raw = Path(store.dir, "keys.json").read_text()
    assert key not in raw and "bob" in raw
    assert store.list_keys() == [
        {"name": "bob", "role": "user", "created": store.list_keys()[0]["created"]}
    ]


def test_static_keys_are_admin_and_legacy_shorthand_works():
    c = TestClient(build_app(FakeRuntime(), api_keys=["k1"], jwt_secret=SECRET))
    assert c.get("/").status_code == 200
    r = c.get("/api/tags")
    assert r.status_code == 401 and set(r.json()) == {"error"}
    assert c.get("/v1/models").json()["error"]["type"] == "invalid_request_error"
    assert c.get("/api/tags", headers=bearer("k1")).status_code == 200
    assert c.post("/api/copy", headers=bearer("k1"), json={}).status_code not in (401, 403)
    assert c.get("/api/tags", headers=bearer("nope")).status_code == 401
    assert c.get("/api/tags", headers=bearer(token(Role.viewer))).status_code == 200


def test_rotation_with_an_accepted_secret():
    old = AuthConfig.build(secret=SECRET, accepted=[OTHER])
    c = TestClient(build_app(FakeRuntime(), auth=old))
    assert c.get("/api/tags", headers=bearer(token(secret=OTHER))).status_code == 200
    assert c.get("/api/tags", headers=bearer(token(secret=SECRET))).status_code == 200
    legacy = jwt.encode({"sub": "x", "role": "user", "exp": time.time() + 60}, SECRET)
    assert c.get("/api/tags", headers=bearer(legacy)).status_code == 200  # no kid: current
    legacy_old = jwt.encode({"sub": "x", "role": "user", "exp": time.time() + 60}, OTHER)
    assert c.get("/api/tags", headers=bearer(legacy_old)).status_code == 401


def test_public_key_front_door(tmp_path):
    private = ed25519.Ed25519PrivateKey.generate()
    pem_private = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    pem_public = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    (tmp_path / "pub.pem").write_text(pem_public)
    c = TestClient(
        build_app(FakeRuntime(), auth=AuthConfig.build(public_key=str(tmp_path / "pub.pem")))
    )
    good = create_token("x", Role.user, 60, private_key=pem_private)[0]
    assert jwt.get_unverified_header(good)["alg"] == "EdDSA"
    assert c.get("/api/tags", headers=bearer(good)).status_code == 200
    assert c.get("/api/tags", headers=bearer(token())).status_code == 401  # no HS256 here


def test_audit_line_for_state_changes(client, caplog):
    caplog.set_level(logging.INFO, logger="omax.audit")
    headers = {**bearer(token(Role.operator)), "X-Request-Id": "req-7"}
    client.post("/api/copy", headers=headers, json={"source": "fake-chat", "destination": "b"})
    client.get("/api/tags", headers=bearer(token(Role.operator)))
    client.post("/api/delete", headers=bearer(token(Role.user)), json={"model": "b"})
    lines = [r.getMessage() for r in caplog.records if r.name == "omax.audit"]
    assert len(lines) == 2, lines
    assert "who=tester role=operator route=POST /api/copy" in lines[0]
    assert '"fake-chat -> b"' in lines[0] and "status=200" in lines[0]
    assert "request_id=req-7" in lines[0]
    assert "role=user route=POST /api/delete" in lines[1] and "status=403" in lines[1]


def test_a_key_made_while_serving_works_at_once(client, store):
    assert client.get("/api/tags", headers=bearer(token())).status_code == 200  # snapshot read
    key = store.create_key("late", Role.viewer)
    time.sleep(0.6)  # the snapshot is 2 s fresh, but an unknown key looks again after 0.5 s
    assert client.get("/api/tags", headers=bearer(key)).status_code == 200
