"""The native decode step: ``native_decode.cpp``, compiled once per machine.

At one stream, a decode step of the lean path spends about as long dispatching its
~1,200 small torch ops from Python as in its matmuls. ``native_decode.cpp`` runs the
same step in one call: RMSNorm, rotary embedding + KV write and silu*mul as single
loops, decode attention of its own, and matmuls of its own where the CPU has the
instructions (ATen's kernels otherwise) on the same weights: int4 for any number of
rows, int8 for a few, bf16 for the rest (SmolLM2 int4, 2 cores: one row ~6 ms a step
against ~14 ms in Python, 16 rows ~20 ms against ~45 ms).

It is built with torch's C++ extension tooling (a C++ compiler and ninja) into
``$XDG_CACHE_HOME/omax/native`` (default ``~/.cache``), named by a hash of the
source, the torch version and the CPU (it is built for this CPU's instruction set),
by one process at a time (the others wait and load its result), in a background
thread the first time a runner asks for it; a runner created before the build is
done keeps the Python step for its whole life, so one engine never mixes the two
(its kernels sum in another order: the last bits of its logits differ). Without a
compiler, or with ``omax.engine.native-decode: off``, everything runs in Python.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native_decode.cpp")
KINDS = {"int4": 4, "int8": 8}  # Lin.quant -> the kernel native_decode.cpp calls
FLAGS = ["-O3", "-march=native", "-fopenmp"]

_lock = threading.Lock()
_module: Any = None
_build: threading.Thread | None = None


def _cpu() -> bytes:
    """This CPU's model and instruction-set flags: the build uses -march=native, so a
    cache shared by machines of different CPUs must keep one build per kind."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith((b"model name", b"flags"))]
        return b"\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor().encode()


@functools.cache
def _name() -> str:
    key = SOURCE.read_bytes() + torch.__version__.encode() + _cpu() + " ".join(FLAGS).encode()
    return f"omax_native_decode_{hashlib.sha256(key).hexdigest()[:12]}"


def _build_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "omax" / "native" / _name()


def _compile() -> Any:
    """Build the module once per machine, whatever else is building it.

    Builders queue on an exclusive ``flock`` of ``<name>.lock`` beside the build
    directory: the kernel drops it when its holder dies, where torch's own lock file
    (``lock`` in its build directory) outlives a build killed midway and makes every
    later build wait for ever. The holder builds in a fresh directory of its own and
    moves the library into place, so a half-written build is never found."""
    import fcntl  # POSIX only, as the native step (``enabled``)

    from torch.utils.cpp_extension import load  # imports setuptools: only to build

    final = _build_dir()
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f"{_name()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes or we die
        built = _import_built()
        if built is not None:  # another process built it while we waited
            return built
        for leftover in final.parent.glob(f"{_name()}.build-*"):  # from a killed build
            shutil.rmtree(leftover, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f"{_name()}.build-", dir=final.parent))
        try:
            log.info("compiling the native decode step in %s", work)
            mod = load(
                _name(),
                sources=[str(SOURCE)],
                extra_cflags=FLAGS,
                build_directory=str(work),
                verbose=False,
            )
            final.mkdir(exist_ok=True)
            os.replace(work / f"{_name()}.so", final / f"{_name()}.so")  # loaded stays mapped
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return mod


def _import_built() -> Any:
    """The module built earlier on this machine (its name is the source's hash, so a
    file there is up to date), or None."""
    path = _build_dir() / f"{_name()}.so"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(_name(), path)
    if spec is None or spec.loader is None:
        return None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _background() -> None:
    global _module
    try:
        log.info("building the native decode step (once per machine, about a minute)")
        module = _compile()
    except Exception as e:  # no compiler, no ninja, a build error: Python it is
        log.info("native decode step unavailable, decoding in Python: %s", e)
        return
    with _lock:
        _module = module
    log.info("native decode step built")


def module(start_build: bool = True) -> Any:
    """The compiled module if it is ready now; otherwise None, and (``start_build``)
    a background build is started for runners created later."""
    try:
        return _module_now(start_build)
    except Exception as e:  # torch's extension tooling changed, a read-only cache, ...
        log.info("native decode step unavailable, decoding in Python: %s", e)
        return None


def _module_now(start_build: bool) -> Any:
    global _module, _build
    with _lock:
        if _module is not None:
            return _module
        if _build is None:
            try:  # built earlier on this machine: a millisecond
                _module = _import_built()
            except Exception as e:
                log.info("native decode step failed to load: %s", e)
            if _module is not None:
                return _module
        if start_build and _build is None:
            _build = threading.Thread(target=_background, name="omax-native-build", daemon=True)
            _build.start()
        return None


def wait(timeout: float | None = None) -> Any:
    """The module once a background build has finished (None if it failed)."""
    build = _build
    if build is not None:
        build.join(timeout)
    return _module


def enabled() -> bool:
    """``omax.engine.native-decode`` is not "off" (validated by ``omax.config``)."""
    import dask.config

    return dask.config.get("omax.engine.native-decode", "auto") != "off" and os.name == "posix"


class NativeDecoder:
    """A ``FastLlama``'s weights and a runner's KV caches laid out for
    ``native_decode.cpp``'s ``Model``, handed over once (not ~400 tensor arguments
    converted on every step, ~35 us with the GIL held)."""

    def __init__(self, mod: Any, model: Any, k: list[torch.Tensor], v: list[torch.Tensor]) -> None:
        empty = torch.empty(0)
        tensors: list[torch.Tensor] = []
        kinds: list[int] = []

        def lin(x: Any) -> list[torch.Tensor]:
            kinds.append(KINDS.get(x.quant, 0) if x.w is not None else 0)
            return [x.w if x.w is not None else empty, x.s if x.s is not None else empty, x.dense]

        for layer in model.layers:
            tensors += [layer.ln1, *lin(layer.qkv), *lin(layer.o), layer.ln2]
            tensors += [*lin(layer.gu), *lin(layer.down)]
        tensors += [model.embed.dense, model.norm, *lin(model.head)]
        self.kinds = kinds
        self.native = mod.Model(
            tensors, kinds, k, v, model.freqs, model.n_heads, model.n_kv, model.head_dim, model.eps
        )

    @staticmethod
    def supports(model: Any) -> bool:
        return model.device.type == "cpu" and model.act == torch.bfloat16

    def decode(
        self, ids: torch.Tensor, positions: list[int], length: int, invariant: bool = False
    ) -> torch.Tensor:
        """Logits [R, V] (fp32) of one token for each of cache slots ``0..R-1``;
        ``invariant``: each row's bits as alone or in any batch (a seeded request's)."""
        return self.native.decode(ids, positions, length, invariant)
