"""`omax run` and the client commands as a user at a terminal meets them, against the
real `omax serve` of this tier (real model). The chat is driven through a
pseudo-terminal with pexpect: what is typed is what a person types."""

import os
import re
import subprocess
import sys
import time

import httpx
import pexpect
import pytest

from tests.e2e.conftest import DEMO, OMAX

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def omax(server: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI as a subprocess, reaching the server through OLLAMA_HOST."""
    env = {k: v for k, v in os.environ.items() if k != "OMAX_HOST"}
    env["OLLAMA_HOST"] = server.removeprefix("http://")
    return subprocess.run([OMAX, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def short(server, tmp_path_factory):
    """The demo model with num_predict 8, so one-shot runs end soon; made with `omax create`."""
    modelfile = tmp_path_factory.mktemp("short") / "Modelfile"
    modelfile.write_text(f"FROM {DEMO}\nPARAMETER num_predict 8\n")
    made = omax(server, "create", "cli-short", "-f", str(modelfile))
    assert made.returncode == 0, made.stderr
    yield "cli-short:latest"
    assert omax(server, "rm", "cli-short").returncode == 0


def spawn_chat(server: str) -> pexpect.spawn:
    env = {**os.environ, "OMAX_HOST": server, "TERM": "dumb"}
    child = pexpect.spawn(
        OMAX, ["run", DEMO], env=env, encoding="utf-8", timeout=180, dimensions=(40, 120)
    )
    child.logfile_read = sys.stdout  # shown by pytest when the test fails
    return child


def test_interactive_chat_set_block_ctrl_c_and_bye(server):
    child = spawn_chat(server)
    child.expect_exact(">>> ")
    child.sendline("/set parameter num_predict 400")
    child.expect_exact("Set parameter 'num_predict' to '400'")
    child.expect_exact(">>> ")
    child.sendline("/set system You are a storyteller.")
    child.expect_exact("Set system message.")
    child.expect_exact(">>> ")

    # a """ block over two lines is one message
    child.sendline('"""Write a very long story')
    child.expect_exact("... ")
    child.sendline('about a dragon and a knight."""')
    child.expect_exact('knight."""')
    child.expect(r"\w\w+")  # the reply has begun
    started = time.time()
    child.sendintr()  # Ctrl-C: stops this reply, not the session
    child.expect_exact(">>> ", timeout=20)
    stopped_after = time.time() - started
    assert child.isalive()
    # 400 tokens take far longer than this on any machine that runs the test
    assert stopped_after < 10, stopped_after

    # the session goes on with what was set: a short reply this time
    child.sendline("/set parameter num_predict 8")
    child.expect_exact(">>> ")
    child.sendline("/show parameters")
    child.expect(r"User defined parameters:\s+num_predict\s+8")
    child.expect_exact(">>> ")
    child.sendline("Say hello.")
    child.expect_exact("Say hello.")
    child.expect(r"\w+")
    child.expect_exact(">>> ", timeout=120)

    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in (child.before or "")


def test_interactive_commands_help_show_clear_save_load(server):
    child = spawn_chat(server)
    child.expect_exact(">>> ")
    child.sendline("/?")
    child.expect_exact("/set            Set session variables")
    child.expect_exact(">>> ")
    child.sendline("/show info")
    child.expect(r"architecture\s+llama")
    child.expect_exact(">>> ")
    child.sendline("/set format yaml")
    child.expect_exact("Invalid or missing format")
    child.sendline("/nope")
    child.expect_exact("Unknown command '/nope'. Type /? for help")
    child.sendline('/set system """You answer')
    child.expect_exact("... ")
    child.sendline('like a pirate."""')
    child.expect_exact("Set system message.")
    child.sendline("/show system")
    child.expect(r"You answer\r?\nlike a pirate")
    child.sendline("/set parameter temperature 0.1")
    child.expect_exact("Set parameter")
    child.sendline("/save cli-pirate")
    child.expect_exact("Created new model 'cli-pirate'", timeout=300)
    child.sendline("/clear")
    child.expect_exact("Cleared session context")
    child.sendline("/load no-such-model")
    child.expect_exact("Couldn't find model 'no-such-model'")
    child.sendline("/load cli-pirate")
    child.expect_exact("Loading model 'cli-pirate'")
    child.expect_exact(">>> ", timeout=300)
    child.sendeof()  # Ctrl-D leaves, like /bye
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    shown = httpx.post(server + "/api/show", json={"model": "cli-pirate"}).json()
    assert shown["system"] == "You answer\nlike a pirate."
    assert "temperature" in shown["parameters"]
    assert omax(server, "rm", "cli-pirate").returncode == 0


def test_run_verbose_prints_ollamas_timing_summary(server, short):
    out = omax(server, "run", short, "--verbose", "--keepalive", "10m", "Say hi.")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    labels = [line.split(":")[0] for line in out.stderr.splitlines() if ":" in line]
    for label in (
        "total duration",
        "prompt eval count",
        "prompt eval duration",
        "prompt eval rate",
        "eval count",
        "eval duration",
        "eval rate",
    ):
        assert label in labels, out.stderr
    assert re.search(r"^eval rate:\s+\d+\.\d\d tokens/s$", out.stderr, re.M), out.stderr


def test_list_ps_and_stop_with_relative_times(server, short):
    assert omax(server, "run", short, "--keepalive", "5m", "Hi").returncode == 0
    ps = omax(server, "ps")
    assert ps.returncode == 0, ps.stderr
    assert ps.stdout.splitlines()[0].split() == [
        "NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL", "WORKER"
    ]  # fmt: skip
    row = next(line for line in ps.stdout.splitlines() if line.startswith(short))
    assert re.search(r"\d minutes from now|About a minute from now", row), row

    listing = omax(server, "ls")
    row = next(line for line in listing.stdout.splitlines() if line.startswith(DEMO))
    assert re.search(r"(\d+ \w+|About an? \w+|Less than a second) ago", row), row

    stop = omax(server, "stop", short)
    assert stop.returncode == 0, stop.stderr
    assert short not in omax(server, "ps").stdout
    missing = omax(server, "stop", "no-such-model")
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error: couldn\'t find model "no-such-model" to stop'


def test_show_flags(server):
    template = omax(server, "show", DEMO, "--template")
    assert template.returncode == 0 and "im_start" in template.stdout
    verbose = omax(server, "show", DEMO, "--verbose")
    assert "Metadata" in verbose.stdout and "general.architecture" in verbose.stdout
    both = omax(server, "show", DEMO, "--system", "--license")
    assert both.returncode == 2 and "only one of" in both.stderr


def test_run_pulls_a_missing_model_and_says_why_it_cannot(server):
    out = omax(server, "run", "no-such-model:1", "Hi")
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert lines[0] == "pulling manifest", out.stderr  # it tried
    assert len(lines) == 2 and lines[1].startswith("Error: "), out.stderr


def _short_ollama_folder(root, gguf) -> None:
    """An Ollama models folder holding ``smol:135m`` whose answers stop after 8 tokens."""
    import hashlib
    import json

    from tests.sharding.test_ollama_import import _blob

    (root / "blobs").mkdir(parents=True)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    (root / "blobs" / f"sha256-{digest}").symlink_to(gguf)
    params = json.dumps({"num_predict": 8}).encode()
    layers = [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"},
        {"mediaType": "application/vnd.ollama.image.params", "digest": _blob(root, params)},
    ]
    manifests = root / "manifests" / "registry.ollama.ai" / "library" / "smol"
    manifests.mkdir(parents=True)
    (manifests / "135m").write_text(json.dumps({"schemaVersion": 2, "layers": layers}))


def test_run_pulls_a_missing_model_then_answers(tmp_path):
    """`omax run ollama://NAME` on a server without it: progress on stderr, then the answer."""
    from omax.sharding.bundled import smollm2_gguf_path
    from tests.e2e.conftest import start_server, stop_server

    models = tmp_path / "ollama-models"
    _short_ollama_folder(models, smollm2_gguf_path())
    proc, url, log = start_server(tmp_path, "--no-demo", env={"OLLAMA_MODELS": str(models)})
    try:
        out = omax(url, "run", "ollama://smol:135m", "What is the capital of France?")
        assert out.returncode == 0, out.stderr
        assert "pulling manifest" in out.stderr and "success" in out.stderr
        assert out.stdout.strip()  # the answer, and only the answer, on stdout
        assert "success" not in out.stdout
        names = [m["name"] for m in httpx.get(url + "/api/tags").json()["models"]]
        assert names == ["smol:135m"]
    finally:
        assert stop_server(proc) == 0, log.read_text()[-3000:]


def test_create_from_a_file_shows_hashing_and_copying(server, tmp_path):
    from omax.sharding.bundled import smollm2_gguf_path

    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {smollm2_gguf_path()}\nSYSTEM Be brief.\n")
    out = omax(server, "create", "cli-from-file", "-f", str(modelfile))
    assert out.returncode == 0, out.stderr
    name = smollm2_gguf_path().name
    assert f"hashing {name}" in out.stderr and f"copying file {name}" in out.stderr
    assert "100%" in out.stderr
    assert out.stdout.splitlines()[0] == "gathering model components"
    assert out.stdout.splitlines()[-1] == "success"
    assert omax(server, "rm", "cli-from-file").returncode == 0
