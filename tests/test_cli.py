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
    "ls",
    "show",
    "pull",
    "push",
    "create",
    "cp",
    "rm",
    "ps",
    "stop",
    "cluster",
    "verify",
    "native",
    "gc",
    "help",
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
            assert name in result.output or name == "ls"  # an alias, not listed


@pytest.mark.parametrize(
    "args",
    [["list"], ["ls"], ["ps"], ["show", "x"], ["run", "x", "hi"], ["cp", "a", "b"], ["stop", "x"]],
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


def test_help_command_prints_a_commands_help():
    result = CliRunner().invoke(cli, ["help", "run"], prog_name="omax")
    assert result.exit_code == 0 and "Usage: omax run" in result.output
    for flag in ("--format", "--verbose", "--think", "--nowordwrap", "--keepalive", "--insecure"):
        assert flag in result.output
    assert (
        "Usage: omax token create"
        in CliRunner().invoke(cli, ["help", "token", "create"], prog_name="omax").output
    )
    assert "stop" in CliRunner().invoke(cli, ["help"]).output
    bad = CliRunner().invoke(cli, ["help", "nope"])
    assert bad.exit_code == 2 and "unknown command 'nope'" in bad.output


def test_docs_name_every_command_and_option():
    """docs/cli.md is the CLI reference: a command or flag missing there fails here."""
    import click

    text = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()

    def walk(group: click.Group, prefix: str):
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            yield f"{prefix}{name}", command
            if isinstance(command, click.Group):
                yield from walk(command, f"{prefix}{name} ")

    for name, command in walk(cli, ""):
        assert f"omax {name}" in text, name
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-") and opt not in ("-h", "--help"):
                    assert opt in text, f"omax {name} {opt}"


@pytest.mark.parametrize(
    "omax_host,ollama_host,url",
    [
        (None, None, "http://127.0.0.1:11434"),
        (None, "example.com", "http://example.com:11434"),
        (None, "10.0.0.1:8080", "http://10.0.0.1:8080"),
        (None, "http://h:1", "http://h:1"),
        (None, "0.0.0.0", "http://127.0.0.1:11434"),  # a bind address means this machine
        ("omax-host:5", "ollama-host:6", "http://omax-host:5"),  # OMAX_HOST wins
    ],
)
def test_host_from_omax_host_then_ollama_host(monkeypatch, omax_host, ollama_host, url):
    from omax.cli.client import base_url

    for name, value in (("OMAX_HOST", omax_host), ("OLLAMA_HOST", ollama_host)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert base_url() == url


def test_relative_times_read_like_ollamas():
    from omax.cli.timefmt import human_time, parse_time

    now = 1_800_000_000.0
    assert human_time(now - 120, now) == "2 minutes ago"
    assert human_time(now + 4 * 60 + 30, now) == "4 minutes from now"
    assert human_time(now - 0.5, now) == "Less than a second ago"
    assert human_time(now - 61, now) == "About a minute ago"
    assert human_time(now - 3 * 3600, now) == "3 hours ago"
    assert human_time(now - 2 * 86400, now) == "2 days ago"
    assert human_time(now - 21 * 86400, now) == "3 weeks ago"
    assert human_time(now + 10 * 365 * 86400, now) == "Forever"  # keep_alive < 0
    assert human_time(None, now) == "Never"
    assert parse_time("2026-12-03T20:26:45.251Z") == pytest.approx(1796329605.251)
    assert parse_time("0001-01-01T00:00:00Z") is None


def test_verbose_summary_has_ollamas_lines_and_go_durations():
    import io

    from omax.cli.render import summary
    from omax.cli.timefmt import go_duration

    assert go_duration(10_234_610_458) == "10.234610458s"
    assert go_duration(197_847_049) == "197.847049ms"
    assert go_duration(1_500) == "1.5µs" and go_duration(999) == "999ns"
    assert go_duration(61_000_000_000) == "1m1s" and go_duration(3_600_000_000_000) == "1h0m0s"
    out = io.StringIO()
    summary(
        {
            "total_duration": 2_000_000_000,
            "load_duration": 500_000_000,
            "prompt_eval_count": 10,
            "prompt_eval_duration": 100_000_000,
            "eval_count": 20,
            "eval_duration": 1_000_000_000,
        },
        out,
    )
    assert out.getvalue().splitlines() == [
        "total duration:       2s",
        "load duration:        500ms",
        "prompt eval count:    10 token(s)",
        "prompt eval duration: 100ms",
        "prompt eval rate:     100.00 tokens/s",
        "eval count:           20 token(s)",
        "eval duration:        1s",
        "eval rate:            20.00 tokens/s",
    ]


def test_slash_set_changes_the_session():
    from omax.cli.chat import Session
    from omax.cli.slash import apply_set, show_text

    s = Session(model="m")
    assert apply_set(s, ["parameter", "temperature", "0.5"]) == (
        "Set parameter 'temperature' to '0.5'\n"
    )
    apply_set(s, ["parameter", "stop", "<a>", "<b>"])
    apply_set(s, ["parameter", "num_predict", "7"])
    assert s.options == {"temperature": 0.5, "stop": ["<a>", "<b>"], "num_predict": 7}
    assert "Couldn't set parameter" in apply_set(s, ["parameter", "top_k", "many"])
    assert "Couldn't set parameter" in apply_set(s, ["parameter", "bogus", "1"])
    assert apply_set(s, ["format", "json"]) == "Set format to 'json' mode.\n" and s.format == "json"
    assert "Invalid or missing format" in apply_set(s, ["format", "yaml"])
    apply_set(s, ["verbose"])
    apply_set(s, ["nowordwrap"])
    apply_set(s, ["think", "high"])
    assert s.verbose and not s.wrap and s.think == "high"
    assert s.fields() == {"options": s.options, "format": "json", "think": "high"}
    assert "Unknown command '/set nope'" in apply_set(s, ["nope"])
    shown = show_text(s, {"parameters": "temperature 0.2"}, "parameters")
    assert "temperature 0.2" in shown and "User defined parameters:" in shown
    assert show_text(s, {}, "system") == "No system message was specified for this model."


class _RecordingServer:
    """A real HTTP server that answers any progress route with success and keeps the
    JSON bodies it was sent."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                bodies.append(
                    (self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                )
                line = b'{"status": "success"}\n'
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Content-Length", str(len(line)))
                self.end_headers()
                self.wfile.write(line)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_pull_and_push_insecure_send_it_in_the_body(monkeypatch):
    server = _RecordingServer()
    monkeypatch.setenv("OMAX_HOST", server.url)
    try:
        for args in (
            ["pull", "m:1", "--insecure"],
            ["push", "me/m:1", "--insecure"],
            ["pull", "m:2"],
        ):
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0 and "success" in result.output, result.output
    finally:
        server.httpd.shutdown()
    assert [(path, body["model"], body["insecure"]) for path, body in server.bodies] == [
        ("/api/pull", "m:1", True),
        ("/api/push", "me/m:1", True),
        ("/api/pull", "m:2", False),
    ]


class _DroppingServer:
    """A real HTTP server that knows every model and drops the connection one line into
    any streamed answer, as a server that dies mid-reply does."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/api/show":
                    body = b'{"model_info": {}, "capabilities": ["completion"]}'
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                line = b'{"response": "Once upon", "done": false}\n'
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.write(b'40\r\n{"respo')  # a chunk cut short
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_a_connection_dropped_mid_reply_is_one_line_not_a_traceback():
    server = _DroppingServer()
    try:
        env = {**os.environ, "OMAX_HOST": server.url}
        out = subprocess.run(
            [OMAX, "run", "m", "tell me a story"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        server.httpd.shutdown()
    assert out.returncode == 1
    assert "Once upon" in out.stdout
    assert "Traceback" not in out.stderr
    assert (
        out.stderr.strip()
        == f"Error: lost the connection to the omax server at http://{server.url}"
    )


def test_replication_progress_gets_one_bar_per_worker(capsys):
    from omax.cli.render import progress

    digest = "sha256:" + "a" * 64
    lines = [
        {"status": "pulling manifest"},
        {"status": "replicating to tcp://w1:1", "digest": digest, "total": 100, "completed": 40},
        {"status": "replicating to tcp://w2:1", "digest": digest, "total": 100, "completed": 10},
        {"status": "replicating to tcp://w1:1", "digest": digest, "total": 100, "completed": 100},
        {"status": "success"},
    ]
    progress(iter(lines))
    out = capsys.readouterr()
    assert "pulling manifest" in out.out and "success" in out.out
    assert "replicating to tcp://w1:1" in out.err and "replicating to tcp://w2:1" in out.err
