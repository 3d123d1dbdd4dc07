"""What the int8 conversion of GGUF types without a kernel loses, next to the format's own loss.

GGUF types that no packed kernel reads (F16, BF16, Q8_0, Q2_K, Q3_K, Q6_K, and Q4_*/Q5_*
under quant "int8") are dequantised at load and re-quantised per output row to int8
(``linear.Lin(quant="int8")``: ``s = amax(row) / 127``, ``q = round(w / s)``, ``s``
kept in bf16). Q4_0, Q4_1 and Q4_K reach the int4 kernel as their own blocks, and
Q5_0, Q5_1 and Q5_K the native step's "int5" (the same kernel with a fifth-bit plane);
both keep each group's scale and zero in bf16. For each type this prints
the relative Frobenius error of the weights and the relative error of ``W @ x`` (random
gaussian ``x``) of:

- the GGUF type against the original fp32 weights (where there is an original),
- the int8 weights the kernel multiplies against the GGUF-dequantised weights,
- the int4/int5 kernel's weights against the GGUF-dequantised ones (4- and 5-bit types).

Sources: gaussian weights quantised by ``gguf.quants.quantize`` (F16, BF16, Q8_0, Q5_*,
Q4_0, Q4_1); for the K-quants, which gguf-py cannot quantise, the simple per-sub-block
min/max quantisers below (cruder than llama.cpp's, so the format's own error is an upper
bound); and every 2-D tensor of each type in real GGUF files (the bundled SmolLM2 Q4_1
and, when present, Gemma 3 270M Q4_K_M), pooled (the first ``--embed-rows`` rows of
token embeddings).

    python benchmarks/quant_accuracy.py [--rows 2048] [--cols 768] [--gemma PATH]
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QT

from omax.engine.layouts import untile_int8
from omax.engine.linear import Lin
from omax.engine.weights import CodeBlocks
from omax.sharding.bundled import smollm2_gguf_path
from omax.sharding.tensors import RawTensor

GEMMA3 = Path("/tmp/models/gemma3.gguf")
ACT = torch.bfloat16  # the fast path's activations: Lin keeps its scales in this dtype


def _pack(values: np.ndarray, width: int, bits: int) -> np.ndarray:
    """Inverse of ggml's field layout (``ggml_blocks.fields``): ``[nb, m]`` small ints ->
    ``[nb, m * bits / 8]`` bytes, runs of ``width`` bytes holding ``8 / bits`` fields."""
    nb = values.shape[0]
    v = values.astype(np.uint8).reshape(nb, -1, 8 // bits, width)
    out = np.zeros((nb, v.shape[1], width), dtype=np.uint8)
    for j in range(8 // bits):
        out |= v[:, :, j, :] << np.uint8(j * bits)
    return out.reshape(nb, -1)


def _f16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fp16 bytes [nb, 2], the fp16 values as float32 [nb, 1])."""
    h = x.astype(np.float16).reshape(-1, 1)
    return h.view(np.uint8), h.astype(np.float32)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape, np.float32), where=b != 0)


def _asymmetric(x: np.ndarray, group: int, levels: int, scale_max: int):
    """Sub-blocks of ``group`` as ``d * sc * q - dmin * m`` (Q2_K, Q4_K, Q5_K): returns
    (d bytes, dmin bytes, sc, m, q), ``sc``/``m`` in 0..scale_max, ``q`` in 0..levels."""
    nb = x.shape[0]
    g = x.reshape(nb, -1, group)
    low = np.maximum(0, -g.min(-1))  # ggml's mins are subtracted: offsets <= 0 only
    step = (g.max(-1) + low) / levels
    d_b, d = _f16(step.max(-1) / scale_max)
    m_b, dmin = _f16(low.max(-1) / scale_max)
    sc = np.clip(np.round(_div(step, d)), 0, scale_max)
    m = np.clip(np.round(_div(low, dmin)), 0, scale_max)
    scale, off = (d * sc)[..., None], (dmin * m)[..., None]
    q = np.clip(np.round(_div(g + off, scale)), 0, levels).reshape(nb, -1)
    return d_b, m_b, sc.astype(np.uint8), m.astype(np.uint8), q.astype(np.uint8)


