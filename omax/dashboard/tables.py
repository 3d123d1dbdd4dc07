"""What the omax dashboard pages show, as plain rows: pure functions of a snapshot.

A snapshot (``omax.dashboard.snapshot.take``) is a plain dict: ``workers`` as
``omax_cluster`` shows them (slots, replicas, loaded models, fetches), ``wanted``
counts, recent ``damage`` and ``failed`` reports, ``fetching`` spots and each worker's
heartbeat numbers (``heartbeats[address]``, from ``OmaxWorkerPlugin.heartbeat``).
Rates come from ``omax.dashboard.history``. The Bokeh pages and their JSON twins both
show these rows, so a script sees what a person sees.
"""

from __future__ import annotations

from typing import Any

from omax.engine.counters import quantile

Row = dict[str, Any]


def short(digest: str) -> str:
    """``sha256:<hex>`` as its first 12 hex digits."""
    return digest.split(":")[-1][:12]


def model_names(snap: dict[str, Any]) -> dict[str, str]:
    """Digest -> the name a loaded model of it was loaded as."""
    return {m["digest"]: m["name"] for w in snap.get("workers", ()) for m in w.get("loaded", ())}


def replication_rows(snap: dict[str, Any], rates: dict[tuple[str, str], float]) -> list[Row]:
    """One row per (model, worker) replica or fetch: bytes, rate (bytes/s), state
    (fetching, complete, damaged, partial) and the model's complete count against its
    wanted target."""
    names = model_names(snap)
    fetching = {tuple(s) for s in snap.get("fetching", ())}
    damaged = {(d["digest"], d["worker"]) for d in snap.get("damage", ())}
    holders: dict[str, int] = {}
    spots: dict[tuple[str, str], tuple[int, int, bool]] = {}
    for w in snap.get("workers", ()):
        for digest, r in w.get("replicas", {}).items():
            spots[(digest, w["address"])] = (r["bytes_done"], r["bytes_total"], r["complete"])
            holders[digest] = holders.get(digest, 0) + bool(r["complete"])
        for p in w.get("replicating", ()):
            fetching.add((p["digest"], w["address"]))
            spots[(p["digest"], w["address"])] = (p["completed"], p["total"], False)
    rows = []
    for (digest, worker), (done, total, complete) in sorted(spots.items()):
        if (digest, worker) in fetching and not complete:
            state = "fetching"
        elif complete:
            state = "complete"
        else:
            state = "damaged" if (digest, worker) in damaged else "partial"
        rows.append(
            {
                "model": names.get(digest, short(digest)),
                "digest": digest,
                "worker": worker,
                "bytes_done": done,
                "bytes_total": total,
                "percent": round(100 * done / total, 1) if total else 100.0,
                "rate": rates.get((digest, worker), 0.0),
                "state": state,
                "complete_replicas": holders.get(digest, 0),
                "target": snap.get("wanted", {}).get(digest, 0),
            }
        )
    return rows


def request_rows(snap: dict[str, Any], tokens_per_s: dict[str, float]) -> list[Row]:
    """One row per loaded model replica (actor): requests in flight as the scheduler
    counts them, running and queued sequences, tokens/s, time-to-first-token and
    inter-token latency (p50/p95 in seconds, bucket bounds), requests ended in error
    or cancelled, and how many of this model's replicas failed on this worker (their
    requests were retried elsewhere)."""
    failed: dict[tuple[str, str], int] = {}
    for f in snap.get("failed", ()):
        spot = (f["digest"], f["worker"])
        failed[spot] = failed.get(spot, 0) + 1
    rows = []
    for w in snap.get("workers", ()):
        beats = snap.get("heartbeats", {}).get(w["address"], {}).get("models", {})
        for m in w.get("loaded", ()):
            h = beats.get(m["key"], {})
            finished = h.get("finished", {})
            ttft = h.get("ttft", {}).get("counts", ())
            itl = h.get("itl", {}).get("counts", ())
            rows.append(
                {
                    "model": m["name"],
                    "key": m["key"],
                    "worker": w["address"],
                    "slot": m["slot"],
                    "state": "ready" if m.get("ready") else "loading",
                    "in_flight": m.get("in_flight", 0),
                    "running": h.get("running", 0),
                    "waiting": h.get("waiting", 0),
                    "tokens_per_s": round(tokens_per_s.get(m["key"], 0.0), 2),
                    "generated_tokens": h.get("generation_tokens", 0),
                    "ttft_p50": quantile(ttft, 0.5),
                    "ttft_p95": quantile(ttft, 0.95),
                    "itl_p50": quantile(itl, 0.5),
                    "itl_p95": quantile(itl, 0.95),
                    "errors": finished.get("error", 0),
                    "cancelled": finished.get("cancel", 0),
                    "failed_replicas": failed.get((m["digest"], w["address"]), 0),
                }
            )
    return rows


def latency_histograms(snap: dict[str, Any]) -> dict[str, list[int]]:
    """Time-to-first-token and inter-token bucket counts summed over every replica."""
    out: dict[str, list[int]] = {}
    for beat in snap.get("heartbeats", {}).values():
        for h in beat.get("models", {}).values():
            for name in ("ttft", "itl"):
                counts = list(h.get(name, {}).get("counts", ()))
                have = out.get(name)
                out[name] = (
                    counts if have is None else [a + b for a, b in zip(have, counts, strict=False)]
                )
    return out


def gpu_rows(snap: dict[str, Any]) -> list[Row]:
    """One row per inference slot: memory the device reports used and free (from the
    worker's last heartbeat; its first report before one arrived), utilisation, the
    memory omax reserved there and by which models."""
    rows = []
    for w in snap.get("workers", ()):
        beat = snap.get("heartbeats", {}).get(w["address"], {})
        live = {s["id"]: s for s in beat.get("slots", ())}
        for s in w.get("slots", ()):
            s = live.get(s["id"], s)
            mine = [m for m in w.get("loaded", ()) if m["slot"] == s["id"]]
            rows.append(
                {
                    "worker": w["address"],
                    "slot": s["id"],
                    "device": s["name"],
                    "memory_total": s["memory_total"],
                    "memory_free": s["memory_free"],
                    "memory_used": s["memory_total"] - s["memory_free"],
                    "utilization": s.get("utilization", 0.0),
                    "reserved": sum(m["memory"] for m in mine),
                    "models": ", ".join(sorted(m["name"] for m in mine)),
                }
            )
    return rows
