"""Two users of other model families, end to end: each brings their own folder (an ini file's [pytest] table naming
evals/claims.toml, which holds a [[profile]] table and the C1/C3/C4 feature claims copied from the repository's
evals/claims.toml for it) and runs `pytest --profile <theirs>` there through the claims plugin, on faithful miniature
stand-ins written by transformers itself (tests/family_standins.py):

  gemma2-scope  a Gemma-2 checkpoint as an id in a hub-cache layout (google/gemma-2-2b) + a Gemma Scope JumpReLU SAE,
                params.npz at .../models--google--gemma-scope-2b-pt-res/snapshots/<commit>/layer_2/width_16k/
                average_l0_141/params.npz (a symlink into blobs/, as huggingface_hub stores it): resid_post of layer 2,
                the layer from the path and the hook from the repository's name (-res);
  gpt2-res-jb   a GPT-2 folder (byte-level BPE, no chat template: prompted plainly, no BOS added by its tokenizer) +
                SAELens' gpt2-small-res-jb as jbloom/GPT2-Small-SAEs-Reformatted holds it, downloaded into the hub
                cache (.../models--jbloom--GPT2-Small-SAEs-Reformatted/snapshots/<commit>/blocks.2.hook_resid_pre/
                cfg.json in the SAELens < 2.0 layout, sae_weights.safetensors, sparsity.safetensors;
                tests/standins.py): a standard ReLU SAE read, as SAELens reads that release, on TransformerLens'
                centred residual (center_writing_weights) of prompts that begin with <|endoftext|> (prepend_bos).

Each SAE's thresholds / encoder biases are set on the stand-in model's own residuals at its hook, as the release read
them in training, so a sensible share of features fires (about the L0 its name states), as in the real releases. Every claim of the profile must get exactly
one outcome, the run must have no errors, and the report must name the inputs. The `recorded` outcomes are what these
random stand-ins give (a random model is no Gemma-2 or GPT-2); a failure would only be an outcome that moved.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import time
import tomllib

import family_standins as fs
import numpy as np
import pytest
import standins
import tokenizers

# imported once here, before pytester's first test snapshots sys.modules: its restore after a test would make the next
# test import torch's C extension afresh, which fails ("bad call flags")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
_PRELOADED = (transformers.AutoModelForCausalLM, transformers.Gemma2ForCausalLM, transformers.GPT2LMHeadModel)

pytest_plugins = ["pytester"]
REPO = pathlib.Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------- stand-ins


def _hub_file(root: pathlib.Path, repo_id: str, relative: str, data: bytes, *, kind: str = "models") -> pathlib.Path:
    """`data` stored as huggingface_hub stores a download: <kind>--org--name/blobs/<sha256>, and
    snapshots/<commit>/<relative> a relative symlink to it; refs/main names the commit. Returns the snapshot path."""
    repo = root / f"{kind}--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo / "snapshots" / commit / relative
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return link


def _calibration_text() -> str:
    """Text the SAEs' thresholds are set on: standins' corpus and multiple-choice text like the prompts' (questions of
    a subject the runs do not use), so the stated L0 holds on both kinds of position."""
    mc = "\n".join(f"{q}\nChoices:\n(A) {a}\n(B) {b}\n(C) {c}\n(D) {d}\nAnswer: ({key}"
                   for q, a, b, c, d, key in standins.hendrycks_rows("calibration", 4, seed=99))
    return standins.CORPUS + "\n" + mc


def _residuals(folder: pathlib.Path, text: str, *, index: int, add_bos: bool, prepend: str | None = None) -> np.ndarray:
    """transformers' own hidden_states[index] [tokens, d_model] of `folder` on `text`, BOS left out (what the SAE's
    hook reads: hidden_states[L] is resid_pre of layer L, hidden_states[L + 1] its resid_post, the last one excepted).
    `prepend`: a token put first whatever the tokenizer adds (TransformerLens' prepend_bos on GPT-2's tokenizer)."""
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = tok.encode(text, add_special_tokens=add_bos).ids
    if prepend is not None:
        ids = [tok.token_to_id(prepend), *ids]
    _, hidden = fs.reference(folder, np.asarray([ids]))
    assert index < len(hidden) - 1, "the last hidden state is final-normed, not a residual"
    first = int(add_bos or prepend is not None)
    return hidden[index][0, first:].astype(np.float64)  # the BOS position left out, as both releases train


def _dictionary(rng, d_model: int, d_sae: int) -> tuple[np.ndarray, np.ndarray]:
    """W_dec [d_sae, d_model] with unit rows and W_enc [d_model, d_sae] near its transpose (both releases' init)."""
    w_dec = rng.normal(size=(d_sae, d_model))
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    w_enc = w_dec.T + 0.3 * rng.normal(size=(d_model, d_sae)) / np.sqrt(d_model)
    return w_enc, w_dec


def gemma_scope_sae(hub: pathlib.Path, model: pathlib.Path, *, layer: int, d_sae: int = 16_384, l0: int = 141,
                    seed: int = 0) -> pathlib.Path:
    """A Gemma Scope residual SAE for `model` at resid_post of `layer`, stored as google/gemma-scope-2b-pt-res is
    (layer_<L>/width_16k/average_l0_<l0>/params.npz; np.savez of float32 W_enc [d_model, d_sae], W_dec [d_sae, d_model],
    b_enc, threshold [d_sae], b_dec [d_model], as the Gemma Scope tutorial's JumpReLUSAE loads it: encode is
    (pre > threshold) * relu(pre), pre = x @ W_enc + b_enc, no b_dec subtraction). Thresholds: each feature's
    (1 - l0/d_sae) quantile of its pre-activations on the model's residuals, so about l0 features fire per token."""
    x = _residuals(model, _calibration_text(), index=layer + 1, add_bos=True)
    rng = np.random.default_rng(seed)
    w_enc, w_dec = _dictionary(rng, x.shape[1], d_sae)
    b_enc = 0.1 * rng.normal(size=d_sae)
    pre = x @ w_enc + b_enc
    threshold = np.maximum(np.quantile(pre, 1 - l0 / d_sae, axis=0), 1e-3)
    assert 0.5 * l0 <= np.mean(np.sum(pre > threshold, axis=1)) <= 2 * l0  # JumpReLU's L0 on the calibration text
    arrays = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": x.mean(0), "threshold": threshold}
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v.astype(np.float32) for k, v in arrays.items()})
    return _hub_file(hub, "google/gemma-scope-2b-pt-res", f"layer_{layer}/width_16k/average_l0_{l0}/params.npz",
                     buffer.getvalue())


