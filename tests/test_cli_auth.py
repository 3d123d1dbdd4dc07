"""`omax token`, `omax key` and the secure default of `omax serve`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask.config
import httpx
import jwt
import pytest
from click.testing import CliRunner

from omax.auth.store import AuthStore
from omax.cli.main import cli
from omax.cli.main import main as _main  # noqa: F401  (registers every command)
from omax.cli.serve import is_loopback

SECRET = "k" * 40
OMAX = shutil.which("omax") or str(Path(sys.executable).with_name("omax"))


def run(args: list[str], **config) -> tuple[int, str, str]:
    from omax.cli import auth  # noqa: F401  (registers `omax token`, `omax key`)

    with dask.config.set(config):
        result = CliRunner().invoke(cli, args)
    return result.exit_code, result.stdout, result.stderr


def test_token_create_needs_a_secret(tmp_path):
    code, out, err = run(
        ["token", "create", "--sub", "a", "--role", "user"],
        **{"omax.auth.jwt-secret": "", "omax.serve.jwt-secret": ""},
    )
    assert code != 0 and "jwt-secret" in err


def test_token_create_and_revoke(tmp_path):
    cfg = {"omax.auth.jwt-secret": SECRET, "omax.store.url": str(tmp_path)}
    code, out, err = run(
        ["token", "create", "--sub", "ann", "--role", "operator", "--ttl", "2d"], **cfg
    )
    assert code == 0, err
    value = out.strip()
    claims = jwt.decode(value, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "ann" and claims["role"] == "operator"
    assert claims["exp"] - claims["iat"] == 2 * 86400 and claims["jti"] in err
    code, out, _ = run(["token", "revoke", claims["jti"]], **cfg)
    assert code == 0 and claims["jti"] in out
    assert claims["jti"] in AuthStore(str(tmp_path)).snapshot().revoked
    code, out, _ = run(["token", "revoke", value], **cfg)  # the whole token works too
    assert code == 0
    code, _, err = run(["token", "create", "--sub", "a", "--role", "user", "--ttl", "x"], **cfg)
    assert code != 0 and "duration" in err


def test_key_create_list_revoke(tmp_path):
    cfg = {"omax.store.url": str(tmp_path)}
    code, key, _ = run(["key", "create", "--name", "ci", "--role", "viewer"], **cfg)
    assert code == 0 and key.strip().startswith("omax_")
    code, listing, _ = run(["key", "list"], **cfg)
    assert "ci" in listing and "viewer" in listing and key.strip() not in listing
    code, _, err = run(["key", "create", "--name", "ci", "--role", "admin"], **cfg)
    assert code != 0 and "exists" in err
    assert run(["key", "revoke", "ci"], **cfg)[0] == 0
    assert "ci" not in run(["key", "list"], **cfg)[1]
    code, _, err = run(["key", "revoke", "ci"], **cfg)
    assert code != 0 and "no key named" in err


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert is_loopback("[::1]") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("example.com")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_OMAX__")}
    env["DASK_OMAX__STORE__URL"] = str(tmp_path / "origin")
    env["DASK_OMAX__WORKER__STORE"] = str(tmp_path / "workers" / "{name}")
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_refuses_a_public_address_without_auth(tmp_path):
    out = subprocess.run(
        [OMAX, "serve", "--host", "0.0.0.0", "--port", str(_free_port()), "--no-demo"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=120,
    )
    assert out.returncode != 0
    assert "without authentication" in out.stderr and "--insecure" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
@pytest.mark.cluster
def test_serve_starts_on_a_public_address_with_insecure(tmp_path):
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [OMAX, "serve", "--host", "0.0.0.0", "--port", str(port), "--insecure", "--no-demo"]
        + ["--workers", "1", "--dashboard", ":0"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(tmp_path),
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.time() < deadline, "omax serve did not answer within 180 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert "WITHOUT authentication" in (tmp_path / "serve.log").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "args", [["token", "--help"], ["token", "create", "--help"], ["key", "list", "--help"]]
)
def test_help(args):
    code, out, _ = run(args)
    assert code == 0 and "Usage:" in out


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("auth.jwt-secret", "short", "32+ characters"),
        ("serve.jwt-secret", "short", "32+ characters"),
        ("auth.jwt-accepted", ["short"], "32+ characters"),
        ("auth.metrics", "closed", "open or viewer"),
        ("auth.required", "maybe", "true or false"),
    ],
)
def test_auth_settings_are_validated(key, value, words):
    from omax.config import settings
    from omax.errors import ConfigError

    with dask.config.set({f"omax.{key}": value}), pytest.raises(ConfigError) as err:
        settings()
    assert f"omax.{key}" in str(err.value) and words in str(err.value)


def test_serve_alias_and_auth_config():
    from omax.auth.policy import auth_config
    from omax.config import settings
    from omax.errors import ConfigError

    with dask.config.set({"omax.serve.jwt-secret": SECRET, "omax.auth.jwt-secret": ""}):
        cfg = settings()
    assert cfg.jwt_secret == SECRET and auth_config(cfg).enabled
    with dask.config.set({"omax.auth.required": "true"}):
        assert auth_config(settings()).enabled
    with (
        dask.config.set({"omax.auth.public-key": "/nonexistent.pem"}),
        pytest.raises(ConfigError, match="omax.auth.public-key"),
    ):
        auth_config(settings())
