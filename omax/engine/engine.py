"""``Engine``: one loaded model with its batching loop, usable in-process.

    eng = Engine.load(spec, tensors, device="cpu", dtype="float32")
    rid = eng.submit(GenerateRequest(model="m", prompt="Hi"))
    while True:
        for chunk in eng.poll([rid], timeout=1.0).get(rid, []): ...

``ModelActor`` (omax.engine.actor) wraps it for Dask; notebooks and benchmarks use it
directly. Thread-safe: ``submit``/``poll``/``cancel`` may be called from any thread.
"""

from __future__ import annotations

import atexit
import itertools
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator

import torch

from omax.engine import embeddings, templates
from omax.engine.arch import fast_family
from omax.engine.batcher import Batcher
from omax.engine.detokenizer import Detokenizer
from omax.engine.fastpath import QUANTS
from omax.engine.grammar import Grammars, Matcher
from omax.engine.loader import LoadedModel, load_fast, load_model
from omax.engine.request import EmbedRequest, EmbedResult, GenerateChunk, GenerateRequest
from omax.engine.runner import is_fast, make_runner
from omax.engine.sampling import SamplerState
from omax.engine.sequence import Sequence
from omax.engine.spec import ModelSpec
from omax.engine.stops import StopMatcher
from omax.engine.threads import adopt_torch_threads
from omax.engine.truncation import char_budget, truncate_ids
from omax.errors import EngineDead, EngineError, InvalidRequest
from omax.sharding.tensors import RawTensor

# Engines whose batching thread still runs. A script that never calls close() would
# otherwise reach interpreter shutdown with that thread alive, and torch aborts the
# process there ("terminate called without an active exception", exit 134).
_OPEN: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_open_engines() -> None:
    for engine in list(_OPEN):
        engine.close()


