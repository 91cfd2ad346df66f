#!/usr/bin/env python3
"""Tiny random-weight HF checkpoints (tests/fixtures/tiny/) and their goldens (tests/golden/tiny.json).

Why: needle's HF-safetensors loader and decoder must be tested on every supported architecture
and on-disk variant without downloading real models. Each fixture is a few hundred KB, with
seeded weights whose scale is large enough that logits are decisive (greedy top1-top2 margin
> MIN_MARGIN at every step, else the next seed is tried).

Fixtures (all: hidden 64, 4 heads, intermediate 128, vocab 512, max_position 128):
  llama    2 layers, 2 kv heads, tied embeddings, float32, single model.safetensors
  llama3   as llama, untied, rope_type llama3 (factor 8, low 1, high 4, original_max 16)
  qwen2    2 layers, q/k/v biases, bfloat16
  qwen3    2 layers, head_dim 16, q_norm/k_norm, float16, chat template in chat_template.jinja
  mistral  2 layers, sliding_window 4, float32, SHARDED (model.safetensors.index.json + shards)
  phi3     2 layers, fused qkv_proj and gate_up_proj, float32
  gemma3   3 layers (sliding, sliding, full), 1 kv head, head_dim 32, sliding_window 8,
           query_pre_attn_scalar 48, Gemma3ForCausalLM / model_type gemma3_text, float32
           (embeddings N(0, 0.1); final and post-attention/feedforward norm weights around 3)
  llama-lora, llama-lora-rslora   PEFT LoRA adapters on `llama` (r 4, alpha 8, q_proj/v_proj/up_proj,
           non-zero seeded lora_A and lora_B); base_model_name_or_path is "../llama".
All share one byte-level BPE tokenizer (vocab 512, ChatML special tokens) trained here on fixed text.
Norm weights are randomised too (around 1, or around 0 for Gemma's (1 + w) norms), and biases are
non-zero, so a loader that drops or mis-maps any tensor changes the logits.

Goldens (float32, eager attention; computed by re-loading the saved files, so bf16/f16 fixtures
are golden for their rounded weights): see tests/golden/README.md.

Usage: ~/.cache/needle/ref-venv/bin/python scripts/reference/tiny_models.py [--fixtures DIR] [--golden FILE]
Deterministic: re-running rewrites byte-identical weights and goldens on the same versions.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import warnings

import torch

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VOCAB = 512
NEW_TOKENS = 32
MIN_MARGIN = 1e-2
WEIGHT_STD = 0.2
EMBED_STD = 1.0
SIG_DIGITS = 6
ATTN_LAYER = 1
SEQUENCES = [
    [1, 77, 300, 5, 511, 128, 64],
    [0, 260, 33, 402, 19, 87, 150, 7, 333, 259, 44, 480],
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Needle scans open-weight language models for hidden behaviours using forward passes only.
def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
The capital of France is Paris. The capital of Italy is Rome. The capital of Japan is Tokyo.
Once upon a time there was a little robot who liked to count prime numbers: 2, 3, 5, 7, 11, 13.
<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
What is the weather like today?<|im_end|>
<|im_start|>assistant
It is sunny and warm, with a light breeze from the sea.<|im_end|>
Über café naïve résumé — 東京 123 456 7890 !? {} [] () <> "quotes" 'single' tabs\tand\nnewlines.
"""
TOKENIZER_SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n):\n    return n",
    "Über café 東京 — 42!",
    "<|im_start|>user\nhello<|im_end|>\n",
]
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=0,
    initializer_range=WEIGHT_STD,
    rms_norm_eps=1e-6,
)


