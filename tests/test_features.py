"""Candidates (top-k, pursuit, controls), held-out scoring and the claims' quantities on synthetic planted signal."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from harness import features as F
from harness.errors import InputError
from harness.sae.sae import SAEParams, check_params

D_MODEL, D_SAE = 24, 96


def _sae(seed=0):
    """A ReLU SAE with unit-norm decoder rows and the encoder tied to them (W_enc = W_decᵀ)."""
    rng = np.random.default_rng(seed)
    W_dec = rng.normal(size=(D_SAE, D_MODEL))
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    arrays = dict(W_enc=W_dec.T, b_enc=np.full(D_SAE, -0.5), W_dec=W_dec, b_dec=np.zeros(D_MODEL))
    return check_params(SAEParams(architecture="relu", **{k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()}),
                        source="test"), W_dec


def planted(n_q=400, *, feature=7, strength=1.5, seed=1):
    """resid [question, option, embedding] with the correct option pushed along decoder row `feature`."""
    params, W_dec = _sae()
    rng = np.random.default_rng(seed)
    resid = rng.normal(size=(n_q, 4, D_MODEL))
    answers = rng.integers(0, 4, size=n_q)
    resid[np.arange(n_q), answers] += strength * W_dec[feature]
    return resid.astype(np.float32), answers, params, W_dec


def test_contrast_vector_is_the_normalised_mean_difference():
    resid, answers, _, W_dec = planted()
    got = F.contrast_vector(resid, answers)
    correct = np.stack([resid[q, answers[q]] for q in range(len(answers))])
    wrong = np.stack([resid[q, o] for q in range(len(answers)) for o in range(4) if o != answers[q]])
    expected = correct.mean(0) - wrong.mean(0)
    np.testing.assert_allclose(got, expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)
    assert got @ W_dec[7] > 0.8  # the planted direction dominates the contrast
    with pytest.raises(InputError):
        F.contrast_vector(np.ones((3, 4, D_MODEL)), np.array([0, 1, 2]))


def test_pursuit_finds_the_planted_feature_first():
    resid, answers, params, _ = planted()
    feats = F.pursuit_features(resid, answers, params, k=4)
    assert feats[0] == 7 and len(set(feats)) == len(feats) <= 4


def test_controls_are_seeded_disjoint_and_keep_fixed_ones_that_exist():
    a = F.control_features(D_SAE, seed=3, exclude=range(0, 90), fixed=(42, 9999))
    assert a[0] == 42 and len(a) == 4 and 9999 not in a
    assert set(a[1:]) <= set(range(90, D_SAE)) - {42}
    assert a == F.control_features(D_SAE, seed=3, exclude=range(0, 90), fixed=(42, 9999))
    assert a != F.control_features(D_SAE, seed=4, exclude=range(0, 90), fixed=(42, 9999)) or D_SAE - 90 <= 3
    with pytest.raises(InputError):
        F.control_features(5, seed=0, exclude=range(4))


@pytest.mark.parametrize("reading", ["decoder", "encoder", "preact"])
def test_analysis_finds_the_planted_feature_on_discovery_and_confirms_on_heldout(reading):
    resid, answers, params, _ = planted()
    an = F.analyse(resid, answers, params, fmt="cloze", reading=reading, seed=0, k=5, pursuit_k=4)
    assert an.best == 7 and 7 in an.candidates.pursuit
    assert an.discovery.n + an.heldout.n == 400
    assert not set(an.discovery_idx) & set(an.heldout_idx)
    held = an.heldout_accuracy(7)
    # independent: argmax of the planted feature's reading on the held-out questions
    w = np.asarray(params.W_dec)[7]
    pred = (resid[an.heldout_idx] @ w).argmax(axis=1)
    if reading == "decoder":
        assert held.value == pytest.approx(np.mean(pred == answers[an.heldout_idx]))
    assert held.lo > 0.25
    m = F.heldout_above_chance(an)
    assert m.value == held.lo and m.details["discovery_max"] >= m.details["heldout_accuracy"] - 0.1
    assert F.heldout_above_controls(an).value > 0


def test_shuffled_key_leaves_only_chance():
    resid, answers, params, _ = planted()
    shuffled = np.random.default_rng(9).permutation(answers)
    an = F.analyse(resid, shuffled, params, fmt="cloze", reading="decoder", seed=0, k=5, pursuit_k=4)
    assert F.heldout_above_chance(an).value < 0.25


def test_original_reading_matches_numpy():
    resid, answers, params, W_dec = planted(n_q=120)
    r = F.read_feature(resid, answers, params, 7)
    proj = resid.astype(np.float64) @ W_dec[7]
    first_max = np.mean(np.argmax(proj, axis=1) == answers)
    first_min = np.mean(np.argmin(proj, axis=1) == answers)
    assert r.original == pytest.approx(max(first_max, first_min))
    labels = np.zeros_like(proj, dtype=bool)
    labels[np.arange(len(answers)), answers] = True
    pos, neg = proj[labels], proj[~labels]
    pairwise = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert r.auc == pytest.approx(pairwise, abs=1e-6)
    assert r.share == pytest.approx(first_max)  # continuous projections: no ties, so the rules agree


def test_invariance_on_readings():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(50, 4, 30)).astype(np.float32)
    s[:, :, :5] = 0.0  # features at 0 on every option: ties everywhere
    a = rng.integers(0, 4, size=50)
    inv = F.invariance(s, a)
    assert inv.max_accuracy_change == 0.0
    lp = scipy.special.log_softmax(s.astype(np.float64), axis=1)[np.arange(50), a].mean(0)
    lp64 = scipy.special.log_softmax(64.0 * s.astype(np.float64), axis=1)[np.arange(50), a].mean(0)
    assert inv.max_logprob_change >= np.max(np.abs(lp64 - lp)) > 0.1
    acc_m, lp_m = F.invariance_measurements(inv)
    assert acc_m.value == 0.0 and lp_m.value == inv.max_logprob_change and acc_m.n == 50


def test_rank_agreement_matches_scipy_and_detects_reversal():
    x = np.linspace(0.2, 0.5, 20) + np.random.default_rng(0).normal(scale=0.02, size=20)
    same = F.rank_agreement(x, x + 0.01, seed=0)
    assert same.kendall.value == pytest.approx(1.0) and same.kendall.lo > 0.9
    rev = F.rank_agreement(x, -x, seed=0)
    assert rev.kendall.value == pytest.approx(-1.0) and rev.kendall.hi < 0
    y = np.random.default_rng(1).normal(size=20)
    got = F.rank_agreement(x, y, seed=0)
    assert got.kendall.value == pytest.approx(scipy.stats.kendalltau(x, y).statistic)
    assert got.spearman.value == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert got.kendall.lo <= got.kendall.value <= got.kendall.hi


def test_ranking_kept_and_score_raised_on_formats_with_shared_signal():
    resid, answers, params, W_dec = planted()
    text = resid.copy()
    text[np.arange(len(answers)), answers] += 1.0 * W_dec[7]  # answer texts make the planted signal stronger
    a_l = F.analyse(resid, answers, params, fmt="letter", reading="decoder", seed=0, k=8, pursuit_k=4)
    a_t = F.analyse(text, answers, params, fmt="text", reading="decoder", seed=0, k=8, pursuit_k=4)
    m = F.ranking_kept(a_l, a_t, seed=0)
    assert m.ci[0] == m.value <= m.details["kendall_tau"] <= m.ci[1]
    assert m.details["kendall_tau"] > 0
    raised = F.score_raised(resid, text, answers, params, 7, reading="decoder", fmts=("letter", "text"), seed=0)
    acc_l = np.mean(np.argmax(resid @ W_dec[7], axis=1) == answers)
    acc_t = np.mean(np.argmax(text @ W_dec[7], axis=1) == answers)
    assert raised.value == pytest.approx(acc_t - acc_l) and raised.value > 0
    other = F.analyse(resid, answers, params, fmt="text", reading="decoder", seed=1, k=8, pursuit_k=4)
    with pytest.raises(InputError):
        F.ranking_kept(a_l, other, seed=0)


def test_paired_format_test_and_per_subject_match_direct_counts():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 4, size=60)
    r1, r2 = rng.normal(size=(60, 4)), rng.normal(size=(60, 4))
    t = F.paired_format_test(r1, r2, a, seed=0)
    c1, c2 = (r1.argmax(1) == a).astype(float), (r2.argmax(1) == a).astype(float)
    assert t.difference == pytest.approx(np.mean(c1 - c2)) and t.n_discordant == int(np.sum(c1 != c2))
    subjects = np.array(["x", "y", "z"])[rng.integers(0, 3, size=60)]
    got = F.per_subject(c1, subjects)
    assert list(got) == ["x", "y", "z"]
    for s, acc in got.items():
        assert acc.n == np.sum(subjects == s) and acc.value == pytest.approx(c1[subjects == s].mean())
    with pytest.raises(InputError):
        F.per_subject(c1, subjects[:10])


def test_shared_questions_aligns_by_qid():
    ia, ib = F.shared_questions(["q1", "q2", "q3", "q4"], ["q4", "q2", "q5"])
    assert ia.tolist() == [1, 3] and ib.tolist() == [1, 0]
