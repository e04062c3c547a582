"""Each SAE file format read back against an independent numpy forward pass written from the formulas.

Files are small random SAEs (d_model 16, d_sae 64) written in each format into tmp_path; the
expected values come from the raw file tensors and the published formulas (BRIEF §1, §4), never
from harness functions.
"""

import json
import math

import numpy as np
import pytest
import safetensors.numpy

from harness.errors import InputError
from harness.sae.formats import load_any, read_card, save_sae
from harness.sae.sae import check_compatible, decode, decoder_projection, encode, pre_activations, reconstruct

D_MODEL, D_SAE = 16, 64
TOL = dict(rtol=1e-4, atol=1e-4)


def _relu(a):
    return np.maximum(a, 0.0)


def _random_core(rng, *, bias_name="b_enc"):
    W_enc = rng.normal(size=(D_MODEL, D_SAE)) / math.sqrt(D_MODEL)
    return {
        "W_enc": W_enc,
        bias_name: rng.normal(scale=0.3, size=D_SAE),
        "W_dec": rng.normal(size=(D_SAE, D_MODEL)) / math.sqrt(D_SAE),
        "b_dec": rng.normal(scale=0.3, size=D_MODEL),
    }


def _f32(tensors):
    return {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}


def _f64(tensors):
    return {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}


def _topk_ref(pre, k):
    out = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1)[..., :k]
    np.put_along_axis(out, idx, _relu(np.take_along_axis(pre, idx, axis=-1)), axis=-1)
    return out


# ---- independent references, straight from the formulas -------------------------------------


def ref_saex(t, x):
    """micrlhf/saex: x' = x·sqrt(d)/mean_norm; gate x'W_enc+b_enc>0; magnitude relu(x'W_enc·softplus(s_gate)·s + b_gate)."""
    nf = math.sqrt(D_MODEL) / float(t["mean_norm"]) if "mean_norm" in t else 1.0
    of = math.sqrt(D_MODEL) / float(t["tgt_mean_norm"]) if "tgt_mean_norm" in t else nf
    xin = x * nf
    pre = xin @ t["W_enc"] + t["b_enc"]
    if "s_gate" in t:
        f = (pre > 0) * _relu((xin @ t["W_enc"]) * np.log1p(np.exp(t["s_gate"])) * t["scaling_factor"] + t["b_gate"])
    else:
        f = _relu(pre) * t.get("scaling_factor", 1.0)
    return pre, f, (f @ t["W_dec"] + t["b_dec"]) / of


def ref_saelens(cfg, t, x):
    """SAELens: x' = x − b_dec (if applied); standard/jumprelu/gated/topk; decode fW_dec + b_dec."""
    xin = x - t["b_dec"] if cfg.get("apply_b_dec_to_input", True) else x
    arch = cfg.get("architecture") or cfg["activation_fn_str"]
    if arch == "gated":
        pre = xin @ t["W_enc"] + t["b_gate"]
        f = (pre > 0) * _relu(xin @ (t["W_enc"] * np.exp(t["r_mag"])) + t["b_mag"])
    else:
        pre = xin @ t["W_enc"] + t["b_enc"]
        if arch in ("standard", "relu"):
            f = _relu(pre)
        elif arch == "jumprelu":
            f = _relu(pre) * (pre > t["threshold"])
        else:
            k = cfg.get("k") or cfg["activation_fn_kwargs"]["k"]
            f = _topk_ref(pre, k)
    return pre, f, f @ t["W_dec"] + t["b_dec"]


def ref_gemma_scope(t, x):
    """Gemma Scope JumpReLU with no b_dec subtraction."""
    pre = x @ t["W_enc"] + t["b_enc"]
    f = pre * (pre > t["threshold"])
    return pre, f, f @ t["W_dec"] + t["b_dec"]


def _check_against(params, x, pre, f, x_hat, t):
    np.testing.assert_allclose(np.asarray(pre_activations(params, x)), pre, **TOL)
    got_f = np.asarray(encode(params, x))
    np.testing.assert_allclose(got_f, f, **TOL)
    assert (got_f != 0).any(), "a forward pass with no active feature checks nothing"
    np.testing.assert_allclose(np.asarray(decode(params, f)), x_hat, **TOL)
    np.testing.assert_allclose(np.asarray(reconstruct(params, x)), x_hat, **TOL)
    np.testing.assert_allclose(np.asarray(decoder_projection(params, x)), x @ t["W_dec"].T, **TOL)
    picked = [5, 0, 63]
    np.testing.assert_allclose(np.asarray(decoder_projection(params, x, picked)), x @ t["W_dec"][picked].T, **TOL)


