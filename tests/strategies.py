"""Shared hypothesis strategies: small score arrays [question, option, feature] with answers, and monotone maps.

Scores are small integers stored as float64 so exact ties are common (as with single-token options or a
feature at 0 on all four), and so scaling or a strictly increasing map never merges or splits a tie.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

N_OPTIONS = 4
SCORE_BOUND = 20  # scores are integers in [-SCORE_BOUND, SCORE_BOUND]


def answers(n_questions: int) -> st.SearchStrategy[np.ndarray]:
    """Correct options 0..3, one per question."""
    return hnp.arrays(np.int64, (n_questions,), elements=st.integers(0, N_OPTIONS - 1))


def score_values(n_questions: int, n_features: int | None) -> st.SearchStrategy[np.ndarray]:
    """Integer-valued float scores [question, 4] (n_features None) or [question, 4, feature]."""
    shape = (n_questions, N_OPTIONS) if n_features is None else (n_questions, N_OPTIONS, n_features)
    return hnp.arrays(np.float64, shape, elements=st.integers(-SCORE_BOUND, SCORE_BOUND).map(float))


@st.composite
def scored_questions(draw, *, max_questions: int = 8, max_features: int = 4, features: bool = True):
    """(scores [question, 4, feature] or [question, 4], answers [question])."""
    n_q = draw(st.integers(1, max_questions))
    n_f = draw(st.integers(1, max_features)) if features else None
    return draw(score_values(n_q, n_f)), draw(answers(n_q))


@st.composite
def option_permutations(draw) -> np.ndarray:
    """A permutation of the 4 options: new option j holds old option perm[j]."""
    return np.asarray(draw(st.permutations(range(N_OPTIONS))))


@st.composite
def piecewise_linear_increasing(draw):
    """A random strictly increasing piecewise-linear map on [-SCORE_BOUND - 1, SCORE_BOUND + 1] (knots inside)."""
    inner = draw(st.lists(st.integers(-SCORE_BOUND, SCORE_BOUND), max_size=6, unique=True))
    xs = np.array(sorted({-SCORE_BOUND - 1, SCORE_BOUND + 1, *inner}), dtype=float)
    slopes = draw(st.lists(st.floats(0.01, 100.0), min_size=xs.size - 1, max_size=xs.size - 1))
    ys = np.concatenate([[draw(st.floats(-100.0, 100.0))], np.cumsum(np.diff(xs) * np.array(slopes))])
    ys[1:] += ys[0]
    return lambda v: np.interp(v, xs, ys)


def strictly_increasing_maps() -> st.SearchStrategy:
    """exp, x³ + x, or a random monotone piecewise-linear map — all strictly increasing on the score range."""
    return st.one_of(st.just(np.exp), st.just(lambda v: v**3 + v), piecewise_linear_increasing())


positive_scales = st.floats(1e-3, 1e3)


# Floats for C1 as a property of the scorer: anything finite (up to ±1.8e308, subnormals), tiny values, small integers
# (exact ties); then some options are set equal to, or one ulp away from, option 0 of their question (near-ties).
finite_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-1e-300, 1e-300),
    st.integers(-3, 3).map(float),
)


@st.composite
def float_scored_questions(draw, *, max_questions: int = 6, max_features: int = 3):
    """(scores [question, 4, feature] of arbitrary finite floats with planted equal / one-ulp neighbours, answers)."""
    n_q, n_f = draw(st.integers(1, max_questions)), draw(st.integers(1, max_features))
    s = draw(hnp.arrays(np.float64, (n_q, N_OPTIONS, n_f), elements=finite_floats))
    tweaks = draw(st.lists(st.tuples(st.integers(0, n_q - 1), st.integers(1, N_OPTIONS - 1), st.integers(0, n_f - 1),
                                     st.sampled_from(["equal", "up", "down"])), max_size=6))
    for q, o, f, kind in tweaks:
        v = s[q, 0, f] if kind == "equal" else np.nextafter(s[q, 0, f], np.inf if kind == "up" else -np.inf)
        s[q, o, f] = v if np.isfinite(v) else s[q, 0, f]
    return s, draw(answers(n_q))
