"""The native decode step: ``native_decode.cpp``, compiled once per machine.

At one stream, a decode step of the lean path is bound as much by dispatching its
~1,200 small torch ops from Python as by its matmuls. ``native_decode.cpp`` runs the
same step in one call, for every fast-path family: RMSNorm, bias + QK norm + rotary
embedding + KV write, and silu*mul or gelu-tanh*mul as single loops, and decode
attention and int4/bf16 matmuls of its own on the same weights where the CPU has
AVX512-BF16 and AVX512-VBMI (its int8 matmul: AVX512F); elsewhere (AVX2, ARM) the same
call runs ATen's kernels (benchmarks/RESULTS.md has the measurements).

``build()`` compiles it, with torch's C++ extension tooling (a C++ compiler and
ninja), into ``$XDG_CACHE_HOME/omax/native`` (default ``~/.cache``), named by a hash
of the source, the torch version and the CPU (it is built for this CPU's
instruction set), by one process at a time (the others wait and load its result).
It runs when omax is installed (``make install``) or by ``omax native build``, never
on the way to serving: its compile would compete with the first requests, and a
short-lived process would not see it finish. ``module()`` only loads a finished
build; without one, runners decode in Python, and say so once. A runner decides when
it is made, so one engine never mixes the two (the kernels sum in another order:
the last bits of its logits differ). ``omax.engine.native-decode: off`` keeps
everything in Python.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from omax.errors import OmaxError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native_decode.cpp")
KINDS = {"int4": 4, "int5": 5, "int8": 8}  # Lin.quant -> the kernel native_decode.cpp calls
FLAGS = ["-O3", "-march=native", "-fopenmp"]
# /proc/cpuinfo flags behind native_decode.cpp's own matmul and attention kernels
# (its #if guards); without them it calls ATen's.
OWN_KERNELS = {"avx512_bf16": "AVX512-BF16", "avx512vbmi": "AVX512-VBMI"}
HOW_TO_BUILD = "build it once with `omax native build` (needs a C++ compiler and ninja)"

_lock = threading.Lock()
_module: Any = None
_told = False  # module() has said why there is none


class BuildError(OmaxError):
    """The native step did not build here (no compiler or ninja, a compile error, a
    read-only cache); the message says why. Decoding runs in Python."""


@dataclass(frozen=True)
class Status:
    """What ``omax native status`` reports about this machine."""

    built: bool
    path: Path  # the library, built or to be built
    missing: tuple[str, ...]  # OWN_KERNELS this CPU lacks: those kernels are ATen's
    compiler: str | None  # the C++ compiler torch would call, if found
    ninja: bool
    enabled: bool  # omax.engine.native-decode is not "off", on a POSIX system


def _cpuinfo() -> list[bytes]:
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return f.read().splitlines()
    except OSError:
        return []


def _cpu() -> bytes:
    """This CPU's model and instruction-set flags: the build uses -march=native, so a
    cache shared by machines of different CPUs must keep one build per kind."""
    keys = (b"model name", b"flags", b"Features", b"CPU implementer", b"CPU part")  # x86, ARM
    lines = [ln for ln in _cpuinfo() if ln.startswith(keys)]
    return b"\n".join(sorted(set(lines))) if lines else platform.processor().encode()


def _missing_flags() -> tuple[str, ...]:
    flags: set[str] = set()
    for ln in _cpuinfo():
        if ln.startswith(b"flags"):
            flags.update(ln.decode(errors="replace").partition(":")[2].split())
    return tuple(name for flag, name in OWN_KERNELS.items() if flag not in flags)


@functools.cache
def _name() -> str:
    key = SOURCE.read_bytes() + torch.__version__.encode() + _cpu() + " ".join(FLAGS).encode()
    return f"omax_native_decode_{hashlib.sha256(key).hexdigest()[:12]}"


def _build_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "omax" / "native" / _name()


def library() -> Path:
    """Where this machine's build is, or goes."""
    return _build_dir() / f"{_name()}.so"


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
    path = library()
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(_name(), path)
    if spec is None or spec.loader is None:
        return None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build() -> Any:
    """The module, compiled first where this machine has no build (else a load):
    what ``omax native build`` and ``make install`` run. Raises ``BuildError``."""
    global _module
    with _lock:
        if _module is not None:
            return _module
    try:
        mod = _import_built() or _compile()
    except Exception as e:  # no compiler or ninja, a compile error, a read-only cache
        raise BuildError(f"the native decode step did not build: {e}") from e
    with _lock:
        if _module is None:
            _module = mod
        return _module


def module() -> Any:
    """The built module, or None: never builds. Where there is none (not built yet,
    or it fails to load), say so once, and the caller decodes in Python."""
    global _module, _told
    with _lock:
        if _module is not None:
            return _module
        try:  # a build finished since the last runner was made is taken up now
            _module = _import_built()
            why = f"not built on this machine: {HOW_TO_BUILD}"
        except Exception as e:  # a library torch cannot load, a read-only cache, ...
            why = f"failed to load ({e}): rebuild it with `omax native build`"
        if _module is None and not _told:
            _told = True
            log.warning("the native decode step is %s; decoding runs in Python", why)
        return _module


