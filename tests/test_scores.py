"""Scores: tie-aware accuracy and its invariances (claim C1), AUC vs a pairwise count, readings, selection."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from hypothesis import find, given
from hypothesis import strategies as st

import harness.scoring.scores as scores_mod
from harness.errors import InputError
from harness.scoring.scores import (
    EXACT,
    LOGPROB_TIE,
    READING_TIE,
    Tolerance,
    acc_norm,
    argmax_accuracy,
    argmax_credit,
    argmin_accuracy,
    correct_logprob,
    identical_options,
    letter_accuracy,
    lm_eval_choice_lengths,
    logprob_reading,
    option_auc,
    option_credit,
    pick_distribution,
    select_top_features,
    split_discovery_heldout,
    text_accuracy,
)
from tests.strategies import (
    answers as answer_keys,
)
from tests.strategies import (
    float_scored_questions,
    option_permutations,
    positive_scales,
    score_values,
    scored_questions,
    strictly_increasing_maps,
)


def brute_credit(scores_2d, answers, ties):
    """Per-question credit by plain Python: the independent check of argmax_credit."""
    out = []
    for row, ans in zip(scores_2d.tolist(), answers.tolist()):
        best = max(row)
        tied = [j for j, v in enumerate(row) if v == best]
        if ties == "first":
            out.append(1.0 if tied[0] == ans else 0.0)
        else:
            out.append(1.0 / len(tied) if ans in tied else 0.0)
    return out


def brute_auc(scores_2d, answers):
    """P(correct option's score > a wrong option's score) + ½ P(tie), over all (correct, wrong) pairs of all questions."""
    pos = [scores_2d[q, a] for q, a in enumerate(answers)]
    neg = [scores_2d[q, j] for q, a in enumerate(answers) for j in range(scores_2d.shape[1]) if j != a]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@given(scored_questions(), st.sampled_from(["share", "first"]))
def test_credit_matches_plain_python(problem, ties):
    s, a = problem
    got = argmax_credit(s, a, ties=ties)
    for f in range(s.shape[2]):
        np.testing.assert_allclose(got[:, f], brute_credit(s[:, :, f], a, ties))


@given(scored_questions(), positive_scales)
def test_accuracy_and_auc_invariant_to_positive_scale(problem, c):
    s, a = problem
    np.testing.assert_array_equal(argmax_accuracy(c * s, a), argmax_accuracy(s, a))
    np.testing.assert_array_equal(argmin_accuracy(c * s, a), argmin_accuracy(s, a))
    np.testing.assert_allclose(option_auc(c * s, a), option_auc(s, a))


@given(scored_questions(), strictly_increasing_maps())
def test_accuracy_invariant_to_strictly_increasing_maps(problem, fn):
    s, a = problem
    mapped = fn(s)
    np.testing.assert_array_equal(argmax_accuracy(mapped, a), argmax_accuracy(s, a))
    np.testing.assert_array_equal(argmin_accuracy(mapped, a), argmin_accuracy(s, a))
    np.testing.assert_allclose(option_auc(mapped, a), option_auc(s, a))


@given(scored_questions(), option_permutations())
def test_tie_aware_accuracy_invariant_to_joint_option_permutation(problem, perm):
    s, a = problem
    inverse = np.argsort(perm)  # old option o sits at new position inverse[o]
    permuted, new_answers = s[:, perm, :], inverse[a]
    np.testing.assert_array_equal(permuted[np.arange(len(a)), new_answers], s[np.arange(len(a)), a])
    np.testing.assert_allclose(argmax_accuracy(permuted, new_answers), argmax_accuracy(s, a))
    np.testing.assert_allclose(argmin_accuracy(permuted, new_answers), argmin_accuracy(s, a))


def test_tie_to_first_inflates_and_deflates_while_tie_aware_does_not():
    zeros = np.zeros((6, 4))  # a feature at 0 on all four options
    key_a, key_d = np.zeros(6, dtype=int), np.full(6, 3)
    first_a, first_d = argmax_accuracy(zeros, key_a, ties="first"), argmax_accuracy(zeros, key_d, ties="first")
    share_a, share_d = argmax_accuracy(zeros, key_a), argmax_accuracy(zeros, key_d)
    chance = np.mean(brute_credit(zeros, key_a, "share"))
    assert first_a == 1.0 > chance  # answers on A: tie-to-first scores every tie as right
    assert first_d == 0.0 < chance  # answers on D: tie-to-first scores every tie as wrong
    assert share_a == share_d == chance == np.mean(brute_credit(zeros, key_d, "share"))
    assert argmin_accuracy(zeros, key_a, ties="first") == 1.0 and argmin_accuracy(zeros, key_a) == chance


def test_log_prob_reading_is_not_scale_invariant():
    # Search for scores and a positive scale that leave accuracy unchanged but move the log-prob reading.
    def moves(example):
        (s, a), c = example
        return argmax_accuracy(c * s, a) == argmax_accuracy(s, a) and abs(correct_logprob(c * s, a) - correct_logprob(s, a)) > 0.1

    (s, a), c = find(st.tuples(scored_questions(features=False), positive_scales), moves)
    assert argmax_accuracy(c * s, a) == argmax_accuracy(s, a)
    assert abs(correct_logprob(c * s, a) - correct_logprob(s, a)) > 0.1


def test_hypothesis_finds_log_prob_falling_while_accuracy_rises():
    def falls_while_accuracy_rises(example):
        before, after, a = example
        return argmax_accuracy(after, a) > argmax_accuracy(before, a) and correct_logprob(after, a) < correct_logprob(before, a)

    pair = st.integers(1, 4).flatmap(lambda q: st.tuples(score_values(q, None), score_values(q, None), answer_keys(q)))
    before, after, a = find(pair, falls_while_accuracy_rises)
    assert argmax_accuracy(after, a) > argmax_accuracy(before, a)
    assert correct_logprob(after, a) < correct_logprob(before, a)


@given(scored_questions())
def test_option_auc_matches_pairwise_count(problem):
    s, a = problem
    got = option_auc(s, a)
    np.testing.assert_allclose(got, [brute_auc(s[:, :, f], a) for f in range(s.shape[2])])


def test_chunked_features_equal_unchunked(monkeypatch):
    rng = np.random.default_rng(0)
    s = rng.integers(-3, 4, size=(30, 4, 50)).astype(np.float32)
    a = rng.integers(0, 4, size=30)
    whole = (argmax_accuracy(s, a), argmax_accuracy(s, a, ties="first"), option_auc(s, a))
    monkeypatch.setattr(scores_mod, "CHUNK_CELLS", 30 * 4 * 7)  # 7 features per chunk, last chunk ragged
    chunked = (argmax_accuracy(s, a), argmax_accuracy(s, a, ties="first"), option_auc(s, a))
    for x, y in zip(whole, chunked):
        np.testing.assert_array_equal(x, y)


def test_logprob_reading_is_a_log_softmax_over_options():
    s = np.random.default_rng(1).normal(size=(5, 4, 3))
    lp = logprob_reading(s)
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0)
    np.testing.assert_allclose(lp[:, 1] - lp[:, 0], s[:, 1] - s[:, 0])


def test_letter_reading_and_pick_distribution():
    logits = np.array([[3.0, 1, 0, 0], [0, 5, 0, 0], [1, 1, 0, 0], [0, 0, 0, 2]])
    answers = np.array([0, 2, 1, 3])
    acc = letter_accuracy(logits, answers)
    assert acc.n == 4 and acc.k == pytest.approx(1 + 0 + 0.5 + 1) and acc.lo < acc.value < acc.hi
    np.testing.assert_allclose(pick_distribution(logits), [1.5, 1.5, 0, 1])
    np.testing.assert_allclose(pick_distribution(logits, ties="first"), [2, 1, 0, 1])
    assert pick_distribution(logits).sum() == len(logits)


def test_text_accuracy_summed_vs_per_character():
    rng = np.random.default_rng(2)
    lengths = rng.integers(5, 60, size=(40, 4)).astype(float)
    lp = -lengths * rng.uniform(0.5, 2.0, size=(40, 4))  # long answers get low summed log-probs
    answers = np.argmax(lp / lengths, axis=1)  # the key agrees with the per-character reading
    summed, normed = text_accuracy(lp, answers), text_accuracy(lp, answers, char_lengths=lengths)
    assert summed.value == pytest.approx(np.mean(np.argmax(lp, axis=1) == answers))
    assert normed.value == pytest.approx(np.mean(np.argmax(lp / lengths, axis=1) == answers))
    assert normed.value == 1.0 > summed.value
    with pytest.raises(InputError):
        text_accuracy(lp, answers, char_lengths=np.zeros((40, 4)))


def test_bad_scores_raise_one_line_input_errors():
    s = np.zeros((3, 4, 2))
    s[1, 2, 1] = np.nan
    for bad_call in (lambda: argmax_accuracy(s, np.array([0, 1, 2])),
                     lambda: argmax_accuracy(np.zeros((3, 4)), np.array([0, 1])),
                     lambda: argmax_accuracy(np.zeros((3, 4)), np.array([0, 1, 4])),
                     lambda: argmax_accuracy(np.zeros((3, 4)), np.array([0, 1, 2]), ties="last")):
        with pytest.raises(InputError) as err:
            bad_call()
        assert "\n" not in str(err.value)


def test_split_is_seeded_disjoint_and_complete():
    disc, held = split_discovery_heldout(101, seed=3, frac=0.3)
    assert len(disc) == round(0.3 * 101) and set(disc).isdisjoint(held) and set(disc) | set(held) == set(range(101))
    again, _ = split_discovery_heldout(101, seed=3, frac=0.3)
    other, _ = split_discovery_heldout(101, seed=4, frac=0.3)
    np.testing.assert_array_equal(disc, again)
    assert not np.array_equal(disc, other)


def test_select_top_features_orders_best_first_with_stable_ties():
    acc = np.array([0.3, 0.5, 0.2, 0.5, 0.4])
    expected = sorted(range(len(acc)), key=lambda i: (-acc[i], i))[:3]
    np.testing.assert_array_equal(select_top_features(acc, 3), expected)


# ------------------------------------------------------------------ C1 as a property of the scorer, over floats


def _order_pattern(s):
    """Each question's options replaced by their dense rank: all that an order-based scorer may depend on."""
    return scipy.stats.rankdata(s, axis=1, method="dense").astype(float)


