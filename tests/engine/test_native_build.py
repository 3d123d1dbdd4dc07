"""The native decode step builds on a fresh machine even where an earlier build was
killed midway, and processes that start at once build it only once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from omax.engine import native

pytestmark = pytest.mark.slow

BUILD = (
    "import logging; logging.basicConfig(level=logging.INFO)\n"
    "from omax.engine import native\n"
    "native.module()\n"
    "print('built' if native.wait(600) is not None else 'python')\n"
)


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
