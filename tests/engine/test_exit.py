"""An in-process engine that a script never closes still lets the script exit cleanly."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_script_without_close_exits_zero():
    script = textwrap.dedent(
        """
        from omax.engine.engine import Engine
        from omax.engine.request import GenerateRequest, SamplingOptions
        from tests.engine.conftest import SMOLLM2_GGUF, gguf_spec, gguf_tensors
        from tests.engine.test_generate import run_all

        eng = Engine.load(gguf_spec(SMOLLM2_GGUF), gguf_tensors(SMOLLM2_GGUF), quant="int4")
        opts = SamplingOptions(num_predict=4)
        out = run_all(eng, [GenerateRequest(model="s", prompt=f"topic {i}", options=opts)
                            for i in range(8)])
        print(len(out))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "8"
