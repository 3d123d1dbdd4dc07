"""GPU check: CUDA slot detection, the engine on a CUDA device matching transformers'
greedy generation token for token, the bf16 fast path, and 16 sampled streams.

Run: python benchmarks/gpu_check.py cuda:0   (or cpu)
"""

from __future__ import annotations

import sys
import time

import tokenizers
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from omax.engine.engine import Engine
from omax.engine.request import GenerateRequest, SamplingOptions
from omax.engine.spec import ModelSpec
from omax.plugins.slots import detect_slots
from omax.sharding.bundled import minilm_folder_path
from omax.sharding.tensors import RawTensor


def run_all(eng: Engine, requests: list[GenerateRequest]) -> dict[str, str]:
    ids = [eng.submit(r) for r in requests]
    out: dict[str, list] = {i: [] for i in ids}
    while any(not (c and c[-1].done) for c in out.values()):
        for k, v in eng.poll(ids, 0.1).items():
            out[k].extend(v)
    return {i: "".join(c.text for c in out[i]) for i in ids}


def main(device: str) -> int:
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
    print("slots", detect_slots("auto", 8 << 30))
    tok_json = (minilm_folder_path() / "tokenizer.json").read_text()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=30522,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=101,
        eos_token_id=102,
        pad_token_id=0,
    )
    ref = LlamaForCausalLM(cfg).eval()
    tensors = [
        RawTensor(n, t.detach().numpy().copy(), "float32", tuple(t.shape))
        for n, t in ref.state_dict().items()
    ]
    spec = ModelSpec(
        config={**cfg.to_dict(), "architectures": ["LlamaForCausalLM"]},
        tokenizer_json=tok_json,
        tokenizer_config={"bos_token": "[CLS]", "eos_token": "[SEP]"},
        format="safetensors",
    )
    greedy = SamplingOptions(temperature=0, num_predict=20)
    prompts = ["hello world", "the quick brown fox jumps", "a b c"]
    t = time.time()
    eng = Engine.load(spec, tensors, device=device)
    print("load s", round(time.time() - t, 2))
    texts = run_all(
        eng, [GenerateRequest(model="t", prompt=p, raw=True, options=greedy) for p in prompts]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer.from_str(tok_json))
    ref = ref.to(device)
    ok = True
    for p, text in zip(prompts, texts.values(), strict=True):
        enc = tokenizer(p, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
        g = ref.generate(enc, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
        want = tokenizer.decode(g[0, enc.shape[1] :])
        ok &= text.strip() == want.strip()
        print(text.strip() == want.strip(), repr(text[:50]), "|", repr(want[:50]))
    print("ALL MATCH" if ok else "MISMATCH")
    t = time.time()
    sampled = [
        GenerateRequest(
            model="t",
            prompt=f"prompt {i}",
            raw=True,
            options=SamplingOptions(temperature=0.8, seed=i, num_predict=64),
        )
        for i in range(16)
    ]
    texts = run_all(eng, sampled)
    print(
        "16 sampled streams done in",
        round(time.time() - t, 2),
        "s; all non-empty:",
        all(texts.values()),
    )
    eng.close()
    fast = Engine.load(spec, tensors, device=device, quant="bf16")
    text = next(
        iter(
            run_all(
                fast, [GenerateRequest(model="t", prompt=prompts[0], raw=True, options=greedy)]
            ).values()
        )
    )
    print("bf16 fast path on", device, repr(text[:50]))
    fast.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "cuda:0"))
