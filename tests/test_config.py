"""Configuration: defaults, overrides through dask.config and the environment, errors."""

import subprocess
import sys

import dask.config
import pytest
import yaml

from omax import config_doc
from omax.config import settings
from omax.config_keys import BY_NAME
from omax.config_values import parse_duration, parse_size
from omax.errors import ConfigError


def test_defaults_are_registered():
    cfg = settings()
    assert cfg.port == 11434
    assert cfg.host == "127.0.0.1"
    assert cfg.keep_alive == 300.0
    assert cfg.slot_memory == 8 * 2**30
    assert cfg.store_url.endswith(".omax/store") and "~" not in cfg.store_url


def test_override_with_dask_config():
    with dask.config.set({"omax.serve.max-queue": 7, "omax.worker.slot-memory": "2 GiB"}):
        cfg = settings()
    assert cfg.max_queue == 7
    assert cfg.slot_memory == 2 * 2**30


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("omax.serve.max-queue", "many", "an integer >= 1"),
        ("omax.serve.keep-alive", "soon", "a duration"),
        ("omax.worker.slot-memory", "lots", "a size"),
        ("omax.serve.port", 70000, "a port number"),
        ("omax.engine.dtype", "int3", "float32 or bfloat16"),
    ],
)
def test_invalid_value_names_key_value_and_allowed(key, value, words):
    with dask.config.set({key: value}), pytest.raises(ConfigError) as err:
        settings()
    message = str(err.value)
    assert key in message and repr(value) in message and words in message


def test_environment_variable_override():
    code = "from omax.config import settings; print(settings().max_queue)"
    env = {"DASK_OMAX__SERVE__MAX_QUEUE": "33", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "33", out.stderr


def test_parsers():
    assert parse_duration("5m") == 300
    assert parse_duration("1h30m") == 5400
    assert parse_duration("-1") == -1
    assert parse_duration(0) == 0
    assert parse_size("512MB") == 512 * 10**6
    assert parse_size("1 KiB") == 1024
    for bad in ("5x", "", "m5"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_ollama_variables_fill_keys_left_at_their_defaults(monkeypatch):
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "4")
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "8192")
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", "10m")
    monkeypatch.setenv("OLLAMA_MAX_QUEUE", "64")
    monkeypatch.setenv("OLLAMA_MAX_LOADED_MODELS", "2")
    s = settings()
    assert (s.parallel, s.context_length, s.keep_alive) == (4, 8192, 600.0)
    assert (s.max_queue, s.max_loaded_per_slot) == (64, 2)
    with dask.config.set({"omax.engine.parallel": 2}):  # an explicit omax key wins
        assert settings().parallel == 2
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "many")
    with pytest.raises(ConfigError, match="omax.engine.parallel"):
        settings()


def _yaml_keys() -> set[str]:
    tree = yaml.safe_load(config_doc.YAML_FILE.read_text())["omax"]
    return {
        name for section, sub in tree.items() for name, _ in config_doc.leaves(sub, f"{section}.")
    }


def test_every_key_in_omax_yaml_is_checked_documented_and_said_who_reads_it():
    comments = config_doc.read_comments(config_doc.YAML_FILE.read_text())
    assert _yaml_keys() == set(BY_NAME)
    undocumented = [name for name in BY_NAME if not comments.keys.get(name)]
    assert not undocumented, f"keys with no comment in omax.yaml: {undocumented}"
    assert all(key.readers for key in BY_NAME.values())


def test_the_configuration_page_is_written_from_omax_yaml():
    page = config_doc.PAGE.read_text()
    assert config_doc.render(page, config_doc.YAML_FILE.read_text()) == page, (
        "docs/configuration.md is out of date: run python -m omax.config_doc"
    )
    row = next(line for line in page.splitlines() if line.startswith("| `omax.serve.max-queue`"))
    assert "| `512` | front door |" in row and "503" in row


def test_a_bad_key_outside_settings_fields_still_stops_start_up():
    with (
        dask.config.set({"omax.limits.stop": 0}),
        pytest.raises(ConfigError, match="omax.limits.stop"),
    ):
        settings()
