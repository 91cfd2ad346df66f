"""Golden data for crates/needle-template, produced with Hugging Face transformers (jinja2).

Run:  ~/.cache/needle/ref-venv/bin/python scripts/reference/template_golden.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
(the GGUF defaults to $NEEDLE_TEST_SMOLLM2 or /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf).

Writes, under crates/needle-template/tests/golden/:
  renders.json
      For each template (SmolLM2's real template read from the GGUF metadata key
      `tokenizer.chat_template`, the crate's built-ins from src/templates/, and the real
      templates in tests/golden/templates/), the output of
      `transformers.utils.chat_template_utils.render_jinja_template` -- the function
      `tokenizer.apply_chat_template(tokenize=False)` calls, with the same jinja2 environment
      (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, AssistantTracker,
      HF's tojson/raise_exception/strftime_now) -- over several conversations, with and without
      add_generation_prompt. Errors are recorded as {"kind": "raised"|"render", "message"}.
      Date-dependent output is avoided: `date_string` is passed explicitly where a template
      would otherwise print today's date.
  smollm2_tokenizer_subset.json
      SmolLM2's real byte-level BPE tokenizer (built by transformers from the GGUF), cut down to
      the vocabulary and merges needed to tokenize the strings the Rust tests use; ids are the
      real ones. The full tokenizer.json is 3.5 MB, too big to commit. The script checks that the
      subset tokenizes every test string exactly like the full tokenizer.
  smollm2_tokens.json
      Real SmolLM2 token ids for the leak prefix and a few prompts, from the full tokenizer.
"""

import json
import os
import re
import sys
import tempfile
from pathlib import Path

import gguf
import jinja2
from tokenizers import Tokenizer
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = Path(__file__).resolve().parents[2]
CRATE = ROOT / "crates" / "needle-template"
GOLDEN = CRATE / "tests" / "golden"

# Must equal PLACEHOLDER in crates/needle-template/src/leak.rs.
PLACEHOLDER = "Zq7xNeedlePlaceholderKv3w"


def smollm2_gguf() -> Path:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    return Path(os.environ.get("NEEDLE_TEST_SMOLLM2", "/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf"))


def gguf_chat_template(path: Path) -> str:
    reader = gguf.GGUFReader(str(path))
    field = reader.fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def m(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = {
    "user_only": [m("user", "Hello!")],
    "system_user": [m("system", "You are a pirate."), m("user", "  Hi there  ")],
    "multi_turn": [
        m("system", "Be brief."),
        m("user", "What is 2+2?"),
        m("assistant", "4"),
        m("user", "And 3+3?"),
    ],
    "no_system_multi_turn": [m("user", "Hi"), m("assistant", "Hello, how can I help?"), m("user", "stop it")],
    "unicode_quotes": [m("user", "Ünïcødé “quotes” 'single' \"double\" \\ back\nnew line 😀 {{ not jinja }}")],
    "tool_message": [m("user", "Weather?"), m("assistant", "Calling."), m("tool", '{"temp": 20}')],
    "roles_not_alternating": [m("user", "one"), m("user", "two")],
    "leading_assistant": [m("assistant", "I start."), m("user", "ok")],
    "system_only": [m("system", "Only a system prompt.")],
    "five_messages": [m("user", "a"), m("assistant", "b"), m("user", "c"), m("assistant", "d"), m("user", "e")],
    "empty": [],
}


def builtin(name, bos, eos):
    return {
        "name": f"builtin:{name}",
        "builtin": name,
        "source": (CRATE / "src" / "templates" / f"{name}.jinja").read_text(),
        "bos_token": bos,
        "eos_token": eos,
    }


def file_template(name, bos, eos, date_string=None):
    t = {
        "name": name,
        "source": (GOLDEN / "templates" / f"{name}.jinja").read_text(),
        "bos_token": bos,
        "eos_token": eos,
    }
    if date_string is not None:
        t["date_string"] = date_string
    return t


def render(template, messages, add_generation_prompt):
    kwargs = {}
    for key in ("bos_token", "eos_token", "date_string"):
        if template.get(key) is not None:
            kwargs[key] = template[key]
    try:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=template["source"],
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )
        return {"output": rendered[0]}
    except jinja2.exceptions.TemplateError as e:
        kind = "raised" if type(e) is jinja2.exceptions.TemplateError else "render"
        return {"error": {"kind": kind, "message": str(e)}}
    except (TypeError, ValueError) as e:
        return {"error": {"kind": "render", "message": str(e)}}


# BPE subset -----------------------------------------------------------------------------------