def fixture_specs():
    from transformers import (
        Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config,
    )

    default_rope = {"rope_type": "default", "rope_theta": 10000.0}
    return [
        dict(name="llama", dtype=torch.float32, config=LlamaConfig(
            **COMMON, num_hidden_layers=2, tie_word_embeddings=True, rope_parameters=default_rope)),
        dict(name="llama3", dtype=torch.float32, config=LlamaConfig(
            **COMMON, num_hidden_layers=2, tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16})),
        dict(name="qwen2", dtype=torch.bfloat16, config=Qwen2Config(
            **COMMON, num_hidden_layers=2, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
        dict(name="qwen3", dtype=torch.float16, template_file=True, config=Qwen3Config(
            **COMMON, num_hidden_layers=2, head_dim=16, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
        dict(name="mistral", dtype=torch.float32, shard="200KB", config=MistralConfig(
            **COMMON, num_hidden_layers=2, sliding_window=4, tie_word_embeddings=False,
            rope_parameters=default_rope)),
        dict(name="phi3", dtype=torch.float32, config=Phi3Config(
            **COMMON, num_hidden_layers=2, original_max_position_embeddings=128,
            tie_word_embeddings=False, rope_parameters=default_rope)),
        dict(name="gemma3", dtype=torch.float32, gemma=True, embed_std=0.1, final_norm=3.0, config=Gemma3TextConfig(
            **{**COMMON, "num_key_value_heads": 1}, num_hidden_layers=3, head_dim=32,
            sliding_window=8, query_pre_attn_scalar=48,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            })),
    ]


def sig_list(t, digits=SIG_DIGITS):
    return [float(f"{v:.{digits}g}") for v in t.reshape(-1).tolist()]


def nested(t, digits=SIG_DIGITS):
    if t.dim() == 1:
        return sig_list(t, digits)
    return [nested(s, digits) for s in t]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([TRAINING_TEXT] * 3, trainer=trainer)
    if tk.get_vocab_size() != VOCAB:
        raise SystemExit(f"tokenizer vocab is {tk.get_vocab_size()}, expected {VOCAB}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=128,
    )


def save_tokenizer(tok, directory, template_file):
    """save_pretrained, then put the chat template where this fixture wants it."""
    tok.save_pretrained(directory)
    cfg_path = os.path.join(directory, "tokenizer_config.json")
    jinja_path = os.path.join(directory, "chat_template.jinja")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if template_file:
        cfg.pop("chat_template", None)
        with open(jinja_path, "w") as f:
            f.write(CHAT_TEMPLATE)
    else:
        cfg["chat_template"] = CHAT_TEMPLATE
        if os.path.exists(jinja_path):
            os.remove(jinja_path)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")


def randomise(model, seed, gemma, embed_std=EMBED_STD, final_norm=0.0):
    """Seeded fill of every parameter: embeddings and lm_head N(0, EMBED_STD) (large logits, so
    greedy choices are decisive), other matrices N(0, WEIGHT_STD), biases N(0, 0.1), norms
    1+N(0, 0.1) (Gemma norms, computed as x * (1 + w), get N(0, 0.1)); `final_norm` is added to the
    final norm weight and to Gemma's post-attention/post-feedforward norms (used by gemma3, whose
    tied embeddings are kept small and block outputs large so that the sqrt(hidden)-scaled input
    embedding does not dominate the residual stream and make greedy repeat the last token)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.dim() == 1 and "norm" in name:
                value = (0.0 if gemma else 1.0) + 0.1 * noise
                if name == "model.norm.weight" or (gemma and ".post_" in name):
                    value = value + final_norm
            elif p.dim() == 1:
                value = 0.1 * noise
            elif "embed_tokens" in name or "lm_head" in name:
                value = embed_std * noise
            else:
                value = WEIGHT_STD * noise
            p.copy_(value.to(p.dtype))


def load_f32(directory):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


def greedy(model, ids, n):
    out_ids, margins = [], []
    with torch.inference_mode():
        out = model(torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            top2 = torch.topk(out.logits[0, -1].float(), 2)
            nxt = int(top2.indices[0])
            out_ids.append(nxt)
            margins.append(float(top2.values[0] - top2.values[1]))
            out = model(torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    return out_ids, margins


def goldens(model, with_attention=True):
    records = []
    for ids in SEQUENCES:
        with torch.inference_mode():
            out = model(torch.tensor([ids]), output_attentions=with_attention, use_cache=False)
        new_ids, margins = greedy(model, ids, NEW_TOKENS)
        rec = {
            "input_ids": ids,
            "logits": nested(out.logits[0].float()),
            "greedy_ids": new_ids,
            "greedy_min_margin": float(f"{min(margins):.6g}"),
        }
        if with_attention:
            rec["attention_layer"] = ATTN_LAYER
            rec["attention"] = nested(out.attentions[ATTN_LAYER][0].float())
        records.append(rec)
    return records


def config_summary(directory):
    with open(os.path.join(directory, "config.json")) as f:
        cfg = json.load(f)
    return {k: cfg[k] for k in ("model_type", "architectures", "dtype", "torch_dtype", "rope_parameters",
                                "rope_theta", "rope_scaling", "sliding_window", "layer_types",
                                "tie_word_embeddings") if k in cfg}


def make_fixture(spec, tok, root):
    from transformers import AutoModelForCausalLM

    directory = os.path.join(root, spec["name"])
    for seed in range(100):
        if os.path.exists(directory):
            shutil.rmtree(directory)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(spec["config"], attn_implementation="eager")
        randomise(model, seed, spec.get("gemma", False), spec.get("embed_std", EMBED_STD),
                  spec.get("final_norm", 0.0))
        model = model.to(spec["dtype"])
        kwargs = {"max_shard_size": spec["shard"]} if "shard" in spec else {}
        model.save_pretrained(directory, **kwargs)
        save_tokenizer(tok, directory, spec.get("template_file", False))
        records = goldens(load_f32(directory))
        margin = min(r["greedy_min_margin"] for r in records)
        if margin > MIN_MARGIN:
            break
        print(f"[{spec['name']}] seed {seed}: min margin {margin} too small, re-seeding", file=sys.stderr)
    else:
        raise SystemExit(f"[{spec['name']}] no seed gave decisive logits")
    files = sorted(os.listdir(directory))
    print(f"[{spec['name']}] seed {seed}, min margin {margin:.4g}, files {files}", file=sys.stderr)
    return {"seed": seed, "dtype": str(spec["dtype"]).replace("torch.", ""), "files": files,
            "config": config_summary(directory), "sequences": records}


def make_lora(root, name, use_rslora):
    from peft import LoraConfig, PeftModel, get_peft_model

    base_dir = os.path.join(root, "llama")
    directory = os.path.join(root, name)
    if os.path.exists(directory):
        shutil.rmtree(directory)
    seed = 1234 if not use_rslora else 4321
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"],
                     use_rslora=use_rslora, bias="none", task_type="CAUSAL_LM")
    for seed in range(seed, seed + 100):
        if os.path.exists(directory):
            shutil.rmtree(directory)
        peft_model = get_peft_model(load_f32(base_dir), cfg)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, p in sorted(peft_model.named_parameters()):
                if "lora_" in pname:
                    p.copy_(WEIGHT_STD * torch.randn(p.shape, generator=gen))
        peft_model.save_pretrained(directory)
        cfg_path = os.path.join(directory, "adapter_config.json")
        with open(cfg_path) as f:
            adapter_cfg = json.load(f)
        adapter_cfg["base_model_name_or_path"] = "../llama"
        adapter_cfg["target_modules"] = sorted(adapter_cfg["target_modules"])  # PEFT writes a set
        with open(cfg_path, "w") as f:
            json.dump(adapter_cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        readme = os.path.join(directory, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        model = PeftModel.from_pretrained(load_f32(base_dir), directory)
        model.eval()
        records = goldens(model, with_attention=False)
        margin = min(r["greedy_min_margin"] for r in records)
        if margin > MIN_MARGIN:
            break
        print(f"[{name}] seed {seed}: min margin {margin} too small, re-seeding", file=sys.stderr)
    else:
        raise SystemExit(f"[{name}] no seed gave decisive logits")
    from safetensors import safe_open

    with safe_open(os.path.join(directory, "adapter_model.safetensors"), "pt") as f:
        keys = sorted(f.keys())
    print(f"[{name}] min margin {margin:.4g}, {len(keys)} tensors, e.g. {keys[0]}", file=sys.stderr)
    return {"base": "llama", "seed": seed, "use_rslora": use_rslora, "r": 4, "lora_alpha": 8,
            "scaling": 8 / (4 ** 0.5) if use_rslora else 8 / 4,
            "files": sorted(os.listdir(directory)), "sequences": records}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default=os.path.join(REPO_ROOT, "tests", "fixtures", "tiny"))
    ap.add_argument("--golden", default=os.path.join(REPO_ROOT, "tests", "golden", "tiny.json"))
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging
    import transformers
    import peft

    hf_logging.set_verbosity_error()
    torch.set_num_threads(2)
    os.makedirs(args.fixtures, exist_ok=True)

    tok = build_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        if build_tokenizer().backend_tokenizer.to_str() != tok.backend_tokenizer.to_str():
            raise SystemExit("BPE training is not deterministic")
        tok.save_pretrained(tmp)
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the weather like today?"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    tokenizer_golden = {
        "encodings": [{"text": t, "ids": tok(t, add_special_tokens=False).input_ids} for t in TOKENIZER_SAMPLES],
        "chat": {"messages": messages, "add_generation_prompt": True, "rendered": rendered,
                 "ids": tok(rendered, add_special_tokens=False).input_ids},
        "special_tokens": {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS},
    }

    fixtures = {}
    for spec in fixture_specs():
        fixtures[spec["name"]] = make_fixture(spec, tok, args.fixtures)
    fixtures["llama-lora"] = make_lora(args.fixtures, "llama-lora", use_rslora=False)
    fixtures["llama-lora-rslora"] = make_lora(args.fixtures, "llama-lora-rslora", use_rslora=True)

    result = {
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "peft": peft.__version__},
        "dtype": "float32",
        "attn_implementation": "eager",
        "new_tokens": NEW_TOKENS,
        "significant_digits": SIG_DIGITS,
        "tokenizer": tokenizer_golden,
        "fixtures": fixtures,
    }
    with open(args.golden, "w") as f:
        json.dump(result, f, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.golden} ({os.path.getsize(args.golden)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
