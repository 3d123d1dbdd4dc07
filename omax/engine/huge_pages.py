"""A loaded model's weights on transparent huge pages (Linux, CPU).

A decode step streams every weight once. On 4 KiB pages that is a TLB miss every
4 KiB, and each page walk costs most in a virtual machine (nested paging), where
cloud CPUs run: a Qwen3-shape Q4_K_M one-row step took 8.0 ms on 4 KiB pages and
7.2 ms on 2 MiB ones (2-core VM, alternating runs; benchmarks/RESULTS.md). Linux backs
an anonymous private mapping with 2 MiB pages where it is asked to (``madvise
MADV_HUGEPAGE``, honoured in THP mode "always" and "madvise", the usual default);
torch's allocator never asks. The price is at load: the copies fault in fresh memory
where torch's heap would have reused the last load's (Gemma 3 270M 0.3-0.7 s slower
through omax serve), so ``omax.engine.huge-pages`` is "off" unless an operator turns
it on.

``Arena.move`` copies the storages of a model's weight tensors into such mappings, a
layer at a time as the model is built, and points every tensor at its copy
(``Tensor.set_``): holders of the tensor objects (a ``Lin``, the native step's
``Model``, a tied head) see the move, views that share a storage keep sharing it, and
each old storage is freed as it is replaced. When the last of the tensors goes (the
model is unloaded) the mapping goes back to the system at once, where freed heap
memory often stays with the process. ``layout`` is the policy, without mmap or torch.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ALIGN = 64  # each storage's start: a cache line, as torch's allocator gives
HUGE = 2 << 20
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def layout(sizes: Sequence[int], align: int = ALIGN) -> tuple[list[int], int]:
    """Offsets for storages of ``sizes`` bytes laid end to end, each at a multiple of
    ``align``, and the bytes the mapping needs."""
    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end += -(-size // align) * align
    return offsets, end


def thp_mode(path: Path = THP_MODE) -> str:
    """The kernel's transparent huge page mode ("always", "madvise", "never"), or ""
    where there is none (not Linux, no THP)."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    chosen = [w.strip("[]") for w in text.split() if w.startswith("[")]
    return chosen[0] if chosen else ""


def available() -> bool:
    """Whether a mapping can ask for huge pages here: ``madvise`` in Python's mmap and
    a THP mode other than "never"."""
    return hasattr(mmap, "MADV_HUGEPAGE") and thp_mode() in ("always", "madvise")


class Arena:
    """Mappings on huge pages that tensors move into as a model is built, one part
    (a layer) at a time: the memory the builder freed after a part is reused for the
    next, so the load faults in about the model's size once, not twice (fresh memory
    is the dear part: ~0.3 s for 250 MiB in a 2-core VM, where copying is ~0.02 s).
    A part goes at the end of the newest mapping, or into a new one of at least
    ``chunk`` bytes; a mapping's untouched tail stays virtual (no resident memory).
    """

    def __init__(self, chunk: int = 256 << 20) -> None:
        self.chunk = -(-chunk // HUGE) * HUGE
        self.whole: torch.Tensor | None = None  # the newest mapping, as uint8
        self.used = 0  # its bytes taken
        self.mine: set[int] = set()  # data pointers of the mappings' storages

    def move(self, tensors: Iterable[torch.Tensor]) -> int:
        """Move the CPU storages of ``tensors`` (those not in a mapping already) into
        a mapping on huge pages; returns the bytes moved."""
        groups: dict[int, list[torch.Tensor]] = {}
        storages: dict[int, torch.UntypedStorage] = {}
        for t in tensors:
            if t.device.type != "cpu" or t.numel() == 0:
                continue
            st = t.untyped_storage()
            if st.data_ptr() in self.mine:
                continue
            groups.setdefault(st.data_ptr(), []).append(t)
            storages[st.data_ptr()] = st
        sizes = [storages[p].nbytes() for p in groups]
        offsets, total = layout(sizes)
        if total == 0:
            return 0
        whole = self._room(total)
        base = self.used
        with torch.inference_mode():
            for (ptr, ts), off, size in zip(groups.items(), offsets, sizes, strict=True):
                old = torch.empty(0, dtype=torch.uint8).set_(storages[ptr], 0, (size,), (1,))
                new = whole[base + off : base + off + size]
                new.copy_(old)
                target = new.untyped_storage()
                at = int(new.storage_offset())  # the slice's start in the mapping
                for t in ts:
                    at_elem, rem = divmod(at, t.element_size())
                    if rem:  # ALIGN keeps every start a multiple of any element size
                        raise ValueError(f"storage start {at} is not aligned to {t.dtype}")
                    t.set_(target, at_elem + t.storage_offset(), t.size(), t.stride())
        self.used += total
        return total

    def _room(self, need: int) -> torch.Tensor:
        """The newest mapping, or a new one where ``need`` bytes do not fit in it."""
        if self.whole is None or self.used + need > self.whole.numel():
            size = max(self.chunk, -(-need // HUGE) * HUGE)
            mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            mapping.madvise(mmap.MADV_HUGEPAGE)
            # frombuffer holds the mapping's buffer: it is unmapped when the last
            # tensor in it is freed
            self.whole = torch.frombuffer(mapping, dtype=torch.uint8)
            self.used = 0
            self.mine.add(self.whole.untyped_storage().data_ptr())
            log.debug("a mapping on huge pages: %.0f MiB", size / 2**20)
        return self.whole