class Engine:
    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch: int = 16,
        max_ctx: int = 4096,
        kv_budget: int | None = None,
        prefill_chunk: int = 256,
        quant: str = "none",
        prefix_rows: int | None = None,
        prefix_min: int = 16,
    ) -> None:
        """``prefix_rows`` cache rows (``max_ctx`` tokens each, committed as written) keep
        the KV of recently finished sequences; a prompt sharing at least ``prefix_min``
        leading tokens with one prefills only the rest. ``prefix_rows=0`` turns it off;
        ``None`` (auto) turns it on (4 rows) only on the exact fp32 path: with bf16
        activations a prompt prefilled in two parts differs from one prefilled whole in
        the last bits, enough to flip a near-tie, so a repeated temperature-0 request
        could answer differently from the first.
        """
        self.loaded = loaded
        _check_quant(quant)
        self.spec = loaded.spec
        self.tokenizer = loaded.tokenizer
        self._ids = itertools.count()
        self._load_ns_pending = loaded.load_duration_ns
        self.batcher: Batcher | None = None
        self._grammars: Grammars | None = None
        self._grammars_lock = threading.Lock()
        self.max_ctx = min(max_ctx, self.spec.context_length)
        self.vocab = _vocab_size(loaded.model)
        if prefix_rows is None:
            prefix_rows = 4 if quant == "none" or not is_fast(loaded.model) else 0
        if self.spec.is_generative:
            runner = make_runner(
                loaded.model, max_slots=max_batch, max_len=self.max_ctx, prefix_rows=prefix_rows
            )
            self.batcher = Batcher(
                runner,
                self._decode,
                loaded.eos_token_ids,
                kv_budget=kv_budget or max_batch * self.max_ctx,
                chunk=prefill_chunk,
                prefix_min=prefix_min,
            )
            _OPEN.add(self)

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        tensors: Iterable[RawTensor],
        device: str = "cpu",
        dtype: str = "float32",
        **kwargs,
    ) -> Engine:
        """Build the model from ``spec`` + ``tensors`` and start its batching loop.

        Generative models of the families in ``omax.engine.arch`` load straight into the
        lean fast path (``omax.engine.fastpath``) with weights as ``quant`` says ("none":
        dense weights and activations in ``dtype``, transformers' numerics); anything
        else transformers can build runs dense in ``dtype`` on the generic runner
        (``omax.engine.generic``), whatever ``quant`` says.
        """
        quant = kwargs.get("quant", "none")
        _check_quant(quant)
        if spec.is_generative and fast_family(spec.config):
            max_ctx = kwargs.get("max_ctx", 4096)
            loaded = load_fast(
                spec, tensors, device=device, quant=quant, dtype=dtype, max_ctx=max_ctx
            )
            return cls(loaded, **kwargs)
        return cls(load_model(spec, tensors, device=device, dtype=dtype), **kwargs)

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    # ---- generation ----------------------------------------------------------------
    def encode_prompt(self, req: GenerateRequest, num_ctx: int = 0) -> tuple[list[int], int]:
        """Return (prompt token ids, how many leading ids to keep when truncating).

        With ``num_ctx``, text no context of that size could hold is dropped before
        tokenising (``omax.engine.truncation``)."""
        budget = char_budget(num_ctx) if num_ctx > 0 else None
        text, system_prefix = templates.render(req, self.spec, budget)
        tok = self.tokenizer
        ids = tok.encode(text, add_special_tokens=False)
        keep = len(tok.encode(system_prefix, add_special_tokens=False)) if system_prefix else 0
        bos = tok.bos_token_id
        if (
            self.spec.tokenizer_config.get("add_bos_token")
            and bos is not None
            and (not ids or ids[0] != bos)
        ):
            ids, keep = [bos, *ids], keep + 1
        if req.context:
            ids, keep = list(req.context) + ids, 0
        return ids, max(keep, req.options.num_keep)

    def submit(self, req: GenerateRequest) -> str:
        """Queue ``req``; return its request id (``req.request_id`` if set)."""
        if self.batcher is None:
            raise InvalidRequest("this model does not support generate")
        if self.batcher.dead:
            raise EngineDead(self.batcher.dead)
        grammar = self.grammar(req.format) if req.format not in (None, "") else None
        rid = req.request_id or f"r{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        o = req.options
        num_ctx = min(o.num_ctx if o.num_ctx > 0 else self.max_ctx, self.max_ctx)
        ids, keep = self.encode_prompt(req, num_ctx)
        ids = truncate_ids(ids, keep, num_ctx, o.num_predict)
        if not ids:
            raise InvalidRequest("empty prompt")
        if max(ids) >= self.vocab or min(ids) < 0:  # a bad one would kill the engine
            bad = next(t for t in ids if not 0 <= t < self.vocab)
            raise InvalidRequest(
                f"token id {bad} is outside the model's vocabulary of {self.vocab}"
            )
        load_ns, self._load_ns_pending = self._load_ns_pending, 0
        seq = Sequence(
            rid=rid,
            req=req,
            prompt=ids,
            limit=num_ctx,
            sampler=SamplerState.create(o, ids, grammar),
            detok=Detokenizer(self._decode, ids),
            stops=StopMatcher(o.stop),
            load_duration=load_ns,
        )
        self.batcher.submit(seq)
        return rid

    def grammar(self, fmt) -> Matcher:
        """A fresh structured-output matcher for ``fmt``; InvalidRequest if unusable."""
        Grammars.key(fmt)  # reject a bad format before building the grammar tokenizer
        with self._grammars_lock:
            if self._grammars is None:
                self._grammars = Grammars(
                    self.tokenizer,
                    int(self.spec.config["vocab_size"]),
                    self.loaded.eos_token_ids,
                )
        return self._grammars.matcher(fmt)

    def poll(
        self, request_ids: Iterable[str], timeout: float = 0.0
    ) -> dict[str, list[GenerateChunk]]:
        """All new chunks of these requests; waits up to ``timeout`` s for the first."""
        if self.batcher is None:
            return {}
        return self.batcher.take(list(request_ids), timeout)

    def cancel(self, request_id: str) -> None:
        if self.batcher is not None:
            self.batcher.cancel(request_id)

    def generate(self, req: GenerateRequest) -> Iterator[GenerateChunk]:
        """Convenience iterator over one request's chunks (for notebooks)."""
        rid = self.submit(req)
        try:
            while True:
                for chunk in self.poll([rid], timeout=1.0).get(rid, []):
                    yield chunk
                    if chunk.done:
                        return
        except GeneratorExit:
            self.cancel(rid)
            raise

    # ---- embeddings ----------------------------------------------------------------
    def embed(self, req: EmbedRequest) -> EmbedResult:
        start = time.perf_counter_ns()
        adopt_torch_threads()  # callers run this in pool threads (the actor does)
        try:
            vecs, n_tokens = embeddings.embed(self.loaded, req)
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"embedding failed: {exc}") from exc
        return EmbedResult(
            embeddings=tuple(tuple(v) for v in vecs),
            prompt_eval_count=n_tokens,
            total_duration=time.perf_counter_ns() - start,
        )

    # ---- housekeeping --------------------------------------------------------------
    def stats(self) -> dict:
        model = self.loaded.model
        params = sum(t.numel() * t.element_size() for t in model.parameters())
        params += sum(t.numel() * t.element_size() for t in model.buffers())
        out = {"live": 0, "kv_tokens": 0, "kv_bytes": 0, "param_bytes": params}
        out.update(prefix_tokens=0, prefix_bytes=0, prefilled_tokens=0, reused_tokens=0)
        if self.batcher is not None:
            b = self.batcher
            kv, cached, per_token = b.kv_tokens(), b.prefix.tokens(), b.runner.bytes_per_token
            out.update(
                live=b.live(),
                kv_tokens=kv,  # live sequences only: 0 once every request has left
                kv_bytes=kv * per_token,
                prefix_tokens=cached,  # finished sequences kept for prefix reuse
                prefix_bytes=cached * per_token,
                prefilled_tokens=b.prefilled_tokens,  # totals since load
                reused_tokens=b.reused_tokens,
            )
        out["memory_bytes"] = out["param_bytes"] + out["kv_bytes"] + out["prefix_bytes"]
        if torch.cuda.is_available() and self.loaded.device.type == "cuda":
            out["cuda_allocated"] = torch.cuda.memory_allocated(self.loaded.device)
        return out

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        _OPEN.discard(self)


def _vocab_size(model) -> int:
    """How many token ids the model embeds (prompts must stay below it)."""
    if is_fast(model):
        return int(model.embed.n)
    cfg = model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(getattr(text, "vocab_size", 0) or 0) or 2**62


def _check_quant(quant: str) -> None:
    if quant not in QUANTS:
        raise InvalidRequest(f"unknown quant {quant!r}; use one of {', '.join(QUANTS)}")
