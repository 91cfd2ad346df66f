#!/usr/bin/env bash
# Creates the Python reference venv used by scripts/reference/*.py (golden values and the
# HF transformers baseline benchmark) and by the `needle canary run --endpoint` test
# (`transformers serve`, scripts/reference/canary-endpoint.sh). Versions are pinned to the ones that produced the
# committed goldens in tests/golden/; other versions may give slightly different numbers.
#
# Usage: scripts/reference/setup.sh            (venv at ${NEEDLE_REF_VENV:-$HOME/.cache/needle/ref-venv})
# Then:  "$NEEDLE_REF_VENV/bin/python" scripts/reference/golden_gguf.py --help
#
# torch comes from PyPI's default wheel (it pulls the CUDA runtime wheels, a few GB, though
# nothing here uses a GPU). Resolution of this exact set was checked with `pip install --dry-run`.
set -euo pipefail

VENV="${NEEDLE_REF_VENV:-$HOME/.cache/needle/ref-venv}"

if ! command -v python3 >/dev/null 2>&1; then
    echo "setup.sh: python3 not found; install Python 3.10+ (e.g. apt-get install python3 python3-venv)" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
fi

"$VENV/bin/python" -m pip install --upgrade pip
"$VENV/bin/python" -m pip install \
    torch==2.15.0 \
    transformers==5.24.0 \
    tokenizers==0.23.3 \
    gguf==0.19.0 \
    safetensors==0.8.0 \
    numpy==2.4.6 \
    sentencepiece==0.2.3 \
    protobuf==7.36.2 \
    Jinja2==3.1.6 \
    peft==0.21.2 \
    accelerate==1.15.0

# `transformers serve` (an OpenAI-compatible server) for the canary endpoint test: the
# packages of transformers' `serving` extra, pinned.
"$VENV/bin/python" -m pip install \
    "transformers[serving]==5.24.0" \
    fastapi==0.165.0 \
    starlette==1.10.0 \
    uvicorn==0.55.0 \
    openai==3.63.0

echo "reference venv ready: $VENV"
echo "export NEEDLE_REF_VENV=$VENV"
