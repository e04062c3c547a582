"""Peak memory of read + build + one forward, against the weights' bytes, and what that means for real models.

For each depth a random-weight stand-in at a real model's width is written by transformers itself (`Phi3ForCausalLM`,
bf16 safetensors shards, as the hub stores Phi-3) unless --model names a checkpoint; each (depth, dtype) then runs in a
fresh child process that reads it, builds the true-scan model and runs one forward (the residual at the middle layer
and the logits of a [batch, seq] batch), printing peak RSS (VmHWM) beside the weights' bytes at that dtype. The named
real models' peaks are extrapolated as their weights' bytes plus the largest overhead (peak - weights) measured.
Run: claims-harness bench-memory [--layers 2,6,12] [--dtypes float32,bfloat16] [--width phi3-mini]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

GB = 1e9
# Real models' shapes (their config.json): the parameters they hold in this harness's canonical layout.
REAL_MODELS = {
    "phi3-mini": dict(d_model=3072, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=96, d_ffn=8192, vocab_size=32064,
                      tie_embeddings=False),  # microsoft/Phi-3-mini-4k-instruct: 3.82B parameters
    "llama3-8b": dict(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128, d_ffn=14336,
                      vocab_size=128256, tie_embeddings=False),  # meta-llama/Meta-Llama-3-8B: 8.03B
    "gemma2-2b": dict(d_model=2304, n_layers=26, n_heads=8, n_kv_heads=4, head_dim=256, d_ffn=9216, vocab_size=256000,
                      tie_embeddings=True),  # google/gemma-2-2b: 2.61B (its 4 norms per block are not counted: 0.2M)
}
LIMIT_FACTOR, LIMIT_GB = 1.2, 1.5  # the goal: peak <= 1.2 x the weights' bytes + 1.5 GB


def parameters(shape: dict) -> int:
    """Parameter count of a model with these shapes in the canonical (Llama) layout."""
    from harness.model.config import ModelConfig

    config = ModelConfig(architecture="llama", rope_base=1e4, norm_eps=1e-5, max_context=4096, **shape)
    return sum(int(np.prod(s)) for s in config.expected_shapes().values())


def write_standin(directory: pathlib.Path, width: str, n_layers: int) -> pathlib.Path:
    """A random-weight stand-in of `width` with `n_layers` blocks, written by transformers (bf16 shards + index)."""
    import tokenizers
    import torch
    import transformers
    from tokenizers import models, pre_tokenizers

    if width != "phi3-mini":
        raise SystemExit(f"--width {width!r}: stand-ins are written for phi3-mini only; pass --model for another model")
    shape = REAL_MODELS[width]
    config = transformers.Phi3Config(
        hidden_size=shape["d_model"], intermediate_size=shape["d_ffn"], num_attention_heads=shape["n_heads"],
        num_key_value_heads=shape["n_kv_heads"], num_hidden_layers=n_layers, vocab_size=shape["vocab_size"],
        max_position_embeddings=4096, sliding_window=2047, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.Phi3ForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory, max_shard_size="2GB")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, shape["vocab_size"])}
    tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return directory


def _peak_gb() -> float:
    """This process's peak resident memory so far (VmHWM), in GB."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GB
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(model: str, dtype: str, batch: int, seq: int) -> dict:
    """Read + build + one forward of `model` in `dtype`; peak RSS after each phase and the weights' bytes."""
    import jax

    from harness.model import capture
    from harness.model.forms import Form, build_model
    from harness.model.sources import read_checkpoint

    figures = {"imports_gb": _peak_gb()}
    start = time.perf_counter()
    checkpoint = read_checkpoint(model)
    figures |= {"read_s": time.perf_counter() - start, "read_peak_gb": _peak_gb()}
    start = time.perf_counter()
    built = build_model(checkpoint, form=Form.SCAN, dtype=dtype)
    jax.block_until_ready(built)
    figures |= {"build_s": time.perf_counter() - start, "build_peak_gb": _peak_gb()}
    config = checkpoint.config
    tokens = np.random.default_rng(0).integers(3, config.vocab_size, size=(batch, seq))
    start = time.perf_counter()
    jax.block_until_ready(capture.residual_and_logits(built, tokens, layer=config.n_layers // 2,
                                                      max_context=config.max_context))
    figures |= {"forward_s": time.perf_counter() - start, "peak_gb": _peak_gb(),
                "weights_gb": checkpoint.weights.nbytes(dtype) / GB, "parameters": len(checkpoint.weights),
                "n_layers": config.n_layers}
    return figures