def gpt2_res_jb_sae(hub: pathlib.Path, staging: pathlib.Path, model: pathlib.Path, *, layer: int, expansion: int = 32,
                    l0: int = 18, seed: int = 0) -> pathlib.Path:
    """SAELens' gpt2-small-res-jb SAE of blocks.<layer>.hook_resid_pre for `model`, as jbloom/GPT2-Small-SAEs-Reformatted
    holds it (standins.gpt2_res_jb_folder: the SAELens < 2.0 cfg.json, sae_weights.safetensors W_enc [d_in, d_sae],
    W_dec [d_sae, d_in], b_enc, b_dec, sparsity.safetensors of log10 feature densities), stored in `hub` as
    huggingface_hub downloads it; returns the snapshot's blocks.<layer>.hook_resid_pre folder. The residuals it is set on
    are the ones the release read in training: TransformerLens' (writing weights centred: x minus its mean over d_model)
    of text that begins with BOS (prepend_bos). Encoder biases: minus each feature's (1 - l0/d_sae) quantile of
    (x - b_dec) @ W_enc on them, so about l0 features fire per token."""
    x = _residuals(model, _calibration_text(), index=layer, add_bos=False, prepend=fs.ENDOFTEXT)
    x = x - x.mean(axis=1, keepdims=True)  # center_writing_weights
    d_in = x.shape[1]
    d_sae = expansion * d_in
    rng = np.random.default_rng(seed)
    w_enc, w_dec = _dictionary(rng, d_in, d_sae)
    b_dec = x.mean(0)
    pre = (x - b_dec) @ w_enc
    b_enc = -np.quantile(pre, 1 - l0 / d_sae, axis=0)
    assert 0.5 * l0 <= np.mean(np.sum(pre + b_enc > 0, axis=1)) <= 2 * l0  # ReLU's L0 on the calibration text
    density = np.mean(pre + b_enc > 0, axis=0)
    folder = standins.gpt2_res_jb_folder(staging, layer, {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec},
                                         log_sparsity=np.log10(np.maximum(density, 1e-10)))
    for file in sorted(folder.iterdir()):
        snapshot = _hub_file(hub, standins.GPT2_RES_JB_REPO, f"{folder.name}/{file.name}", file.read_bytes()).parent
    return snapshot


