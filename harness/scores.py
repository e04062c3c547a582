"""Readings of multiple-choice scores: tie-aware argmax/argmin accuracy, option AUC, log-prob reading, selection.

Axis order, used everywhere here: scores[question, option] for one reading, scores[question, option, feature]
for many features at once (option = 4 choices A..D); answers[question] holds the correct option 0..3.
Large feature axes (49,152 SAE features) are processed in chunks so no temporary exceeds a few million cells.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.special
import scipy.stats

from harness.errors import InputError
from harness.stats import Accuracy

SCORE_AXES = ("question", "option", "feature")
TIES = ("share", "first")
CHUNK_CELLS = 1 << 22  # cells of [question, option, feature-chunk] handled at once


def _check(scores, answers) -> tuple[np.ndarray, np.ndarray, bool]:
    """scores as [question, option, feature] (a 2-D input gains a feature axis; the flag says to drop it again)."""
    s = np.asarray(scores)
    if s.ndim not in (2, 3):
        raise InputError(f"scores: expected axes {SCORE_AXES[:2]} or {SCORE_AXES}, got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.number):
        raise InputError(f"scores: expected a numeric array, got dtype {s.dtype}")
    a = np.asarray(answers)
    if a.shape != s.shape[:1] or not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"answers: expected {s.shape[0]} integers (one per question), got shape {a.shape} dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= s.shape[1]):
        raise InputError(f"answers: expected values in 0..{s.shape[1] - 1}, got range [{a.min()}, {a.max()}]")
    squeeze = s.ndim == 2
    return (s[:, :, None] if squeeze else s), a, squeeze


def _chunks(s: np.ndarray):
    """Yield (feature slice, finite chunk) over the feature axis; non-finite scores raise InputError."""
    step = max(1, CHUNK_CELLS // max(1, s.shape[0] * s.shape[1]))
    for start in range(0, s.shape[2], step):
        sl = slice(start, min(start + step, s.shape[2]))
        chunk = s[:, :, sl]
        if np.issubdtype(chunk.dtype, np.floating) and not np.all(np.isfinite(chunk)):
            raise InputError(f"scores: non-finite values in features {sl.start}..{sl.stop - 1} (expected finite scores)")
        yield sl, chunk


def _credit_chunk(chunk: np.ndarray, a: np.ndarray, ties: str) -> np.ndarray:
    """Credit [question, feature-chunk] of one [question, option, feature-chunk] block."""
    if ties == "first":
        return (np.argmax(chunk, axis=1) == a[:, None]).astype(float)
    is_max = chunk == chunk.max(axis=1, keepdims=True)
    correct_is_max = np.take_along_axis(is_max, a[:, None, None], axis=1)[:, 0, :]
    return correct_is_max / is_max.sum(axis=1)


def argmax_credit(scores, answers, *, ties: str = "share") -> np.ndarray:
    """Per-question credit [question] or [question, feature] for picking the option with the largest score.

    ties="share": 1/t when the correct option is one of t tied maxima (all four equal -> 0.25).
    ties="first": np.argmax's rule, the first maximal option wins (what the original measurement did).
    """
    if ties not in TIES:
        raise InputError(f"ties: expected one of {TIES}, got {ties!r}")
    s, a, squeeze = _check(scores, answers)
    out = np.empty((s.shape[0], s.shape[2]), dtype=float)
    for sl, chunk in _chunks(s):
        out[:, sl] = _credit_chunk(chunk, a, ties)
    return out[:, 0] if squeeze else out


def argmax_accuracy(scores, answers, *, ties: str = "share"):
    """Mean argmax credit over questions: a float for [question, option], an array [feature] otherwise.

    Only [feature]-sized results are kept, so all 49,152 features of an SAE can be scored in one call.
    """
    if ties not in TIES:
        raise InputError(f"ties: expected one of {TIES}, got {ties!r}")
    s, a, squeeze = _check(scores, answers)
    acc = np.empty(s.shape[2], dtype=float)
    for sl, chunk in _chunks(s):
        acc[sl] = _credit_chunk(chunk, a, ties).mean(axis=0)
    return float(acc[0]) if squeeze else acc


def argmin_accuracy(scores, answers, *, ties: str = "share"):
    """Accuracy of picking the smallest score (ties as in argmax_accuracy; "first" = np.argmin's first minimum)."""
    return argmax_accuracy(-np.asarray(scores), answers, ties=ties)


def better_of_argmax_argmin(scores, answers, *, ties: str = "share"):
    """The original's reported figure: per feature the larger of argmax- and argmin-accuracy (a selection)."""
    return np.maximum(argmax_accuracy(scores, answers, ties=ties), argmin_accuracy(scores, answers, ties=ties))


def option_auc(scores, answers):
    """ROC-AUC over all (question, option) pairs, correct option = positive, ties count ½; per feature.

    Computed from midranks (the Mann-Whitney U statistic / (n_pos · n_neg)), vectorised over features.
    """
    s, a, squeeze = _check(scores, answers)
    n_q, n_opt = s.shape[:2]
    positive = np.zeros((n_q, n_opt), dtype=bool)
    positive[np.arange(n_q), a] = True
    positive = positive.reshape(-1)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError(f"option_auc: need positives and negatives, got {n_pos} and {n_neg}")
    out = np.empty(s.shape[2], dtype=float)
    for sl, chunk in _chunks(s):
        ranks = scipy.stats.rankdata(chunk.reshape(n_q * n_opt, -1), axis=0)
        out[sl] = (ranks[positive].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return float(out[0]) if squeeze else out


def logprob_reading(scores) -> np.ndarray:
    """Log-softmax over the option axis: treats scores as logits. Not scale invariant, unlike accuracy."""
    s = np.asarray(scores, dtype=float)
    if s.ndim not in (2, 3):
        raise InputError(f"scores: expected axes {SCORE_AXES[:2]} or {SCORE_AXES}, got shape {s.shape}")
    return scipy.special.log_softmax(s, axis=1)


def correct_logprob(scores, answers):
    """Mean over questions of the log-prob reading of the correct option: a float, or an array [feature]."""
    s, a, squeeze = _check(scores, answers)
    lp = np.take_along_axis(logprob_reading(s), a[:, None, None], axis=1)[:, 0, :].mean(axis=0)
    return float(lp[0]) if squeeze else lp


def _check_option_matrix(name: str, values, n_options: int = 4) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[1] != n_options:
        raise InputError(f"{name}: expected shape [question, {n_options}], got {v.shape}")
    return v


def letter_accuracy(letter_logits, answers, *, ties: str = "share") -> Accuracy:
    """Accuracy of the model's letter reading: the largest of the four letter logits [question, 4] is its pick."""
    return Accuracy.from_credit(argmax_credit(_check_option_matrix("letter_logits", letter_logits), answers, ties=ties))


def pick_distribution(letter_logits, *, ties: str = "share") -> np.ndarray:
    """How often each option is picked, [4]; a t-way tie gives 1/t to each tied option ("first": all to the first)."""
    logits = _check_option_matrix("letter_logits", letter_logits)
    counts = np.zeros(logits.shape[1])
    for option in range(logits.shape[1]):
        counts[option] = argmax_credit(logits, np.full(logits.shape[0], option), ties=ties).sum()
    return counts


def text_accuracy(logprob_sums, answers, *, char_lengths=None, ties: str = "share") -> Accuracy:
    """Accuracy from summed continuation log-probs [question, 4] (lm-eval acc), or per character (acc_norm).

    char_lengths [question, 4]: the answer texts' lengths in characters; given, each sum is divided by it.
    """
    lp = _check_option_matrix("logprob_sums", logprob_sums)
    if char_lengths is not None:
        lengths = _check_option_matrix("char_lengths", char_lengths)
        if lengths.shape != lp.shape or (lengths <= 0).any():
            raise InputError(f"char_lengths: expected positive lengths of shape {lp.shape}, got shape {lengths.shape}")
        lp = lp / lengths
    return Accuracy.from_credit(argmax_credit(lp, answers, ties=ties))


def split_discovery_heldout(n_questions: int, *, seed: int, frac: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of question indices into (discovery, held-out), each sorted; round(frac·n) in discovery."""
    n_disc = round(frac * n_questions)
    if not 0 < n_disc < n_questions:
        raise InputError(f"split_discovery_heldout: frac={frac} of {n_questions} questions leaves a side empty")
    order = np.random.default_rng(seed).permutation(n_questions)
    return np.sort(order[:n_disc]), np.sort(order[n_disc:])


def select_top_features(acc_disc, k: int) -> np.ndarray:
    """Indices of the k best features by discovery accuracy, best first; equal accuracies -> lower index first."""
    acc = np.asarray(acc_disc, dtype=float)
    if acc.ndim != 1 or not 0 < k <= acc.size:
        raise InputError(f"select_top_features: expected 0 < k <= {acc.size} features, got k={k}")
    return np.argsort(-acc, kind="stable")[:k]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Selection:
    """Features chosen on the discovery half and their accuracy there and on the held-out half.

    discovery_max is the best-of-all figure (inflated by selection); heldout[0] is the same feature measured fresh.
    """

    features: tuple[int, ...]
    discovery: tuple[float, ...]
    heldout: tuple[float, ...]
    n_discovery: int
    n_heldout: int

    @property
    def discovery_max(self) -> float:
        return self.discovery[0]


def discovery_heldout(scores, answers, *, seed: int, k: int = 10, frac: float = 0.5, ties: str = "share",
                      direction: str = "argmax") -> Selection:
    """Select the top-k features by accuracy on a seeded discovery split, then measure them on the held-out split."""
    if direction not in ("argmax", "argmin"):
        raise InputError(f"direction: expected 'argmax' or 'argmin', got {direction!r}")
    s, a, _ = _check(scores, answers)
    read = argmax_accuracy if direction == "argmax" else argmin_accuracy
    disc, held = split_discovery_heldout(s.shape[0], seed=seed, frac=frac)
    acc_disc = read(s[disc], a[disc], ties=ties)
    top = select_top_features(acc_disc, k)
    acc_held = read(s[held][:, :, top], a[held], ties=ties)
    return Selection(features=tuple(int(f) for f in top), discovery=tuple(float(x) for x in acc_disc[top]),
                     heldout=tuple(float(x) for x in acc_held), n_discovery=disc.size, n_heldout=held.size)