def own_kernels() -> Any:
    """The built module where its own kernels run (AVX512-BF16 and -VBMI), else None:
    the only kernels that read 5-bit codes (``linear.Lin`` "int5") and int8 weights in
    tiles (``layouts.tile_int8``)."""
    if not enabled():
        return None
    mod = module()
    return mod if mod is not None and getattr(mod, "own_kernels", False) else None


def status() -> Status:
    """Whether this machine has a build, where, and what its CPU and tools allow."""
    from torch.utils.cpp_extension import get_cxx_compiler, is_ninja_available

    try:
        compiler = shutil.which(get_cxx_compiler())
    except Exception:  # torch's tooling changed
        compiler = None
    path = library()
    return Status(
        built=path.exists(),
        path=path,
        missing=_missing_flags(),
        compiler=compiler,
        ninja=is_ninja_available(),
        enabled=enabled(),
    )


def enabled() -> bool:
    """``omax.engine.native-decode`` is not "off", on a POSIX system."""
    from omax.config import setting

    return setting("engine.native-decode") != "off" and os.name == "posix"


class NativeDecoder:
    """A ``FastDecoder``'s weights and a runner's KV caches laid out for
    ``native_decode.cpp``'s ``Model``, handed over once (not ~400 tensor arguments
    converted on every step, with the GIL held), with what its family adds
    (``omax.engine.arch.Arch``): per layer the optional tensors (empty where absent),
    its sliding window and rotary table, and the model's scales and caps."""

    def __init__(self, mod: Any, model: Any, k: list[torch.Tensor], v: list[torch.Tensor]) -> None:
        empty = torch.empty(0)
        tensors: list[torch.Tensor] = []
        kinds: list[int] = []

        def lin(x: Any) -> list[torch.Tensor]:
            kinds.append(KINDS.get(x.quant, 0) if x.w is not None else 0)
            dense = x.dense if x.dense is not None else empty  # packed weights keep none
            if x.quant == "int5":  # its fifth-bit plane where others keep a dense copy
                dense = x.hb
            return [x.w if x.w is not None else empty, x.s if x.s is not None else empty, dense]

        def opt(t: torch.Tensor | None) -> torch.Tensor:
            return empty if t is None else t.contiguous()

        # The order is native_decode.cpp's kLn1 .. kPostFfn, then embed, norm, head
        # (kinds: four per layer, then the embedding's and the head's).
        for layer in model.layers:
            tensors += [layer.ln1, *lin(layer.qkv), *lin(layer.o), layer.ln2]
            tensors += [*lin(layer.gu), *lin(layer.down)]
            extra = (layer.bias, layer.q_norm, layer.k_norm, layer.post_attn, layer.post_ffn)
            tensors += [opt(t) for t in extra]
        tensors += [*lin(model.embed), model.norm, *lin(model.head)]
        self.kinds = kinds
        rope_kinds = sorted(model.tables)
        a = model.arch
        self.native = mod.Model(
            tensors,
            kinds,
            k,
            v,
            tables=[model.tables[kind].contiguous() for kind in rope_kinds],
            rope=[rope_kinds.index(layer.rope) for layer in model.layers],
            windows=[layer.window or 0 for layer in model.layers],
            n_heads=model.n_heads,
            n_kv=model.n_kv,
            head_dim=model.head_dim,
            eps=model.eps,
            # the Python step multiplies by the scale rounded to the activation dtype
            embed_scale=float(torch.tensor(a.embed_scale, dtype=model.act)),
            attn_scale=a.attn_scale,
            attn_softcap=a.attn_softcap or 0.0,
            final_softcap=a.final_softcap or 0.0,
            gelu=a.act == "gelu_tanh",
        )
        # whether ``step`` takes prompt rows (the module's own kernels, attention's too)
        self.prompts = bool(self.native.prompts)

    @staticmethod
    def supports(model: Any, max_len: int = 0) -> bool:
        """Whether the native step runs ``model``: a CPU bf16 ``FastDecoder`` of any
        family on the fast path (every ``Arch`` departure: norms, biases, QK norms,
        scales, soft-caps, sliding windows, rotary tables), for any cache length
        ``max_len``."""
        return (
            model.device.type == "cpu"
            and model.act == torch.bfloat16
            and model.arch.act in ("silu", "gelu_tanh")
        )

    def decode(
        self, ids: torch.Tensor, positions: list[int], length: int, invariant: bool = False
    ) -> torch.Tensor:
        """Logits [R, V] (fp32) of one token for each of cache slots ``0..R-1``;
        ``invariant``: each row's bits as alone or in any batch (a seeded request's)."""
        return self.native.decode(ids, positions, length, invariant)

    def step(
        self, ids: torch.Tensor, positions: list[int], slots: list[int], outputs: list[int]
    ) -> torch.Tensor:
        """Logits [len(outputs), V] (fp32) of rows ``outputs`` of a step whose row ``i``
        is token ``ids[i]`` at ``positions[i]`` of cache slot ``slots[i]``: decode rows
        and prompt rows together (``prompts`` only), each prompt row attending to its
        slot's keys up to its own position."""
        return self.native.step(ids, positions, slots, outputs)
