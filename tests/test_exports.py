"""The public surface of ``import omax`` is decided on purpose and pinned here."""

import subprocess
import sys

import omax


def test_exported_names():
    assert omax.__all__ == [
        "__version__",
        "Engine",
        "ModelStore",
        "GenerateRequest",
        "EmbedRequest",
        "Message",
        "SamplingOptions",
        "ClusterRuntime",
        "OmaxClient",
        "connect",
    ]
    for name in omax.__all__:
        assert getattr(omax, name) is not None


def test_import_omax_stays_light():
    code = "import sys, omax; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"], out.stderr
