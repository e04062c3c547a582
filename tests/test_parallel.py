"""Data parallelism over 4 forced host devices gives the same logits and residuals as one device."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from checkpoints import tiny_gguf

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


def _run(tmp_path, gguf, name, devices):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = tmp_path / f"{name}.npz"
    root = pathlib.Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(gguf), str(out)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, np.load(out)


@pytest.mark.slow
def test_four_devices_split_the_batch_and_match_one_device(tmp_path):
    gguf = tmp_path / "tiny.gguf"
    tiny_gguf(gguf, arch="llama", n_layers=2, seed=1)
    log1, one = _run(tmp_path, gguf, "one", 1)
    log4, four = _run(tmp_path, gguf, "four", 4)
    assert "devices 1 sharded 1" in log1
    assert "devices 4 sharded 4" in log4
    np.testing.assert_allclose(four["logits"], one["logits"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(four["resid"], one["resid"], atol=1e-5, rtol=1e-5)
