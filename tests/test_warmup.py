"""``omax.warmup``: a process's slow imports done in a thread as it starts."""

import subprocess
import sys
import threading

from omax import warmup


def test_wait_joins_every_started_warmup():
    gate = threading.Event()
    done = []
    warmup.start(lambda: (gate.wait(5), done.append("first")))
    warmup.start(lambda: done.append("second"))
    gate.set()
    warmup.wait()
    assert sorted(done) == ["first", "second"]


def test_a_failing_warmup_is_not_the_callers_error():
    def broken():
        raise ImportError("no module named nowhere")

    warmup.start(broken)
    warmup.wait()  # the code that needs the module imports it itself, and says why


def _fresh(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout


def test_engine_imports_cover_a_first_load():
    """What a worker's first load would import is imported by the warm-up: the engine,
    transformers' modeling code, and every fast family's model class."""
    out = _fresh(
        "import sys\n"
        "from omax import warmup\n"
        "warmup.start(warmup.engine_imports); warmup.wait()\n"
        "mods = ['omax.engine.engine', 'transformers.modeling_utils',\n"
        "        'transformers.models.gemma3.modeling_gemma3',\n"
        "        'transformers.models.qwen3.modeling_qwen3',\n"
        "        'transformers.models.llama.modeling_llama']\n"
        "print([m for m in mods if m not in sys.modules])\n"
    )
    assert out.strip() == "[]"


def test_importer_imports_cover_a_first_create():
    out = _fresh(
        "import sys\n"
        "from omax import warmup\n"
        "warmup.start(warmup.importer_imports); warmup.wait()\n"
        "before = set(sys.modules)\n"
        "from omax.sharding.importers import ggufconfig, gguftokenizer\n"
        "import transformers.integrations.gguf.gguf_tokenizer_mapping\n"
        "from transformers import GemmaTokenizer, LlamaTokenizer\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    assert out.strip() == "[]"