def measure(model: pathlib.Path, dtype: str, batch: int, seq: int) -> dict:
    """`child` in a fresh interpreter, so each figure is that run's own peak."""
    out = subprocess.run([sys.executable, "-m", "harness.cli.bench_memory", "--child", str(model), dtype,
                          str(batch), str(seq)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"bench-memory: the child run of {model} in {dtype} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def overhead(rows: list[dict]) -> float:
    """The largest peak - weights measured over the depths (GB): runtime, one layer's slices, activations."""
    return max(r["peak_gb"] - r["weights_gb"] for r in rows)


def main(argv: list[str] | None = None, *, prog: str = "claims-harness bench-memory") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        model, dtype, batch, seq = argv[1:5]
        print(json.dumps(child(model, dtype, int(batch), int(seq))))
        return 0
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="2,6,12", help="depths of the stand-ins (comma-separated)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="parameter dtypes to measure")
    parser.add_argument("--width", default="phi3-mini", choices=sorted(REAL_MODELS), help="the real model whose width the stand-ins take")
    parser.add_argument("--model", default=None, help="measure this checkpoint instead of writing stand-ins")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--workdir", default=None, help="where the stand-ins are written (default: a temporary folder)")
    args = parser.parse_args(argv)
    dtypes = args.dtypes.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        workdir = pathlib.Path(args.workdir or scratch)
        if args.model is not None:
            models = [pathlib.Path(args.model)]
        else:
            models = []
            for n in (int(x) for x in args.layers.split(",")):
                folder = workdir / f"{args.width}-wide-{n}-layers"
                if not (folder / "config.json").exists():
                    print(f"writing a {n}-layer {args.width}-wide stand-in with transformers …", flush=True)
                    write_standin(folder, args.width, n)
                models.append(folder)
        rows = {dtype: [] for dtype in dtypes}
        print(f"{'layers':>6} {'dtype':>9} {'weights GB':>10} {'peak GB':>8} {'peak/weights':>12} "
              f"{'limit GB':>8} {'within':>6}   read / build / forward s (batch {args.batch} x {args.seq})")
        for model in models:
            for dtype in dtypes:
                r = measure(model, dtype, args.batch, args.seq)
                rows[dtype].append(r)
                limit = LIMIT_FACTOR * r["weights_gb"] + LIMIT_GB
                print(f"{r['n_layers']:>6} {dtype:>9} {r['weights_gb']:>10.2f} {r['peak_gb']:>8.2f} "
                      f"{r['peak_gb'] / r['weights_gb']:>12.2f} {limit:>8.2f} {str(r['peak_gb'] <= limit):>6}   "
                      f"{r['read_s']:.1f} / {r['build_s']:.1f} / {r['forward_s']:.1f}", flush=True)
    print("\nExtrapolation: peak ≈ the weights' bytes + the largest overhead (peak - weights) measured above")
    for dtype, measured in rows.items():
        extra = overhead(measured)
        itemsize = {"float32": 4, "bfloat16": 2}[dtype]
        print(f"  {dtype}: overhead {extra:.2f} GB")
        for name, shape in REAL_MODELS.items():
            weights = parameters(shape) * itemsize / GB
            peak = weights + extra
            print(f"    {name:>10}: {parameters(shape) / 1e9:.2f}B parameters, weights {weights:.1f} GB, "
                  f"peak ≈ {peak:.1f} GB ({'fits' if peak <= 24 else 'does not fit'} in 24 GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
