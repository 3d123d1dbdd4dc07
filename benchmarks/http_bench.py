"""omax serve vs llama.cpp's llama-server through HTTP, on GGUFs of three architectures.

    bash benchmarks/build_llamacpp.sh                 # once: llama.cpp for this CPU
    .venv/bin/python benchmarks/make_models.py        # once: the six GGUFs
    .venv/bin/python benchmarks/http_bench.py [--runs 10] [--tokens 128] [GGUF ...]

For each GGUF (default: the six of make_models.py) and each run, one server at a time,
never both running while measuring:

1. ``omax serve`` (embedded cluster, free port on 127.0.0.1, its own store in a temporary
   folder), ``omax create`` from a Modelfile ``FROM <gguf>`` (the seconds from the
   server's start to the end of the create), a first request of one token (the fresh
   worker's first load: its seconds), then the model loaded by an empty request (after
   that load and an unload, so the worker has its imports done: the "load time"); the
   RSS the worker process (the serve process's descendant that grew) added by the
   load, and after the measurements.
2. ``llama-server -m GGUF -np 16 -c 16*CTX -t THREADS`` (benchmarks/.llamacpp/bin).

On each: a warm-up request, then one stream (greedy, raw prompt, N tokens: decode tok/s
from the server's own timing, Ollama's eval_count / eval_duration and llama-server's
timings.predicted_per_second, and wall clock tokens / request time), then 16 concurrent
streams (16 different prompts, N tokens each, submitted at once: all generated tokens /
wall time from submission to the last answer, prefill included). Non-streaming requests.
Prompts are counting sequences a model continues; the tokens actually generated are
counted and a stream that stopped early is reported. llama-server runs with
cache_prompt false (each request prefills its whole prompt, as omax does with its
default prefix-cache "auto" under quant int4).

Run it on an otherwise idle machine: with -t 2 on 2 cores llama.cpp's threads spin at
barriers, and any other busy process cuts its speed 3-10x (omax's less), which would
flatter omax; the "machine CPU busy" row (whole-machine CPU over 1 s with both servers
idle, just before measuring) should read ~0.

Prints a markdown table per model and a summary (median, min, min/median over runs per
metric; ratios omax / llama.cpp of the medians and median of per-run ratios). Writes no
results file; ``--json FILE`` saves every raw number (with each of the 16 streams' own
tokens, wall time, decode rate and prefill seconds, as its server reports them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import machine  # noqa: E402

OMAX = str(Path(sys.executable).with_name("omax"))
LLAMA_BIN = HERE / ".llamacpp" / "bin"
MODELS_DIR = Path(os.environ.get("OMAX_BENCH_MODELS", "/tmp/omax-bench-models"))
DEFAULT_MODELS = [
    "smollm2-135m-Q4_K_M.gguf",
    "smollm2-135m-Q8_0.gguf",
    "gemma3-270m-Q4_K_M.gguf",
    "gemma3-270m-Q8_0.gguf",
    "qwen3-random-300m-Q4_K_M.gguf",
    "qwen3-random-300m-Q8_0.gguf",
]
OMAX_MAX_CTX = 4096  # Engine's default max_ctx (the serve path does not change it)
OMAX_MAX_BATCH = 16  # Engine's default max_batch: KV rows = max_batch + 1


def prompt(i: int) -> str:
    """A counting sequence from 1 + 10 * i that models keep continuing."""
    start = 1 + 10 * i
    return ", ".join(str(n) for n in range(start, start + 24)) + ","


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer at {url} in {timeout:.0f} s")


def check(r: httpx.Response) -> None:
    if r.status_code != 200:
        raise RuntimeError(f"{r.request.url.path} answered {r.status_code}: {r.text[:400]}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    except ProcessLookupError:
        pass


# ---- model facts ----------------------------------------------------------------------
def gguf_facts(path: Path) -> dict:
    """Tensor bytes and the KV shape (layers, kv heads, key/value widths) from the GGUF."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))

    def field(key: str):
        f = r.fields.get(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    layers = int(field(f"{arch}.block_count"))
    heads = int(field(f"{arch}.attention.head_count"))
    kv = field(f"{arch}.attention.head_count_kv")
    kv = int(kv if not isinstance(kv, list) else max(kv)) if kv is not None else heads
    emb = int(field(f"{arch}.embedding_length"))
    kdim = field(f"{arch}.attention.key_length") or emb // heads
    vdim = field(f"{arch}.attention.value_length") or emb // heads
    ctx_len = int(field(f"{arch}.context_length") or OMAX_MAX_CTX)
    return {
        "arch": arch,
        "tensor_bytes": int(sum(int(t.n_bytes) for t in r.tensors)),
        "params": int(sum(int(t.n_elements) for t in r.tensors)),
        "kv_per_token_2b": 2 * layers * kv * (int(kdim) + int(vdim)),  # bytes, 16-bit K+V
        "context_length": ctx_len,
    }


def tree_rss(proc: psutil.Process) -> dict[int, tuple[int, str]]:
    out = {}
    for p in [proc, *proc.children(recursive=True)]:
        try:
            out[p.pid] = (p.memory_info().rss, " ".join(p.cmdline())[:80])
        except psutil.Error:
            pass
    return out


# ---- the two servers ------------------------------------------------------------------
def run_concurrent(fn, n: int) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as ex:
        results = list(ex.map(fn, range(n)))
    return results, time.perf_counter() - t0


def bench_omax(gguf: Path, args, store: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DASK_OMAX__STORE__URL": str(store / "origin"),
        "DASK_OMAX__WORKER__STORE": str(store / "w" / "{name}"),
        "DASK_OMAX__SERVE__KEEP_ALIVE": "-1",
        "OMAX_HOST": f"127.0.0.1:{port}",
    }
    log = open(store / f"omax-serve-{port}.log", "w")  # noqa: SIM115 (closed below)
    t_start = time.perf_counter()
    proc = subprocess.Popen(
        [OMAX, "serve", "--port", str(port), "--dashboard", ":0", "--no-demo"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    res: dict = {}
    try:
        wait_http(url, proc, "omax serve")
        name = "bench-" + gguf.stem.lower().replace("_", "-")
        mf = store / f"Modelfile-{name}"
        mf.write_text(f"FROM {gguf}\n")
        subprocess.run(
            [OMAX, "create", name, "-f", str(mf)], env=env, check=True, capture_output=True
        )
        res["start_s"] = time.perf_counter() - t_start
        http = httpx.Client(base_url=url, timeout=1800)
        # Load and unload once first: the worker then has torch, transformers and the
        # engine imported (a few hundred MB no model adds again), so the growth below
        # is what loading the model adds to a running worker.
        warm = {"model": name, "prompt": "1", "keep_alive": 0, "stream": False}
        t0 = time.perf_counter()
        check(http.post("/api/generate", json={**warm, "options": {"num_predict": 1}}))
        res["first_token_s"] = time.perf_counter() - t0  # the fresh worker's first load
        for _ in range(120):
            if not http.get("/api/ps").json().get("models"):
                break
            time.sleep(0.5)
        time.sleep(1.0)
        ps = psutil.Process(proc.pid)
        before = tree_rss(ps)
        t0 = time.perf_counter()
        r = http.post("/api/generate", json={"model": name, "keep_alive": -1})
        check(r)
        res["load_s"] = time.perf_counter() - t0
        time.sleep(1.0)
        after = tree_rss(ps)
        grown = {pid: after[pid][0] - before.get(pid, (0, ""))[0] for pid in after}
        worker = max(grown, key=grown.get)
        res["rss_load"] = grown[worker]
        res["rss_worker_before"] = before.get(worker, (0, ""))[0]

        def gen(i: int) -> dict:
            body = {
                "model": name,
                "prompt": prompt(i),
                "raw": True,
                "stream": False,
                "keep_alive": -1,
                "options": {"temperature": 0, "num_predict": args.tokens},
            }
            t = time.perf_counter()
            r = http.post("/api/generate", json=body)
            wall = time.perf_counter() - t
            check(r)
            j = r.json()
            if "error" in j:
                raise RuntimeError(j["error"])
            return {
                "n": j.get("eval_count", 0),
                "decode_tps": j["eval_count"] / (j["eval_duration"] / 1e9),
                # the steps that held its prompt (they may hold other rows too)
                "prefill_s": j["prompt_eval_duration"] / 1e9,
                "wall": wall,
                "done_reason": j.get("done_reason"),
                "text": j.get("response", "")[:60],
            }

        gen(0)  # warm-up
        res.update(measure(gen, args))
        res["rss_after"] = psutil.Process(worker).memory_info().rss - res["rss_worker_before"]
    finally:
        stop(proc)
        log.close()
    return res


def bench_llama(gguf: Path, args, tmp: Path) -> dict:
    exe = LLAMA_BIN / "llama-server"
    if not exe.exists():
        raise SystemExit(f"{exe} missing: run bash benchmarks/build_llamacpp.sh first")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(exe), "-m", str(gguf), "-np", str(args.streams), "-c", str(args.streams * args.ctx)]
    cmd += ["-t", str(args.threads), "--host", "127.0.0.1", "--port", str(port)]
    log = open(tmp / f"llama-server-{port}.log", "w")  # noqa: SIM115 (closed below)
    t_start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    res: dict = {"cmd": " ".join(["llama-server", *cmd[1:]])}
    try:
        wait_http(url + "/health", proc, "llama-server")
        res["start_s"] = time.perf_counter() - t_start
        http = httpx.Client(base_url=url, timeout=1800)

        def gen(i: int) -> dict:
            body = {
                "prompt": prompt(i),
                "n_predict": args.tokens,
                "temperature": 0,
                "top_k": 1,
                "cache_prompt": False,
                "stream": False,
            }
            t = time.perf_counter()
            r = http.post("/completion", json=body)
            wall = time.perf_counter() - t
            check(r)
            j = r.json()
            return {
                "n": j["tokens_predicted"],
                "decode_tps": j["timings"]["predicted_per_second"],
                "prefill_s": j["timings"]["prompt_ms"] / 1e3,  # its prompt's batch(es)
                "wall": wall,
                "done_reason": j.get("stop_type"),
                "text": j.get("content", "")[:60],
            }

        gen(0)
        res.update(measure(gen, args))
    finally:
        stop(proc, signal.SIGTERM)
        log.close()
    return res


def measure(gen, args) -> dict:
    # Whole-machine CPU use over 1 s with our server idle: other processes' load. Anything
    # much over a few % makes the numbers worthless on 2 cores.
    busy = psutil.cpu_percent(interval=1.0)
    one = gen(0)
    many, wall = run_concurrent(gen, args.streams)
    short = [m for m in [one, *many] if m["n"] < args.tokens]
    return {
        "one_decode_tps": one["decode_tps"],
        "one_wall_tps": one["n"] / one["wall"],
        "one_n": one["n"],
        "one_text": one["text"],
        "many_tps": sum(m["n"] for m in many) / wall,
        "many_n": sum(m["n"] for m in many),
        "many_streams": [{k: m[k] for k in ("n", "wall", "decode_tps", "prefill_s")} for m in many],
        "many_wall": wall,
        "short": [(m["n"], m["done_reason"]) for m in short],
        "busy_pct": busy,
    }


# ---- report ---------------------------------------------------------------------------
METRICS = [
    ("one_decode_tps", "1 stream decode tok/s (server timing)"),
    ("one_wall_tps", "1 stream tok/s (wall clock, prefill + HTTP)"),
    ("many_tps", "16 streams aggregate tok/s (wall clock)"),
]


def summary(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    med = statistics.median(xs)
    if len(xs) == 1:
        return f"{med:.1f}"
    return f"{med:.1f} (min {min(xs):.1f}, min/med {min(xs) / med:.2f})"


def report(model: Path, facts: dict, runs: list[dict], args) -> str:
    om = [r["omax"] for r in runs if "omax" in r]
    ll = [r["llama"] for r in runs if "llama" in r]
    mib = 2**20
    lines = [
        f"\n### {model.name} ({facts['arch']}, {facts['params'] / 1e6:.0f}M params, "
        f"{len(runs)} run(s), {args.tokens} tokens)\n",
        "| metric | omax | llama.cpp | omax / llama.cpp (median of run ratios) | target |",
        "|---|---|---|---|---|",
    ]
    targets = {"one_decode_tps": ">= 1.0", "one_wall_tps": "", "many_tps": ">= 2.0"}
    for key, label in METRICS:
        a = [r[key] for r in om]
        b = [r[key] for r in ll]
        ratios = [r["omax"][key] / r["llama"][key] for r in runs if "omax" in r and "llama" in r]
        ratio = f"{statistics.median(ratios):.2f}" if ratios else "n/a"
        if args.streams != 16:
            label = label.replace("16", str(args.streams))
        lines.append(f"| {label} | {summary(a)} | {summary(b)} | {ratio} | {targets[key]} |")
    if om:
        load = [r["rss_load"] / mib for r in om]
        after = [r["rss_after"] / mib for r in om]
        lines.append(f"| omax worker RSS added by load (MiB) | {summary(load)} | | | |")
        lines.append(f"| omax worker RSS added, after the runs (MiB) | {summary(after)} | | | |")
        lines.append(f"| omax load time (s) | {summary([r['load_s'] for r in om])} | | | <= 2 |")
        first = summary([r["first_token_s"] for r in om])
        lines.append(f"| omax first token of a fresh server (s) | {first} | | | |")
        create = summary([r["start_s"] for r in om])
        lines.append(f"| omax serve start + `omax create` (s) | {create} | | | |")
    busy = [r[s]["busy_pct"] for r in runs for s in ("omax", "llama") if s in r]
    if busy:
        lines.append(
            f"| machine CPU busy just before measuring, max (%) | {max(busy):.0f} | | | ~0 |"
        )
    tb = facts["tensor_bytes"]
    per_tok = facts["kv_per_token_2b"]
    omax_ctx = min(OMAX_MAX_CTX, facts["context_length"])
    used = args.streams * (args.tokens + 100)
    lines += [
        f"| GGUF tensor bytes (MiB) | {tb / mib:.1f} | | | |",
        f"| KV, 16-bit, one {omax_ctx}-token context (MiB) | {per_tok * omax_ctx / mib:.1f} | "
        f"{per_tok * args.streams * args.ctx / mib:.1f} ({args.streams}x{args.ctx}, "
        "llama-server -c, F16; SWA layers hold less) | | |",
        f"| KV omax allocates: {OMAX_MAX_BATCH + 1} rows x {omax_ctx} (MiB, virtual, "
        f"touched as used) | {per_tok * (OMAX_MAX_BATCH + 1) * omax_ctx / mib:.0f} | | | |",
        f"| tensor bytes + KV of the tokens this run holds (~{used}) (MiB) | "
        f"{(tb + per_tok * used) / mib:.1f} | | | |",
    ]
    shorts = [
        (i, side, r[side]["short"])
        for i, r in enumerate(runs)
        for side in ("omax", "llama")
        if side in r and r[side]["short"]
    ]
    for i, side, s in shorts:
        lines.append(f"\nrun {i}: {side} streams shorter than {args.tokens} tokens: {s}")
    errors = [
        (i, k, r[k])
        for i, r in enumerate(runs)
        for k in ("omax_error", "omax_error_retry", "llama_error", "llama_error_retry")
        if k in r
    ]
    for i, k, e in errors:
        lines.append(f"\nrun {i}: {k}: {e}")
    if om:
        lines.append(f"\nomax text: {om[0]['one_text']!r}")
    if ll:
        lines.append(f"llama.cpp text: {ll[0]['one_text']!r}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", help=f"GGUFs (default: the six in {MODELS_DIR})")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=512, help="llama-server context per slot")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write every raw number here")
    ap.add_argument("--only", choices=("omax", "llama"), help="measure one side only")
    args = ap.parse_args()
    models = [Path(m) for m in args.models] or [MODELS_DIR / m for m in DEFAULT_MODELS]
    missing = [m for m in models if not m.exists()]
    if missing:
        raise SystemExit(f"missing {missing}: run benchmarks/make_models.py first")
    from omax.engine import native

    try:
        native.build()
        print("native decode step: on", file=sys.stderr)
    except native.BuildError as e:
        print("native decode step: unavailable:", e, file=sys.stderr)
    flags = LLAMA_BIN.parent / "native.flags"
    t_all = time.perf_counter()
    results: dict[str, list[dict]] = {str(m): [] for m in models}
    tmp = Path(tempfile.mkdtemp(prefix="omax-http-bench-"))
    try:
        for run in range(args.runs):
            for m in models:
                entry: dict = {}
                t0 = time.perf_counter()
                for side, fn in (("omax", bench_omax), ("llama", bench_llama)):
                    if args.only and side != args.only:
                        continue
                    for attempt in range(2):  # one retry: a failed start or load
                        try:
                            entry[side] = fn(m, args, tmp)
                            break
                        except Exception as e:  # report it, go on with the others
                            key = f"{side}_error" + ("" if attempt == 0 else "_retry")
                            entry[key] = f"{type(e).__name__}: {e}"[-800:]
                            print(f"{m.name} {side}: {entry[key]}", file=sys.stderr)
                results[str(m)].append(entry)
                brief = {
                    s: {k: round(v, 1) for k, v in entry[s].items() if k.endswith("tps")}
                    for s in ("omax", "llama")
                    if s in entry
                }
                errs = {k: v for k, v in entry.items() if k.endswith("error")}
                print(
                    f"run {run + 1}/{args.runs} {m.name}: {time.perf_counter() - t0:.0f} s "
                    f"{brief} {errs}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"## http_bench: omax serve vs llama-server, {args.runs} run(s)\n")
    print(f"Machine: {machine()}  ")
    print(f"Command: `python benchmarks/http_bench.py {' '.join(sys.argv[1:])}`  ")
    if flags.exists():
        print(f"llama.cpp: {flags.read_text().strip()}  ")
    llama_cmd = next(
        (e["llama"]["cmd"] for rs in results.values() for e in rs if "llama" in e), None
    )
    if llama_cmd:
        print(f"llama-server: `{llama_cmd}` (model path varies)  ")
    print(f"Total time: {time.perf_counter() - t_all:.0f} s")
    for m in models:
        print(report(m, gguf_facts(m), results[str(m)], args))


if __name__ == "__main__":
    main()
