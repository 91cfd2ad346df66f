#!/usr/bin/env python3
"""Baseline CPU throughput of HF transformers on the SmolLM2-135M GGUF weights (float32).

Why: needle's Rust runtime is judged against this number; it measures what a user would get
from plain `transformers` on the same machine with the same thread count.

What it measures (torch.set_num_threads(THREADS), default 2, eager attention, float32):
  * prefill tokens/s: batch 1, one forward pass over a ~200-token chat prompt, median of 5 runs
    (after one warm-up run);
  * decode tokens/s at each batch size (default 1, 16, 64): `generate` with greedy decoding,
    max_new_tokens = min_new_tokens = 300 (EOS ignored), left padding, use_cache=True.
    decode tok/s = batch * 300 / (time(generate 300 tokens) - time(prefill)), where time(prefill)
    is the time of `generate` with max_new_tokens=1 on the same padded batch.
Prints a markdown table on stdout (progress on stderr).

Usage:
  ~/.cache/needle/ref-venv/bin/python scripts/reference/bench_hf.py [--gguf PATH] [--batches 1,16,64]
         [--new-tokens 300] [--threads 2]
"""

import argparse
import os
import statistics
import sys
import time
import warnings

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

DEFAULT_GGUF = os.environ.get("NEEDLE_TEST_SMOLLM2", "/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf")

TOPICS = [
    "the history of the printing press", "how volcanoes form", "the water cycle",
    "why the sky is blue", "how bees make honey", "the rules of chess",
    "how a refrigerator works", "the life of a star", "how vaccines work",
    "the causes of the seasons", "how bridges stay up", "what a black hole is",
    "how plants use sunlight", "the invention of the telephone", "how tides happen",
    "why leaves change colour",
]

LONG_CONTEXT = (
    "You are a careful assistant. Read the following notes and answer the question at the end. "
    "Notes: The lighthouse on the northern cape was built in 1874 from granite quarried nearby. "
    "Its lamp was first fuelled by whale oil, later by kerosene, and finally by electricity in 1931. "
    "The keeper's cottage has three rooms, a small garden, and a well that never runs dry. "
    "Storms in the winter months often cut the road to the village, so the keepers stored food for "
    "six weeks at a time. In 1952 a ship named the Marigold ran aground on the rocks below; all "
    "eleven crew members were rescued by the keeper and his two daughters using a rowing boat. "
    "The lighthouse was automated in 1989 and the cottage is now a museum open every summer. "
    "Question: summarise the history of the lighthouse in a few sentences."
)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def chat_ids(tok, text):
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return tok(rendered, add_special_tokens=False).input_ids


def padded_batch(tok, batch):
    """Left-padded batch of distinct prompts of varying length."""
    prompts = [
        chat_ids(tok, f"Explain {TOPICS[i % len(TOPICS)]} in simple words (variant {i}).")
        for i in range(batch)
    ]
    width = max(len(p) for p in prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((batch, width), pad, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return ids, mask


def timed_generate(model, ids, mask, new_tokens, pad_id):
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            use_cache=True,
            pad_token_id=pad_id,
            repetition_penalty=1.0,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    elapsed = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new_tokens, out.shape
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--new-tokens", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    directory, name = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    # Prefill: batch 1, ~200-token prompt, median of 5 after a warm-up.
    prompt = chat_ids(tok, LONG_CONTEXT)
    prompt = torch.tensor([prompt])
    log(f"prefill prompt length: {prompt.shape[1]} tokens")
    times = []
    with torch.inference_mode():
        model(prompt, use_cache=True)
        for _ in range(5):
            start = time.perf_counter()
            model(prompt, use_cache=True)
            times.append(time.perf_counter() - start)
    prefill_tps = prompt.shape[1] / statistics.median(times)
    log(f"prefill: {prefill_tps:.1f} tok/s (runs: {[round(t, 4) for t in times]})")

    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        ids, mask = padded_batch(tok, batch)
        timed_generate(model, ids, mask, 2, pad_id)  # warm-up
        t_prefill = timed_generate(model, ids, mask, 1, pad_id)
        t_total = timed_generate(model, ids, mask, args.new_tokens, pad_id)
        decode_tps = batch * args.new_tokens / (t_total - t_prefill)
        log(f"batch {batch}: prompt width {ids.shape[1]}, prefill {t_prefill:.3f}s, "
            f"generate {t_total:.3f}s, decode {decode_tps:.1f} tok/s")
        rows.append((batch, ids.shape[1], t_prefill, t_total, decode_tps))

    print(f"HF transformers {__import__('transformers').__version__}, torch {torch.__version__}, "
          f"float32, eager attention, {args.threads} threads, {os.path.basename(args.gguf)}\n")
    print("| measurement | batch | prompt tokens | time (s) | tokens/s |")
    print("|---|---|---|---|---|")
    print(f"| prefill (median of 5) | 1 | {prompt.shape[1]} | {statistics.median(times):.4f} | {prefill_tps:.1f} |")
    for batch, width, t_prefill, t_total, tps in rows:
        print(f"| decode {args.new_tokens} new | {batch} | {width} (left-padded) | "
              f"{t_total - t_prefill:.2f} | {tps:.1f} |")


if __name__ == "__main__":
    main()
