"""Golden dequantisation values for needle-gguf's reader tests, from the independent `gguf` package.

For each real GGUF test model and each tensor type present in it, this picks the smallest tensor
of that type, dequantises it with `gguf.quants.dequantize` and records its row-major shape, the
first 16 values, 64 values at evenly strided flat indices, and the float64 sum and absolute sum.
The output, crates/needle-gguf/tests/golden/dequant.json, is compared by
`reader::tests::dequantisation_matches_gguf_python` in crates/needle-gguf/src/reader.rs.

Run (from the repository root):
    ~/.cache/needle/ref-venv/bin/python scripts/reference/gguf_golden.py [SMOLLM2.gguf] [GEMMA3.gguf]
Paths default to $NEEDLE_TEST_SMOLLM2 / $NEEDLE_TEST_GEMMA3, then /tmp/models/<file>.
"""

import json
import os
import sys
from pathlib import Path

import gguf
import numpy as np

MODELS = [
    ("smollm2", "NEEDLE_TEST_SMOLLM2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("gemma3", "NEEDLE_TEST_GEMMA3", "gemma-3-270m-q4_k_m.gguf"),
]
OUT = Path(__file__).resolve().parents[2] / "crates/needle-gguf/tests/golden/dequant.json"


def model_path(index, env, file_name):
    if len(sys.argv) > index + 1:
        return Path(sys.argv[index + 1])
    return Path(os.environ.get(env) or f"/tmp/models/{file_name}")


def describe(tensor):
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    shape = [int(d) for d in reversed(tensor.shape.tolist())]
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    assert flat.size == int(np.prod(shape)), (tensor.name, flat.size, shape)
    indices = [int(i) * flat.size // 64 for i in range(64)]
    return {
        "name": tensor.name,
        "type": tensor.tensor_type.name,
        "shape": shape,
        "first": [float(v) for v in flat[:16]],
        "sample_indices": indices,
        "sample": [float(flat[i]) for i in indices],
        "sum": float(flat.astype(np.float64).sum()),
        "abs_sum": float(np.abs(flat.astype(np.float64)).sum()),
    }


def main():
    out = {}
    for index, (key, env, file_name) in enumerate(MODELS):
        path = model_path(index, env, file_name)
        reader = gguf.GGUFReader(str(path))
        smallest = {}
        for tensor in reader.tensors:
            kind = tensor.tensor_type.name
            if kind not in smallest or tensor.n_elements < smallest[kind].n_elements:
                smallest[kind] = tensor
        out[key] = {
            "file": file_name,
            "tensors": [describe(smallest[kind]) for kind in sorted(smallest)],
        }
        print(f"{path}: {', '.join(f'{k}={smallest[k].name}' for k in sorted(smallest))}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for key, model in out.items():
        tensors = ",\n".join("   " + json.dumps(t) for t in model["tensors"])
        lines.append(f' "{key}": {{"file": {json.dumps(model["file"])}, "tensors": [\n{tensors}\n ]}}')
    OUT.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
