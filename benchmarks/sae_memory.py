"""Peak memory of the SAE side at real size: load the saex gated SAE, then read and score all its features on a run.

Builds a saex stand-in (tests/standins.py `saex_sae_file`: float16 tensors, the layout of the original's
l20-test-run-5 SAE) of d_model x d_sae (default Phi-3's 3072 x 49,152) and a synthetic run of N questions x 4 options
(random residuals [question, option, embedding] float32, random key), then measures in fresh child processes:

  load      peak RSS of `load_any` over the interpreter + imports + JAX baseline;
  run       peak RSS of the C3 analysis (every feature scored on the discovery and held-out halves, gradient pursuit,
            candidates) and both C3 nulls (feature null and permutation null, `Analysis.nulls`), over the baseline of
            the loaded SAE and the run's residuals.

Peaks are VmHWM from /proc/self/status (reset through /proc/self/clear_refs before each phase), so they include
every transient copy; each figure is printed against the SAE's float32 bytes (what the loaded SAE holds).
Run: python benchmarks/sae_memory.py [--d-model 3072] [--d-sae 49152] [--questions 1531] [--reading encoder]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def _status(key: str) -> int:
    """A /proc/self/status figure in bytes (VmHWM: peak resident set; VmRSS: current)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _reset_peak() -> int:
    """Reset VmHWM to the current RSS (Linux clear_refs 5) and return that RSS: the baseline of the next phase."""
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _write(args) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from standins import saex_sae_file

    path = saex_sae_file(args.dir, d_model=args.d_model, d_sae=args.d_sae, seed=args.seed)
    return {"path": str(path), "file_bytes": path.stat().st_size}


def _phase(args) -> dict:
    """One child's measurement: load (and, for phase run, analyse + nulls), peaks over the phase's baseline."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from harness.sae.formats import load_any

    jnp.zeros(1).block_until_ready()
    out = {}
    base = _reset_peak()
    start = time.perf_counter()
    params, meta = load_any(args.sae, layer=20, hook="resid_pre")
    jax.block_until_ready(params)
    leaves = jax.tree_util.tree_leaves(params)
    sae_bytes = sum(int(x.nbytes) for x in leaves)
    out["load"] = {"seconds": time.perf_counter() - start, "peak": _status("VmHWM") - base,
                   "held": _status("VmRSS") - base, "sae_bytes": sae_bytes,
                   "dtypes": sorted({str(x.dtype) for x in leaves}), "architecture": params.architecture}
    if args.phase == "run":
        from harness.studies import features

        rng = np.random.default_rng(args.seed)
        resid = rng.normal(size=(args.questions, args.options, params.d_model)).astype(np.float32)
        answers = rng.integers(0, args.options, size=args.questions)
        base = _reset_peak()
        start = time.perf_counter()
        an = features.analyse(resid, answers, params, fmt="letter", reading=args.reading, seed=0)
        out["analyse"] = {"seconds": time.perf_counter() - start, "peak": _status("VmHWM") - base}
        base = _reset_peak()
        start = time.perf_counter()
        nulls = an.nulls
        out["nulls"] = {"seconds": time.perf_counter() - start, "peak": _status("VmHWM") - base, "n_pool": nulls.n_pool}
        out["run"] = {"resid_bytes": int(resid.nbytes), "best": an.best,
                      "all_feature_array_bytes": args.questions * args.options * params.d_sae * 4}
    return out


def _child(args, phase: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--sae", str(args.sae), "--questions", str(args.questions),
           "--options", str(args.options), "--reading", args.reading, "--seed", str(args.seed),
           "--d-model", str(args.d_model), "--d-sae", str(args.d_sae), "--dir", str(args.dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"{phase} child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gb(n: int) -> str:
    return f"{n / 1e9:.3f} GB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-model", type=int, default=3072)
    p.add_argument("--d-sae", type=int, default=49_152)
    p.add_argument("--questions", type=int, default=1531)
    p.add_argument("--options", type=int, default=4)
    p.add_argument("--reading", default="encoder", choices=("encoder", "preact", "decoder"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", type=pathlib.Path, default=None, help="where the stand-in SAE is written (a temp folder)")
    p.add_argument("--sae", default=None, help=argparse.SUPPRESS)
    p.add_argument("--phase", default=None, choices=("write", "load", "run"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase == "write":
        print(json.dumps(_write(args)))
        return 0
    if args.phase:
        print(json.dumps(_phase(args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        args.dir = args.dir or pathlib.Path(tmp)
        written = _child(args, "write")
        args.sae = written["path"]
        load = _child(args, "load")["load"]
        run = _child(args, "run")
    sae = load["sae_bytes"]
    print(f"saex stand-in {args.d_model} x {args.d_sae} ({load['architecture']}): file {_gb(written['file_bytes'])} "
          f"(float16), SAE held {_gb(sae)} {'/'.join(load['dtypes'])}")
    print(f"load: peak {_gb(load['peak'])} over the imports baseline = {load['peak'] / sae:.2f} x the SAE's bytes; "
          f"held after load {_gb(load['held'])} ({load['held'] / sae:.2f} x); {load['seconds']:.1f} s")
    r, an, nulls = run["run"], run["analyse"], run["nulls"]
    print(f"run of {args.questions} questions x {args.options} options, {args.reading} reading; peaks over the loaded "
          f"SAE + residuals (a fresh process, load as above):")
    print(f"  C3 analysis (all {args.d_sae} features scored on both halves, pursuit, candidates): peak {_gb(an['peak'])}"
          f" = {an['peak'] / sae:.2f} x the SAE's bytes; {an['seconds']:.0f} s")
    print(f"  C3 nulls (feature null + permutation null over a pool of {nulls['n_pool']} features): peak "
          f"{_gb(nulls['peak'])} = {nulls['peak'] / sae:.2f} x; {nulls['seconds']:.0f} s")
    total = max(load["peak"], sae + r["resid_bytes"] + max(an["peak"], nulls["peak"]))
    print(f"  SAE side in all (the larger of the load's peak and SAE + residuals + the run's peak): {_gb(total)} = "
          f"{total / sae:.2f} x the SAE's bytes")
    print(f"(for scale: one [question, option, feature] float32 array of all features would be "
          f"{_gb(r['all_feature_array_bytes'])}; the residuals are {_gb(r['resid_bytes'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
