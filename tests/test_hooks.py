"""Hook points by the SAE's own names: attn_out / mlp_out at a block equal what transformers' attention and MLP modules
return (forward hooks on a transformers-written model), in all three forms; SAELens hook names and Gemma Scope
repository folders map to those points; points a model or file cannot give are refused in one line."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from checkpoints import write_hf_checkpoint
from harness.errors import InputError
from harness.model import capture, forms
from harness.model.forms import Form
from harness.model.hf_reader import read_hf_dir
from harness.runs.options import HOOKS
from harness.sae import formats

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

ATOL = 1e-4  # float32 both sides; measured ~1e-6 on these tiny models


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    torch.manual_seed(3)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=300, max_position_embeddings=128,
                                      initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = transformers.LlamaForCausalLM(config).float().eval()
    return read_hf_dir(write_hf_checkpoint(tmp_path_factory.mktemp("llama"), model)), model


def _sub_block_outputs(model, tokens, layer):
    """(attention output, MLP output) of transformers' block `layer`, caught by forward hooks."""
    caught = {}
    block = model.model.layers[layer]
    hooks = [block.self_attn.register_forward_hook(lambda m, i, o: caught.__setitem__("attn", o[0])),
             block.mlp.register_forward_hook(lambda m, i, o: caught.__setitem__("mlp", o))]
    with torch.no_grad():
        model(torch.tensor(tokens, dtype=torch.long))
    for h in hooks:
        h.remove()
    return caught["attn"].numpy(), caught["mlp"].numpy()


@pytest.mark.parametrize("form", list(Form))
def test_attn_out_and_mlp_out_equal_transformers_modules(tiny_llama, form):
    checkpoint, hf_model = tiny_llama
    tokens = np.random.default_rng(5).integers(0, 300, size=(2, 12))
    model = forms.build_model(checkpoint, form=form)
    for layer in (0, 2):
        attn, mlp = _sub_block_outputs(hf_model, tokens, layer)
        for where, theirs in (("attn_out", attn), ("mlp_out", mlp)):
            ours = np.asarray(capture.residual(model, tokens, layer=layer, where=where, max_context=128))
            assert np.abs(ours - theirs).max() <= ATOL, (form, layer, where)
        # the sub-block outputs add up to the block's step in the residual
        pre, post = (np.asarray(capture.residual(model, tokens, layer=layer, where=w, max_context=128)) for w in ("pre", "post"))
        assert np.abs(pre + attn + mlp - post).max() <= ATOL
    resid, logits = capture.residual_and_logits(model, tokens, layer=1, where="mlp_out", max_context=128)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(capture.logits(model, tokens, max_context=128)), atol=ATOL)


def test_splicing_at_a_sub_block_output_is_refused(tiny_llama):
    checkpoint, _ = tiny_llama
    model = forms.build_model(checkpoint, form="scan")
    with pytest.raises(InputError, match=r"^where='mlp_out': a residual is spliced back at 'pre' or 'post' only$"):
        capture.logits_from_residual(model, np.zeros((1, 4, 64), np.float32), layer=0, where="mlp_out")


def test_unknown_where_is_refused_naming_the_points(tiny_llama):
    checkpoint, _ = tiny_llama
    with pytest.raises(InputError, match=r"where='hook_z': expected one of \['pre', 'post', 'attn_out', 'mlp_out'\]"):
        capture.residual(forms.build_model(checkpoint, form="scan"), np.zeros((1, 4), int), layer=0, where="hook_z",
                         max_context=128)


@pytest.mark.parametrize(("hook_name", "expected"), [
    ("blocks.12.hook_resid_pre", (12, "resid_pre")), ("blocks.3.hook_resid_post", (3, "resid_post")),
    ("blocks.0.hook_mlp_out", (0, "mlp_out")), ("blocks.7.hook_attn_out", (7, "attn_out")),
])
def test_saelens_hook_names_map_to_capture_points(hook_name, expected):
    layer, hook = formats.parse_hook_name(hook_name)
    assert (layer, hook) == expected and hook in HOOKS


@pytest.mark.parametrize(("repo", "hook"), [
    ("models--google--gemma-scope-2b-pt-res", "resid_post"), ("models--google--gemma-scope-9b-it-res", "resid_post"),
    ("models--google--gemma-scope-2b-pt-mlp-canonical", "mlp_out"), ("gemma-scope-2b-pt-res-canonical", "resid_post"),
    ("my-saes", None),
])
def test_gemma_scope_repository_names_its_hook(repo, hook):
    path = pathlib.Path(f"/cache/{repo}/snapshots/abc/layer_12/width_16k/average_l0_82/params.npz")
    assert formats.gemma_scope_hook(path) == hook


def test_gemma_scope_attention_saes_are_refused_in_one_line():
    path = pathlib.Path("/c/models--google--gemma-scope-2b-pt-att/snapshots/x/layer_3/width_16k/average_l0_9/params.npz")
    with pytest.raises(InputError, match=r"a Gemma Scope 'att' SAE .* reads a point this harness does not capture"):
        formats.gemma_scope_hook(path)


def test_a_parallel_block_refuses_sub_block_outputs_but_reads_the_residual():
    from harness.model.config import ModelConfig
    from harness.studies import compile_timing

    config = ModelConfig(architecture="gpt_neox", d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8, d_ffn=64,
                         vocab_size=50, rope_base=1e4, norm_eps=1e-5, tie_embeddings=False, max_context=64,
                         norm="layer", mlp="gelu", parallel_residual=True, rotary_dim=2)
    model = compile_timing.model_in_form(config, compile_timing.random_params(config), "scan")
    tokens = np.zeros((1, 4), int)
    assert np.isfinite(np.asarray(capture.residual(model, tokens, layer=1, where="post", max_context=64))).all()
    with pytest.raises(InputError, match=r"^hook mlp_out: this model adds attention and MLP to the residual in one "):
        capture.residual(model, tokens, layer=1, where="mlp_out", max_context=64)
