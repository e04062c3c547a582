"""Candidates (top-k, pursuit, controls), held-out scoring and the claims' quantities on synthetic planted signal."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from harness.errors import InputError
from harness.sae.sae import SAEParams, check_params
from harness.studies import features

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
    got = features.contrast_vector(resid, answers)
    correct = np.stack([resid[q, answers[q]] for q in range(len(answers))])
    wrong = np.stack([resid[q, o] for q in range(len(answers)) for o in range(4) if o != answers[q]])
    expected = correct.mean(0) - wrong.mean(0)
    np.testing.assert_allclose(got, expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)
    assert got @ W_dec[7] > 0.8  # the planted direction dominates the contrast
    with pytest.raises(InputError):
        features.contrast_vector(np.ones((3, 4, D_MODEL)), np.array([0, 1, 2]))


def test_pursuit_finds_the_planted_feature_first():
    resid, answers, params, _ = planted()
    feats = features.pursuit_features(resid, answers, params, k=4)
    assert feats[0] == 7 and len(set(feats)) == len(feats) <= 4


def test_controls_are_seeded_disjoint_and_keep_fixed_ones_that_exist():
    a = features.control_features(D_SAE, seed=3, exclude=range(0, 90), fixed=(42, 9999))
    assert a[0] == 42 and len(a) == 4 and 9999 not in a
    assert set(a[1:]) <= set(range(90, D_SAE)) - {42}
    assert a == features.control_features(D_SAE, seed=3, exclude=range(0, 90), fixed=(42, 9999))
    assert a != features.control_features(D_SAE, seed=4, exclude=range(0, 90), fixed=(42, 9999)) or D_SAE - 90 <= 3
    with pytest.raises(InputError):
        features.control_features(5, seed=0, exclude=range(4))


@pytest.mark.parametrize("reading", ["decoder", "encoder", "preact"])
def test_analysis_finds_the_planted_feature_on_discovery_and_confirms_on_heldout(reading):
    resid, answers, params, _ = planted()
    an = features.analyse(resid, answers, params, fmt="cloze", reading=reading, seed=0, k=5, pursuit_k=4)
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
    m = features.heldout_above_chance(an)
    assert m.value == held.value and m.ci == (held.lo, held.hi)
    assert m.details["discovery_max"] >= m.details["heldout_accuracy"] - 0.1
    assert features.heldout_above_controls(an).value > 0


def test_shuffled_key_leaves_only_chance():
    resid, answers, params, _ = planted()
    shuffled = np.random.default_rng(9).permutation(answers)
    an = features.analyse(resid, shuffled, params, fmt="cloze", reading="decoder", seed=0, k=5, pursuit_k=4)
    assert features.heldout_above_chance(an).ci[0] < 0.25


def test_original_reading_matches_numpy():
    resid, answers, params, W_dec = planted(n_q=120)
    r = features.read_feature(resid, answers, params, 7)
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
    inv = features.invariance(s, a)
    assert inv.max_accuracy_change == 0.0
    lp = scipy.special.log_softmax(s.astype(np.float64), axis=1)[np.arange(50), a].mean(0)
    lp64 = scipy.special.log_softmax(64.0 * s.astype(np.float64), axis=1)[np.arange(50), a].mean(0)
    assert inv.max_logprob_change >= np.max(np.abs(lp64 - lp)) > 0.1
    acc_m, lp_m = features.invariance_measurements(inv)
    assert acc_m.value == 0.0 and lp_m.value == inv.max_logprob_change and acc_m.n == 50


def test_rank_agreement_matches_scipy_and_detects_reversal():
    x = np.linspace(0.2, 0.5, 20) + np.random.default_rng(0).normal(scale=0.02, size=20)
    same = features.rank_agreement(x, x + 0.01, seed=0)
    assert same.kendall.value == pytest.approx(1.0) and same.kendall.lo > 0.9
    rev = features.rank_agreement(x, -x, seed=0)
    assert rev.kendall.value == pytest.approx(-1.0) and rev.kendall.hi < 0
    y = np.random.default_rng(1).normal(size=20)
    got = features.rank_agreement(x, y, seed=0)
    assert got.kendall.value == pytest.approx(scipy.stats.kendalltau(x, y).statistic)
    assert got.spearman.value == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert got.kendall.lo <= got.kendall.value <= got.kendall.hi


def test_ranking_kept_and_score_raised_on_formats_with_shared_signal():
    resid, answers, params, W_dec = planted()
    text = resid.copy()
    text[np.arange(len(answers)), answers] += 1.0 * W_dec[7]  # answer texts make the planted signal stronger
    a_l = features.analyse(resid, answers, params, fmt="letter", reading="decoder", seed=0, k=8, pursuit_k=4)
    a_t = features.analyse(text, answers, params, fmt="text", reading="decoder", seed=0, k=8, pursuit_k=4)
    m = features.ranking_kept(a_l, a_t, seed=0)
    assert m.ci[0] <= m.value == m.details["kendall_tau"] <= m.ci[1]
    assert m.value > 0
    raised = features.score_raised(resid, text, answers, params, 7, reading="decoder", fmts=("letter", "text"), seed=0)
    acc_l = np.mean(np.argmax(resid @ W_dec[7], axis=1) == answers)
    acc_t = np.mean(np.argmax(text @ W_dec[7], axis=1) == answers)
    assert raised.value == pytest.approx(acc_t - acc_l) and raised.value > 0
    other = features.analyse(resid, answers, params, fmt="text", reading="decoder", seed=1, k=8, pursuit_k=4)
    with pytest.raises(InputError):
        features.ranking_kept(a_l, other, seed=0)


def test_per_subject_matches_direct_counts():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 4, size=60)
    r1 = rng.normal(size=(60, 4))
    c1 = (r1.argmax(1) == a).astype(float)
    subjects = np.array(["x", "y", "z"])[rng.integers(0, 3, size=60)]
    got = features.per_subject(c1, subjects)
    assert list(got) == ["x", "y", "z"]
    for s, acc in got.items():
        assert acc.n == np.sum(subjects == s) and acc.value == pytest.approx(c1[subjects == s].mean())
    with pytest.raises(InputError):
        features.per_subject(c1, subjects[:10])


def test_shared_questions_aligns_by_qid():
    ia, ib = features.shared_questions(["q1", "q2", "q3", "q4"], ["q4", "q2", "q5"])
    assert ia.tolist() == [1, 3] and ib.tolist() == [1, 0]


# ---------------------------------------------------------------- C3 nulls, C4 with question resampling, C1 on data


def test_a_planted_feature_beats_both_nulls_and_the_selection_is_shown():
    resid, answers, params, _ = planted(strength=1.0)
    an = features.analyse(resid, answers, params, fmt="cloze", reading="decoder", seed=0, k=5, pursuit_k=4)
    assert an.best == 7
    controls, perm = features.heldout_above_controls(an), features.heldout_above_permutation_null(an)
    for m, name in ((controls, "feature_null"), (perm, "permutation_null")):
        null = m.details[name]
        assert m.ci[0] > 0 and m.value == pytest.approx(null["observed"] - null["null_quantile"])
        assert m.p_value == pytest.approx(1 / (null["n_null"] + 1))  # beats every member of the null
        assert m.details["null_percentile"] == 1.0 and m.n == an.heldout.n
        assert m.statistic and set(m.details["power"]) >= {"n", "effect", "ci", "mde", "n_for_conclusive"}
    assert controls.details["feature_null"]["n_null"] == D_SAE - 1
    sel = controls.details["selection"]
    assert sel["best_of_n"] == D_SAE and sel["discovery_max"] > sel["null_of_best_of_n_discovery_max"]["max"]
    assert features.heldout_above_chance(an).p_value == perm.p_value


def test_a_null_feature_does_not_beat_the_nulls_although_its_discovery_maximum_looks_good():
    resid, answers, params, _ = planted(strength=0.0)  # nothing planted: every feature is noise
    an = features.analyse(resid, answers, params, fmt="cloze", reading="decoder", seed=0, k=5, pursuit_k=4)
    controls, perm = features.heldout_above_controls(an), features.heldout_above_permutation_null(an)
    assert not controls.ci[0] > 0 and not perm.ci[0] > 0
    assert perm.p_value > 0.05 and controls.details["null_percentile"] < 0.95
    sel = controls.details["selection"]
    assert sel["discovery_max"] > 0.3  # best of 96 on 200 questions looks above chance...
    assert 0.025 < sel["discovery_max_percentile"] < 0.975  # ...and is what chance gives for N = 96


def test_permutation_null_reruns_the_discovery_choice_like_score_features_does():
    """Independent check: re-score every feature on a few shuffled keys with score_features and compare."""
    from harness.sae.readings import score_features
    from harness.scoring import scores

    resid, answers, params, _ = planted(n_q=120, strength=0.6)
    an = features.analyse(resid, answers, params, fmt="cloze", reading="decoder", seed=3, k=5, pursuit_k=4)
    disc, held = an.discovery_idx, an.heldout_idx
    nulls = features.c3_nulls(an.option_credit12, answers, disc, held, chosen=an.best, seed=3, n_permutations=4, n_resamples=20)
    rng = np.random.default_rng([3, 11])
    keys_d = [rng.permutation(answers[disc]) for _ in range(4)]
    keys_h = [rng.permutation(answers[held]) for _ in range(4)]
    brute = []
    for kd, kh in zip(keys_d, keys_h):
        d = score_features(resid[disc], kd, params, reading="decoder", tolerance=scores.READING_TIE)
        f = int(scores.select_top_features(d.share, 1)[0])
        h = score_features(resid[held], kh, params, reading="decoder", tolerance=scores.READING_TIE)
        brute.append((d.share[f], h.share[f]))
    got = nulls.permutation_null.summary
    assert got["max"] == pytest.approx(max(b[1] for b in brute)) and got["mean"] == pytest.approx(np.mean([b[1] for b in brute]))
    assert nulls.discovery_max_null["mean"] == pytest.approx(np.mean([b[0] for b in brute]))
    assert nulls.feature_null.observed == pytest.approx(an.heldout.share[an.best])
    others = np.delete(an.heldout.share, an.best)
    assert nulls.feature_null.null_quantile == pytest.approx(np.quantile(others, 0.95))
    with pytest.raises(InputError):
        features.c3_nulls(an.option_credit12[:, :, :5], answers, disc, held, chosen=0, seed=0)


def test_ranking_ci_resamples_questions_and_reports_power():
    resid, answers, params, W_dec = planted()
    text = resid.copy()
    text[np.arange(len(answers)), answers] += 1.0 * W_dec[7]
    a_l = features.analyse(resid, answers, params, fmt="letter", reading="decoder", seed=0, k=8, pursuit_k=4)
    a_t = features.analyse(text, answers, params, fmt="text", reading="decoder", seed=0, k=8, pursuit_k=4)
    m = features.ranking_kept(a_l, a_t, seed=0, n_resamples=300)
    assert m.n == a_l.heldout.n and "questions" in m.statistic
    power = m.details["power"]
    assert power["n"] == m.n and power["mde"] > 0 and power["ci"] == list(m.ci)
    both = features.ranking_kept(a_l, a_t, seed=0, n_resamples=300, resample_candidates=True)
    assert both.ci[1] - both.ci[0] >= (m.ci[1] - m.ci[0]) * 0.8


def test_score_raised_has_a_question_bootstrap_ci_and_the_paired_p():
    resid, answers, params, W_dec = planted()
    text = resid.copy()
    text[np.arange(len(answers)), answers] += 1.5 * W_dec[7]
    m = features.score_raised(resid, text, answers, params, 7, reading="decoder", fmts=("letter", "text"), seed=0)
    assert m.ci[0] > 0 and m.ci[0] < m.value < m.ci[1] and m.p_value < 0.001 and m.n == len(answers)
    same = features.score_raised(resid, resid, answers, params, 7, reading="decoder", fmts=("letter", "text"), seed=0)
    assert same.value == 0 and same.ci == (0.0, 0.0) and same.p_value == 1.0
    assert same.details["power"]["n_for_conclusive"] == float("inf")


def _graded_plant(params_seed, n_q=300, n_planted=12, seed=4):
    params, W_dec = _sae(params_seed)
    rng = np.random.default_rng(seed)
    resid = rng.normal(size=(n_q, 4, D_MODEL))
    answers = rng.integers(0, 4, size=n_q)
    for i, f in enumerate(range(n_planted)):  # features 0..11 carry the answer with graded strength
        resid[np.arange(n_q), answers] += 0.15 * (i + 1) / n_planted * W_dec[f]
    return resid.astype(np.float32), answers, params


def test_c1_on_data_sound_and_original_rankings_agree_when_encoder_reads_the_decoder_direction():
    resid, answers, params = _graded_plant(0)
    m = features.reading_agreement(resid, answers, params, seed=0, n_resamples=200)
    assert m.ci[0] > 0 and m.n == len(answers) and m.details["n_features"] == D_SAE


def test_c1_on_data_can_be_false_when_the_encoder_reads_something_else():
    import dataclasses as dc

    import jax.numpy as jnp

    resid, answers, params = _graded_plant(0)
    other = np.random.default_rng(99).normal(size=(D_MODEL, D_SAE)).astype(np.float32)
    unrelated = dc.replace(params, W_enc=jnp.asarray(other))  # encoder directions unrelated to the decoder rows
    m = features.reading_agreement(resid, answers, unrelated, seed=0, n_resamples=200)
    assert not m.ci[0] > 0.2 and m.ci[0] < m.value < m.ci[1]


def test_the_analysis_its_nulls_and_c1_do_not_depend_on_the_feature_chunk(monkeypatch):
    """Every all-feature computation streams over feature chunks; a chunk far smaller than d_sae gives the same figures
    (scores to float32 rounding of the readings, candidates, credits and nulls exactly), for the whole-SAE null pool
    and for a sampled pool (forced here by lowering NULL_POOL_MAX)."""
    resid, answers, params, _ = planted(n_q=160, strength=0.8)
    kw = dict(fmt="cloze", reading="encoder", seed=0, k=5, pursuit_k=4)
    whole, chunked = features.analyse(resid, answers, params, **kw), features.analyse(resid, answers, params, chunk=7, **kw)
    for split in ("discovery", "heldout"):
        for field in ("share", "first", "argmin_share", "argmin_first", "auc", "logprob"):
            np.testing.assert_allclose(getattr(getattr(chunked, split), field), getattr(getattr(whole, split), field),
                                       rtol=1e-6, atol=1e-9)
    assert chunked.candidates == whole.candidates
    np.testing.assert_array_equal(chunked.option_credit12, whole.option_credit12)
    assert chunked.nulls == whole.nulls
    monkeypatch.setattr(features, "NULL_POOL_MAX", 50)
    monkeypatch.setattr(features, "NULL_POOL_SIZE", 40)
    sampled = features.analyse(resid, answers, params, chunk=6, **kw)
    assert sampled.null_pool.size in (40, 41) and sampled.best in sampled.null_pool
    np.testing.assert_array_equal(sampled.option_credit12, whole.option_credit12[:, :, sampled.null_pool])
    a = features.reading_agreement(resid, answers, params, seed=0, n_resamples=50)
    b = features.reading_agreement(resid, answers, params, seed=0, n_resamples=50, chunk=7)
    assert (a.value, a.ci, a.p_value) == (b.value, b.ci, b.p_value)
