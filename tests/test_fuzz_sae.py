"""Fuzz `load_any` over every SAE layout: saex file + sidecar, saex hub folder, SAELens (6.x and pre-6), Gemma Scope, native."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import tempfile

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given
from hypothesis import strategies as st

from fuzz_inputs import (BENIGN, MALIGN, Mutation, byte_mutations, fuzz_settings, json_edit, non_utf8, path_mutations,
                         report_counts, run_case, safetensors_relabel, with_bom)
from harness.sae.formats import load_any, save_sae

pytestmark = pytest.mark.fuzz
D, H = 8, 16


def _core(rng, bias="b_enc"):
    return {"W_enc": rng.normal(size=(D, H)), bias: rng.normal(size=H), "W_dec": rng.normal(size=(H, D)), "b_dec": rng.normal(size=D)}


def _st(tensors) -> bytes:
    return safetensors.numpy.save({k: np.asarray(v, np.float32) for k, v in tensors.items()})


def _npz(tensors) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, np.float32) for k, v in tensors.items()})
    return buf.getvalue()


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def layouts() -> dict[str, tuple[dict[str, bytes], str, dict]]:
    """name -> (files relative to the case folder, the path given to load_any, its keyword arguments)."""
    rng = np.random.default_rng(0)
    saex = _core(rng) | {"s_gate": rng.normal(size=H), "b_gate": rng.normal(size=H), "scaling_factor": rng.uniform(0.5, 1.5, H),
                         "mean_norm": np.array(3.0)}
    saelens_cfg = {"architecture": "jumprelu", "d_in": D, "d_sae": H, "apply_b_dec_to_input": False, "dtype": "float32",
                   "normalize_activations": "none", "metadata": {"model_name": "m", "hook_name": "blocks.3.hook_resid_post"}}
    pre6_cfg = {"d_in": D, "d_sae": H, "model_name": "m", "hook_point": "blocks.2.hook_resid_pre", "hook_layer": 2,
                "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4}, "apply_b_dec_to_input": True}
    gemma = _core(rng) | {"threshold": rng.uniform(0, 0.3, H)}
    return {
        "saex file": ({"sae.safetensors": _st(saex), "sae.meta.json": _json({"layer": 20, "hook": "resid_pre"})}, "sae.safetensors", {}),
        "saex hub": ({"l20-run/cfg.json": _json({"n_dimensions": D, "batch_size": 8}), "l20-run/sae_weights.safetensors": _st(saex)},
                     "l20-run", {"hook": "resid_pre"}),
        "saelens": ({"sl/cfg.json": _json(saelens_cfg),
                     "sl/sae_weights.safetensors": _st(_core(rng) | {"threshold": rng.uniform(0, 0.3, H)})}, "sl", {}),
        "saelens pre-6": ({"old/cfg.json": _json(pre6_cfg), "old/sae_weights.safetensors": _st(_core(rng))}, "old", {}),
        "gemma scope": ({"layer_5/params.npz": _npz(gemma)}, "layer_5/params.npz", {"hook": "resid_post"}),
    }


BAD_SAELENS = [("apply_b_dec_to_input", "false"), ("apply_b_dec_to_input", 0), ("d_sae", True), ("d_sae", "16"),
               ("d_sae", 17), ("d_in", -1), ("architecture", ...), ("architecture", "standard"), ("architecture", 3),
               ("normalize_activations", "layer_norm"), ("metadata", "x"), ("hook_layer", True), ("hook_layer", 7),
               ("finetuning_scaling_factor", "true"), ("reshape_activations", "hook_z")]
BAD_PRE6 = [("activation_fn_kwargs", {"k": "4"}), ("activation_fn_kwargs", {"k": 0}), ("activation_fn_str", "relu"),
            ("hook_layer", -1), ("apply_b_dec_to_input", None), ("model_name", 5)]
BAD_SIDECAR = [("layer", True), ("layer", -1), ("layer", "20"), ("layer", 2.5), ("hook", 5), ("extra", 1)]
BAD_NATIVE = [("norm_factor", "1"), ("norm_factor", -1.0), ("apply_b_dec_to_input", "false"), ("k", True),
              ("architecture", "weird"), ("meta", {"layer": True}), ("extra", 1), ("version", 2), ("card", ...)]
BAD_SAEX_CFG = [("n_dimensions", 9), ("n_dimensions", "8"), ("remove_decoder_bias", True), ("remove_decoder_bias", "false"),
                ("layer", 12), ("layer", True)]


def summary(loaded) -> tuple:
    params, meta = loaded
    arrays = tuple((f, None if getattr(params, f) is None else hashlib.sha256(np.asarray(getattr(params, f)).tobytes()).hexdigest())
                   for f in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "mag_scale", "b_mag"))
    return (arrays, params.architecture, params.k, params.norm_factor, params.out_norm_factor, params.apply_b_dec_to_input,
            meta.model_name, meta.layer, meta.hook, meta.format, meta.layer_source, meta.d_model, meta.d_sae)


def _tensor_edit(what, fn):
    """Rewrite the file's tensors through fn (which returns tensors, or the file's bytes itself)."""
    def apply(data):
        npz = data[:2] == b"PK"
        if npz:
            with np.load(io.BytesIO(data)) as z:
                tensors = {k: z[k] for k in z.files}
        else:
            tensors = safetensors.numpy.load(data)
        out = fn(tensors)
        if isinstance(out, bytes):
            return out
        if not npz:
            return safetensors.numpy.save(out)
        buf = io.BytesIO()
        np.savez(buf, **out)  # dtypes kept as given (no cast)
        return buf.getvalue()
    return Mutation(MALIGN, what, apply)


def _extra_tensor(t):
    return t | {"extra": np.ones(3, np.float32)}


def _dup_lower(t):
    buf = io.BytesIO()
    np.savez(buf, **t, w_enc=t["W_enc"])
    return buf.getvalue()


def _drop_b_dec(t):
    return {k: v for k, v in t.items() if k != "b_dec"}


def _int_bits(t):
    return {k: np.asarray(v, np.float32) for k, v in t.items()} | {"W_dec": np.asarray(t["W_dec"], np.float32).view(np.int32)}


def mutations(name, files) -> st.SearchStrategy[tuple[str, Mutation]]:
    options = []
    for rel, data in files.items():
        on = lambda s, rel=rel: s.map(lambda m: (rel, m))  # noqa: E731
        header = 8 + int.from_bytes(data[:8], "little") if rel.endswith(".safetensors") else 600
        options.append(on(byte_mutations(data, header=header)))
        optional = (name, rel) in {("saex file", "sae.meta.json"), ("saex hub", "l20-run/cfg.json")}
        options.append(on(path_mutations(required=not optional)))
        if rel.endswith((".safetensors", ".npz")):
            edits = [_tensor_edit("extra tensor added", _extra_tensor), _tensor_edit("b_dec removed", _drop_b_dec),
                     _tensor_edit("W_dec bits relabelled int32", _int_bits)]
            if rel.endswith(".npz"):
                edits.append(_tensor_edit("w_enc beside W_enc", _dup_lower))
            else:
                edits.append(Mutation(MALIGN, "W_enc relabelled I32", lambda b: safetensors_relabel(b, "W_enc", "I32")))
            options.append(on(st.sampled_from(edits)))
        if rel.endswith(".json"):
            bad = {"saelens": BAD_SAELENS, "saelens pre-6": BAD_PRE6, "saex file": BAD_SIDECAR, "saex hub": BAD_SAEX_CFG,
                   "native": BAD_NATIVE}[name]
            options.append(on(st.sampled_from(bad).map(lambda kv: json_edit((kv[0],), kv[1]))))
            options.append(on(st.just(with_bom())))
            options.append(on(non_utf8(data)))
            if name not in ("saex file", "native"):  # our own formats refuse unknown keys; other configs list them
                options.append(on(st.just(json_edit(("some_harmless_key",), "x", BENIGN))))
    return st.one_of(options)


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    out = {}
    for name, (files, target, kwargs) in layouts().items():
        folder = tmp_path_factory.mktemp("sae")
        for rel, data in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        out[name] = (files, target, kwargs, summary(load_any(folder / target, **kwargs)))
    params, meta = load_any(folder / target, **kwargs)
    native = tmp_path_factory.mktemp("native") / "n"
    save_sae(native, params, meta, {"note": "fuzz"})
    files = {f"n/{p.name}": p.read_bytes() for p in native.iterdir()}
    out["native"] = (files, "n", {}, summary(load_any(native)))
    return out


@pytest.mark.parametrize("layout", ["saex file", "saex hub", "saelens", "saelens pre-6", "gemma scope", "native"])
def test_load_any_contract(request, baselines, layout):
    files, target, kwargs, expected = baselines[layout]

    @fuzz_settings(request, 60)
    @given(mutations(layout, files))
    def case(item):
        rel, mutation = item
        with tempfile.TemporaryDirectory() as tmp:
            root = pathlib.Path(tmp) / "in"
            for r, data in files.items():
                (root / r).parent.mkdir(parents=True, exist_ok=True)
                (root / r).write_bytes(data)
            mutation.to(root / rel)
            run_case(f"SAE {layout}", mutation, lambda: load_any(root / target, **kwargs), summary, expected, (str(root),))

    case()
    print(f"\nfuzz cases: {report_counts('SAE ' + layout)}")
