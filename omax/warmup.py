"""Imports a process will need soon, run in a background thread when it starts.

transformers, with its modeling and tokenizer code, takes a few seconds of CPU to
import. A fresh ``omax serve`` would pay it on its first create or pull (it converts the
GGUF's config and tokenizer with transformers' tables), and a fresh worker on its first
model load: seconds the user of that one request waits, once per process. ``start``
runs those imports in a daemon thread as the process starts.

transformers' lazy imports are not thread-safe (two threads importing it for the first
time at once can fail with "cannot import name ..."), so code that is about to import
it calls ``wait`` first: at worst it waits for what it would have imported itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_threads: list[threading.Thread] = []


def start(imports: Callable[[], None]) -> threading.Thread:
    """Run ``imports`` in a daemon thread; ``wait`` joins it."""

    def run() -> None:
        try:
            imports()
        except Exception:  # the code that needs the module imports it again, and says why
            logger.debug("warm-up imports failed", exc_info=True)

    thread = threading.Thread(target=run, name="omax-warmup", daemon=True)
    with _lock:
        _threads.append(thread)
    thread.start()
    return thread


def wait() -> None:
    """Return once every warm-up this process started has finished."""
    with _lock:
        threads = list(_threads)
    for thread in threads:
        thread.join()


def engine_imports() -> None:
    """What a worker's first model load imports: the engine, transformers' config,
    tokenizer and modeling code, and the model classes of the fast path's families
    (a meta-device model of its class names the weights)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    import omax.engine.engine  # noqa: F401
    from omax.engine.arch import FAST_FAMILIES

    classes = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(family) for family in FAST_FAMILIES]
    for name in ("AutoConfig", "PreTrainedTokenizerFast", *filter(None, classes)):
        getattr(transformers, name)


def importer_imports() -> None:
    """What a front door's first create or pull imports: the importers and the
    transformers tables and tokenizer builders they convert a GGUF with."""
    import omax.sharding.importers.files  # noqa: F401
    from omax.sharding.support import transformers_classes

    transformers_classes()
    import transformers.integrations.ggml  # noqa: F401
    import transformers.integrations.gguf.gguf_tokenizer_mapping  # noqa: F401
    from transformers import GemmaTokenizer, LlamaTokenizer  # noqa: F401
