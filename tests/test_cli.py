"""The omax command line as a user meets it: help, version, errors, logging."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import omax
from omax.cli.main import cli
from omax.cli.main import main as _main  # noqa: F401  (registers every command)

OMAX = str(Path(sys.executable).with_name("omax"))
COMMANDS = [
    "serve",
    "run",
    "list",
    "show",
    "pull",
    "push",
    "create",
    "cp",
    "rm",
    "ps",
    "cluster",
    "verify",
    "native",
    "gc",
]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_version():
    out = subprocess.run([OMAX, "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert omax.__version__ in out.stdout


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_on_every_command(command):
    from omax.cli import models, native, serve  # noqa: F401

    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    if command is None:
        for name in COMMANDS:
            assert name in result.output


@pytest.mark.parametrize(
    "args", [["list"], ["ps"], ["show", "x"], ["run", "x", "hi"], ["cp", "a", "b"]]
)
def test_client_commands_without_a_server_say_so_in_one_line(args):
    env = {**os.environ, "OMAX_HOST": f"127.0.0.1:{_closed_port()}"}
    out = subprocess.run([OMAX, *args], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "127.0.0.1" in lines[0]


def test_invalid_configuration_stops_start_up_with_one_line():
    env = {**os.environ, "DASK_OMAX__SERVE__MAX_QUEUE": "lots"}
    out = subprocess.run(
        [OMAX, "serve", "--port", "0"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "omax.serve.max-queue" in out.stderr and "'lots'" in out.stderr


def test_json_logs_to_a_rotating_file(tmp_path):
    log = tmp_path / "omax.log"
    env = {
        **os.environ,
        "OMAX_HOST": f"127.0.0.1:{_closed_port()}",
        "DASK_OMAX__LOG__LEVEL": "DEBUG",
    }
    code = (
        "import logging, sys\n"
        "from omax.cli.main import cli\n"
        "@cli.command()\n"
        "def hello():\n"
        "    logging.getLogger('omax.test').info('hello %s', 'there')\n"
        "    from distributed import LocalCluster\n"  # a worker process it starts
        "    from omax.logs import setup_plugin_logging\n"
        "    with LocalCluster(n_workers=1, processes=True) as c, c.get_client() as cl:\n"
        "        cl.run(setup_plugin_logging)\n"
        "        cl.run(lambda: logging.getLogger('omax.child').info('from the worker'))\n"
        "cli(['--log-format', 'json', '--log-file', sys.argv[1], 'hello'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(log)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    hello = [r for r in records if r["logger"] == "omax.test"]
    assert hello and hello[0]["message"] == "hello there" and hello[0]["level"] == "INFO"
    stderr_records = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert any(r["message"] == "hello there" for r in stderr_records)
    # a process the CLI starts (an embedded cluster's worker) logs JSON too
    assert any(r["message"] == "from the worker" for r in stderr_records), out.stderr[-2000:]


def test_verify_reports_damage_and_gc_is_a_dry_run_by_default(tmp_path):
    from omax.sharding.blobs import BlobStore
    from omax.sharding.modelstore import ModelStore
    from tests.tiny import tiny_llama

    store = ModelStore(str(tmp_path / "store"))
    store.import_path(tiny_llama(tmp_path / "tiny"), "tiny")
    env = {**os.environ, "DASK_OMAX__STORE__URL": str(tmp_path / "store")}
    ok = subprocess.run([OMAX, "verify"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and "all blobs verified" in ok.stdout

    orphan = BlobStore(str(tmp_path / "store")).put_bytes(b"nobody refers to me")
    dry = subprocess.run([OMAX, "gc"], capture_output=True, text=True, env=env, timeout=120)
    assert dry.returncode == 0
    if orphan in dry.stdout:  # young blobs are protected by a grace period
        assert "would remove" in dry.stdout
    assert BlobStore(str(tmp_path / "store")).has(orphan)

    digest, manifest = store.resolve("tiny")
    victim = sorted(manifest.blob_digests())[0]
    path = Path(BlobStore(str(tmp_path / "store")).path(victim))
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    bad = subprocess.run([OMAX, "verify"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and f"damaged: {victim}" in bad.stdout


def test_native_status_and_a_build_that_cannot_compile_say_so(tmp_path):
    from omax.cli import native  # noqa: F401  (registers `omax native`)

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    result = CliRunner().invoke(cli, ["native", "--help"])
    assert result.exit_code == 0 and "build" in result.output and "status" in result.output
    status = subprocess.run(
        [OMAX, "native", "status"], capture_output=True, text=True, env=env, timeout=120
    )
    assert status.returncode == 0, status.stderr
    assert "not built" in status.stdout and str(tmp_path) in status.stdout
    env["CXX"] = "false"  # a compiler that fails at once
    build = subprocess.run(
        [OMAX, "native", "build"], capture_output=True, text=True, env=env, timeout=120
    )
    assert build.returncode != 0
    assert "Traceback" not in build.stderr
    assert "Error: the native decode step did not build" in build.stderr, build.stderr
    assert not list(tmp_path.rglob("*.so"))
