"""Constrained-decoding libraries on SmolLM2's 49,152-token vocabulary.

    .venv/bin/python benchmarks/grammar_bench.py [--no-append]

For llguidance, xgrammar and outlines-core: compile time per grammar (cold: no cache)
and the per-token cost of computing the allowed-token mask, while walking a valid
document token by token (mask, then advance), for ``format:"json"`` and two schemas.
Also the cost of applying a bitmask to a [1, V] logits row. Prints a table and
appends it to benchmarks/RESULTS.md. The chosen library is the one omax uses
(omax/engine/grammar.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._results import append_results  # noqa: E402
from omax.engine.loader import build_tokenizer  # noqa: E402
from tests.engine.conftest import SMOLLM2_GGUF, gguf_spec  # noqa: E402

VOCAB = 49152

SIMPLE = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
NESTED = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[a-z]{3}-[0-9]{4}$"},
        "status": {"enum": ["active", "inactive", "banned"]},
        "score": {"type": "number", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "owner": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "email": {"type": "string", "format": "email"},
                "age": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            },
            "required": ["name", "email"],
            "additionalProperties": False,
        },
    },
    "required": ["id", "status", "tags", "owner"],
    "additionalProperties": False,
}
CASES = {
    "json": (
        None,
        {"city": "Paris", "population": 2148000, "landmarks": ["Eiffel Tower", "Louvre"]},
    ),
    "simple schema": (SIMPLE, {"name": "Ada Lovelace", "age": 36}),
    "nested schema": (
        NESTED,
        {
            "id": "abc-1234",
            "status": "active",
            "score": 9.5,
            "tags": ["math", "engines", "poetry"],
            "owner": {"name": "Charles", "email": "charles@example.com", "age": None},
        },
    ),
}
ANY_OBJECT = {"type": "object"}


def doc_tokens(tok, doc) -> list[int]:
    text = json.dumps(doc, separators=(",", ":"))
    return tok.encode(text, add_special_tokens=False)


class LLG:
    name = "llguidance"

    def __init__(self, tok) -> None:
        import llguidance
        import llguidance.hf

        self.llg = llguidance
        self.tok = llguidance.hf.from_tokenizer(tok, n_vocab=VOCAB)

    def compile(self, schema):
        from llguidance import LLMatcher

        grm = LLMatcher.grammar_from_json_schema(
            schema or ANY_OBJECT, defaults={"whitespace_flexible": False}
        )
        m = LLMatcher(self.tok, grm)
        assert not m.is_error(), m.get_error()
        return m

    def fresh(self, m):
        return m.deep_copy()

    def walk(self, m, ids, eos):
        mask = torch.empty((1, (VOCAB + 31) // 32), dtype=torch.int32)
        v = mask[0]
        times = []
        for t in [*ids, eos]:
            t0 = time.perf_counter()
            m.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * 4)
            times.append(time.perf_counter() - t0)
            assert (int(v[t // 32]) >> (t % 32)) & 1, f"token {t} masked"
            m.consume_token(t)
            assert not m.is_error(), m.get_error()
        return times


class XGR:
    name = "xgrammar"

    def __init__(self, tok) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=VOCAB)

    def compile(self, schema):
        xgr = self.xgr
        compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        if schema is None:  # strict mode makes {"type": "object"} mean only {}
            cg = compiler.compile_builtin_json_grammar()
        else:
            cg = compiler.compile_json_schema(
                json.dumps(schema), any_whitespace=False, separators=(",", ":")
            )
        self.cg = cg
        return xgr.GrammarMatcher(cg)

    def fresh(self, m):
        return self.xgr.GrammarMatcher(self.cg)

    def walk(self, m, ids, eos):
        mask = self.xgr.allocate_token_bitmask(1, VOCAB)
        times = []
        for t in [*ids, eos]:
            t0 = time.perf_counter()
            m.fill_next_token_bitmask(mask)
            times.append(time.perf_counter() - t0)
            assert (int(mask[0, t // 32]) >> (t % 32)) & 1, f"token {t} masked"
            assert m.accept_token(t)
        return times


class OC:
    name = "outlines-core"

    def __init__(self, tok) -> None:
        from outlines_core import Vocabulary

        dec = {v: k for k, v in _bytes_to_unicode().items()}
        self.eos = tok.eos_token_id
        vocab: dict[bytes, list[int]] = {}
        for s, i in tok.get_vocab().items():
            if i == self.eos or i in tok.all_special_ids:
                continue
            try:
                b = bytes(dec[c] for c in s)
            except KeyError:
                b = s.encode()
            vocab.setdefault(b, []).append(i)
        self.vocab = Vocabulary(self.eos, vocab)

    def compile(self, schema):
        from outlines_core import Guide, Index
        from outlines_core.json_schema import build_regex_from_schema

        regex = build_regex_from_schema(json.dumps(schema or ANY_OBJECT))
        self.index = Index(regex, self.vocab)
        return Guide(self.index)

    def fresh(self, m):
        from outlines_core import Guide

        return Guide(self.index)

    def walk(self, g, ids, eos):
        mask = torch.empty((1, (VOCAB + 31) // 32), dtype=torch.int32)
        times = []
        for t in [*ids, eos]:
            t0 = time.perf_counter()
            g.write_mask_into(mask.data_ptr(), mask.numel(), 4)
            times.append(time.perf_counter() - t0)
            assert (int(mask[0, t // 32]) >> (t % 32)) & 1, f"token {t} masked"
            if t != eos:
                g.advance(t)
        return times


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character table (byte-level BPE token spelling)."""
    bs = [*range(33, 127), *range(161, 173), *range(174, 256)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def apply_cost(allowed: int) -> float:
    """Seconds to unpack a bitmask and mask one [1, V] fp32 logits row (omax's way)."""
    from omax.engine.grammar import apply_bitmask

    logits = torch.randn(1, VOCAB)
    mask = torch.zeros((1, (VOCAB + 31) // 32), dtype=torch.int32)
    mask.view(torch.uint8)[0, : allowed // 8] = 255
    for _ in range(20):
        apply_bitmask(logits.clone(), mask)
    t0 = time.perf_counter()
    for _ in range(200):
        apply_bitmask(logits, mask)
    return (time.perf_counter() - t0) / 200


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--libs", default="llguidance,xgrammar,outlines-core")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = build_tokenizer(gguf_spec(SMOLLM2_GGUF))
    eos = tok.eos_token_id
    rows: list[tuple[str, str, str]] = []
    libs = {"llguidance": LLG, "xgrammar": XGR, "outlines-core": OC}
    for lname in args.libs.split(","):
        t0 = time.perf_counter()
        lib = libs[lname](tok)
        rows.append(
            (f"{lname}: tokenizer setup", f"{(time.perf_counter() - t0) * 1e3:.0f} ms", "-")
        )
        for case, (schema, doc) in CASES.items():
            ids = doc_tokens(tok, doc)
            try:
                t0 = time.perf_counter()
                m = lib.compile(schema)
                compile_s = time.perf_counter() - t0
                again = lib.fresh(m)
                times = lib.walk(m, ids, eos)
                warm = lib.walk(again, ids, eos)
            except Exception as exc:  # a library that cannot do the case says so
                rows.append((f"{lname} / {case}: failed", type(exc).__name__, "-"))
                print(f"{lname} / {case}: {exc}", file=sys.stderr)
                continue
            us = [t * 1e6 for t in times]
            p95 = sorted(us)[int(0.95 * (len(us) - 1))]
            rows.append((f"{lname} / {case}: compile", f"{compile_s * 1e3:.1f} ms", "-"))
            rows.append(
                (
                    f"{lname} / {case}: mask per token (median / p95, {len(us)} tok)",
                    f"{statistics.median(us):.0f} / {p95:.0f} us",
                    "<< decode step (~10 ms)",
                )
            )
            us = [t * 1e6 for t in warm]
            p95 = sorted(us)[int(0.95 * (len(us) - 1))]
            rows.append(
                (
                    f"{lname} / {case}: mask per token, 2nd request same grammar (median / p95)",
                    f"{statistics.median(us):.0f} / {p95:.0f} us",
                    "<< decode step (~10 ms)",
                )
            )
    for n in (64, VOCAB - 64):
        us = apply_cost(n) * 1e6
        rows.append(
            (f"apply bitmask, {n} allowed, to [1, {VOCAB}] logits (omax)", f"{us:.0f} us", "-")
        )
    if args.no_append:
        for r in rows:
            print(" | ".join(r))
    else:
        append_results(
            "Constrained decoding on SmolLM2's vocabulary (1 thread)",
            rows,
            "python benchmarks/grammar_bench.py",
        )


if __name__ == "__main__":
    main()