def _symmetric(x: np.ndarray, group: int, qmin: int, sc_max: int):
    """Sub-blocks of ``group`` as ``d * sc * q`` (Q3_K, Q6_K), ``q`` in qmin..-qmin-1 and
    signed ``sc`` in -sc_max-1..sc_max: returns (d bytes, sc, q)."""
    nb = x.shape[0]
    g = x.reshape(nb, -1, group)
    at = np.take_along_axis(g, np.abs(g).argmax(-1)[..., None], -1)[..., 0]
    step = at / qmin  # the largest magnitude lands on qmin, as ggml's Q4_0 does
    d_b, d = _f16(np.abs(step).max(-1) / sc_max)
    sc = np.clip(np.round(_div(step, d)), -sc_max - 1, sc_max)
    q = np.clip(np.round(_div(g, (d * sc)[..., None])), qmin, -qmin - 1).reshape(nb, -1)
    return d_b, sc.astype(np.int8), q.astype(np.int8)


def _k_scale_bytes(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins -> Q4_K/Q5_K's 12 bytes (inverse of get_scale_min_k4)."""
    return np.concatenate(
        [
            sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
            m[:, :4] | ((m[:, 4:] >> 4) << 6),
            (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4),
        ],
        axis=1,
    )


def quantize_k(x: np.ndarray, qtype: QT) -> np.ndarray:
    """fp32 ``[n, k]`` (``k % 256 == 0``) -> GGUF blocks of a K-quant ``[n, bytes]``."""
    n = x.shape[0]
    b = x.reshape(-1, 256).astype(np.float32)
    if qtype == QT.Q2_K:
        d, dmin, sc, m, q = _asymmetric(b, 16, 3, 15)
        blocks = [sc | (m << 4), _pack(q, 32, 2), d, dmin]
    elif qtype in (QT.Q4_K, QT.Q5_K):
        d, dmin, sc, m, q = _asymmetric(b, 32, 15 if qtype == QT.Q4_K else 31, 63)
        qs = [_pack(q & 15, 32, 4)]
        if qtype == QT.Q5_K:
            qs.insert(0, _pack(q >> 4, 32, 1))
        blocks = [d, dmin, _k_scale_bytes(sc, m), *qs]
    elif qtype == QT.Q3_K:
        d, sc, q = _symmetric(b, 16, -4, 31)
        u, s = (q + 4).astype(np.uint8), (sc + 32).astype(np.uint8)
        scales = [_pack(s & 15, 8, 4), _pack(s >> 4, 4, 2)]
        blocks = [_pack(u >> 2, 32, 1), _pack(u & 3, 32, 2), *scales, d]
    elif qtype == QT.Q6_K:
        d, sc, q = _symmetric(b, 16, -32, 127)
        u = (q + 32).astype(np.uint8)
        blocks = [_pack(u & 15, 64, 4), _pack(u >> 4, 32, 2), sc.view(np.uint8), d]
    else:
        raise ValueError(qtype)
    return np.concatenate(blocks, axis=1).reshape(n, -1)


def quantize(w: np.ndarray, qtype: QT) -> np.ndarray:
    if qtype in (QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K):
        return quantize_k(w, qtype)
    return gguf.quants.quantize(w, qtype)


def int8_weights(w: torch.Tensor) -> torch.Tensor:
    """The weights ``_weight_int8pack_mm`` multiplies for ``w`` (int8 codes x bf16 scales)."""
    lin = Lin(w, "int8", ACT)
    assert lin.w is not None and lin.s is not None
    return untile_int8(lin.w).float() * lin.s.float()[:, None]


def packed_weights(blocks: CodeBlocks) -> torch.Tensor:
    """The weights the int4 kernels (torch's, and the native step's for 4- and 5-bit
    codes) multiply for ``blocks``: ``(q - 8) * scale + zero`` with ``Lin``'s scale
    and zero, ``scale`` and ``low + 8 scale`` rounded to bf16 (the kernel with fp32
    activations returns exactly these)."""
    n, k = blocks.shape
    s = blocks.scale.to(ACT).float()[..., None]
    z = (blocks.low + 8 * blocks.scale).to(ACT).float()[..., None]
    return ((blocks.codes.view(n, -1, 32).float() - 8) * s + z).view(n, k)


class Err:
    """Pooled relative errors: sqrt(sum |A - B|^2 / sum |B|^2) over tensors, for W and W x."""

    def __init__(self) -> None:
        self.sums = np.zeros(4)

    def add(self, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> None:
        a, b = a.double(), b.double()
        self.sums += [
            (a - b).square().sum().item(),
            b.square().sum().item(),
            ((a - b) @ x).square().sum().item(),
            (b @ x).square().sum().item(),
        ]

    def cells(self) -> list[str]:
        if not self.sums[1]:
            return ["—", "—"]
        return [f"{100 * np.sqrt(self.sums[i] / self.sums[i + 1]):.3g}%" for i in (0, 2)]


def measure(raws: Iterator[tuple[RawTensor, np.ndarray | None]], seed: int) -> list[str]:
    """Cells of one table row for tensors of one type, with their originals if known."""
    fmt, to8, to4, total = Err(), Err(), Err(), Err()
    gen = torch.Generator().manual_seed(seed)
    for raw, orig in raws:
        qt = QT[raw.ggml_type or ""]
        ref = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(raw.data, qt)))
        ref = ref.reshape(raw.shape).float()
        x = torch.randn(raw.shape[1], 32, generator=gen, dtype=torch.float64)
        w8 = int8_weights(ref)
        to8.add(w8, ref, x)
        if orig is not None:
            fmt.add(ref, torch.from_numpy(orig), x)
            total.add(w8, torch.from_numpy(orig), x)
        if raw.ggml_type in CodeBlocks.TYPES:
            to4.add(packed_weights(CodeBlocks.from_raw(raw)), ref, x)
    return fmt.cells() + to8.cells() + total.cells()[:1] + to4.cells()


