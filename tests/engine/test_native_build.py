"""The native decode step is built only when asked (``omax native build``, ``make
install``): it builds on a fresh machine even where an earlier build was killed
midway, processes that start at once build it only once, and without a build a
runner decodes in Python and says once how to build it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from omax.engine import native

BUILD = (
    "import logging; logging.basicConfig(level=logging.INFO)\n"
    "from omax.engine import native\n"
    "print('built' if native.build() is not None else 'python')\n"
)


@pytest.fixture
def no_build(tmp_path, monkeypatch):
    """This process as on a machine where the step was never built."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_told", False)
    return tmp_path


def test_without_a_build_module_builds_nothing_and_says_once_how_to(no_build, caplog):
    with caplog.at_level(logging.INFO, logger="omax.engine.native"):
        assert native.module() is None
        assert native.module() is None
    told = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(told) == 1 and "omax native build" in told[0].getMessage(), caplog.text
    assert "compiling" not in caplog.text
    assert not (no_build / "omax").exists()  # not even a lock file: nothing started
    assert not native.status().built


def test_a_failed_build_says_why(no_build, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(native.BuildError, match="nonexistent"):
        native.build()
    assert native.module() is None and not native.library().exists()


@pytest.mark.slow
def test_two_processes_build_once_past_a_killed_builds_leftovers(tmp_path):
    root = tmp_path / "omax" / "native"
    name = native._name()
    # what a build killed midway leaves: torch's lock file in its build directory
    # (which made every later build wait for ever) and a half-built directory of ours
    (root / name).mkdir(parents=True)
    (root / name / "lock").touch()
    (root / f"{name}.build-killed").mkdir()
    (root / f"{name}.build-killed" / "native_decode.o").write_bytes(b"half")

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]

    for out, err in outs:
        assert out.strip() == "built", err[-3000:]
    compiled = [err for _, err in outs if "compiling the native decode step" in err]
    assert len(compiled) == 1, [err[-2000:] for _, err in outs]
    assert (root / name / f"{name}.so").is_file()
    assert not list(root.glob(f"{name}.build-*"))  # the leftover and our work dir are gone
