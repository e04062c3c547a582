"""Parallelism: `--mesh` parsing, data parallelism over forced host devices, parameters sharded over a model axis in
every form, and two `jax.distributed` processes that split a run — each gives the numbers of one device."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from penzai import pz

from checkpoints import tiny_checkpoint, tiny_gguf
from harness.errors import InputError
from harness.model import capture, forms, parallel
from harness.model.parallel import MeshSpec, parse_mesh

ROOT = pathlib.Path(__file__).resolve().parent.parent

SCRIPT = """
import sys, numpy as np, jax
from harness.model import capture, parallel
from harness.model.forms import build_model
from harness.model.gguf_reader import read_gguf
ck = read_gguf(sys.argv[1])
tokens = np.random.default_rng(0).integers(0, ck.config.vocab_size, size=(4, 12))
model = build_model(ck, form="scan")
resid, logits = capture.residual_and_logits(model, tokens, layer=1, max_context=ck.config.max_context)
print("devices", parallel.device_count(), "sharded", len(logits.sharding.device_set))
np.savez(sys.argv[2], resid=np.asarray(resid), logits=np.asarray(logits))
"""

# Every form, unsharded or on each mesh of argv[3] (";"-separated, "none" = unsharded): residual and logits, and
# where the parameters of the first block went.
SHARDED = """
import json, sys, numpy as np
from penzai import pz
from harness.model import capture, parallel
from harness.model.forms import build_model
from harness.model.gguf_reader import read_gguf
ck = read_gguf(sys.argv[1])
tokens = np.random.default_rng(0).integers(0, ck.config.vocab_size, size=(4, 12))
arrays, placed = {}, {}
for form in ("unrolled", "layerstack", "scan"):
    for spec in sys.argv[3].split(";"):
        model = build_model(ck, form=form)
        if spec != "none":
            model = parallel.shard_model(model, parallel.make_mesh(parallel.parse_mesh(spec)))
        resid, logits = capture.residual_and_logits(model, tokens, layer=1, max_context=ck.config.max_context)
        arrays[f"{form} {spec} resid"], arrays[f"{form} {spec} logits"] = np.asarray(resid), np.asarray(logits)
        for p in pz.unbind_params(model)[1]:
            s = p.value.data_array.sharding
            placed[f"{form} {spec} {p.label.split('/', 1)[1]}"] = [len(s.device_set), str(getattr(s, "spec", None))]
np.savez(sys.argv[2] + ".npz", **arrays)
open(sys.argv[2] + ".json", "w").write(json.dumps(placed))
"""

# One process of a run split over argv[4] processes (1: no jax.distributed): a packed collect_formats run, an unpacked
# one, and a residual + logits batch split along "data" (the parameters also split along "model" where argv[6] says so).
DISTRIBUTED = """
import sys, numpy as np
from harness.model import parallel
gguf, out, port, n, rank, spec = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
if n > 1:
    parallel.initialize_distributed(f"localhost:{port}", n, rank)
import jax
from harness.data.records import MCQuestion
from harness.model import capture
from harness.model.forms import build_model
from harness.model.gguf_reader import read_gguf
from harness.runs.options import collect, collect_formats
ck = read_gguf(gguf)
model = build_model(ck, form="scan")
if spec != "none":
    model = parallel.shard_model(model, parallel.make_mesh(parallel.parse_mesh(spec)))
questions = [MCQuestion(question=q, choices=c, answer=a, subject="s", source="t", qid=f"t:{i}")
             for i, (q, c, a) in enumerate([("hello?", ("he", "or", "wo", "hell no"), 1),
                                            ("Where is the world, and why?", ("a", "b", "c", "d"), 0),
                                            ("why", ("the same", "c", "hello", "world"), 3)])]
runs = collect_formats(model, ck, questions, fmts=("letter", "cloze"), layer=1, token_budget=256)
runs["text unpacked"] = collect(model, ck, questions, fmt="text", layer=1, packed=False, batch_size=4, token_budget=256)
tokens = np.random.default_rng(0).integers(0, ck.config.vocab_size, size=(4, 12))
resid, logits = capture.residual_and_logits(model, tokens, layer=1, max_context=ck.config.max_context)
print("process", jax.process_index(), "of", jax.process_count(), "devices", len(jax.devices()),
      "logits on", len(logits.sharding.device_set), "addressable", logits.is_fully_addressable, flush=True)
np.savez(out, resid=parallel.to_host(resid), logits=parallel.to_host(logits),
         **{f"{f} {k}": getattr(r, k) for f, r in runs.items() for k in ("resid", "logprob", "letter_logits")
            if getattr(r, k) is not None})
