"""The continuous-batching loop: one thread per engine, schedule -> execute -> update.

Between steps new requests join and finished or cancelled ones leave. Each step
decodes every live sequence and prefills up to ``chunk`` prompt tokens: a chunk of one
long prompt (in the runner's staging slot) and any number of whole short prompts,
straight into the rows they will decode from (``omax.engine.batch_policy`` decides), all
through ``Runner.step`` (one forward pass on the fast path). A prompt that completes
joins the decoding sequences from the next step. Output chunks are appended to
per-request outboxes that ``take`` drains for several requests at once.

A sequence that leaves the batch keeps its KV in one of the runner's prefix rows
(``omax.engine.prefix``); a later prompt that starts with those tokens copies them into
its cache row on admission and prefills only the rest.

Invariant (the runner's cache depends on it): ``self.decoding[i].slot == i``.

A step that raises kills the engine: the state it left (the KV rows it was writing,
the runner's buffers) cannot be trusted, so every request still here is answered with
the error, ``dead`` names the cause, the loop ends and a later ``submit`` is answered
with the same error. Whoever holds the engine replaces it (``ModelActor`` reports it
dead; the scheduler unloads it and the next request loads a fresh one).

Tests make a step fail on purpose through ``omax.engine.fault_injection``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from omax.engine import batch_policy, prefix_rows
from omax.engine.counters import EngineCounters
from omax.engine.fault_injection import check_fault, fault_marker
from omax.engine.prefix import Hit, PrefixCache
from omax.engine.request import GenerateChunk
from omax.engine.runner_api import Runner, Segment
from omax.engine.sampling import sample
from omax.engine.sequence import Sequence
from omax.engine.threads import adopt_torch_threads
from omax.logs import use_context

log = logging.getLogger(__name__)

# A prompt chunk this step runs: the sequence, its chunk, and the cache row it goes to.
Part = tuple[Sequence, batch_policy.Chunk, int]


class Batcher:
    def __init__(
        self,
        runner: Runner,
        decode,
        eos_ids: set[int],
        *,
        kv_budget: int,
        chunk: int = 256,
        prefix_min: int = 16,
    ) -> None:
        self.runner = runner
        self.decode_text = decode
        self.eos_ids = eos_ids
        self.kv_budget = kv_budget
        self.chunk = chunk
        self.prefix = PrefixCache(runner.prefix_rows, min_tokens=prefix_min)
        # Running totals: prompt tokens run through the model, and those copied instead.
        self.prefilled_tokens = 0
        self.reused_tokens = 0
        self.counters = EngineCounters()  # for metrics only (omax.engine.counters)
        self.waiting: deque[Sequence] = deque()
        self.prefilling: Sequence | None = None
        self.admitting: list[Sequence] = []  # taken from ``waiting`` this step, not yet placed
        self.decoding: list[Sequence] = []
        self._inbox: deque[Sequence] = deque()
        self._cancels: deque[str] = deque()
        self._outbox: dict[str, list[GenerateChunk]] = {}
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = False
        self.dead: str | None = None  # why the engine died (set once, under _cond)
        self._fault: str = fault_marker()
        # Called (from this loop's thread) whenever a chunk is ready, with whether it is
        # urgent (a request's first or last): lets an asyncio caller wake at once instead
        # of polling on a timer.
        self.on_output: Callable[[bool], None] | None = None
        self._thread = threading.Thread(target=self._run, name="omax-batcher", daemon=True)
        self._thread.start()

    # ---- called from other threads -------------------------------------------------
    def submit(self, seq: Sequence) -> None:
        with self._cond:
            self._outbox[seq.rid] = []
            dead = self.dead
            if dead is None:
                self._inbox.append(seq)
        if dead is not None:  # the loop has ended: answer here, or no one would
            self._fail(seq, dead)
            return
        self._wake.set()

    def cancel(self, rid: str) -> None:
        self._cancels.append(rid)
        self._wake.set()

    def take(self, rids, timeout: float = 0.0) -> dict[str, list[GenerateChunk]]:
        """New chunks of ``rids`` (waits up to ``timeout`` s for at least one)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                out = {r: self._outbox[r] for r in rids if self._outbox.get(r)}
                if out or timeout <= 0:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            for r, chunks in out.items():
                if chunks[-1].done:
                    del self._outbox[r]
                else:
                    self._outbox[r] = []
        return out

    def live(self) -> int:
        return (
            len(self._inbox)
            + len(self.waiting)
            + len(self.decoding)
            + (1 if self.prefilling else 0)
        )

    def kv_tokens(self) -> int:
        n = sum(s.pos for s in self.decoding)
        return n + (self.prefilling.pos if self.prefilling else 0)

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)

    # ---- the loop thread -----------------------------------------------------------
    def _run(self) -> None:
        adopt_torch_threads()
        while not self._stop:
            if not (
                self._inbox or self._cancels or self.waiting or self.decoding or self.prefilling
            ):
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                self.step()
            except Exception as exc:  # the engine is dead (module doc)
                log.exception("batch step failed; the engine is dead")
                self._die(f"engine step failed: {exc}")
                return

    def _die(self, msg: str) -> None:
        """Mark the engine dead and answer every request it holds with ``msg``."""
        with self._cond:  # no submit queues a request after this
            self.dead = msg
            late = list(self._inbox)
            self._inbox.clear()
        self._fail_all(msg)
        for s in late:
            self._fail(s, msg)

    def _emit(self, seq: Sequence, chunk: GenerateChunk) -> None:
        if chunk.done:
            self.counters.finish(chunk.done_reason or "stop")
        with self._cond:
            if seq.rid in self._outbox:
                self._outbox[seq.rid].append(chunk)
            self._cond.notify_all()
        urgent = chunk.done or not seq.emitted
        seq.emitted = True
        if self.on_output is not None:
            self.on_output(urgent)

    def _fail(self, seq: Sequence, msg: str) -> None:
        """End ``seq`` with the error ``msg``, logged under its request's context."""
        with use_context(seq.log_context):
            log.warning("request %s failed: %s", seq.rid, msg)
        self._emit(seq, GenerateChunk(done=True, done_reason="error", error=msg))

    def _fail_all(self, msg: str) -> None:
        placed = {id(s) for s in self.decoding} | {id(self.prefilling)}
        seqs = list(self.waiting) + self.decoding + ([self.prefilling] if self.prefilling else [])
        seqs += [s for s in self.admitting if id(s) not in placed]
        self.admitting = []
        self.waiting.clear()
        self.decoding = []
        self.prefilling = None
        self.prefix.clear()  # a step that failed midway may have left a row half-written
        for s in seqs:
            self._fail(s, msg)

    def step(self) -> None:
        """One step: schedule (``batch_policy``), execute (``Runner.step``), update."""
        self._take_requests()
        decision, hits = self._schedule()
        parts = self._admit(decision, hits)
        if not parts and not self.decoding:
            return
        seqs = self.decoding
        tokens, lasts, dt = self._execute(seqs, parts)
        self._update(seqs, tokens, parts, lasts, dt)
        self.admitting = []

    def _take_requests(self) -> None:
        """Move submitted requests to ``waiting`` and apply the cancellations."""
        while self._inbox:
            self.waiting.append(self._inbox.popleft())
        while self._cancels:
            self._cancel(self._cancels.popleft())

    def _schedule(self) -> tuple[batch_policy.Decision, dict[str, Hit]]:
        """This step's decision, and the prefix-cache hits of the waiting heads it saw."""
        hits: dict[str, Hit] = {}
        heads: list[batch_policy.Waiting] = []
        room = self.runner.max_slots - len(self.decoding) - (1 if self.prefilling else 0)
        for w in list(self.waiting)[: max(room, 0)]:
            hit = prefix_rows.match(self.runner, self.prefix, w.prompt)
            if hit is not None:
                hits[w.rid] = hit
            heads.append(batch_policy.Waiting(w.rid, len(w.prompt), w.reserve, hit.n if hit else 0))
        p = self.prefilling
        decision = batch_policy.schedule(
            heads,
            batch_policy.Prefilling(p.rid, p.pos, len(p.prompt), p.reserve) if p else None,
            [batch_policy.Decoding(s.rid, s.reserve) for s in self.decoding],
            max_slots=self.runner.max_slots,
            kv_budget=self.kv_budget,
            chunk=self.chunk,
        )
        return decision, hits

    def _admit(self, d: batch_policy.Decision, hits: dict[str, Hit]) -> list[Part]:
        """Take the admitted requests from ``waiting`` and give each prompt chunk its row;
        an admitted prompt with a prefix hit gets the cached KV copied in first."""
        admitted = {}
        for rid in d.admit:
            admitted[rid] = self.waiting.popleft()
            assert admitted[rid].rid == rid  # the policy admits in FIFO order
        self.admitting = list(admitted.values())  # a failing step must still answer them
        staged = [c for c in d.prefill if c.staged]
        if staged and staged[0].rid in admitted:
            self.prefilling = admitted[staged[0].rid]
        # Whole prompts go straight to the rows they will decode from: after the
        # decoding slots and the one the staged prompt will take.
        row = len(self.decoding) + (1 if self.prefilling else 0)
        parts: list[Part] = []
        for c in d.prefill:
            seq: Sequence | None = self.prefilling if c.staged else admitted[c.rid]
            assert seq is not None and seq.rid == c.rid
            if c.staged:
                at = self.runner.staging
            else:
                at, row = row, row + 1
            if c.rid in admitted and c.rid in hits:
                prefix_rows.reuse_prefix(self.runner, self.prefix, seq, hits[c.rid], at)
                self.reused_tokens += hits[c.rid].n
            parts.append((seq, c, at))
        return parts

    def _execute(self, seqs: list[Sequence], parts: list[Part]) -> tuple[list[int], list, int]:
        """Run one forward pass: a token for each of ``seqs`` and every prompt chunk.

        Returns the decode tokens sampled, each chunk's last logits, and the step's ns."""
        segments = [
            Segment(s.prompt[c.start : c.start + c.n], c.start, at, s.pinned) for s, c, at in parts
        ]
        if self._fault:  # test only: nothing is built per step otherwise
            check_fault(self._fault, [s.req for s in [*seqs, *(p[0] for p in parts)]])
        t0 = time.perf_counter_ns()
        logits, lasts = self.runner.step(
            [s.last for s in seqs], [s.pos for s in seqs], segments, [s.pinned for s in seqs]
        )
        tokens = sample(logits, [s.sampler for s in seqs]) if logits is not None else []
        dt = time.perf_counter_ns() - t0
        self.counters.steps.observe_ns(dt)
        return tokens, lasts, dt

    def _update(
        self, seqs: list[Sequence], tokens: list[int], parts: list[Part], lasts: list, dt: int
    ) -> None:
        """Apply a step's results: each of ``seqs`` takes its token, each chunk its logits."""
        if seqs:
            self._decoded(seqs, tokens, dt)
        # The staged prompt first: it joins before the whole ones (their rows come after
        # its reserved slot, so each moves down or stays, never onto one not yet moved).
        for (seq, c, at), last in zip(parts, lasts, strict=True):
            self._prefilled(seq, c.start + c.n, last, dt, at)

    def _prefilled(self, seq: Sequence, pos: int, logits, dt: int, row: int) -> None:
        """Cache ``row`` holds ``seq``'s prompt up to ``pos``; ``logits`` are its last."""
        self.prefilled_tokens += pos - seq.pos
        seq.pos = pos
        if seq.pos < len(seq.prompt):
            seq.prefill_ns += dt
            return
        t0 = time.perf_counter_ns()
        token = sample(logits.unsqueeze(0), [seq.sampler])[0]
        seq.prefill_ns += dt + time.perf_counter_ns() - t0
        if seq is self.prefilling:
            self.prefilling = None
        seq.slot = len(self.decoding)
        self.runner.copy_slot(row, seq.slot, seq.pos)
        self.decoding.append(seq)
        if self._accept(seq, token):
            self._remove(seq)

    def _decoded(self, seqs: list[Sequence], tokens: list[int], dt: int) -> None:
        """Each of ``seqs`` (slots ``0..B-1`` this step) sampled its token in ``dt`` ns."""
        finished = []
        for s, tok in zip(seqs, tokens, strict=True):
            s.pos += 1
            s.eval_ns += dt
            if self._accept(s, tok):
                finished.append(s)
        for s in finished:
            self._remove(s)

    def _accept(self, seq: Sequence, token: int) -> bool:
        """Record a sampled token; emit its text; return True when the sequence ends."""
        seq.record(token)
        self._count_token(seq)
        if token in self.eos_ids:
            self._finish(seq, "stop", include_last=False)
            return True
        text = seq.text_of(token)
        if text:
            self._emit(seq, GenerateChunk(text=text))
        if seq.stops.stopped:
            self._finish(seq, "stop")
            return True
        if seq.at_length():
            self._finish(seq, "length")
            return True
        return False

    def _count_token(self, seq: Sequence) -> None:
        now, c = time.perf_counter_ns(), self.counters
        if seq.last_token_ns:
            c.itl.observe_ns(now - seq.last_token_ns)
        else:
            c.ttft.observe_ns(now - seq.submitted)
            c.prompt_tokens += len(seq.prompt)
        c.generation_tokens += 1
        seq.last_token_ns = now

    def _finish(self, seq: Sequence, reason: str, include_last: bool = True) -> None:
        tail, calls = seq.tail()
        if tail:
            self._emit(seq, GenerateChunk(text=tail))
        self._emit(seq, seq.last_chunk(reason, calls, include_last))

    def _remove(self, seq: Sequence) -> None:
        """Free ``seq``'s decode slot, moving the last sequence into it (compaction).

        Its KV is first kept in a prefix row: compaction overwrites the slot.
        """
        prefix_rows.keep_prefix(self.runner, self.prefix, seq)
        i = seq.slot
        last = self.decoding.pop()
        if last is not seq:
            self.runner.copy_slot(last.slot, i, last.pos)
            last.slot = i
            self.decoding[i] = last
        seq.slot = -1

    def _cancel(self, rid: str) -> None:
        seq = self._withdraw(rid)
        if seq is not None:
            self._emit(seq, GenerateChunk(done=True, done_reason="cancel"))

    def _withdraw(self, rid: str) -> Sequence | None:
        """Take request ``rid`` out of the batch, wherever it is (None: not here)."""
        for s in list(self.waiting):
            if s.rid == rid:
                self.waiting.remove(s)
                return s
        if self.prefilling is not None and self.prefilling.rid == rid:
            s, self.prefilling = self.prefilling, None
            return s
        for s in self.decoding:
            if s.rid == rid:
                self._remove(s)
                return s
        for s in list(self._inbox):
            if s.rid == rid:
                self._inbox.remove(s)
                return s
        return None