@pytest.fixture
def x():
    # leading axes [2, 3] stay free: [batch, position, d_model]
    return np.random.default_rng(99).normal(scale=2.0, size=(2, 3, D_MODEL))


# ---- saex ---------------------------------------------------------------------------------------


def _write_saex(tmp_path, rng, *, gated=True, norms=True, name="sae.safetensors"):
    t = _random_core(rng)
    if gated:
        t |= {"s_gate": rng.normal(size=D_SAE), "b_gate": rng.normal(scale=0.3, size=D_SAE),
              "scaling_factor": rng.uniform(0.5, 1.5, size=D_SAE)}
    else:
        t |= {"scaling_factor": rng.uniform(0.5, 1.5, size=D_SAE)}
    if norms:
        t |= {"mean_norm": np.array(7.5), "tgt_mean_norm": np.array(6.0)}
    path = tmp_path / name
    safetensors.numpy.save_file(_f32(t), str(path))
    return path, _f64(_f32(t))


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "relu"])
def test_saex_matches_numpy(tmp_path, x, gated):
    path, t = _write_saex(tmp_path, np.random.default_rng(1), gated=gated)
    params, meta = load_any(path, model_name="phi-3-mini", layer=20, hook="resid_pre")
    assert params.architecture == ("gated" if gated else "relu")
    assert (meta.format, meta.layer, meta.hook, meta.d_model, meta.d_sae) == ("saex", 20, "resid_pre", D_MODEL, D_SAE)
    _check_against(params, x, *ref_saex(t, x), t)


def test_saex_metadata_from_sidecar_and_an_unused_tensor_fails_the_load(tmp_path):
    path, t = _write_saex(tmp_path, np.random.default_rng(2))
    (tmp_path / "sae.meta.json").write_text(json.dumps({"model_name": "m", "layer": 20, "hook": "resid_pre"}))
    _, meta = load_any(path)
    assert (meta.ignored, meta.layer_source) == ((), "sidecar")
    check_compatible(meta, d_model=D_MODEL, layer=20, hook="resid_pre", model_name="m")
    with pytest.raises(InputError, match="layer 20.*layer 7"):
        check_compatible(meta, d_model=D_MODEL, layer=7, hook="resid_pre")
    with pytest.raises(InputError, match=r"sidecar says layer=20, caller says layer=3"):
        load_any(path, layer=3)
    safetensors.numpy.save_file(_f32(t | {"extra_stat": np.ones(3)}), str(path))
    with pytest.raises(InputError, match=r"sae\.safetensors: tensor\(s\) extra_stat not used by the saex reader"):
        load_any(path)


