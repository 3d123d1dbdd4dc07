"""Weight-only linears for the fast path, and which rows of a pass they may batch.

``Lin`` runs ``x @ W.T`` through torch's packed int4 or int8 kernel or a dense matmul,
whichever is fastest for the pass's row count; ``Rows`` pins the rows of a seeded
request to kernels that do not follow the batch (see ``omax.engine.fastpath``);
``refine_top`` recomputes a head's top logits in fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from omax.engine import native
from omax.engine.layouts import (
    INT8_ROWS,
    INT8_TILE,
    fifth_bit_plane,
    int8_rows,
    plane_bits,
    quantize_int8,
)
from omax.engine.packed import (
    GROUP,
    int4_mm,
    int8_chosen,
    int8_device,
    nibble_rows,
    nibbles,
    pack_int4,
)
from omax.engine.weights import BlockRows, CodeBlocks
from omax.errors import EngineError


class Lin:
    """``x [R, K] -> x @ W.T [R, N]`` through torch's packed int4 or int8 kernel.

    ``quant`` "int4" repacks 4-bit GGUF blocks (``CodeBlocks``: Q4_0, Q4_1, Q4_K) for
    the weight's device's int4 kernel (``omax.engine.packed``) exactly: the kernel
    computes ``(q - 8) * scale + zero`` per group of 32, so ``scale = d`` and
    ``zero = low + 8 d``. 5-bit blocks (Q5_0, Q5_1, Q5_K) take "int5" where the native
    step's own int4 kernel is built (``native.own_kernels``): the low four bits of
    each code in the same layout, the fifth in a plane beside it (``fifth_bit_plane``),
    6 bits a weight against Q5_0's 5.5, read by that kernel for any row count; the one
    loss is ``scale`` and ``zero`` rounded to bf16 (``benchmarks/quant_accuracy.py``).
    A weight that is
    not 4- or 5-bit blocks is never re-quantised to fewer bits (that loses accuracy the
    source did not have): it takes "int8" instead, per-output-row symmetric for
    ``_weight_int8pack_mm``, where that kernel beats bf16 (the CPU:
    ``packed.int8_chosen``), and stays dense elsewhere; where the native kernels are
    built its codes are kept in tiles of 8 rows that only they read (``tile_int8``).
    "none" keeps the weight dense in the activation dtype.

    A packed weight keeps no dense copy: the model stays about the size of its GGUF,
    and embedding lookups and ``refine_top`` read rows straight from the packed weight.
    int4 weights take the packed kernel for any row count (row-invariant: a seeded
    row's bits do not follow the batch): where the native kernels are built, the
    native step's own int4 kernel, else torch's. torch's int8 kernel is slow past a few dozen
    rows (a prompt chunk), so an int8 layer takes it up to ``SMALL`` rows and past that
    a dense matmul on a bf16 copy made for that call only (the rows ``Rows`` pins
    keep their kernels as with any dense weight). Tiled int8 codes take the native
    one-row kernel up to ``INT8_ROWS`` rows (and pinned rows, 4 a call) and its
    many-row kernel past that (``_many``: x in 16-bit fixed point against the codes,
    VNNI dot products, no copy). The one kept copy: a ``lookups``
    weight (the embedding and the head) in int4 on the CPU whose rows are not a multiple
    of 64, the block ``int4_rows`` reads; on CUDA such a weight keeps its codes as
    nibbles instead (``packed.nibble_rows``). The native step has many-row kernels of
    its own.
    """

    __slots__ = (
        "w",
        "s",
        "n",
        "k",
        "_dense",
        "quant",
        "small",
        "act",
        "packed_only",
        "nib",
        "hb",
        "kernels",
    )
    SMALL = {"int4": 8, "int8": 48}

    def __init__(
        self,
        w: torch.Tensor | CodeBlocks | BlockRows,
        quant: str,
        act: torch.dtype,
        lookups: bool = False,
    ) -> None:
        self.n, self.k = w.shape
        self.act = act
        self.w: torch.Tensor | None = None
        self.s: torch.Tensor | None = None
        self.nib: torch.Tensor | None = None
        self.hb: torch.Tensor | None = None
        # the native module where this weight may take its layouts (int5, int8 tiles)
        self.kernels = _own_kernels(_device(w), act)
        five = isinstance(w, CodeBlocks) and w.bits == 5
        # the native int4 kernel reads whole blocks of 64 rows and groups of 32 k's
        if quant == "int4" and five and self.kernels and self.n % 64 == 0 and self.k % GROUP == 0:
            quant = "int5"
        if quant == "int4" and (not isinstance(w, CodeBlocks) or five or self.n % 16):
            # torch's int4 packing takes output rows in multiples of 16: int8 where it
            # pays (``packed.int8_chosen``), else dense
            quant = "int8" if int8_chosen(_device(w)) else "none"
        if quant == "int8" and not int8_device(_device(w)):
            quant = "none"  # no int8 kernel here (see ``packed.int8_device``): dense
        if quant not in ("int4", "int5", "int8", "none"):
            raise EngineError(f"unknown quant {quant!r}")
        self.quant = quant
        if isinstance(w, CodeBlocks) and quant in ("int4", "int5"):
            if self.k % GROUP:
                raise EngineError(f"int4 needs in_features divisible by {GROUP}, got {self.k}")
            self.w = pack_int4(w.codes & 15)
            sz = torch.stack([w.scale, w.low + 8 * w.scale], dim=-1)  # [N, G, 2]
            self.s = sz.transpose(0, 1).contiguous().to(act)
            if quant == "int5":
                self.hb = fifth_bit_plane(w.codes)
            if lookups and w.codes.device.type != "cpu":
                self.nib = nibbles(w.codes)
        # int4_rows reads whole blocks of 64 rows (vocabularies are multiples of 64)
        self.packed_only = (
            (quant == "int8" and lookups)
            or quant == "int5"  # rows a multiple of 64 (see above)
            or (quant == "int4" and (not lookups or self.nib is not None or self.n % 64 == 0))
        )
        self.small = self.SMALL.get(quant, 0)
        self._dense: torch.Tensor | None = None
        if self.packed_only and quant in ("int4", "int5"):
            return
        if quant == "int8":
            tiles = bool(self.kernels) and self.n % INT8_TILE == 0 and self.k % 16 == 0
            self.w, s = quantize_int8(w, tiled=tiles)
            self.s = s.to(act)
            return
        w = (w.dequantize() if isinstance(w, (CodeBlocks, BlockRows)) else w).float()
        self._dense = w.to(act)  # "none", or the int4 lookups exception

    @property
    def dense(self) -> torch.Tensor | None:
        """The weight in the activation dtype where one is kept (see the class)."""
        return self._dense

    def __call__(self, x: torch.Tensor, rows: Rows | None = None) -> torch.Tensor:
        r = x.shape[0]
        if rows is None and self.tiled and r > INT8_ROWS:  # no pins: int8 codes in one pass
            return self._many()(x)
        if self.packed_only:  # row-invariant for any row count: pins need nothing more
            return self._packed(x)
        if rows is None:
            if self.w is not None and r <= self.small:
                return self._packed(x)
            return self._many()(x)
        packed, free, groups = rows.plan(r, self.small, self.w is not None, x.device)
        if packed is not None and len(packed) == r:
            return self._packed(x)
        many = self._many()
        if len(groups) == 1 and groups[0] == (0, r):
            return many(x)
        out = x.new_empty(r, self.n)
        if packed is not None:
            out.index_copy_(0, packed, self._packed(x.index_select(0, packed)))
        if free is not None:
            out.index_copy_(0, free, many(x.index_select(0, free)))
        for first, n in groups:
            out[first : first + n] = many(x[first : first + n])
        return out

    @property
    def tiled(self) -> bool:
        """int8 codes in tiles (``tile_int8``): only the native kernels read them."""
        return self.w is not None and self.w.dim() == 4

    def _many(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The kernel for many rows: tiled int8 codes take the native one, whose rows
        are 16-bit fixed point against the codes, about exact, each row's bits its own
        (``native_decode.cpp``'s int8_many); otherwise a dense matmul on ``_weight``
        (for an int8 layer a copy made here, once for the call)."""
        if self.tiled:
            return lambda x: self.kernels.int8_many(x.contiguous(), self.w, self.s)
        dense = self._weight()
        return lambda x: F.linear(x, dense)

    def _weight(self) -> torch.Tensor:
        """The dense weight: the kept copy, or (an int8 layer in rows; tiled codes take
        ``_many``'s own kernel) one made for this call only, the bits a kept copy would
        hold."""
        if self._dense is not None:
            return self._dense
        assert self.w is not None and self.s is not None and not self.tiled
        return (self.w.float() * self.s.float()[:, None]).to(self.act)

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant == "int4" and self.kernels is None:
            assert self.w is not None and self.s is not None
            return int4_mm(x, self.w, self.s)
        if self.quant in ("int4", "int5"):  # int5 taken only with ``kernels``
            return self.kernels.int4_mm(x.contiguous(), self.w, self.s, False, self.hb)
        assert self.w is not None
        if self.w.dim() == 4:  # tiled (only with ``kernels``): 4 rows a call, row-invariant
            x = x.contiguous()
            return torch.cat(
                [self.kernels.int8_mm(x[r : r + 4], self.w, self.s) for r in range(0, len(x), 4)]
            )
        return torch.ops.aten._weight_int8pack_mm(x, self.w, self.s)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows ``ids`` of the weight as ``dtype`` (embedding lookups, ``refine_top``)."""
        if self._dense is not None:
            return self._dense[ids].to(dtype)
        assert self.w is not None and self.s is not None
        if self.quant == "int8":
            return (int8_rows(self.w, ids).float() * self.s[ids].float()[:, None]).to(dtype)
        if self.nib is not None:
            return nibble_rows(self.nib, self.s, ids.reshape(-1)).to(dtype)
        return int4_rows(self.w, self.s, ids, self.k, self.hb).to(dtype)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.w, self.s, self._dense, self.nib, self.hb) if t is not None]


def _device(w: torch.Tensor | CodeBlocks | BlockRows) -> torch.device:
    if isinstance(w, CodeBlocks):
        return w.codes.device
    return w.device if isinstance(w, torch.Tensor) else torch.device("cpu")


def _own_kernels(device: torch.device, act: torch.dtype) -> Any:
    """The native module whose own kernels (AVX512-BF16 and -VBMI) read a weight on
    ``device`` multiplied by ``act`` rows in the layouts only they read: 5-bit codes
    ("int5") and int8 tiles (``tile_int8``); None elsewhere (AVX2 and ARM machines,
    CUDA, fp32 rows, no native build), where such weights take int8 in rows."""
    if device.type != "cpu" or act != torch.bfloat16:
        return None
    return native.own_kernels()


def int4_rows(
    w: torch.Tensor, sz: torch.Tensor, ids: torch.Tensor, k: int, hb: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows ``ids`` [I] of an int4-packed weight as fp32 [I, K]: ``(q - 8) * s + z``;
    with ``hb`` (``fifth_bit_plane``) the codes are 5-bit.

    ``_convert_weight_to_int4pack_for_cpu`` lays out blocks of 64 output rows; in a
    block, each pair of k's takes 64 bytes: byte ``b`` holds k + ``b // 32`` of row
    ``b % 32`` in its low nibble and of row ``32 + b % 32`` in its high one (as
    native_decode.cpp's ``Int4Unpack`` reads it). ``sz`` [K/32, N, 2] holds (s, z)."""
    ids = ids.reshape(-1)
    n_ids, pairs = ids.shape[0], k // 2
    blocks = w.reshape(-1, pairs, 64)[ids // 64]  # [I, K/2, 64]
    r = ids % 64
    at = torch.stack([r % 32, r % 32 + 32], dim=-1)[:, None, :].expand(-1, pairs, 2)
    b = blocks.gather(2, at).to(torch.int32)  # [I, K/2, 2]: k even, k odd
    codes = ((b >> (4 * (r // 32)).to(torch.int32)[:, None, None]) & 15).reshape(n_ids, k)
    if hb is not None:
        codes = codes | (plane_bits(hb, ids, k) << 4)
    s = sz[:, ids, 0].t().float()[..., None]  # [I, G, 1]
    z = sz[:, ids, 1].t().float()[..., None]
    q = codes.reshape(n_ids, -1, GROUP).float()
    return ((q - 8) * s + z).reshape(n_ids, k)


class Rows:
    """The rows of one pass that must not follow the batch (a seeded request's).

    ``packed`` rows (decode rows, a prompt's last row at the head) take the packed
    kernel, which is row-invariant for any row count; a linear without one runs each
    of them alone. Each of ``groups``, ``(first, n)`` (a prompt segment's rows), gets a
    dense call of its own: the dense kernel's sums follow the row count, and a segment
    has the same rows alone and in a batch. The other rows take whichever kernel their
    own count makes fastest, as without pins.
    """

    __slots__ = ("packed", "groups", "_plans")

    def __init__(self, packed: list[int], groups: Sequence[tuple[int, int]] = ()) -> None:
        self.packed, self.groups = packed, list(groups)
        self._plans: dict[tuple[int, int, bool], tuple] = {}

    def plan(self, n: int, small: int, has_packed: bool, device: torch.device) -> tuple:
        """``(packed index | None, dense index | None, groups)`` for ``n`` rows and a
        linear whose packed kernel (if ``has_packed``) wins up to ``small`` rows."""
        key = (n, small, has_packed)
        if key not in self._plans:
            groups = list(self.groups)
            packed = set(self.packed) if has_packed else set()
            if not has_packed:
                groups += [(r, 1) for r in self.packed]
            taken = packed | {r for s, k in groups for r in range(s, s + k)}
            free = [r for r in range(n) if r not in taken]
            dense: list[int] = []
            if has_packed and len(free) <= small:
                packed |= set(free)
            else:
                dense = free

            def index(rows):
                return torch.tensor(sorted(rows), device=device) if rows else None

            self._plans[key] = (index(packed), index(dense), groups)
        return self._plans[key]


REFINE = 8


def refine_top(logits: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | Lin) -> torch.Tensor:
    """``logits`` [R, V] with their top ``REFINE`` per row recomputed in fp32.

    The head's kernels return bf16, whose values are 1/8 apart between 16 and 32: the
    top logits often tie, and the greedy token would hang on rounding (SmolLM2 int4,
    "What is the capital of France?": "L" and "The" both 25.25; 25.25 and 25.30 in
    fp32). The candidates' rows of ``weight`` (a dense tensor or a ``Lin``) are dotted
    with the normed hidden state ``x`` [R, H] in fp32 (the native step does the same, or
    has its packed kernels return fp32). Only the top candidates are recomputed: a few
    dot products a row, not a second pass of the head."""
    k = min(REFINE, logits.shape[-1])
    idx = logits.topk(k, dim=-1).indices
    flat = idx.reshape(-1)
    if isinstance(weight, Lin):
        w = weight.rows(flat, torch.float32).view(idx.shape[0], k, -1)
    else:
        w = weight.index_select(0, flat).view(idx.shape[0], k, -1).float()
    # a product and a sum per row, not bmm: bmm's sums follow the batch, and a pinned
    # row's logits must not
    exact = (w * x.float().unsqueeze(1)).sum(-1)
    return logits.scatter_(1, idx, exact)