def gaussian(qtype: QT, rows: int, cols: int, seed: int) -> tuple[RawTensor, np.ndarray]:
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32) * 0.02
    data = quantize(w, qtype)
    if qtype == QT.F32:
        data = w
    elif qtype in (QT.F16, QT.BF16):
        data = data.view(np.uint8)
    return RawTensor("w", data, "quantized", (rows, cols), qtype.name), w


def real(reader: gguf.GGUFReader, qtype: QT, embed_rows: int) -> Iterator[tuple[RawTensor, None]]:
    for t in reader.tensors:
        if t.tensor_type != qtype or len(t.shape) != 2:
            continue
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        data = np.asarray(t.data)
        if shape[0] > embed_rows:
            shape, data = (embed_rows, shape[1]), data[:embed_rows]
        yield RawTensor(t.name, data.view(np.uint8), "quantized", shape, qtype.name), None


SYNTHETIC = (
    *("F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0"),
    *("Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=768, help="a multiple of 256 (K-quants)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gemma", type=Path, default=GEMMA3)
    ap.add_argument("--embed-rows", type=int, default=16384)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    head = [
        "type",
        "weights",
        "GGUF vs fp32: W",
        "W x",
        "int8 vs GGUF: W",
        "W x",
        "int8 vs fp32: W",
        "int4/int5 vs GGUF: W",
        "W x",
    ]
    rows = []
    for name in SYNTHETIC:
        src = gaussian(QT[name], args.rows, args.cols, args.seed)
        rows.append([name, f"gaussian {args.rows}x{args.cols}", *measure(iter([src]), args.seed)])
    files = [("SmolLM2-135M Q4_1", smollm2_gguf_path()), ("Gemma 3 270M Q4_K_M", args.gemma)]
    for label, path in files:
        if not path.is_file():
            print(f"skipping {label}: {path} not found")
            continue
        reader = gguf.GGUFReader(str(path))
        for name in sorted({t.tensor_type.name for t in reader.tensors}):
            if name in ("F32", "F16", "BF16"):
                continue
            tensors = list(real(reader, QT[name], args.embed_rows))
            if tensors:
                cells = measure(iter(tensors), args.seed)
                n = len(tensors)
                rows.append([name, f"{label}, {n} tensor{'s' * (n > 1)}", *cells])
    date = datetime.date.today().isoformat()
    versions = f"torch {torch.__version__}, gguf {metadata.version('gguf')}"
    print(f"benchmarks/quant_accuracy.py, {date}, {versions}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