"""


def _env(devices: int) -> dict:
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")


def _run(tmp_path, gguf, name, devices):
    out = tmp_path / f"{name}.npz"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(gguf), str(out)], env=_env(devices), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, np.load(out)


def _close(got, want):
    """Equal to float32 rounding: 1e-5 relative, and 1e-5 of the array's largest value absolute (sums reordered
    over devices round differently near zero; these random weights give residuals of ~160)."""
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.fixture
def gguf(tmp_path):
    """A tiny llama: 4 heads in 2 head groups, 96 neurons, 264 vocabulary, 64 embedding, 2 layers."""
    path = tmp_path / "tiny.gguf"
    tiny_gguf(path, arch="llama", n_layers=2, seed=1)
    return path


# --- parse_mesh ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, n, want", [
    ("data=2,model=2", 4, (2, 2)), ("data=1,model=4", 4, (1, 4)), ("model=2", 4, (2, 2)), ("data=4", 4, (4, 1)),
    ("data=1", 1, (1, 1)), (" data = 2 , model = 4 ", 8, (2, 4)), ("model=1,data=3", 3, (3, 1)),
])
def test_parse_mesh_reads_good_values(text, n, want):
    spec = parse_mesh(text, n_devices=n)
    assert (spec.data, spec.model) == want
    assert parse_mesh(str(spec), n_devices=n) == spec


@pytest.mark.parametrize("text, n, message", [
    ("", 4, "mesh '': expected data=N,model=M with N x M = 4 devices; cannot read ''"),
    ("data2", 4, "mesh 'data2': expected data=N,model=M with N x M = 4 devices; cannot read 'data2'"),
    ("data=two", 4, "mesh 'data=two': expected data=N,model=M with N x M = 4 devices; cannot read 'data=two'"),
    ("data=2,,model=2", 4, "cannot read ''"),
    ("pipeline=2", 4, "mesh 'pipeline=2': unknown axis 'pipeline'; expected data and/or model"),
    ("data=2,data=2", 4, "mesh 'data=2,data=2': axis 'data' given twice"),
    ("data=0,model=4", 4, "mesh 'data=0,model=4': data=0, expected a positive integer"),
    ("model=-2", 4, "mesh 'model=-2': model=-2, expected a positive integer"),
    ("model=3", 4, "mesh 'model=3': model=3 does not divide the 4 devices"),
    ("data=2,model=1", 4, "mesh 'data=2,model=1': data x model = 2 x 1 = 2, expected the 4 devices"),
    ("data=8", 4, "mesh 'data=8': data x model = 8 x 1 = 8, expected the 4 devices"),
])
def test_parse_mesh_rejects_bad_values_in_one_line(text, n, message):
    with pytest.raises(InputError) as e:
        parse_mesh(text, n_devices=n)
    assert message in str(e.value) and "\n" not in str(e.value)


@given(st.integers(1, 6), st.integers(1, 6))
def test_parse_mesh_round_trips_every_factorisation(data, model):
    spec = MeshSpec(data=data, model=model)
    assert parse_mesh(str(spec), n_devices=data * model) == spec
    assert parse_mesh(f"model={model}", n_devices=data * model) == spec


@given(st.text(max_size=20), st.integers(1, 8))
def test_parse_mesh_fails_only_with_input_errors(text, n):
    try:
        spec = parse_mesh(text, n_devices=n)
    except InputError as e:
        assert "\n" not in str(e)
    else:
        assert spec.data * spec.model == n


def test_model_axis_is_the_first_named_axis_that_divides():
    assert parallel.model_axis({"blocks": 2, "head_groups": 2, "query_heads": 2, "projection": 16}, 2) == "head_groups"
    assert parallel.model_axis({"blocks": 2, "head_groups": 2, "query_heads": 2, "projection": 16}, 4) is None
    assert parallel.model_axis({"neurons": 96, "embedding": 64}, 4) == "neurons"
    assert parallel.model_axis({"vocabulary": 264, "embedding": 64}, 1) is None


# --- one device ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory, n_layers=2, seed=3)


@pytest.mark.parametrize("form", ["unrolled", "scan"])
def test_shard_model_on_a_trivial_mesh_leaves_outputs_unchanged(checkpoint, form):
    model = forms.build_model(checkpoint, form=form)
    mesh = parallel.make_mesh(MeshSpec(data=parallel.device_count(), model=1))
    sharded = parallel.shard_model(model, mesh)
    assert parallel.mesh_of(pz.freeze_params(model)) is None and parallel.mesh_of(pz.freeze_params(sharded)) is mesh
    tokens = np.random.default_rng(0).integers(0, checkpoint.config.vocab_size, size=(2, 9))
    for run in (lambda m: capture.residual_and_logits(m, tokens, layer=1, max_context=64),
                lambda m: (capture.logits(m, tokens, max_context=64),),
                lambda m: (capture.residual(m, tokens, layer=0, where="post", max_context=64),)):
        for got, want in zip(run(sharded), run(model)):
            np.testing.assert_allclose(parallel.to_host(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    resid = np.asarray(capture.residual(model, tokens, layer=1, max_context=64))
    np.testing.assert_allclose(np.asarray(capture.logits_from_residual(sharded, resid, layer=1)),
                               np.asarray(capture.logits_from_residual(model, resid, layer=1)), rtol=1e-6, atol=1e-6)


def test_make_mesh_needs_every_device():
    with pytest.raises(InputError, match="expected data x model = the"):
        parallel.make_mesh(MeshSpec(data=parallel.device_count() + 1, model=1))


# --- forced host devices ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_four_devices_split_the_batch_and_match_one_device(tmp_path, gguf):
    log1, one = _run(tmp_path, gguf, "one", 1)
    log4, four = _run(tmp_path, gguf, "four", 4)
    assert "devices 1 sharded 1" in log1
    assert "devices 4 sharded 4" in log4
    np.testing.assert_allclose(four["logits"], one["logits"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(four["resid"], one["resid"], atol=1e-5, rtol=1e-5)


def _sharded(tmp_path, gguf, devices: int, specs: str):
    out = tmp_path / f"sharded{devices}"
    proc = subprocess.run([sys.executable, "-c", SHARDED, str(gguf), str(out), specs], env=_env(devices), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.load(f"{out}.npz"), json.loads(pathlib.Path(f"{out}.json").read_text())


@pytest.mark.slow
def test_parameters_sharded_over_a_model_axis_give_one_devices_numbers_in_every_form(tmp_path, gguf):
    one, _ = _sharded(tmp_path, gguf, 1, "none")
    four, placed = _sharded(tmp_path, gguf, 4, "data=2,model=2;data=1,model=4")
    for form in ("unrolled", "layerstack", "scan"):
        for spec in ("data=2,model=2", "data=1,model=4"):
            for what in ("resid", "logits"):
                _close(four[f"{form} {spec} {what}"], one[f"{form} none {what}"])
        block = "block_0" if form == "unrolled" else "blocks"
        lead = "" if form == "unrolled" else "None, "
        # model=4: 96 neurons and 264 vocabulary entries split 4 ways; 2 head groups cannot be, so attention is replicated
        assert placed[f"{form} data=1,model=4 {block}/mlp/gating_linear.weights"] == [4, f"P({lead}'model', None)"]
        assert placed[f"{form} data=1,model=4 {block}/mlp/out_linear.weights"] == [4, f"P({lead}None, 'model')"]
        assert placed[f"{form} data=1,model=4 lm_head.weights"] == [4, "P('model', None)"]
        assert "'model'" not in placed[f"{form} data=1,model=4 {block}/attention/query.weights"][1]
        # model=2: head groups split (queries with their keys and values), each shard on 2 of the 4 devices
        assert placed[f"{form} data=2,model=2 {block}/attention/query.weights"] == [
            4, f"P({lead}'model', None, None, None)"]
        assert placed[f"{form} data=2,model=2 {block}/attention/key.weights"] == [4, f"P({lead}'model', None, None)"]
        assert placed[f"{form} data=2,model=2 {block}/pre_ffw_norm/scale.weights"][1].count("'model'") == 0


# --- two processes ------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _distributed(tmp_path, gguf, *, n: int, devices: int, spec: str) -> list[tuple[str, dict]]:
    """Start `n` processes of DISTRIBUTED (each with `devices` host devices) on one coordinator; their logs and arrays."""
    port, procs = _free_port(), []
    for rank in range(n):
        out = tmp_path / f"p{n}-{spec}-{rank}.npz"
        cmd = [sys.executable, "-c", DISTRIBUTED, str(gguf), str(out), str(port), str(n), str(rank), spec]
        procs.append((out, subprocess.Popen(cmd, env=_env(devices), cwd=ROOT, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)))
    results = []
    try:
        for out, proc in procs:
            stdout, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 0, stderr[-3000:]
            results.append((stdout, dict(np.load(out))))
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
    return results


@pytest.mark.slow
@pytest.mark.parametrize("devices, spec", [(1, "data=2,model=1"), (2, "data=2,model=2")])
def test_two_processes_split_a_run_and_give_one_processs_numbers(tmp_path, gguf, devices, spec):
    [(_, alone)] = _distributed(tmp_path, gguf, n=1, devices=1, spec="none")
    both = _distributed(tmp_path, gguf, n=2, devices=devices, spec=spec)
    for rank, (log, got) in enumerate(both):
        assert f"process {rank} of 2 devices {2 * devices} logits on {2 * devices} addressable False" in log
        assert set(got) == set(alone)
        for key, want in alone.items():
            if np.isnan(want).all():
                assert np.isnan(got[key]).all()
            else:
                _close(got[key], want)
