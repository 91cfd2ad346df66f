#!/usr/bin/env python3
"""Golden values for the real GGUF models, computed independently with HF transformers.

Why: needle's Rust runtime (GGUF reader, dequantisation, tokenizer, chat template, decoder,
greedy generation) is checked against these numbers in tests; see tests/golden/README.md for
the JSON format.

How: each GGUF is loaded with transformers' own GGUF loader (which dequantises to float32,
un-permutes llama Q/K and subtracts the +1 that llama.cpp bakes into Gemma norm weights) with
eager attention, in float32 on CPU, torch.set_num_threads(2) for reproducible reductions.
Greedy decoding is a manual argmax loop with the KV cache and NO logits processors at all
(no repetition penalty, no temperature, no min-length): 32 new tokens, EOS does not stop the
loop (it is fed back like any other token); `first_eos_index` tells where a stopping decoder
would have stopped. The loop is cross-checked against `model.generate` (which stops at EOS).

Usage (writes tests/golden/<key>.json for every key by default):
  ~/.cache/needle/ref-venv/bin/python scripts/reference/golden_gguf.py \
      [--smollm2 /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf] \
      [--gemma3 /tmp/models/gemma-3-270m-q4_k_m.gguf] \
      [--qwen_coder_05b PATH] [--qwen_coder_15b PATH] \
      [--out-dir tests/golden] [--only smollm2|gemma3|qwen_coder_05b|qwen_coder_15b]
Paths default to $NEEDLE_TEST_SMOLLM2 / $NEEDLE_TEST_GEMMA3, then /tmp/models/<file>; the Qwen
models default to where `needle models fetch qwen2.5-coder-0.5b qwen2.5-coder-1.5b` puts them
($NEEDLE_TEST_QWEN_CODER_05B / $NEEDLE_TEST_QWEN_CODER_15B override). The 1.5B model takes about
7 GB of RAM in float32.
Output is deterministic (same machine, same versions).
"""

import argparse
import hashlib
import json
import os
import sys
import warnings

import torch

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NEW_TOKENS = 32
TOP_K = 64
SAMPLE_STEP = 97
SIG_DIGITS = 7