def gemma2_hub(hub: pathlib.Path, staging: pathlib.Path, *, repo_id: str = "google/gemma-2-2b", seed: int = 0):
    """The tiny Gemma-2 written by transformers (fs.write_hf), stored in `hub` as `repo_id` (every file a blob with
    a snapshot symlink); returns (the staging folder transformers wrote, the snapshot folder)."""
    folder = fs.write_hf("gemma2", staging, seed=seed)
    snapshot = None
    for file in sorted(folder.iterdir()):
        snapshot = _hub_file(hub, repo_id, file.name, file.read_bytes()).parent
    return folder, snapshot


# ---------------------------------------------------------------------------------------------- the users' folders

# The C1/C3/C4 feature claims of evals/claims.toml that a profile of its own can carry, and the ids they take there:
# C1 (profile "any") as they are; C3's held-out selection and C4 as the default profile states them (its MMLU cloze
# claims; no control set here); C3's named-feature reading (phi3's feature 45142) for a feature of the user's choice.
BUILT_IN = {
    "C1-accuracy-scale-invariant": "C1-accuracy-scale-invariant",
    "C1-logprob-reading-not-invariant": "C1-logprob-reading-not-invariant",
    "C1-reading-agreement": "C1-reading-agreement",
    "C3-smollm2-mmlu-above-chance": "C3-{label}-mmlu-above-chance",
    "C3-smollm2-mmlu-above-feature-null": "C3-{label}-mmlu-above-feature-null",
    "C3-smollm2-mmlu-above-permutation-null": "C3-{label}-mmlu-above-permutation-null",
    "C3-phi3-45142-decoder-tie-aware": "C3-{label}-{feature}-decoder-tie-aware",
    "C3-phi3-45142-encoder-tie-aware": "C3-{label}-{feature}-encoder-tie-aware",
    "C4-smollm2-ranking-letter-text": "C4-{label}-ranking-letter-text",
    "C4-smollm2-ranking-letter-cloze": "C4-{label}-ranking-letter-cloze",
    "C4-smollm2-raises-text": "C4-{label}-raises-text",
}
FIELDS = ("id", "sentence", "profile", "quantity", "measure", "args", "statistic", "op", "expected", "tolerance",
          "alpha", "recorded", "drift", "source")


def _toml(value) -> str:
    """One TOML value (strings as JSON strings, which TOML's basic strings read alike; inline tables; arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def user_registry(profile: dict, *, label: str, feature: int, recorded: dict[str, str]) -> str:
    """claims.toml of a user's folder: the [[profile]] table, then the BUILT_IN claims copied from evals/claims.toml
    (measure, args, bound, statistic, source as they are there) for that profile, with `recorded` outcomes."""
    built_in = {c["id"]: c for c in tomllib.loads((REPO / "evals" / "claims.toml").read_text())["claim"]}
    lines = ["[[profile]]", *(f"{k} = {_toml(v)}" for k, v in profile.items()), ""]
    for source_id, new_id in BUILT_IN.items():
        claim = dict(built_in[source_id])
        claim["id"] = new_id.format(label=label, feature=feature)
        claim["profile"] = profile["name"]
        if "feature" in claim.get("args", {}):
            claim["args"] = claim["args"] | {"feature": feature}
            for key in ("sentence", "quantity"):
                claim[key] = claim[key].replace("Phi-3 SAE feature 45142", f"SAE feature {feature}").replace(
                    "feature 45142", f"feature {feature}").replace("Phi-3", "the model")
        claim["recorded"] = recorded[claim["id"]]
        lines += ["[[claim]]", *(f"{k} = {_toml(claim[k])}" for k in FIELDS if k in claim), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the runs

def gemma2_user(root: pathlib.Path) -> dict:
    """A Gemma Scope user: the model by id from the hub cache, the SAE file inside the cache's snapshot."""
    hub = root / "hub"
    staging, _ = gemma2_hub(hub, root / "staging")
    sae = gemma_scope_sae(hub, staging, layer=2)
    data = standins.hendrycks_val(root / "mmlu", n_per_subject=8)
    profile = {"name": "gemma2-scope", "description": "Gemma-2-2B + Gemma Scope 16k residual SAE, layer 2 (stand-ins)",
               "model": "google/gemma-2-2b", "sae": str(sae), "layer": 2, "hook": "resid_post",
               "datasets": [f"hendrycks:{data}"]}
    return {"profile": profile, "label": "gemma2", "feature": 6000, "hub": hub,
            "sae_words": ("gemma_scope jumprelu, 16384 features, layer 2 resid_post — layer from name",),
            "model_words": "models--google--gemma-2-2b/snapshots/",
            # Gemma Scope files say nothing of centring or BOS (Gemma's tokenizer adds its BOS itself): nothing to add
            "provenance": {SAE_CENTRING: None, SAE_BOS: None, SAE_DEFAULTS: None}}