def _saex_hub_layout(root, rng, name="l20-test-run-5-7.00E-06", cfg=None):
    """saex's upload layout: <name>/cfg.json + <name>/sae_weights.safetensors with saex's own tensor names."""
    folder = root / name
    folder.mkdir(parents=True)
    path, t = _write_saex(folder, rng, name="sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg if cfg is not None else {"n_dimensions": D_MODEL, "batch_size": 4}))
    return folder, t


def test_saex_hub_layout_is_read_as_saex_with_the_layer_from_its_name(tmp_path, x):
    folder, t = _saex_hub_layout(tmp_path, np.random.default_rng(21))
    for where in (folder, folder / "sae_weights.safetensors"):
        params, meta = load_any(where, hook="resid_pre")
        assert (meta.format, params.architecture, params.apply_b_dec_to_input) == ("saex", "gated", False)
        assert (meta.layer, meta.layer_source, meta.ignored_fields) == (20, "name", ("batch_size",))
        _check_against(params, x, *ref_saex(t, x), t)
    check_compatible(meta, d_model=D_MODEL, layer=20, hook="resid_pre")


def test_saex_layer_from_option_or_a_contradicting_name(tmp_path):
    folder, _ = _saex_hub_layout(tmp_path / "a", np.random.default_rng(22), name="my-sae")
    _, meta = load_any(folder, layer=20, hook="resid_pre")
    assert (meta.layer, meta.layer_source) == (20, "option")
    _, meta = load_any(folder)
    assert (meta.layer, meta.layer_source) == (None, None)
    folder12, _ = _saex_hub_layout(tmp_path / "b", np.random.default_rng(23), name="l12-test-run")
    with pytest.raises(InputError, match=r"l12-test-run.*name says layer=12, caller says layer=20"):
        load_any(folder12, layer=20, hook="resid_pre")
    _, meta = load_any(folder12, hook="resid_pre")
    with pytest.raises(InputError, match="trained on layer 12, asked to read layer 20"):
        check_compatible(meta, d_model=D_MODEL, layer=20, hook="resid_pre")


def test_saex_cfg_that_changes_the_encode_is_refused(tmp_path):
    folder, _ = _saex_hub_layout(tmp_path, np.random.default_rng(24), cfg={"remove_decoder_bias": True})
    with pytest.raises(InputError, match="remove_decoder_bias=true is not supported"):
        load_any(folder, layer=20)
    (folder / "cfg.json").write_text(json.dumps({"remove_decoder_bias": "false"}))
    with pytest.raises(InputError, match=r"cfg\.json: field remove_decoder_bias = 'false'"):
        load_any(folder, layer=20)


# ---- SAELens --------------------------------------------------------------------------------------


def _write_saelens(tmp_path, rng, cfg):
    arch = cfg.get("architecture") or cfg["activation_fn_str"]
    t = _random_core(rng, bias_name="b_gate" if arch == "gated" else "b_enc")
    if arch == "jumprelu":
        t["threshold"] = rng.uniform(0.0, 0.5, size=D_SAE)
    if arch == "gated":
        t |= {"r_mag": rng.normal(scale=0.3, size=D_SAE), "b_mag": rng.normal(scale=0.3, size=D_SAE)}
    folder = tmp_path / "saelens"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps(cfg))
    safetensors.numpy.save_file(_f32(t), str(folder / "sae_weights.safetensors"))
    return folder, _f64(_f32(t))


def _new_style(arch, **extra):
    return {"architecture": arch, "d_in": D_MODEL, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"model_name": "tiny-llama", "hook_name": "blocks.3.hook_resid_post", "prepend_bos": True},
            **extra}


def _pre_6(activation, **extra):
    return {"d_in": D_MODEL, "d_sae": D_SAE, "model_name": "tiny-llama", "hook_point": "blocks.3.hook_resid_post",
            "hook_layer": 3, "activation_fn_str": activation, "apply_b_dec_to_input": False,
            "normalize_activations": "none", **extra}


@pytest.mark.parametrize(
    "cfg",
    [_new_style("standard"), _new_style("jumprelu"), _new_style("gated"), _new_style("topk", k=8),
     _pre_6("relu"), _pre_6("topk", activation_fn_kwargs={"k": 5})],
    ids=["new-standard", "new-jumprelu", "new-gated", "new-topk", "pre6-relu", "pre6-topk"],
)
def test_saelens_matches_numpy(tmp_path, x, cfg):
    folder, t = _write_saelens(tmp_path, np.random.default_rng(3), cfg)
    params, meta = load_any(folder)
    assert (meta.format, meta.model_name, meta.layer, meta.hook) == ("saelens", "tiny-llama", 3, "resid_post")
    _check_against(params, x, *ref_saelens(cfg, t, x), t)


def test_saelens_cfg_values_are_typed_and_every_tensor_used(tmp_path):
    cfg = _new_style("jumprelu")
    folder, _ = _write_saelens(tmp_path, np.random.default_rng(11), cfg)
    _, meta = load_any(folder)
    assert meta.layer_source == "cfg" and {"dtype", "device"} <= set(meta.ignored_fields)
    for change, fragment in [({"apply_b_dec_to_input": "false"}, "field apply_b_dec_to_input = 'false'"),
                             ({"d_sae": True}, "field d_sae = True"),
                             # a SAELens 6 metadata block without an architecture: SAELens 6 always writes one, and
                             # its pre-6.0 defaulting would drop the metadata; only SAELens < 3.0's layout defaults
                             ({"architecture": None}, ("neither architecture nor activation_fn_str is given, and the "
                                                       "config is not SAELens < 3.0's layout")),
                             ({"architecture": "standard"}, "tensor(s) threshold not used by the saelens reader")]:
        (folder / "cfg.json").write_text(json.dumps(cfg | change))
        with pytest.raises(InputError) as err:
            load_any(folder)
        assert fragment in str(err.value) and "\n" not in str(err.value)


