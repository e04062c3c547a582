"""Deliberate regressions flip the relevant claim's verdict (harness.claims.evaluate on the registry's claims).

Shuffling the answer key and permuting the SAE's features run on synthetic OptionRuns with planted signal (fast);
swapping the chat template needs the real model and the default SAE (slow). The constructed tie-to-first case
is tests/test_scores.py::test_tie_to_first_inflates_and_deflates_while_tie_aware_does_not (not repeated here).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from harness import claims as claims_lib
from harness.data.records import MCQuestion
from harness.runs.options import OptionRun
from harness.sae.sae import SAEParams, check_params
from harness.studies import features

REGISTRY = claims_lib.load_registry(pathlib.Path(__file__).parent.parent / "evals" / "claims.toml")
CLAIMS = {c.id: c for c in REGISTRY}
D_MODEL = 16


def _sae(d_sae: int, seed: int = 0) -> SAEParams:
    rng = np.random.default_rng(seed)
    W_dec = rng.normal(size=(d_sae, D_MODEL)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    arrays = dict(W_enc=W_dec.T, b_enc=np.zeros(d_sae), W_dec=W_dec, b_dec=np.zeros(D_MODEL))
    return check_params(SAEParams(architecture="relu", **{k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()}),
                        source="synthetic")


def _run(n_q: int, direction: np.ndarray, *, signal_frac: float, seed: int) -> OptionRun:
    """A cloze-format OptionRun whose correct option is pushed along `direction` on a `signal_frac` share of questions."""
    rng = np.random.default_rng(seed)
    answers = rng.integers(0, 4, size=n_q)
    resid = rng.normal(size=(n_q, 4, D_MODEL)).astype(np.float32)
    signal = rng.random(n_q) < signal_frac
    resid[np.flatnonzero(signal), answers[signal]] += 6.0 * direction
    questions = tuple(MCQuestion(question=f"q{i}?", choices=("a", "b", "c", "d"), answer=int(answers[i]),
                                 subject="synthetic", source="synthetic", qid=f"s{i}") for i in range(n_q))
    zeros = np.zeros((n_q, 4))
    return OptionRun(fmt="cloze", questions=questions, resid=resid, logprob=zeros, n_tokens=zeros.astype(int) + 1,
                     n_chars=zeros.astype(int) + 1, letter_logits=None, layer=15, hook="resid_pre", skipped=(),
                     boundary_mismatches=0)


def _verdict(claim_id: str, measurement) -> bool:
    """Whether the registry's claim holds on the measurement (decided on its interval)."""
    claim = CLAIMS[claim_id]
    return claims_lib.evaluate(claim, claim.profile, measurement).outcome is claims_lib.Outcome.HOLDS


def test_shuffling_the_answer_key_makes_the_default_c3_claims_fail():
    params = _sae(256)
    run = _run(400, np.asarray(params.W_dec)[37], signal_frac=0.5, seed=1)
    shuffled = np.random.default_rng(2).permutation(run.answers)
    for claim_id, measure in (("C3-smollm2-control-above-chance", features.heldout_above_chance),
                              ("C3-smollm2-control-above-feature-null", features.heldout_above_controls),
                              ("C3-smollm2-control-above-permutation-null", features.heldout_above_permutation_null)):
        before = measure(features.analyse(run.resid, run.answers, params, fmt="cloze", reading="decoder", seed=0))
        after = measure(features.analyse(run.resid, shuffled, params, fmt="cloze", reading="decoder", seed=0))
        assert _verdict(claim_id, before), (claim_id, before)  # planted signal: the claim holds
        assert not _verdict(claim_id, after), (claim_id, after)  # chance is all a shuffled key leaves


def test_permuting_the_sae_features_makes_the_fixed_feature_claim_fail():
    """The original's claim names feature 45142; after a permutation of the SAE's features that index reads another."""
    d_sae = features.PHI3_FEATURE + 58  # a synthetic SAE wide enough to hold the index (16-dim rows keep it small)
    params = _sae(d_sae)
    # 0.561 = p + (1 - p)/4 for a planted share p of the questions: the original's figure by construction
    p = (0.561 - 0.25) / 0.75
    run = _run(1474, np.asarray(params.W_dec)[features.PHI3_FEATURE], signal_frac=p, seed=3)
    before = features.original_accuracy(features.read_feature(run.resid, run.answers, params, features.PHI3_FEATURE))
    assert _verdict("C3-phi3-45142-accuracy", before), before
    perm = np.random.default_rng(4).permutation(d_sae)
    permuted = dataclasses.replace(params, W_enc=params.W_enc[:, perm], b_enc=params.b_enc[perm], W_dec=params.W_dec[perm])
    after = features.original_accuracy(features.read_feature(run.resid, run.answers, permuted, features.PHI3_FEATURE))
    assert not _verdict("C3-phi3-45142-accuracy", after), after
    # the feature still exists, at its new index: the claim is about an index, and only the index moved
    moved = int(np.flatnonzero(perm == features.PHI3_FEATURE)[0])
    assert features.read_feature(run.resid, run.answers, permuted, moved).original == before.value


PHI3_STYLE_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                       "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.mark.slow
def test_swapping_the_chat_template_fails_the_accuracy_baseline_not_the_claims():
    """Real model, 160 control questions in cloze. A Phi-3-style template (tags SmolLM2 never saw) moves the
    model's accuracy by more than the baseline tolerance, so evals/test_baselines.py fails; the C2 cloze claim
    and the C3 feature claim still hold (measured: cloze 0.72 → 0.65) — a finding the claims alone would miss."""
    from harness.claims.baselines import ACCURACY_ATOL
    from harness.claims.profiles import DEFAULT_SAE_DIR
    from harness.data.control import load_control_set
    from harness.data.subset import stratified_subset
    from harness.model.forms import Form, build_model
    from harness.model.sources import read_checkpoint
    from harness.runs.options import collect
    from harness.sae.formats import load_any
    from harness.scoring import scores

    params, _ = load_any(DEFAULT_SAE_DIR, layer=15, hook="resid_pre")
    checkpoint = read_checkpoint(None)
    model = build_model(checkpoint, form=Form.SCAN)
    questions, _ = stratified_subset(load_control_set()[0], 160, seed=0)
    swapped = dataclasses.replace(checkpoint, tokenizer=dataclasses.replace(checkpoint.tokenizer, chat_template=PHI3_STYLE_TEMPLATE))
    accuracy, feature_verdicts = [], []
    for ckpt in (checkpoint, swapped):
        run = collect(model, ckpt, questions, fmt="cloze", layer=15, progress=False)
        accuracy.append(scores.text_accuracy(run.logprob, run.answers).value)
        an = features.analyse(run.resid, run.answers, params, fmt="cloze", reading="decoder", seed=0)
        feature_verdicts.append(_verdict("C3-smollm2-control-above-chance", features.heldout_above_chance(an)))
    assert abs(accuracy[1] - accuracy[0]) > ACCURACY_ATOL, accuracy
    assert feature_verdicts == [True, True]
