"""Golden data for needle-runtime's LoRA merge (crates/needle-runtime/src/lora.rs).

Builds a tiny random Llama model, wraps it in a PEFT LoRA adapter with non-zero random
weights (rsLoRA, per-module rank/alpha patterns, an embedding LoRA and a modules_to_save
lm_head), saves the base model and the adapter, and saves PEFT's own `merge_and_unload()`
result as `merged.safetensors`. The Rust test merges the adapter into the base and compares.

Run: ~/.cache/needle/ref-venv/bin/python scripts/reference/peft_merge_golden.py
Writes: crates/needle-runtime/testdata/peft_merge/{base,adapter,merged.safetensors}
"""

import pathlib
import shutil

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/needle-runtime/testdata/peft_merge"


def main() -> None:
    torch.manual_seed(0)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    base = LlamaForCausalLM(cfg).eval()
    base.save_pretrained(OUT / "base", safe_serialization=True)

    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens"],
        rank_pattern={"down_proj": 2},
        alpha_pattern={"o_proj": 5},
        modules_to_save=["lm_head"],
        init_lora_weights=False,
    )
    model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modules_to_save" in name:
                p.add_(torch.randn_like(p))
    model.save_pretrained(OUT / "adapter", save_embedding_layers=False)
    (OUT / "adapter" / "README.md").unlink(missing_ok=True)  # PEFT's model-card boilerplate
    merged = model.merge_and_unload()
    state = {k: v.detach().contiguous() for k, v in merged.state_dict().items()}
    save_file(state, OUT / "merged.safetensors")
    print("wrote", OUT, sorted(state))


if __name__ == "__main__":
    main()
