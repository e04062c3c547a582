"""The original's setup at real width, end to end: `pytest evals/ --profile phi3-mini` on a Phi-3-mini-wide stand-in
(written by transformers: hidden 3072, ffn 8192, 32 heads, vocab 32064, bf16 shards) with a 49,152-wide saex gated SAE,
its peak memory (the pytest process's max RSS) and wall time.

The stand-in takes Phi-3's tokenizer and chat template from tests/standins.py (the real special tokens and ids), a
Hendrycks `data/val` folder of random questions, and the SAE at resid_pre of its middle layer (`--layer`, as a
shallower stand-in has no layer 20).
Run: .venv/bin/python benchmarks/phi3_real_size.py [--layers 12] [--dtype float32] [--limit 8] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from standins import hendrycks_val, phi3_tokenizer_files, saex_sae_file  # noqa: E402

from harness.cli.bench_memory import write_standin  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--limit", default="8", help="questions per run (--limit of pytest evals/)")
    parser.add_argument("--d-sae", type=int, default=49_152)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="phi3-real-size-"))
    model = workdir / f"phi3-mini-wide-{args.layers}-layers"
    if not (model / "config.json").exists():
        print(f"writing a {args.layers}-layer Phi-3-mini-wide stand-in with transformers …", flush=True)
        write_standin(model, "phi3-mini", args.layers)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (model / name).unlink()
        phi3_tokenizer_files(model)
    layer = args.layers // 2
    sae = workdir / f"saex-l{layer}" / f"l{layer}-real-size.safetensors"
    if not sae.exists():
        saex_sae_file(sae.parent, 3072, args.d_sae, name=sae.stem)
    data = hendrycks_val(workdir / "mmlu", n_per_subject=2)
    out = workdir / f"run-{args.dtype}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "pytest", str(REPO / "evals"), "-p", "no:cacheprovider", "-q",
               "--profile", "phi3-mini", "--model", str(model), "--sae", str(sae), "--layer", str(layer),
               "--dataset", f"hendrycks:{data}", "--limit", args.limit, "--dtype", args.dtype,
               "--reports-dir", str(out / "reports"), "--cache-dir", str(out / "cache"),
               "--baselines-dir", str(out / "baselines"), "--regen-all", "-k", "not C5"]
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
    print("\n".join(proc.stdout.splitlines()[-25:]))
    report = json.loads((out / "reports" / "phi3-mini" / "claims.json").read_text())
    outcomes = collections.Counter(e["outcome"] for e in report["results"])
    errors = " error" in proc.stdout.splitlines()[-1]
    print(f"phi3-mini-wide {args.layers} layers + {args.d_sae}-wide saex SAE, {args.dtype}, --limit {args.limit}: "
          f"wall {wall:.0f} s, peak RSS {peak:.2f} GB; {len(report['results'])} claims measured "
          f"({dict(outcomes)}), not measured {sorted(report['not_measured'])}, errors: {'yes' if errors else 'none'} "
          f"(a random-weight stand-in is no Phi-3: claims whose outcome differs from the recorded one fail the gate)")
    return 1 if errors or report["not_measured"] else 0


if __name__ == "__main__":
    sys.exit(main())