def gpt2_user(root: pathlib.Path) -> dict:
    """A SAELens user of GPT-2: the model folder and the SAE folder by path. GPT-2's real n_positions (1024): the
    stand-in's 64 would not hold an MMLU prompt of its byte-level BPE."""
    model = fs.write_hf("gpt2", root / "gpt2", n_positions=1024, n_ctx=1024)
    assert "chat_template" not in (model / "tokenizer_config.json").read_text()  # GPT-2 has none: plain prompts
    assert not (model / "chat_template.jinja").exists()
    sae = gpt2_res_jb_sae(root / "hub", root / "staging", model, layer=2)
    data = standins.hendrycks_val(root / "mmlu", n_per_subject=8)
    profile = {"name": "gpt2-res-jb", "description": "GPT-2 small + gpt2-small-res-jb, resid_pre 2 (stand-ins)",
               "model": str(model), "sae": str(sae), "layer": 2, "datasets": [f"hendrycks:{data}"]}
    return {"profile": profile, "label": "gpt2", "feature": 1000, "hub": None,
            "sae_words": ("saelens relu, 2048 features, layer 2 resid_pre — layer from cfg",),
            "model_words": str(model),
            # read as SAELens reads the release: centred residual, BOS first, the defaults it applies listed
            "provenance": {SAE_CENTRING: ("center_writing_weights=true", "minus its mean over d_model"),
                           SAE_BOS: ("prepend_bos=true", "every prompt of this run starts with '<|endoftext|>'"),
                           SAE_DEFAULTS: ("architecture=standard", "activation_fn=relu", "apply_b_dec_to_input=true",
                                          "prepend_bos=true", "model_from_pretrained_kwargs.center_writing_weights=true")}}


SAE_CENTRING, SAE_BOS, SAE_DEFAULTS = ("sae input centring", "sae prepend_bos",
                                       "sae fields defaulted (absent from the file)")  # provenance keys
USERS = {"gemma2-scope": gemma2_user, "gpt2-res-jb": gpt2_user}
# What these random stand-ins give (24 questions, 12 held out): C1's invariance holds on any model; C3 / C4 find
# nothing in a random model (inconclusive on 12 held-out questions, or below the nulls). gpt2-res-jb's C1 agreement is
# inconclusive (tau 0.011, CI [-0.017, 0.044]) with both readings in the SAE's own centred space; it "held" only while the
# decoder projection read the uncentred residual, whose term mean_d(x)·sum(W_dec[f]) TransformerLens' residual lacks.
RECORDED = {
    "gemma2-scope": {
        "C1-accuracy-scale-invariant": "holds", "C1-logprob-reading-not-invariant": "holds",
        "C1-reading-agreement": "holds",
        "C3-gemma2-mmlu-above-chance": "inconclusive", "C3-gemma2-mmlu-above-feature-null": "inconclusive",
        "C3-gemma2-mmlu-above-permutation-null": "does not hold",
        "C3-gemma2-6000-decoder-tie-aware": "inconclusive", "C3-gemma2-6000-encoder-tie-aware": "inconclusive",
        "C4-gemma2-ranking-letter-text": "inconclusive", "C4-gemma2-ranking-letter-cloze": "inconclusive",
        "C4-gemma2-raises-text": "inconclusive"},
    "gpt2-res-jb": {
        "C1-accuracy-scale-invariant": "holds", "C1-logprob-reading-not-invariant": "holds",
        "C1-reading-agreement": "inconclusive",
        "C3-gpt2-mmlu-above-chance": "inconclusive", "C3-gpt2-mmlu-above-feature-null": "does not hold",
        "C3-gpt2-mmlu-above-permutation-null": "does not hold",
        "C3-gpt2-1000-decoder-tie-aware": "inconclusive", "C3-gpt2-1000-encoder-tie-aware": "inconclusive",
        "C4-gpt2-ranking-letter-text": "inconclusive", "C4-gpt2-ranking-letter-cloze": "inconclusive",
        "C4-gpt2-raises-text": "inconclusive"},
}


