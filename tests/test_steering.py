"""The steering study (harness.studies.steering) against direct runs: a pair's packed row reads exactly what running
each of its sequences alone reads (plain, steered and ablated, both readouts); the CAA vector is the mean letter-
position difference; named vectors are what pursuit and the decoder give; the claims' plan and measures decide as the
gate's rules say (a reference that does not steer leaves a kept share undecided, never a pass)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from harness.claims import measures
from harness.claims.registry import Outcome
from harness.claims.verdicts import decide
from harness.data.pairs import load_pairs
from harness.errors import InputError
from harness.model import capture, interventions
from harness.prompts.pair_prompts import build_pair_prompts
from harness.sae.pursuit import gradient_pursuit
from harness.studies import steering

LAYER = 15
TOL = 2e-5  # packed vs alone in float32 (measured up to 9e-6 on these pairs)


@pytest.fixture(scope="module")
def smollm2():
    from harness.model.forms import Form, build_model
    from harness.model.sources import read_checkpoint

    checkpoint = read_checkpoint(None)
    return checkpoint, build_model(checkpoint, form=Form.SCAN)


@pytest.fixture(scope="module")
def pairs():
    refusal = load_pairs("refusal")[0]
    return (refusal[3], refusal[4], refusal[13])  # short ones; the behaviour letter is A in some, B in others


def _alone(checkpoint, model, pair, readout) -> float:
    """p(behaviour) from running each of the pair's sequences alone, unpacked (capture.logits)."""
    ctx = checkpoint.config.max_context
    a, b = build_pair_prompts(checkpoint.tokenizer, pair, readout, max_len=ctx).options
    if readout == "letter":
        logp = jax.nn.log_softmax(capture.logits(model, np.array([a.ids[:-1]]), max_context=ctx)[0, -1])
        scores = np.array([logp[a.ids[-1]], logp[b.ids[-1]]])
    else:
        scores = []
        for o in (a, b):
            logp = np.asarray(jax.nn.log_softmax(capture.logits(model, np.array([o.ids]), max_context=ctx)[0]))
            scores.append(sum(logp[t - 1, o.ids[t]] for t in range(o.cont_start, len(o.ids))))
        scores = np.array(scores)
    return float(steering.p_behaviour(scores[None], [pair])[0])


@pytest.mark.slow
def test_a_packed_pair_reads_what_its_sequences_read_alone(smollm2, pairs):
    checkpoint, model = smollm2
    v = np.random.default_rng(0).normal(size=checkpoint.config.d_model).astype(np.float32)  # |v| ≈ 24: moves p in both readouts
    vectors = {"v": steering.Vector(name="v", values=v, layer=LAYER, source={})}
    runs = steering.run_plan(model, checkpoint, pairs, steering.Plan(layer=LAYER, steer=(("v", 3.0),), ablate="v"),
                             vectors)
    variants = {"plain": model, "v@3": interventions.intervene(model, interventions.Steer(vector=v, alpha=3.0, layer=LAYER)),
                steering.ABLATED: interventions.intervene(model, interventions.Ablate(direction=v))}
    for readout in steering.READOUTS:
        assert sorted(runs[readout]) == sorted(variants)
        for key, m in variants.items():
            alone = [_alone(checkpoint, m, p, readout) for p in pairs]
            np.testing.assert_allclose(runs[readout][key], alone, atol=TOL, err_msg=f"{readout} {key}")
        # the vector moves p (else the comparison above would not show a steering that went missing)
        assert np.max(np.abs(runs[readout]["v@3"] - runs[readout]["plain"])) > 100 * TOL


def test_the_caa_vector_is_the_mean_difference_at_the_answer_letter(smollm2, pairs):
    checkpoint, model = smollm2
    ctx = checkpoint.config.max_context
    diffs = []
    for pair in pairs:
        options = build_pair_prompts(checkpoint.tokenizer, pair, "letter", max_len=ctx).options
        at = [np.asarray(capture.residual(model, np.array([o.ids]), layer=LAYER, max_context=ctx))[0, -1] for o in options]
        diffs.append(at[pair.behaviour_index] - at[1 - pair.behaviour_index])
    caa = steering.caa_vector(model, checkpoint, pairs, layer=LAYER)
    expected = np.mean(diffs, axis=0)
    np.testing.assert_allclose(caa.values, expected, atol=1e-5 * np.abs(expected).max())
    assert caa.source["n_build"] == len(pairs) and caa.layer == LAYER