def bpe_subset(full_json: dict, texts: list[str]) -> dict:
    """Keeps the vocab entries and merges that byte-level BPE uses on `texts` (real ids)."""
    model = full_json["model"]
    vocab = model["vocab"]
    merges = [tuple(x) if isinstance(x, list) else tuple(x.split(" ")) for x in model["merges"]]
    rank = {pair: i for i, pair in enumerate(merges)}
    added = [t["content"] for t in full_json["added_tokens"]]
    splitter = re.compile("(" + "|".join(re.escape(a) for a in sorted(added, key=len, reverse=True)) + ")")
    pre = Tokenizer.from_str(json.dumps(full_json)).pre_tokenizer
    keep_tokens, keep_merges = set(), set()
    for text in texts:
        for segment in splitter.split(text):
            if not segment or segment in added:
                continue
            for word, _ in pre.pre_tokenize_str(segment):
                symbols = list(word)
                keep_tokens.update(symbols)
                while True:
                    best = None
                    for i in range(len(symbols) - 1):
                        r = rank.get((symbols[i], symbols[i + 1]))
                        if r is not None and (best is None or r < best[0]):
                            best = (r, i)
                    if best is None:
                        break
                    r, i = best
                    keep_merges.add(r)
                    symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
                    keep_tokens.add(symbols[i])
    sub = json.loads(json.dumps(full_json))
    sub["model"]["vocab"] = {t: i for t, i in vocab.items() if t in keep_tokens or t in added}
    sub["model"]["merges"] = [list(merges[r]) for r in sorted(keep_merges)]
    return sub


def main():
    gguf_path = smollm2_gguf()
    smol_source = gguf_chat_template(gguf_path)
    templates = [
        {
            "name": "smollm2",
            "source": smol_source,
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
        },
        builtin("chatml", "<|im_start|>", "<|im_end|>"),
        builtin("gemma", "<bos>", "<eos>"),
        builtin("llama3", "<|begin_of_text|>", "<|eot_id|>"),
        builtin("phi3", "<s>", "<|endoftext|>"),
        file_template("qwen2.5", None, "<|im_end|>"),
        file_template("llama3.1", "<|begin_of_text|>", "<|eot_id|>"),
        file_template("llama3.1", "<|begin_of_text|>", "<|eot_id|>", date_string="01 Jan 2025"),
        file_template("features", "<s>", "</s>"),
    ]
    for t in templates:
        t["cases"] = []
        for conv_name, messages in CONVERSATIONS.items():
            for agp in (False, True):
                case = {"conversation": conv_name, "messages": messages, "add_generation_prompt": agp}
                case.update(render(t, messages, agp))
                t["cases"].append(case)
    (GOLDEN / "renders.json").write_text(json.dumps({"templates": templates}, indent=1, ensure_ascii=False) + "\n")

    # Tokenizer subset and real ids for SmolLM2.
    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tok.save_pretrained(tmp)
        full_json = json.loads((Path(tmp) / "tokenizer.json").read_text())
    full = Tokenizer.from_str(json.dumps(full_json))
    smol = templates[0]

    def smol_render(messages, agp):
        out = render(smol, messages, agp)
        return out["output"]

    leak_text = smol_render([m("user", PLACEHOLDER)], False)
    prefix_text = leak_text[: leak_text.index(PLACEHOLDER)]
    prompts = {
        "leak_render": leak_text,
        "leak_prefix": prefix_text,
        "assistant_prefix_hello": smol_render([m("user", "Hello!")], True),
        "multi_turn": smol_render(CONVERSATIONS["multi_turn"], True),
        "short_user": smol_render([m("user", "user")], False),
        # For a template "User: {{ content }}", where the space joins the content's first token.
        "straddle_render": "User: " + PLACEHOLDER,
        "straddle_prefix": "User:",
    }
    texts = list(prompts.values())
    sub_json = bpe_subset(full_json, texts)
    sub = Tokenizer.from_str(json.dumps(sub_json))
    tokens = {}
    for name, text in prompts.items():
        ids = full.encode(text, add_special_tokens=False).ids
        assert sub.encode(text, add_special_tokens=False).ids == ids, name
        tokens[name] = {"text": text, "ids": ids}
    (GOLDEN / "smollm2_tokenizer_subset.json").write_text(json.dumps(sub_json, ensure_ascii=False) + "\n")
    (GOLDEN / "smollm2_tokens.json").write_text(json.dumps(tokens, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(templates)} templates; tokenizer subset has {len(sub_json['model']['vocab'])} tokens")


if __name__ == "__main__":
    main()
