"""Golden token ids for needle-gguf's tokenizer-from-GGUF tests.

Usage:
    ~/.cache/needle/ref-venv/bin/python scripts/reference/tokenizer_golden.py \
        [--smollm2 /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--gemma3 /tmp/models/gemma-3-270m-q4_k_m.gguf] \
        [--out crates/needle-gguf/tests/golden/tokenizer.json]

For every model and every test string this records the ids of
`tokenizer(text, add_special_tokens=False)`, where the reference tokenizer is:

* SmolLM2: HF transformers' GGUF tokenizer (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`)
  with its pre-tokenizer replaced by the one of the real SmolLM2 `tokenizer.json`:
  `Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)]`.
  transformers does not know llama.cpp's `smollm` pre-tokenizer name and uses plain GPT-2
  splitting instead; the script also records whether that plain GGUF conversion agrees
  (`hf_gguf_agrees`), so a disagreement is visible in the golden file.
* Gemma 3: HF transformers' GGUF tokenizer, cross-checked against SentencePiece itself: the
  script rebuilds a SentencePiece BPE model proto from the GGUF vocabulary (pieces, scores,
  types, byte fallback, identity normalizer, no dummy prefix, which is the real Gemma 3
  `tokenizer.model` configuration) and records whether SentencePiece gives the same ids
  (`spm_agrees`; `null` for strings containing control tokens, which SentencePiece does not
  match in text).

It also records `decode(ids)` so the Rust test can check decoding against HF.
"""

import argparse
import json
import os
import sys

import gguf
import numpy as np
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

COMMON = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "multiple   spaces    here",
    "line one\nline two\n\nline four",
    "tabs\tand\t\ttabs",
    "numbers 12345 and 3.14 and 1,000,000",
    "def f(x):\n    return x ** 2  # square",
    "fn main() { println!(\"{}\", 42); }",
    "emoji: 😀🎉👍🏽",
    "accents: café naïve résumé Ångström",
    "CJK: 你好，世界。こんにちは 안녕하세요",
    "Ünïcödé ñ ß ø",
    "URL https://example.com/a?b=c&d=e",
    "   ",
    "\n",
    "a",
    "I'm sure they'll say it's what we've done.",
    "MiXeD CaSe WoRdS and ALLCAPS",
    "$100.00 (50% off!) #hashtag @user",
    "Привет, мир! Γειά σου κόσμε",
    "\u200bzero-width and\u00a0nbsp",
]

SMOLLM2_EXTRA = [
    "<|im_start|>user\nHi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more",
]

GEMMA3_EXTRA = [
    "<start_of_turn>user\nHi<end_of_turn>",
    "<bos><start_of_turn>model\nSure!<end_of_turn>\n",
    "a  b   c\n\n\nd",
]


def gguf_tokenizer_fields(path):
    """(tokens, scores, token_types) from the GGUF metadata."""
    reader = gguf.GGUFReader(path)
    fields = reader.fields
    tok_field = fields["tokenizer.ggml.tokens"]
    tokens = [tok_field.contents(i) for i in range(len(tok_field.data))]
    scores = np.array(fields["tokenizer.ggml.scores"].contents(), dtype=np.float32)
    types = np.array(fields["tokenizer.ggml.token_type"].contents(), dtype=np.int32)
    return tokens, scores, types


def sentencepiece_from_gguf(path):
    """A SentencePiece BPE processor rebuilt from the GGUF vocabulary."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    tokens, scores, types = gguf_tokenizer_fields(path)
    unk = int(gguf.GGUFReader(path).fields["tokenizer.ggml.unknown_token_id"].contents())
    proto = pb.ModelProto()
    for index, (token, score, kind) in enumerate(zip(tokens, scores, types)):
        piece = proto.pieces.add()
        if kind == 4 and token.strip(" ") == "" and " " in token:
            token = "\u2581" * len(token)
        piece.piece = token
        piece.score = float(score)
        piece.type = 2 if index == unk else int(kind)
    proto.trainer_spec.model_type = 2  # BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id = unk
    proto.trainer_spec.bos_id = -1
    proto.trainer_spec.eos_id = -1
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(proto.SerializeToString())
    return processor


def encode_all(tok, strings):
    return [tok(s, add_special_tokens=False)["input_ids"] for s in strings]


def smollm2_cases(path):
    directory, name = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    strings = COMMON + SMOLLM2_EXTRA
    hf_ids = encode_all(tok, strings)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    cases = []
    for text, gguf_ids in zip(strings, hf_ids):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        cases.append(
            {
                "text": text,
                "ids": ids,
                "decoded": tok.decode(ids),
                "hf_gguf_agrees": ids == gguf_ids,
            }
        )
    return cases


def gemma3_cases(path):
    directory, name = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    sp = sentencepiece_from_gguf(path)
    strings = COMMON + GEMMA3_EXTRA
    cases = []
    for text in strings:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        has_control = "<start_of_turn>" in text or "<end_of_turn>" in text or "<bos>" in text
        spm_agrees = None if has_control else sp.EncodeAsIds(text) == ids
        cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids), "spm_agrees": spm_agrees})
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", default="/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--gemma3", default="/tmp/models/gemma-3-270m-q4_k_m.gguf")
    parser.add_argument("--out", default="crates/needle-gguf/tests/golden/tokenizer.json")
    args = parser.parse_args()

    golden = {"smollm2": smollm2_cases(args.smollm2), "gemma3": gemma3_cases(args.gemma3)}
    for model, cases in golden.items():
        for case in cases:
            flags = {k: v for k, v in case.items() if k.endswith("agrees")}
            if any(v is False for v in flags.values()):
                print(f"{model}: reference disagreement {flags} on {case['text']!r}", file=sys.stderr)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