def _caa(d=16, seed=1) -> steering.Vector:
    v = np.random.default_rng(seed).normal(size=d).astype(np.float32)
    return steering.Vector(name="caa", values=v, layer=3, source={"n_build": 7})


def test_named_vectors_are_what_pursuit_and_the_decoder_give():
    caa = _caa()
    decoder = np.random.default_rng(2).normal(size=(40, 16)).astype(np.float32)
    k2 = steering.named_vector("sae-k2", caa, decoder)
    fit = gradient_pursuit(caa.values, decoder, k=2)
    np.testing.assert_allclose(k2.values, fit.weights @ decoder.astype(np.float64), rtol=1e-5, atol=1e-6)
    assert k2.source["features"] == list(fit.support) and len(fit.support) == 2
    top = steering.named_vector("feature-top", caa, decoder)
    assert top.source["features"] == [int(np.argmax(decoder @ caa.values))]
    f = steering.named_vector("feature-5", caa, decoder)
    assert np.isclose(f.norm, caa.norm, rtol=1e-5) and f.values @ caa.values > 0
    assert np.isclose(abs(steering._cosine(f.values, decoder[5])), 1.0, atol=1e-6)
    assert steering.named_vector("caa", caa, decoder) is caa
    for bad in ("sae-kx", "feature-", "feature-40", "refusal", "sae-k"):
        with pytest.raises(InputError):
            steering.named_vector(bad, caa, decoder)


def test_p_behaviour_is_at_the_behaviour_option_and_symmetric(pairs):
    scores = np.log(np.array([[0.2, 0.6], [0.2, 0.6], [0.2, 0.6]]))
    p = steering.p_behaviour(scores, pairs)
    expected = [0.25 if pr.behaviour_index == 0 else 0.75 for pr in pairs]
    np.testing.assert_allclose(p, expected)
    assert len({pr.behaviour_index for pr in pairs}) == 2  # both letters are tested


def test_effects_count_the_wrong_way_and_the_dose_response_per_pair():
    e = steering.Effect(p=np.array([0.6, 0.4, 0.5, 0.7]), plain=np.array([0.5, 0.5, 0.5, 0.5]), direction=1.0)
    assert e.wrong_way == 0.25  # one pair down, one unmoved (neither way)
    assert steering.Effect(p=e.p, plain=e.plain, direction=-1.0).wrong_way == 0.5
    alphas = [-2, 0, 2]
    grid = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.5, 0.5, 0.5]])
    np.testing.assert_allclose(steering.rank_correlations(grid, alphas), [1.0, -1.0, 0.0])
    runs = {"plain": np.array([1.0]), "caa@-2": np.array([0.0]), "caa@2": np.array([2.0])}
    np.testing.assert_array_equal(steering.dose_response(runs, "caa", alphas), [[0.0, 1.0, 2.0]])
    assert steering.run_key("x", 0) == "plain" and steering.run_key("x", -2.0) == "x@-2"