@given(float_scored_questions(), st.sampled_from(["share", "first"]))
def test_credit_depends_only_on_the_within_question_order_of_any_finite_floats(problem, ties):
    s, a = problem
    np.testing.assert_array_equal(argmax_credit(s, a, ties=ties), argmax_credit(_order_pattern(s), a, ties=ties))
    np.testing.assert_array_equal(argmin_accuracy(s, a, ties=ties), argmin_accuracy(_order_pattern(s), a, ties=ties))


@given(float_scored_questions(), st.sampled_from([2.0**-600, 2.0**-3, 2.0**5, 2.0**600]),
       st.sampled_from(["c·x", "arcsinh", "x+x^3", "2x+1"]))
def test_increasing_maps_keep_accuracy_exactly_when_they_keep_the_order_in_floating_point(problem, c, name):
    s, a = problem
    fn = {"c·x": lambda x: c * x, "arcsinh": np.arcsinh, "x+x^3": lambda x: x + x ** 3, "2x+1": lambda x: 2 * x + 1}[name]
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        t = fn(s)
    if not np.all(np.isfinite(t)):  # overflow is rejected, never scored
        with pytest.raises(InputError):
            argmax_accuracy(t, a)
        return
    for ties in ("share", "first"):
        if np.array_equal(_order_pattern(t), _order_pattern(s)):
            np.testing.assert_array_equal(argmax_accuracy(t, a, ties=ties), argmax_accuracy(s, a, ties=ties))
        else:  # float absorption / underflow merged values: the map is not strictly increasing on these floats
            np.testing.assert_array_equal(argmax_accuracy(t, a, ties=ties), argmax_accuracy(_order_pattern(t), a, ties=ties))