@pytest.fixture(autouse=True)
def no_user_hub(monkeypatch, tmp_path):
    """The machine's own HF cache never answers for the user's model id: an empty one unless a test sets it."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.delenv("HF_HOME", raising=False)


def _compile_cache_of_this_session() -> str:
    """The persistent compile cache this session uses ('off' if it is off), as test_user_phi3_end_to_end does."""
    from harness.runs import compile_cache

    settings = compile_cache.current()
    return settings.directory if settings.enabled and settings.directory else "off"


@pytest.mark.slow
@pytest.mark.parametrize("name", USERS)
def test_every_claim_of_a_users_family_profile_gets_an_outcome_and_the_report_names_the_inputs(
        pytester, tmp_path_factory, monkeypatch, name):
    from harness.claims.profiles import PROFILES
    from harness.claims.registry import load_registry, of_profile

    start = time.monotonic()
    user = USERS[name](tmp_path_factory.mktemp(name))
    if user["hub"] is not None:
        monkeypatch.setenv("HF_HUB_CACHE", str(user["hub"]))
    pytester.makeini("[pytest]\nclaims_registry = evals/claims.toml\ntestpaths = evals\n")
    registry = pytester.mkdir("evals") / "claims.toml"
    registry.write_text(user_registry(user["profile"], label=user["label"], feature=user["feature"],
                                      recorded=RECORDED[name]))
    claims = sorted(c.id for c in of_profile(load_registry(registry), name))
    assert claims == sorted(RECORDED[name]) and len(claims) == len(BUILT_IN)
    built = time.monotonic() - start

    # from the user's folder, as they would type it; path values written --opt=PATH: pytest finds its rootdir (and so
    # the registry) before the claims plugin's options exist, so a bare `--compile-cache PATH` value would count as a
    # path to test and move the rootdir to that path's ancestors
    out = pytester.path
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--profile", name, "--regen-all", "-k", "not C5",
        f"--reports-dir={out / 'reports'}", f"--cache-dir={out / 'cache'}",
        f"--compile-cache={_compile_cache_of_this_session()}", timeout=600)
    text = result.stdout.str()
    print(f"{name}: stand-ins {built:.0f}s, run {time.monotonic() - start - built:.0f}s")
    built_ins = "".join(f"{p} (built-in), " for p in PROFILES)  # the package's own profiles, whichever it ships
    header = f"claims: registry {registry}, profile {name}; profiles found: {built_ins}{name} ({registry})"
    result.stdout.fnmatch_lines([header])
    report = json.loads((out / "reports" / name / "claims.json").read_text())
    results = [e["claim"] for e in report["results"]]
    assert sorted(results) == claims, text[-3000:]  # exactly one result per claim: none crashed, skipped or doubled
    assert report["not_measured"] == {}, report["not_measured"]
    counts = result.parseoutcomes()
    assert counts.get("errors", 0) == 0 and counts.get("skipped", 0) == 0, text[-3000:]
    # the user's files are named: the model (an id resolved in the hub cache, or the folder), the SAE with its format,
    # width, layer and hook (and where the layer came from), the question set
    prov = report["provenance"]
    assert user["model_words"] in prov["model"], prov["model"]
    assert prov["sae"].startswith(user["profile"]["sae"]) and all(w in prov["sae"] for w in user["sae_words"]), prov
    for key, words in user["provenance"].items():  # how the SAE reads the model: said, or nothing to say
        if words is None:
            assert key not in prov, prov
        else:
            assert all(w in str(prov.get(key)) for w in words), (key, prov.get(key))
    assert any(s.startswith("mmlu: hendrycks") and "kept 24" in s for s in prov["question sets"]), prov
    readme = (out / "reports" / name / "README.md").read_text()
    assert user["profile"]["description"] in readme and user["profile"]["sae"] in readme
