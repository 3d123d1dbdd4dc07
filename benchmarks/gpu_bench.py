"""omax's engine on a CUDA GPU against llama.cpp built for CUDA, in the same run.

    bash benchmarks/gpu_bench.sh      # on a machine with a CUDA GPU: every step below

Steps (each a subcommand, so the driver can run them as their inputs are ready):

- ``models DIR``: random-weight models at real models' layer shapes (Llama-3.2-1B,
  Qwen3-0.6B, Gemma-3-1B: ``SHAPES``), made by transformers on the GPU, and each
  converted to an F16 GGUF by llama.cpp's own ``convert_hf_to_gguf.py``. No real
  weights of these sizes can reach a lent machine (no network, 64 MiB carried), and
  decode cost does not depend on the values. The tokenizer is the small SentencePiece
  one of tests/archs.py, padded by the converter to 32,768 entries ([PAD] tokens); the
  EOS row of each (tied) embedding is zeroed so that greedy decoding never ends early.
- ``quantize DIR BIN``: ``llama-quantize`` to Q4_K_M and Q8_0 from each F16.
- ``bench DIR BIN``: for each GGUF, llama.cpp's ``llama-batched-bench`` (all layers on
  the GPU; 1 and 16 sequences of a 32-token prompt and 128 generated tokens; buffer
  sizes from its log), then omax's ``Engine`` in this process on the same file, with
  the weights as each quant keeps them (``QUANTS``): decode tok/s of one stream
  (eval_count / eval_duration, median of 3), 16 streams' generated tokens over wall
  time (prefill included), load time, and CUDA memory (``torch.cuda`` allocator).
  Both sides hold KV for 16 sequences of 512 tokens (omax: ``max_ctx`` 512,
  ``max_batch`` 16; llama.cpp: ``-c 8192``). Prints markdown tables; ``--json`` keeps
  every number.

``--tiny`` runs the same steps on toy shapes (on the CPU too: ``--device cpu``), to
check the script without a GPU.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOCAB = 32768
PROMPT_TOKENS, GEN_TOKENS, STREAMS, CTX = 32, 128, 16, 512
TYPES = ("Q4_K_M", "Q8_0")
# the weights omax keeps per GGUF type ("-graphs": omax.engine.cuda-graphs "auto", the
# default; without it "off"). On CUDA a Q8_0 file runs bf16 (``packed.int8_chosen``),
# as the Q4_K_M file's "bf16" row does, so Q8_0 files measure llama.cpp alone.
QUANTS = {"Q4_K_M": ("int4-graphs", "bf16-graphs"), "Q8_0": ()}
MORE: dict[str, tuple[str, ...]] = {}
SHAPES = {
    "llama": (
        "LlamaConfig",
        "Llama-3.2-1B",
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        ),
    ),
    "qwen3": (
        "Qwen3Config",
        "Qwen3-0.6B",
        dict(
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
        ),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma-3-1B",
        dict(
            hidden_size=1152,
            intermediate_size=6912,
            num_hidden_layers=26,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=512,
            layer_types=[
                "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)
            ],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        ),
    ),
}
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


# ---- models ---------------------------------------------------------------------------
def make_folder(family: str, folder: Path, tiny: bool, device: str) -> Path:
    """A random ``family`` model at its real layer shapes (``SHAPES``) as an HF folder."""
    import torch
    import transformers as tf

    from tests.archs import SP_VOCAB, _sentencepiece_tokenizer

    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    style = "gemma" if family.startswith("gemma") else "llama"
    ids = {"bos": 2, "eos": 1, "pad": 0} if style == "gemma" else {"bos": 1, "eos": 2, "pad": 0}
    _sentencepiece_tokenizer(folder, style, SP_VOCAB)
    cls, _, shape = SHAPES[family]
    if tiny:
        shape = {**shape, **TINY}
        if "layer_types" in shape:
            shape["layer_types"] = ["sliding_attention", "full_attention"]
    config = getattr(tf, cls)(
        **shape,
        vocab_size=VOCAB,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight[ids["eos"]].zero_()  # tied head: logit 0
    n = sum(p.numel() for p in model.parameters())
    log(f"  {family}: {n / 1e6:.0f}M parameters")
    model.to("cpu").save_pretrained(folder)
    (folder / "params").write_text(str(n))
    return folder


def make_models(out: Path, tiny: bool, device: str, families: list[str]) -> list[Path]:
    from tests.archs import llama_cpp_dir

    here = llama_cpp_dir()
    made = []
    for family in families:
        f16 = out / f"{family}-F16.gguf"
        if not f16.exists():
            t0 = time.perf_counter()
            folder = make_folder(family, out / f"{family}-hf", tiny, device)
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
            env.pop("NO_LOCAL_GGUF", None)
            tmp = f16.with_suffix(".part")
            cmd = [sys.executable, str(here / "convert_hf_to_gguf.py"), str(folder)]
            cmd += ["--outtype", "f16", "--outfile", str(tmp)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=here)
            if proc.returncode != 0:
                log(f"  {family}: convert_hf_to_gguf.py failed:\n{proc.stderr[-3000:]}")
                continue
            tmp.rename(f16)
            log(f"  {f16.name}: {time.perf_counter() - t0:.0f} s")
        made.append(f16)
    return made


def quantize(out: Path, bin_dir: Path) -> list[Path]:
    made = []
    for f16 in sorted(out.glob("*-F16.gguf")):
        for qtype in TYPES:
            dst = out / f16.name.replace("F16", qtype)
            if not dst.exists():
                cmd = [str(bin_dir / "llama-quantize"), str(f16), str(dst.with_suffix(".part"))]
                proc = subprocess.run([*cmd, qtype], capture_output=True, text=True)
                if proc.returncode != 0:
                    log(f"  {dst.name}: llama-quantize failed:\n{proc.stderr[-2000:]}")
                    continue
                dst.with_suffix(".part").rename(dst)
            made.append(dst)
    return made


# ---- llama.cpp ------------------------------------------------------------------------
BUFFER = re.compile(r"(\w+) (model|KV|compute) buffer size =\s*([\d.]+) MiB")


def llamacpp(gguf: Path, bin_dir: Path, gpu: bool) -> dict:
    """``llama-batched-bench`` on ``gguf``: tok/s for 1 and 16 sequences, buffer MiB."""
    cmd = [str(bin_dir / "llama-batched-bench"), "-m", str(gguf), "-c", str(STREAMS * CTX)]
    cmd += ["-b", "2048", "-ub", "512", "-npp", str(PROMPT_TOKENS), "-ntg", str(GEN_TOKENS)]
    cmd += ["-npl", f"1,{STREAMS}", "--output-format", "jsonl", "-lv", "4"]  # 4: buffer sizes
    cmd += ["-ngl", "99"] if gpu else ["-ngl", "0", "-t", "2"]
    rows: dict[int, dict] = {}
    for _ in range(2):  # once, an idle CPU run here printed nothing: one retry
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"llama-batched-bench failed: {proc.stderr[-2000:]}")
        for found in re.findall(r'\{"n_kv_max"[^{}]*\}', proc.stdout + "\n" + proc.stderr):
            r = json.loads(found)
            rows[r["pl"]] = r
        if 1 in rows and STREAMS in rows:
            break
    else:
        raise RuntimeError(f"llama-batched-bench printed no results: {proc.stderr[-1500:]}")
    buffers: dict[str, float] = {}
    for dev, kind, mib in BUFFER.findall(proc.stdout + proc.stderr):
        if not gpu or (dev.startswith("CUDA") and dev != "CUDA_Host"):
            buffers[kind] = buffers.get(kind, 0.0) + float(mib)
    one, many = rows[1], rows[STREAMS]
    return {
        "one_decode": one["speed_tg"],
        "many_wall": STREAMS * GEN_TOKENS / (many["t_pp"] + many["t_tg"]),
        "many_decode": many["speed_tg"],
        "buffers_mib": buffers,
        "flash_attn": one["flash_attn"],
    }


# ---- omax -----------------------------------------------------------------------------
def prompt(i: int) -> str:
    return " ".join(f"item {n}," for n in range(1 + 10 * i, 9 + 10 * i))


def run(engine, reqs) -> tuple[int, float, int, int]:
    """(generated tokens, wall s, eval ns summed, prompt tokens) of ``reqs`` at once."""
    ids = [engine.submit(r) for r in reqs]
    pending, tokens, eval_ns, prompt_n = set(ids), 0, 0, 0
    t0 = time.perf_counter()
    while pending:
        for rid, chunks in engine.poll(list(pending), timeout=1.0).items():
            for c in chunks:
                if c.done:
                    tokens += c.metrics.eval_count
                    eval_ns += c.metrics.eval_duration
                    prompt_n += c.metrics.prompt_eval_count
                    pending.discard(rid)
    return tokens, time.perf_counter() - t0, eval_ns, prompt_n


def omax(gguf: Path, quant: str, device: str) -> dict:
    import dask
    import torch

    from omax.engine.engine import Engine
    from omax.engine.request import GenerateRequest, SamplingOptions
    from tests.engine.conftest import gguf_spec, gguf_tensors

    cuda = device.startswith("cuda")
    spec, tensors = gguf_spec(gguf), gguf_tensors(gguf)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0

    def req(i: int, n: int = GEN_TOKENS) -> GenerateRequest:
        o = SamplingOptions(temperature=0.0, num_predict=n)
        return GenerateRequest(model="m", prompt=prompt(i), raw=True, options=o)

    quant, graphs = quant.removesuffix("-graphs"), quant.endswith("-graphs")
    t0 = time.perf_counter()
    with dask.config.set({"omax.engine.cuda-graphs": "auto" if graphs else "off"}):
        eng = Engine.load(spec, tensors, device=device, quant=quant, max_batch=STREAMS, max_ctx=CTX)
    run(eng, [req(0, 1)])
    first_token_s = time.perf_counter() - t0
    try:
        loaded = (torch.cuda.memory_allocated() - base) if cuda else 0
        runner = eng.batcher.runner
        kv = sum(t.numel() * t.element_size() for t in [*runner.k, *runner.v])
        run(eng, [req(i) for i in range(STREAMS)])  # warm every batch size once
        ones = []
        for _ in range(3):
            n, _, ns, prompt_n = run(eng, [req(1)])
            ones.append(n / (ns / 1e9))
        many = []
        for _ in range(2):
            n, wall, _, _ = run(eng, [req(i) for i in range(STREAMS)])
            many.append(n / wall)
        captured = getattr(runner, "graphs", None)
        model = eng.loaded.model
        lins = [model.embed, model.head]
        lins += [x for layer in model.layers for x in (layer.qkv, layer.o, layer.gu, layer.down)]
        return {
            "quant": model.quant,
            "linears": dict(collections.Counter(lin.quant for lin in lins)),
            "graphs": None if captured is None else (not captured.failed, len(captured.graphs)),
            "one_decode": statistics.median(ones),
            "one_runs": ones,
            "many_wall": max(many),
            "many_runs": many,
            "first_token_s": first_token_s,
            "prompt_tokens": prompt_n,
            "loaded_mib": loaded / 2**20,
            "kv_mib": kv / 2**20,
            "peak_mib": ((torch.cuda.max_memory_allocated() - base) / 2**20) if cuda else 0,
        }
    finally:
        eng.close()


# ---- report ---------------------------------------------------------------------------
def bench(
    out: Path,
    bin_dir: Path | None,
    device: str,
    json_path: Path | None,
    pattern: str = "*-Q*.gguf",
    quants: list[str] | None = None,
) -> None:
    import torch

    gpu = device.startswith("cuda")
    name = torch.cuda.get_device_name(0) if gpu else "CPU"
    results: dict[str, dict] = {}
    for gguf in sorted(out.glob(pattern)):
        res: dict = {"gguf_mib": gguf.stat().st_size / 2**20}
        try:
            if bin_dir is not None:  # without llama.cpp's programs: omax alone
                res["llama.cpp"] = llamacpp(gguf, bin_dir, gpu)
        except Exception as exc:  # noqa: BLE001 - report, go on with the next
            res["llama.cpp"] = {"error": str(exc)[-600:]}
        qtype = gguf.stem.split("-")[-1]
        chosen = quants or (*QUANTS.get(qtype, ("bf16",)), *MORE.get(gguf.stem, ()))
        for quant in chosen:
            try:
                res[f"omax {quant}"] = omax(gguf, quant, device)
            except Exception as exc:  # noqa: BLE001
                res[f"omax {quant}"] = {"error": f"{type(exc).__name__}: {exc}"[-600:]}
        results[gguf.name] = res
        log(json.dumps({gguf.name: res}, default=str)[:2000])
        if json_path:
            json_path.write_text(json.dumps(results, indent=1, default=str))
    print(report(results, name, torch.__version__))


def report(results: dict, device_name: str, torch_version: str) -> str:
    lines = [
        f"Device: {device_name}, torch {torch_version}. KV for {STREAMS} sequences of {CTX}",
        f"tokens on both; prompts of ~{PROMPT_TOKENS} tokens, {GEN_TOKENS} generated.",
        "",
        "| model | engine | 1 stream decode tok/s | 16 streams tok/s (wall) "
        "| weights+KV MiB after load | KV MiB | peak MiB | first token s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        model = f"{name} ({res['gguf_mib']:.0f} MiB)"
        for engine, r in res.items():
            if not isinstance(r, dict):
                continue
            if "error" in r:
                lines.append(f"| {model} | {engine} | error: {r['error'][:120]} | | | | | |")
                continue
            if engine == "llama.cpp":
                b = r["buffers_mib"]
                lines.append(
                    f"| {model} | llama.cpp (fa {r['flash_attn']}) | {r['one_decode']:.1f} "
                    f"| {r['many_wall']:.1f} (decode only {r['many_decode']:.1f}) "
                    f"| {b.get('model', 0) + b.get('KV', 0):.0f} (model {b.get('model', 0):.0f}) "
                    f"| {b.get('KV', 0):.0f} | + compute {b.get('compute', 0):.0f} | |"
                )
            else:
                lines.append(
                    f"| {model} | {engine} ({r['linears']}, graphs {r['graphs']}) "
                    f"| {r['one_decode']:.1f} "
                    f"| {r['many_wall']:.1f} | {r['loaded_mib']:.0f} | {r['kv_mib']:.0f} "
                    f"| {r['peak_mib']:.0f} | {r['first_token_s']:.2f} |"
                )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=("models", "quantize", "bench"))
    ap.add_argument("dir", type=Path)
    ap.add_argument("bin", type=Path, nargs="?", help="llama.cpp's programs")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--tiny", action="store_true", help="toy shapes, to check the script")
    ap.add_argument("--families", nargs="*", default=list(SHAPES))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--glob", default="*-Q*.gguf", help="which GGUFs of DIR bench reads")
    ap.add_argument("--quants", nargs="*", help="omax weights to try, not QUANTS'")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.step == "models":
        make_models(args.dir, args.tiny, args.device, args.families)
    elif args.step == "quantize":
        quantize(args.dir, args.bin)
    else:
        bench(args.dir, args.bin, args.device, args.json, args.glob, args.quants)


if __name__ == "__main__":
    main()