def test_integer_bits_are_not_weights(tmp_path):
    t = _f32(_random_core(np.random.default_rng(12)) | {"threshold": np.full(D_SAE, 0.1)})
    t["W_dec"] = t["W_dec"].view(np.int32)
    np.savez(tmp_path / "params.npz", **t)
    with pytest.raises(InputError, match=r"params\.npz: tensor W_dec has dtype int32, expected a float dtype"):
        load_any(tmp_path / "params.npz", layer=1)
    t["W_dec"] = t["W_dec"].view(np.float32)
    np.savez(tmp_path / "params.npz", **(t | {"w_enc": t["W_enc"]}))
    with pytest.raises(InputError, match="arrays W_enc and w_enc both present"):
        load_any(tmp_path / "params.npz", layer=1)


def test_saelens_refuses_activation_normalisation(tmp_path):
    folder, _ = _write_saelens(tmp_path, np.random.default_rng(4),
                               _new_style("standard", normalize_activations="expected_average_only_in"))
    with pytest.raises(InputError, match=r"cfg\.json: normalize_activations='expected_average_only_in'"):
        load_any(folder)


# ---- SAELens: jbloom's gpt2-small-res-jb, model_from_pretrained_kwargs, prepend_bos ------------------------------------


def _jb_release(root, *, layer=8, seed=13):
    """jbloom/GPT2-Small-SAEs-Reformatted's layout (tests/standins.py): blocks.<L>.hook_resid_pre/ with the SAELens
    < 2.0 cfg.json (no architecture, no activation_fn_str), sae_weights.safetensors and sparsity.safetensors."""
    from standins import gpt2_res_jb_folder

    t = _f64(_f32(_random_core(np.random.default_rng(seed))))
    return gpt2_res_jb_folder(root / "gpt2-small-res-jb", layer, t), t


def _defaulted_keys(meta):
    return {entry.split("=", 1)[0] for entry in meta.defaulted_fields}


def test_gpt2_res_jb_original_layout_reads_as_saelens_reads_it(tmp_path, x):
    """SAELens' pretrained loader defaults this config (handle_pre_6_0_config) to a standard ReLU SAE subtracting b_dec,
    trained with BOS prepended; the release's registry entry adds center_writing_weights=true, which the reader infers
    from the layout (mats_sae_training trained through HookedTransformer.from_pretrained, centring by default). Every
    default is listed; the run settings are ignored fields; the SAE reads x minus its mean over d_model."""
    folder, t = _jb_release(tmp_path)
    params, meta = load_any(folder)
    assert (meta.format, meta.model_name, meta.layer, meta.hook, meta.layer_source) == (
        "saelens", "gpt2-small", 8, "resid_pre", "cfg")
    assert (params.architecture, params.apply_b_dec_to_input, params.center_input) == ("relu", True, True)
    assert (meta.center_writing_weights, meta.prepend_bos) == (True, True)
    assert _defaulted_keys(meta) == {"architecture", "activation_fn", "apply_b_dec_to_input", "prepend_bos",
                                     "model_from_pretrained_kwargs.center_writing_weights"}
    assert {"device", "dtype", "l1_coefficient", "run_name", "wandb_project", "context_size"} <= set(meta.ignored_fields)
    check_compatible(meta, d_model=D_MODEL, layer=8, hook="resid_pre", model_name="gpt2-small")
    x_c = x - x.mean(-1, keepdims=True)
    pre, f, x_hat = ref_saelens({"architecture": "standard"}, t, x_c)
    np.testing.assert_allclose(np.asarray(pre_activations(params, x)), pre, **TOL)
    np.testing.assert_allclose(np.asarray(encode(params, x)), f, **TOL)
    np.testing.assert_allclose(np.asarray(reconstruct(params, x)), x_hat + x.mean(-1, keepdims=True), **TOL)
    np.testing.assert_allclose(np.asarray(decoder_projection(params, x)), x_c @ t["W_dec"].T, **TOL)