def test_hypothesis_finds_a_float_map_that_merges_a_tie_and_moves_accuracy():
    # 2x + 1 is increasing on the reals but not on floats: tiny values are absorbed into 1 and become a tie
    def moves(problem):
        s, a = problem
        with np.errstate(over="ignore"):
            t = 2 * s + 1
        return bool(np.all(np.isfinite(t))) and argmax_accuracy(t, a) != argmax_accuracy(s, a)

    s, a = find(float_scored_questions(max_features=1), moves)
    t = 2 * s + 1
    assert argmax_accuracy(t, a) != argmax_accuracy(s, a) and not np.array_equal(_order_pattern(t), _order_pattern(s))


@given(float_scored_questions(), st.sampled_from([np.nan, np.inf, -np.inf]), st.data())
def test_nan_and_inf_scores_are_rejected_with_one_line(problem, bad, data):
    s, a = problem
    q, o, f = (data.draw(st.integers(0, n - 1)) for n in s.shape)
    s[q, o, f] = bad
    for call in (lambda: argmax_credit(s, a), lambda: argmax_accuracy(s, a, tolerance=READING_TIE),
                 lambda: option_credit(s)):
        with pytest.raises(InputError) as err:
            call()
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------ ties within a stated tolerance


def test_identical_options_tie_although_the_float_path_split_them():
    # "Employee rights" twice (A and B): the packed path gave log-prob sums 7e-6 apart; the answer is A
    lp = np.array([[-7.000007, -7.0, -9.0, -9.5]])
    a = np.array([0])
    assert argmax_credit(lp, a)[0] == 0.0  # exact comparison: B wins, A gets nothing
    groups = identical_options([("Employee rights", "Employee rights", "Unions", "Wages")])
    np.testing.assert_array_equal(groups, [[0, 0, 2, 3]])
    assert argmax_credit(lp, a, identical=groups)[0] == 0.5  # identical texts always tie: half credit
    assert argmax_credit(lp, a, tolerance=LOGPROB_TIE)[0] == 0.5  # and the float32 tolerance alone ties them too
    assert argmax_credit(lp, a, ties="first", identical=groups)[0] == 1.0  # tie-to-first now takes A, the first twin
    far = np.array([[-7.01, -7.0, -9.0, -9.5]])  # 0.01 nats apart is a real difference, not float noise
    assert argmax_credit(far, a, tolerance=LOGPROB_TIE)[0] == 0.0
    assert argmax_credit(far, a, identical=groups)[0] == 0.5  # ... unless the texts are identical


