"""Real size: weights read on demand and held once, the bfloat16 build and its contractions, the memory benchmark's
arithmetic, and the profile's dtype. The memory figures themselves come from `claims-harness bench-memory`."""

from __future__ import annotations

import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from checkpoints import tiny_gguf
from harness.claims.profiles import get_profile
from harness.cli.bench_memory import REAL_MODELS, parameters
from harness.errors import InputError
from harness.model import capture, forms
from harness.model.config import StoredTensor, Weights
from harness.model.gguf_reader import read_gguf
from harness.model.hf_reader import read_hf_dir


@pytest.fixture(scope="module")
def gguf_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("real-size") / "tiny.gguf"
    tiny_gguf(path, arch="llama", n_layers=2, seed=3)
    return read_gguf(path)


def test_a_checkpoint_holds_no_weight_array(gguf_checkpoint):
    weights = gguf_checkpoint.weights
    assert isinstance(weights, Weights)
    assert all(isinstance(t, StoredTensor) for t in weights.tensors.values())
    assert not any(isinstance(v, np.ndarray) for t in weights.tensors.values() for v in vars(t).values())
    name = "model.layers.1.self_attn.q_proj.weight"
    first, second = weights[name], weights[name]
    assert first is not second and np.array_equal(first, second)  # read afresh, identically
    assert weights.nbytes("bfloat16") * 2 == weights.nbytes("float32") == sum(
        weights[n].nbytes for n in weights)


def test_a_non_finite_weight_is_refused_when_read(tmp_path):
    import torch
    import transformers

    from checkpoints import write_hf_checkpoint

    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, vocab_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    folder = write_hf_checkpoint(tmp_path / "ckpt", transformers.LlamaForCausalLM(config))
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    tensors["model.layers.0.mlp.up_proj.weight"][3, 5] = np.nan
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"model\.safetensors: weight model\.layers\.0\.mlp\.up_proj\.weight holds NaN"):
        read_hf_dir(folder)


@pytest.mark.parametrize("form", list(forms.Form))
def test_bfloat16_parameters_contract_in_bf16_with_float32_results(gguf_checkpoint, form):
    """Every contraction of the forward reads bf16 x bf16 and writes float32 (the CPU's bf16 matrix units); logits stay near
    the float32 model's."""
    model = forms.build_model(gguf_checkpoint, form=form, dtype="bfloat16")
    _, params = capture.pz.unbind_params(model)
    assert {p.value.dtype for p in params if not forms.is_constant(p.label)} == {np.dtype("bfloat16")}
    assert {p.value.dtype for p in params if forms.is_constant(p.label)} == {np.dtype("float32"), np.dtype("int32")}
    tokens = np.random.default_rng(0).integers(0, gguf_checkpoint.config.vocab_size, size=(2, 12))
    text = capture._logits.lower(capture.pz.freeze_params(model), np.asarray(tokens, np.int32)).as_text()
    dots = re.findall(r"stablehlo\.dot_general[^\n]*contracting_dims = \[\d[^\n]*: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> "
                      r"(tensor<[^>]*>)", text)  # the contractions (a norm's elementwise scale lowers as a dot too)
    assert dots, "no dot_general in the lowered forward"
    for lhs, rhs, out in dots:
        assert lhs.endswith("xbf16>") and rhs.endswith("xbf16>") and out.endswith("xf32>"), (lhs, rhs, out)
    bf16 = np.asarray(capture.logits(model, tokens, max_context=gguf_checkpoint.config.max_context))
    f32 = np.asarray(capture.logits(forms.build_model(gguf_checkpoint, form=form), tokens,
                                    max_context=gguf_checkpoint.config.max_context))
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - f32).max() <= 0.05 * np.abs(f32).max()


def test_an_unknown_dtype_is_one_line():
    with pytest.raises(InputError, match=r"dtype 'float16': expected one of \['float32', 'bfloat16'\]"):
        forms.param_dtype_of("float16")
    with pytest.raises(InputError, match="profile smollm2-default: dtype 'int8'"):
        get_profile("smollm2-default", dtype="int8")


def test_a_bfloat16_profile_keeps_its_figures_apart():
    assert get_profile("smollm2-default").label == "smollm2-default"
    assert get_profile("smollm2-default", dtype="bfloat16").label == "smollm2-default-bfloat16"


def test_the_named_real_models_have_their_published_sizes():
    """Phi-3-mini 3.82B, Llama-3-8B 8.03B (model cards); Gemma-2-2B 2.61B (its card; norms excluded here)."""
    sizes = {name: parameters(shape) / 1e9 for name, shape in REAL_MODELS.items()}
    assert sizes == pytest.approx({"phi3-mini": 3.82, "llama3-8b": 8.03, "gemma2-2b": 2.61}, abs=0.01)