SMOLLM2_DEFAULT = os.environ.get("NEEDLE_TEST_SMOLLM2", "/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf")
GEMMA3_DEFAULT = os.environ.get("NEEDLE_TEST_GEMMA3", "/tmp/models/gemma-3-270m-q4_k_m.gguf")
NEEDLE_MODELS = os.path.expanduser("~/.cache/needle/models")
QWEN_CODER_05B_DEFAULT = os.environ.get(
    "NEEDLE_TEST_QWEN_CODER_05B",
    os.path.join(NEEDLE_MODELS, "qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
)
QWEN_CODER_15B_DEFAULT = os.environ.get(
    "NEEDLE_TEST_QWEN_CODER_15B",
    os.path.join(NEEDLE_MODELS, "qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
)
# The Qwen2.5-Coder instruct models: chat prompts rendered with the GGUF's own template (which
# adds Qwen's default system prompt), and one raw code prompt without BOS (Qwen adds none).
QWEN_CODER_PROMPTS = [
    ("capital", "chat", "What is the capital of France?"),
    ("prime", "chat", "Write a Python function that checks whether a number is prime."),
    ("fibonacci", "raw", "def fibonacci(n):\n    "),
]

# Prompt specs: (name, kind, text). kind "chat": rendered with the tokenizer's chat template
# (add_generation_prompt=True) and tokenized without extra special tokens; kind "raw": text
# tokenized without special tokens, then BOS prepended if `bos` is set for the model.
MODELS = {
    "smollm2": {
        "default": SMOLLM2_DEFAULT,
        "prompts": [
            ("capital", "chat", "What is the capital of France?"),
            ("haiku", "chat", "Write a haiku about the sea."),
            ("primes", "chat", "List three prime numbers."),
            ("raw", "raw", "The quick brown fox jumps over the lazy dog. The dog"),
        ],
        # SmolLM2's tokenizer does not add BOS to raw text (its chat template writes no BOS
        # either); keep raw text exactly as tokenized.
        "raw_bos": False,
        "attention": [("raw", 15)],
    },
    "gemma3": {
        "default": GEMMA3_DEFAULT,
        "prompts": [
            ("capital", "raw", "The capital of France is"),
            ("fibonacci", "raw", "def fibonacci(n):"),
            ("once", "raw", "Once upon a time"),
        ],
        "raw_bos": True,
        "attention": [("capital", 8), ("capital", 5)],
    },
    "qwen_coder_05b": {
        "default": QWEN_CODER_05B_DEFAULT,
        "prompts": QWEN_CODER_PROMPTS,
        "raw_bos": False,
        "attention": [("fibonacci", 12), ("fibonacci", 23)],
    },
    "qwen_coder_15b": {
        "default": QWEN_CODER_15B_DEFAULT,
        "prompts": QWEN_CODER_PROMPTS,
        "raw_bos": False,
        "attention": [("fibonacci", 14), ("fibonacci", 27)],
    },
}


def sig(x, digits=SIG_DIGITS):
    """Round a float to `digits` significant digits (JSON-friendly Python float)."""
    return float(f"{float(x):.{digits}g}")


def sig_list(t, digits=SIG_DIGITS):
    return [sig(v, digits) for v in t.reshape(-1).tolist()]


def nested(t, digits=SIG_DIGITS):
    if t.dim() == 1:
        return sig_list(t, digits)
    return [nested(s, digits) for s in t]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def eos_ids(model, tok):
    ids = model.generation_config.eos_token_id
    if ids is None:
        ids = tok.eos_token_id
    if isinstance(ids, int):
        ids = [ids]
    return sorted(set(ids))


def greedy(model, input_ids, n):
    """Argmax loop with KV cache; returns (new ids, top1-top2 margins per step)."""
    out_ids, margins = [], []
    with torch.inference_mode():
        out = model(torch.tensor([input_ids]), use_cache=True)
        for _ in range(n):
            logits = out.logits[0, -1].float()
            top2 = torch.topk(logits, 2)
            nxt = int(top2.indices[0])
            out_ids.append(nxt)
            margins.append(sig(top2.values[0] - top2.values[1]))
            out = model(torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    return out_ids, margins


def hf_generate(model, input_ids, n, pad_id):
    """`model.generate` with every processor disabled (stops at EOS)."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([input_ids]),
            attention_mask=torch.ones(1, len(input_ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=n,
            repetition_penalty=1.0,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad_id,
        )
    return out[0, len(input_ids):].tolist()


def last_position_record(model, input_ids):
    """Logit statistics and final-hidden-state norms at the last prompt position."""
    captured = {}
    last_layer = model.model.layers[-1]

    def hook(_module, _inputs, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    handle = last_layer.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            out = model(torch.tensor([input_ids]), output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    logits = out.logits[0, -1].float()
    vocab = logits.shape[0]
    top = torch.topk(logits, TOP_K)
    sample_ids = list(range(0, vocab, SAMPLE_STEP))
    pre_norm = captured["h"][0, -1] if captured["h"].dim() == 3 else captured["h"][-1]
    post_norm = model.model.norm(pre_norm)
    return {
        "logits_range": sig(logits.max() - logits.min()),
        "logits_top": {"ids": top.indices.tolist(), "values": sig_list(top.values)},
        "logits_sample": {"ids": sample_ids, "values": sig_list(logits[sample_ids])},
        "last_layer_output_norm": sig(pre_norm.float().norm()),
        "final_hidden_norm": sig(post_norm.float().norm()),
        "hf_hidden_states_last_norm": sig(out.hidden_states[-1][0, -1].float().norm()),
    }


def attention_record(model, input_ids, layer):
    with torch.inference_mode():
        out = model(torch.tensor([input_ids]), output_attentions=True, use_cache=False)
    probs = out.attentions[layer][0].float()  # [heads, q, k]
    layer_types = getattr(model.config, "layer_types", None)
    kind = layer_types[layer] if layer_types else "full_attention"
    return {
        "layer": layer,
        "layer_kind": kind,
        "shape": list(probs.shape),
        "probs": nested(probs),
    }


def run_model(key, path, out_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import gguf
    import transformers

    spec = MODELS[key]
    directory, name = os.path.split(os.path.abspath(path))
    print(f"[{key}] loading {path}", file=sys.stderr, flush=True)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    eos = eos_ids(model, tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos[0]

    prompts = []
    by_name = {}
    for pname, kind, text in spec["prompts"]:
        rec = {"name": pname, "kind": kind}
        if kind == "chat":
            messages = [{"role": "user", "content": text}]
            rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tok(rendered, add_special_tokens=False).input_ids
            rec.update({"messages": messages, "text": rendered})
        else:
            ids = tok(text, add_special_tokens=False).input_ids
            if spec["raw_bos"]:
                ids = [tok.bos_token_id] + ids
            rec.update({"text": text, "bos_prepended": spec["raw_bos"]})
        rec["input_ids"] = ids
        new_ids, margins = greedy(model, ids, NEW_TOKENS)
        first_eos = next((i for i, t in enumerate(new_ids) if t in eos), None)
        stop = NEW_TOKENS if first_eos is None else first_eos + 1
        reference = hf_generate(model, ids, NEW_TOKENS, pad_id)
        if reference != new_ids[:stop]:
            raise SystemExit(f"[{key}] {pname}: manual greedy {new_ids[:stop]} != generate {reference}")
        rec.update(
            {
                "greedy_ids": new_ids,
                "first_eos_index": first_eos,
                "greedy_text": tok.decode(new_ids[:stop], skip_special_tokens=False),
                "greedy_text_all": tok.decode(new_ids, skip_special_tokens=False),
                "greedy_margins": margins,
            }
        )
        rec.update(last_position_record(model, ids))
        print(f"[{key}] {pname}: {rec['greedy_text']!r} (min margin {min(margins)})", file=sys.stderr, flush=True)
        prompts.append(rec)
        by_name[pname] = len(prompts) - 1

    attentions = []
    for pname, layer in spec["attention"]:
        idx = by_name[pname]
        ids = prompts[idx]["input_ids"]
        if len(ids) > 24:
            raise SystemExit(f"[{key}] attention prompt {pname} has {len(ids)} tokens (> 24)")
        rec = attention_record(model, ids, layer)
        rec = {"prompt": pname, "prompt_index": idx, **rec}
        attentions.append(rec)

    cfg = model.config
    result = {
        "model": name,
        "gguf_sha256": sha256_file(path),
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
        },
        "dtype": "float32",
        "attn_implementation": "eager",
        "config": {
            "model_type": cfg.model_type,
            "vocab_size": cfg.vocab_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "hidden_size": cfg.hidden_size,
            "layer_types": getattr(cfg, "layer_types", None),
        },
        "bos_token_id": tok.bos_token_id,
        "eos_token_ids": eos,
        "new_tokens": NEW_TOKENS,
        "prompts": prompts,
        "attention": attentions,
    }
    out_path = os.path.join(out_dir, f"{key}.json")
    with open(out_path, "w") as f:
        json.dump(result, f, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")
    print(f"[{key}] wrote {out_path} ({os.path.getsize(out_path)} bytes)", file=sys.stderr)


def _dist_version(name):
    from importlib.metadata import version

    return version(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key in sorted(MODELS):
        ap.add_argument(f"--{key}", default=MODELS[key]["default"])
    ap.add_argument("--out-dir", default=os.path.join(REPO_ROOT, "tests", "golden"))
    ap.add_argument("--only", choices=sorted(MODELS))
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    os.makedirs(args.out_dir, exist_ok=True)
    for key in sorted(MODELS):
        if args.only and key != args.only:
            continue
        path = getattr(args, key)
        if not os.path.exists(path):
            raise SystemExit(f"{path}: GGUF file not found; pass --{key} PATH")
        run_model(key, path, args.out_dir)


if __name__ == "__main__":
    main()