@given(float_scored_questions(), st.sampled_from([2.0**-8, 2.0**3, 2.0**40]))
def test_relative_tolerance_is_invariant_to_power_of_two_rescaling(problem, c):
    s, a = problem
    if np.abs(s).max() > 2.0**900 or (np.abs(s[s != 0]).min(initial=1.0) < 2.0**-900):
        return  # keep c·s exact: no overflow, no subnormal rounding
    np.testing.assert_array_equal(argmax_credit(c * s, a, tolerance=READING_TIE), argmax_credit(s, a, tolerance=READING_TIE))


def test_tolerance_ties_near_equal_scores_and_is_stated():
    row = np.array([[1.0, 1.0 + 2.0**-18, 0.5, 0.0]])  # one option 2^-18 above: float32 noise, not a preference
    assert argmax_credit(row, np.array([0]))[0] == 0.0
    assert argmax_credit(row, np.array([0]), tolerance=READING_TIE)[0] == 0.5
    assert argmax_credit(row * 1e6, np.array([0]), tolerance=READING_TIE)[0] == 0.5
    assert READING_TIE.rtol == 2.0**-16 and READING_TIE.atol == 0 and EXACT.exact
    with pytest.raises(InputError):
        Tolerance(rtol=-1e-3)


@given(scored_questions(), st.sampled_from([EXACT, READING_TIE]))
def test_option_credit_gathers_to_argmax_credit_for_any_key(problem, tol):
    s, a = problem
    oc = option_credit(s, tolerance=tol, dtype=np.float64)
    np.testing.assert_allclose(oc.sum(axis=1), 1.0)
    np.testing.assert_allclose(oc[np.arange(len(a)), a], argmax_credit(s, a, tolerance=tol))


# ------------------------------------------------------------------ acc_norm as lm-eval defines it


def test_acc_norm_divides_by_the_choice_text_without_the_leading_space():
    # A: "ab" (2 chars) summed log-prob -2.1; B: "abcdefghij" (10) -10.0. Per choice character (lm-eval) B wins
    # (-1.0 > -1.05); per continuation character (" " + text, the harness's old variant) A wins (-0.7 > -0.909).
    choices = [("ab", "abcdefghij", "xyzxyzxyzxyzxyzxyz", "q")]
    lp = np.array([[-2.1, -10.0, -40.0, -9.0]])
    np.testing.assert_array_equal(lm_eval_choice_lengths(choices), [[2, 10, 18, 1]])
    assert acc_norm(lp, np.array([1]), choices).value == 1.0
    old = text_accuracy(lp, np.array([1]), char_lengths=np.array([[3, 11, 19, 2]]))
    assert old.value == 0.0
    assert acc_norm(lp, np.array([0]), [("A", "B", "C", "D")]).value == text_accuracy(lp, np.array([0])).value
    with pytest.raises(InputError):
        lm_eval_choice_lengths([("a", "", "c", "d")])