class _Study:
    """A steering_study stand-in with fixed p per run (the measures read only these methods)."""

    def __init__(self, runs):
        self.runs = runs

    def readout_runs(self, behaviour, readout):
        return self.runs

    def behaviour_letters(self, behaviour):
        return np.array(["A", "B"] * (len(self.runs["plain"]) // 2))

    def effect(self, behaviour, readout, vector, alpha):
        return steering.Effect(p=self.runs[steering.run_key(vector, alpha)], plain=self.runs["plain"],
                               direction=np.sign(alpha))

    def details(self, behaviour, *names):
        return {}


def _claim(measure, op=">=", expected=0.0, **args):
    from harness.claims.registry import Claim

    return Claim(id="x", sentence="s", profile="any", measure=measure, args=args, statistic="paired bootstrap", op=op,
                 expected=expected, source="test")


def test_a_reference_that_does_not_steer_leaves_the_kept_share_undecided():
    rng = np.random.default_rng(0)
    plain = rng.uniform(0.2, 0.8, 30)
    study = _Study({"plain": plain, "caa@4": plain.copy(), "sae-k2@4": plain + 0.01})
    m = measures.steering_kept_share(study, behaviour="b", readout="cloze", vector="sae-k2", reference="caa", alpha=4)
    assert m.undecidable and decide(_claim("steering_kept_share", expected=0.5), m) is Outcome.INCONCLUSIVE
    study.runs["caa@4"] = plain + 0.1 + rng.normal(0, 0.01, 30)
    m = measures.steering_kept_share(study, behaviour="b", readout="cloze", vector="sae-k2", reference="caa", alpha=4)
    assert 0.05 < m.value < 0.2 and m.ci[0] < m.value < m.ci[1]
    assert decide(_claim("steering_kept_share", expected=0.5), m) is Outcome.DOES_NOT_HOLD


def test_a_steering_effect_is_decided_on_its_paired_interval():
    rng = np.random.default_rng(1)
    plain = rng.uniform(0.2, 0.8, 40)
    study = _Study({"plain": plain, "caa@4": plain + 0.05 + rng.normal(0, 0.02, 40), "caa@-4": plain - 0.001})
    up = measures.steering_effect(study, behaviour="b", readout="letter", vector="caa", alpha=4)
    assert up.n == 40 and up.ci[0] > 0.02 and up.details["wrong_way_share"] <= 0.05
    assert decide(_claim("steering_effect", expected=0.02), up) is Outcome.HOLDS
    flat = measures.steering_effect(study, behaviour="b", readout="letter", vector="caa", alpha=-4)
    assert decide(_claim("steering_effect", expected=0.02), flat) is Outcome.DOES_NOT_HOLD  # provably below 0.02
    curve = measures.steering_dose_response(study, behaviour="b", readout="letter", vector="caa", alphas=[-4, 0, 4])
    assert [c["alpha"] for c in curve.details["dose_response"]] == [-4, 0, 4] and curve.ci[0] > 0.5
    assert curve.details["mean_rho_by_behaviour_letter"]["A"] > 0.5
    with pytest.raises(InputError):
        measures.steering_dose_response(study, behaviour="b", readout="letter", vector="caa", alphas=[-4, 4])


def test_the_study_plans_what_the_claims_name_and_refuses_two_ablations():
    from harness.claims.inputs import SteeringStudy

    claims = [_claim("steering_effect", behaviour="refusal", readout="letter", vector="caa", alpha=4),
              _claim("steering_dose_response", behaviour="refusal", readout="cloze", vector="caa", alphas=[-2, 0, 2]),
              _claim("steering_kept_share", behaviour="refusal", readout="cloze", vector="sae-k2", reference="caa", alpha=4),
              _claim("ablation_effect", behaviour="refusal", readout="letter", vector="caa"),
              _claim("steered_accuracy_change", behaviour="refusal", vector="feature-7", alpha=8, set="mmlu"),
              _claim("model_accuracy", set="mmlu", format="letter", reading="letter")]
    profile = dataclasses.make_dataclass("P", ["layer", "seed"])(15, 0)
    study = SteeringStudy(profile, None, None, None, None, claims, None, print)
    assert study.plans == {"refusal": {"steer": {("caa", 4.0), ("caa", -2.0), ("caa", 0.0), ("caa", 2.0),
                                                 ("sae-k2", 4.0)}, "ablate": {"caa"},
                                     "vectors": {"caa", "sae-k2", "feature-7"}}}  # the MMLU-only steer runs no pairs
    claims.append(_claim("ablation_effect", behaviour="refusal", readout="cloze", vector="sae-k2"))
    with pytest.raises(InputError, match="one ablated vector"):
        SteeringStudy(profile, None, None, None, None, claims, None, print)