def test_a_saelens_6_save_of_the_release_reads_the_same(tmp_path):
    """The same SAE as SAELens 6 saves it after SAE.from_pretrained("gpt2-small-res-jb", ...): the defaults and the
    registry's override written out under metadata; nothing left to default."""
    folder, _ = _jb_release(tmp_path)
    cfg = {"d_in": D_MODEL, "d_sae": D_SAE, "dtype": "torch.float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none", "architecture": "standard",
           "metadata": {"sae_lens_version": "6.12.1", "sae_lens_training_version": None, "model_name": "gpt2-small",
                        "hook_name": "blocks.8.hook_resid_pre", "hook_head_index": None, "context_size": 128,
                        "model_from_pretrained_kwargs": {"center_writing_weights": True},
                        "neuronpedia_id": "gpt2-small/8-res-jb", "prepend_bos": True,
                        "dataset_path": "Skylion007/openwebtext"}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    (folder / "sparsity.safetensors").unlink()
    params, meta = load_any(folder)
    again, legacy = load_any(_jb_release(tmp_path / "b")[0])
    assert summary_fields(params, meta) == summary_fields(again, legacy)
    assert meta.defaulted_fields == () and (meta.center_writing_weights, meta.prepend_bos) == (True, True)


def summary_fields(params, meta):
    return (params.architecture, params.apply_b_dec_to_input, params.center_input, meta.model_name, meta.layer,
            meta.hook, meta.center_writing_weights, meta.prepend_bos)


@pytest.mark.parametrize("where,kwargs,centred", [
    ("top", {"center_writing_weights": True, "fold_ln": True, "n_devices": 2}, True),
    ("metadata", {"center_writing_weights": False}, False),
    ("metadata", {}, False),
    ("metadata", {"fold_ln": True, "center_unembed": True, "fold_value_biases": True,
                  "refactor_factored_attn_matrices": False, "device": "cuda", "move_to_device": True}, False),
])
def test_model_from_pretrained_kwargs_are_read_where_each_layout_keeps_them(tmp_path, where, kwargs, centred):
    cfg = _pre_6("relu", model_from_pretrained_kwargs=kwargs) if where == "top" else _new_style("standard")
    if where == "metadata":
        cfg["metadata"] = cfg["metadata"] | {"model_from_pretrained_kwargs": kwargs}
    folder, _ = _write_saelens(tmp_path, np.random.default_rng(14), cfg)
    params, meta = load_any(folder)
    assert (params.center_input, meta.center_writing_weights) == (centred, centred)
    assert "model_from_pretrained_kwargs" not in " ".join(meta.defaulted_fields)


@pytest.mark.parametrize("kwargs,fragment", [
    ({"first_n_layers": 2}, "model_from_pretrained_kwargs.first_n_layers=2 may change the activations"),
    ({"center_writing_weights": True, "dtype": "bfloat16"}, "model_from_pretrained_kwargs.dtype='bfloat16' may change"),
    ({"default_prepend_bos": False}, "model_from_pretrained_kwargs.default_prepend_bos=False may change"),
    ({"center_writing_weights": "true"}, "model_from_pretrained_kwargs.center_writing_weights='true', expected a bool"),
    ({"n_devices": True}, "model_from_pretrained_kwargs.n_devices=True, expected a int"),
])
def test_model_from_pretrained_kwargs_that_may_change_the_residual_are_refused_in_one_line(tmp_path, kwargs, fragment):
    cfg = _new_style("standard")
    cfg["metadata"] = cfg["metadata"] | {"model_from_pretrained_kwargs": kwargs}
    folder, _ = _write_saelens(tmp_path, np.random.default_rng(15), cfg)
    with pytest.raises(InputError) as err:
        load_any(folder)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    cfg = _pre_6("relu", model_from_pretrained_kwargs={"center_writing_weights": True})
    cfg["metadata"] = {"model_from_pretrained_kwargs": {"center_writing_weights": False}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=r"model_from_pretrained_kwargs=.*but metadata\.model_from_pretrained_kwargs"):
        load_any(folder)


@pytest.mark.parametrize("extra,centred,why", [
    ({}, False, "not recorded"),  # no version: SAELens' own default, the model loaded without processing
    ({"sae_lens_version": "6.12.1", "sae_lens_training_version": "6.12.1"}, False, "not recorded"),
    ({"sae_lens_training_version": "3.19.2"}, False, "not recorded"),  # records the kwargs from here on
    ({"sae_lens_training_version": "3.5.0"}, True, "trained by SAELens 3.5.0"),  # from_pretrained: centred by default
])
def test_an_unrecorded_model_from_pretrained_kwargs_follows_the_saelens_that_trained_it(tmp_path, extra, centred, why):
    cfg = _new_style("standard")
    cfg["metadata"] = cfg["metadata"] | extra
    folder, _ = _write_saelens(tmp_path, np.random.default_rng(16), cfg)
    params, meta = load_any(folder)
    assert (params.center_input, meta.center_writing_weights) == (centred, centred)
    assert any(why in entry for entry in meta.defaulted_fields), meta.defaulted_fields


@pytest.mark.parametrize("cfg,prepend,defaulted", [
    (_new_style("standard"), True, False),
    (_new_style("standard", metadata={"hook_name": "blocks.3.hook_resid_post", "prepend_bos": False}), False, False),
    (_new_style("standard", metadata={"hook_name": "blocks.3.hook_resid_post", "sae_lens_version": "6.1.0"}), None,
     False),  # SAELens 6 does not default it: unknown
    (_pre_6("relu"), True, True),  # SAELens' handle_pre_6_0_config: setdefault("prepend_bos", True)
    (_pre_6("relu", prepend_bos=False), False, False),
])
def test_prepend_bos_is_read_or_defaulted_as_saelens_does(tmp_path, cfg, prepend, defaulted):
    folder, _ = _write_saelens(tmp_path, np.random.default_rng(17), cfg)
    _, meta = load_any(folder)
    assert meta.prepend_bos is prepend and ("prepend_bos" in _defaulted_keys(meta)) is defaulted


@pytest.mark.parametrize("change,fragment", [
    ({"metadata": {"hook_name": "blocks.8.hook_resid_pre"}}, "not SAELens < 3.0's layout"),
    ({"sae_lens_version": "6.0.0"}, "not SAELens < 3.0's layout"),
    ({"sae_lens_training_version": "3.1.0"}, "not SAELens < 3.0's layout"),
    ({"hook_point": None, "hook_name": "blocks.8.hook_resid_pre"}, "not SAELens < 3.0's layout"),
    ({"expansion_factor": 3}, "expansion_factor=3 but W_enc has shape (16, 64)"),
    ({"hook_point_layer": 7}, "hook_layer=7 contradicts hook name 'blocks.8.hook_resid_pre'"),
    ({"hook_point_head_index": 3}, "per-head SAEs"),
    ({"activation_fn_kwargs": {"k": 4}}, "k=4 given for a standard SAE"),
])
def test_the_legacy_layout_is_accepted_exactly_and_nothing_else_defaults(tmp_path, change, fragment):
    folder, _ = _jb_release(tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text()) | change
    (folder / "cfg.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None or k != "hook_point"}))
    with pytest.raises(InputError) as err:
        load_any(folder)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_legacy_config_of_saelens_2_is_read_centred(tmp_path):
    """SAELens 2.x wrote the same layout with its version: trained through from_pretrained (centring by default)."""
    folder, _ = _jb_release(tmp_path)
    (folder / "cfg.json").write_text(json.dumps(json.loads((folder / "cfg.json").read_text())
                                                | {"sae_lens_training_version": "2.1.3"}))
    params, meta = load_any(folder)
    assert params.center_input and "trained by SAELens 2.1.3" in " ".join(meta.defaulted_fields)


def test_native_round_trip_keeps_the_centring(tmp_path, x):
    folder, _ = _jb_release(tmp_path)
    params, meta = load_any(folder)
    save_sae(tmp_path / "native", params, meta, {"from": "gpt2-small-res-jb"})
    again, meta2 = load_any(tmp_path / "native")
    assert again.center_input and meta2.center_writing_weights
    np.testing.assert_allclose(np.asarray(encode(again, x)), np.asarray(encode(params, x)), **TOL)
    plain, plain_meta = load_any(_write_saelens(tmp_path, np.random.default_rng(18), _new_style("standard"))[0])
    save_sae(tmp_path / "plain", plain, plain_meta, {})
    assert "center_input" not in json.loads((tmp_path / "plain" / "sae.json").read_text())  # files as they were


# ---- Gemma Scope ------------------------------------------------------------------------------------


def test_gemma_scope_matches_numpy(tmp_path, x):
    rng = np.random.default_rng(5)
    t = _random_core(rng) | {"threshold": rng.uniform(0.0, 0.5, size=D_SAE)}
    np.savez(tmp_path / "params.npz", **_f32(t))
    params, meta = load_any(tmp_path / "params.npz", model_name="gemma-2-2b", layer=12, hook="resid_post")
    assert (meta.format, params.architecture, params.apply_b_dec_to_input) == ("gemma_scope", "jumprelu", False)
    t = _f64(_f32(t))
    _check_against(params, x, *ref_gemma_scope(t, x), t)


# ---- harness-native ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_native_round_trip(tmp_path, x, dtype):
    folder, t = _write_saelens(tmp_path, np.random.default_rng(6), _new_style("topk", k=8))
    params, meta = load_any(folder)
    card = {"trained_on": "synthetic", "fvu": 0.12}
    save_sae(tmp_path / "native", params, meta, card, dtype=dtype)
    again, meta2 = load_any(tmp_path / "native")
    assert read_card(tmp_path / "native") == card
    assert (meta2.format, meta2.layer, meta2.hook, again.k) == ("native", 3, "resid_post", 8)
    if dtype == "float16":  # the stored weights are the float16-rounded ones
        t = {k: np.asarray(v, np.float16).astype(np.float64) for k, v in t.items()}
    _check_against(again, x, *ref_saelens(_new_style("topk", k=8), t, x), t)


# ---- errors ---------------------------------------------------------------------------------------------


def test_unknown_format(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    with pytest.raises(InputError, match=r"weights\.bin: unknown SAE format"):
        load_any(tmp_path / "weights.bin")
    with pytest.raises(InputError, match="unknown SAE format"):
        load_any(tmp_path)


def test_missing_tensor_names_file_and_tensor(tmp_path):
    rng = np.random.default_rng(7)
    t = _random_core(rng)
    del t["b_dec"]
    safetensors.numpy.save_file(_f32(t), str(tmp_path / "broken.safetensors"))
    with pytest.raises(InputError, match=r"broken\.safetensors: tensor b_dec missing"):
        load_any(tmp_path / "broken.safetensors")
    t = _random_core(rng) | {"s_gate": np.zeros(D_SAE), "scaling_factor": np.ones(D_SAE)}
    safetensors.numpy.save_file(_f32(t), str(tmp_path / "gated.safetensors"))
    with pytest.raises(InputError, match=r"gated\.safetensors: tensor b_gate missing"):
        load_any(tmp_path / "gated.safetensors")


def test_nan_in_weights_is_refused_at_load(tmp_path):
    t = _random_core(np.random.default_rng(8)) | {"threshold": np.full(D_SAE, 0.1)}
    t["W_dec"][3, 4] = np.nan
    np.savez(tmp_path / "params.npz", **_f32(t))
    with pytest.raises(InputError, match=r"params\.npz: tensor W_dec has 1 NaN/inf"):
        load_any(tmp_path)


def test_width_mismatch_and_unknown_layer(tmp_path):
    path, _ = _write_saex(tmp_path, np.random.default_rng(9))
    _, meta = load_any(path)
    with pytest.raises(InputError, match=r"sae\.safetensors: SAE width d_model=16 does not match the model's d_model=3072"):
        check_compatible(meta, d_model=3072, layer=20, hook="resid_pre")
    with pytest.raises(InputError, match="no layer"):
        check_compatible(meta, d_model=D_MODEL, layer=20, hook="resid_pre")
    _, meta = load_any(path, layer=20, hook="resid_post")
    with pytest.raises(InputError, match="reads hook 'resid_post', asked to read 'resid_pre'"):
        check_compatible(meta, d_model=D_MODEL, layer=20, hook="resid_pre")


# ---- the weights held once -------------------------------------------------------------------------


def _saex_tensors(rng, d_model, d_sae):
    return _random_core(rng) if d_model == D_MODEL and d_sae == D_SAE else {
        "W_enc": rng.normal(size=(d_model, d_sae)), "b_enc": rng.normal(size=d_sae),
        "W_dec": rng.normal(size=(d_sae, d_model)), "b_dec": rng.normal(size=d_model)}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_weights_are_read_once_into_float32_whatever_the_stored_dtype(tmp_path, monkeypatch, dtype):
    """Each tensor goes from the file straight into the float32 array JAX holds, widened a block at a time: the numpy
    side never holds more than the float32 weights and one block (a whole-file read plus a float32 copy would be
    1.5x for float16, 2x for float32), and the values are the stored ones cast to float32."""
    import tracemalloc

    import jax
    import ml_dtypes

    from harness.sae import formats

    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    stored = {k: np.asarray(v, np_dtype) for k, v in _saex_tensors(np.random.default_rng(5), 64, 8192).items()}
    path = tmp_path / "l20-run.safetensors"
    safetensors.numpy.save_file(stored, str(path))
    monkeypatch.setattr(formats, "_READ_CELLS", 10_000)  # many blocks per tensor, one partial
    load_any(path)  # compile the checks for these shapes first: only the load itself is traced
    tracemalloc.start()
    try:
        params, _ = load_any(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    weights = sum(v.size for v in stored.values()) * 4
    assert peak < 1.02 * weights + 100_000, (peak, weights)
    for name, value in stored.items():
        got = getattr(params, name)
        assert isinstance(got, jax.Array) and got.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(got), value.astype(np.float32))


def test_gemma_scope_arrays_become_float32_jax_arrays(tmp_path):
    import jax

    t = _random_core(np.random.default_rng(12)) | {"threshold": np.full(D_SAE, 0.1)}
    np.savez(tmp_path / "params.npz", **{k: np.asarray(v, np.float16) for k, v in t.items()})
    params, _ = load_any(tmp_path)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        got = getattr(params, name)
        assert isinstance(got, jax.Array) and got.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(got), np.asarray(t[name], np.float16).astype(np.float32))


_PEAK_SCRIPT = """
import json, pathlib, sys
def status(key):
    return next(int(l.split()[1]) * 1024 for l in pathlib.Path("/proc/self/status").read_text().splitlines()
                if l.startswith(key + ":"))
import jax, jax.numpy as jnp
from harness.sae.formats import load_any
jnp.zeros(1).block_until_ready()
pathlib.Path("/proc/self/clear_refs").write_text("5")
base = status("VmRSS")
params, _ = load_any(sys.argv[1], layer=20, hook="resid_pre")
jax.block_until_ready(params)
print(json.dumps({"peak": status("VmHWM") - base, "bytes": sum(x.nbytes for x in jax.tree_util.tree_leaves(params))}))
"""


@pytest.mark.slow
def test_loading_a_wide_saex_sae_peaks_at_its_float32_bytes(tmp_path):
    """A fresh interpreter loads a float16 saex file of 1024 x 32,768 (256 MiB in float32): peak RSS over the imports
    stays within 10% (+40 MB) of the weights' float32 bytes (the whole-file read and float32 copies used to take 2x)."""
    import subprocess
    import sys

    from standins import saex_sae_file

    path = saex_sae_file(tmp_path, d_model=1024, d_sae=32_768)
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True, text=True, check=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["bytes"] > 2 * 1024 * 32_768 * 4
    assert got["peak"] < 1.10 * got["bytes"] + 40e6, got


@pytest.mark.parametrize("value,ok", [(False, True), (True, False)])
def test_an_old_boolean_normalize_activations_is_read_as_saelens_maps_it(tmp_path, value, ok):
    folder, _ = _jb_release(tmp_path)
    (folder / "cfg.json").write_text(json.dumps(json.loads((folder / "cfg.json").read_text())
                                                | {"normalize_activations": value}))
    if ok:
        assert load_any(folder)[0].architecture == "relu"
    else:
        with pytest.raises(InputError, match="normalize_activations='expected_average_only_in' is not supported"):
            load_any(folder)
