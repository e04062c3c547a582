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
from harness.scoring.stats import Accuracy

SCORE_AXES = ("question", "option", "feature")
TIES = ("share", "first")
CHUNK_CELLS = 1 << 22  # cells of [question, option, feature-chunk] handled at once


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tolerance:
    """Options of one question tie with the maximum when max - score <= atol + rtol * (largest |score| of the question).

    rtol alone is invariant to rescaling the scores by any c > 0 (up to rounding of c·s); atol is in score units.
    """

    rtol: float = 0.0
    atol: float = 0.0

    def __post_init__(self):
        if not (0 <= self.rtol < 1 and 0 <= self.atol < float("inf")):
            raise InputError(f"tolerance: expected 0 <= rtol < 1 and finite atol >= 0, got rtol={self.rtol}, atol={self.atol}")

    @property
    def exact(self) -> bool:
        return self.rtol == 0 and self.atol == 0


EXACT = Tolerance()
# float32 keeps 24 significant bits (eps = 2^-23 ~ 1.2e-7). The readings and log-prob sums are float32 results of long
# reductions whose order differs between equivalent paths (packed vs per-option sequences): two identical options got
# log-prob sums 7e-6 apart near -10, i.e. ~6 ulp of the question's scale. 2^7 ulp = 2^-16 relative (1.5e-5) covers
# that with margin and is far below any difference that means something. Readings: relative only (scale invariant).
# Log-prob sums also carry an absolute error of ~eps·|logit| ~ 4e-6 per token even when the sum is near 0: atol 2^-14.
READING_TIE = Tolerance(rtol=2.0**-16)
LOGPROB_TIE = Tolerance(rtol=2.0**-16, atol=2.0**-14)


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


def _chunks(s: np.ndarray, *, finite: bool = True):
    """Yield (feature slice, chunk) over the feature axis; non-finite scores raise InputError unless finite=False."""
    step = max(1, CHUNK_CELLS // max(1, s.shape[0] * s.shape[1]))
    for start in range(0, s.shape[2], step):
        sl = slice(start, min(start + step, s.shape[2]))
        chunk = s[:, :, sl]
        if finite and np.issubdtype(chunk.dtype, np.floating) and not np.all(np.isfinite(chunk)):
            raise InputError(f"scores: non-finite values in features {sl.start}..{sl.stop - 1} (expected finite scores)")
        yield sl, chunk


def _check_identical(identical, shape) -> np.ndarray | None:
    """Option group labels [question, option] (equal label = identical option text), or None."""
    if identical is None:
        return None
    g = np.asarray(identical)
    if g.shape != tuple(shape[:2]) or not np.issubdtype(g.dtype, np.integer):
        raise InputError(f"identical: expected integer group labels of shape {tuple(shape[:2])}, got shape {g.shape} dtype {g.dtype}")
    return g


def _merge_identical(chunk: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Every option takes the largest score of its group of identical options, so identical options tie exactly."""
    if groups is None or (groups == np.arange(groups.shape[1])[None, :]).all():
        return chunk
    out = chunk.copy()
    for o in range(chunk.shape[1]):
        same = groups == groups[:, o:o + 1]  # [question, option']
        out[:, o, :] = np.where(same[:, :, None], chunk, -np.inf).max(axis=1)
    return out


def _is_max(chunk: np.ndarray, tolerance: Tolerance) -> np.ndarray:
    """[question, option, feature-chunk]: the option ties with the question's maximum (within `tolerance`)."""
    top = chunk.max(axis=1, keepdims=True)
    if tolerance.exact:
        return chunk == top
    scale = np.abs(chunk).max(axis=1, keepdims=True)
    return (top - chunk) <= tolerance.atol + tolerance.rtol * scale


def _credit_chunk(chunk: np.ndarray, a: np.ndarray, ties: str, tolerance: Tolerance = EXACT,
                  groups: np.ndarray | None = None) -> np.ndarray:
    """Credit [question, feature-chunk] of one [question, option, feature-chunk] block."""
    chunk = _merge_identical(chunk, groups)
    is_max = _is_max(chunk, tolerance)
    if ties == "first":
        return (np.argmax(is_max, axis=1) == a[:, None]).astype(float)
    correct_is_max = np.take_along_axis(is_max, a[:, None, None], axis=1)[:, 0, :]
    return correct_is_max / is_max.sum(axis=1)


def option_credit(scores, *, tolerance: Tolerance = EXACT, identical=None, dtype=np.float32) -> np.ndarray:
    """Tie-aware credit [question, option, feature] each option would earn if it were the answer (1/t or 0).

    Any answer key's credit is a gather from it (credit[q, key[q], f]), so shuffled keys cost no re-scoring.
    """
    s, _, squeeze = _check(scores, np.zeros(np.shape(scores)[0], dtype=np.int64))
    groups = _check_identical(identical, s.shape)
    out = np.empty(s.shape, dtype=dtype)
    for sl, chunk in _chunks(s):
        is_max = _is_max(_merge_identical(chunk, groups), tolerance)
        out[:, :, sl] = is_max / is_max.sum(axis=1, keepdims=True)
    return out[:, :, 0] if squeeze else out


def argmax_credit(scores, answers, *, ties: str = "share", tolerance: Tolerance = EXACT, identical=None) -> np.ndarray:
    """Per-question credit [question] or [question, feature] for picking the option with the largest score.

    ties="share": 1/t when the correct option is one of t tied maxima (all four equal -> 0.25).
    ties="first": np.argmax's rule, the first maximal option wins (what the original measurement did).
    tolerance: scores within it of the maximum tie (EXACT by default; READING_TIE / LOGPROB_TIE for float32 paths).
    identical: group labels [question, option] (identical_options); options with one label (same text) always tie.
    """
    if ties not in TIES:
        raise InputError(f"ties: expected one of {TIES}, got {ties!r}")
    s, a, squeeze = _check(scores, answers)
    groups = _check_identical(identical, s.shape)
    out = np.empty((s.shape[0], s.shape[2]), dtype=float)
    for sl, chunk in _chunks(s):
        out[:, sl] = _credit_chunk(chunk, a, ties, tolerance, groups)
    return out[:, 0] if squeeze else out


def argmax_accuracy(scores, answers, *, ties: str = "share", tolerance: Tolerance = EXACT, identical=None):
    """Mean argmax credit over questions: a float for [question, option], an array [feature] otherwise.

    Only [feature]-sized results are kept, so all 49,152 features of an SAE can be scored in one call.
    """
    if ties not in TIES:
        raise InputError(f"ties: expected one of {TIES}, got {ties!r}")
    s, a, squeeze = _check(scores, answers)
    groups = _check_identical(identical, s.shape)
    acc = np.empty(s.shape[2], dtype=float)
    for sl, chunk in _chunks(s):
        acc[sl] = _credit_chunk(chunk, a, ties, tolerance, groups).mean(axis=0)
    return float(acc[0]) if squeeze else acc


def argmin_accuracy(scores, answers, *, ties: str = "share", tolerance: Tolerance = EXACT, identical=None):
    """Accuracy of picking the smallest score (ties as in argmax_accuracy; "first" = np.argmin's first minimum)."""
    return argmax_accuracy(-np.asarray(scores), answers, ties=ties, tolerance=tolerance, identical=identical)


def better_of_argmax_argmin(scores, answers, *, ties: str = "share", tolerance: Tolerance = EXACT, identical=None):
    """The original's reported figure: per feature the larger of argmax- and argmin-accuracy (a selection)."""
    kw = dict(ties=ties, tolerance=tolerance, identical=identical)
    return np.maximum(argmax_accuracy(scores, answers, **kw), argmin_accuracy(scores, answers, **kw))


def identical_options(choices) -> np.ndarray:
    """Group labels [question, option]: each option's label is the index of the first option with the same text.

    choices: per question its option texts (e.g. [q.choices for q in questions]); pass the result as `identical`.
    """
    rows = [list(c) for c in choices]
    if not rows or len({len(r) for r in rows}) != 1:
        raise InputError(f"identical_options: expected the same number of option texts per question, got {sorted({len(r) for r in rows})}")
    return np.array([[r.index(t) for t in r] for r in rows], dtype=np.int64)


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
    lp = np.empty(s.shape[2])
    for sl, chunk in _chunks(s, finite=False):  # a feature chunk at a time: the float64 log-softmax stays small
        lp[sl] = np.take_along_axis(logprob_reading(chunk), a[:, None, None], axis=1)[:, 0, :].mean(axis=0)
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


def text_accuracy(logprob_sums, answers, *, char_lengths=None, ties: str = "share", tolerance: Tolerance = EXACT,
                  identical=None) -> Accuracy:
    """Accuracy from summed continuation log-probs [question, 4] (lm-eval acc), or divided by char_lengths.

    char_lengths [question, 4]: lengths in characters each sum is divided by. lm-eval's acc_norm divides by the
    choice text's length WITHOUT the target delimiter: that is `acc_norm` below. Passing an OptionRun's n_chars
    (the continuation, " " + text in the text format) gives the harness's older per-continuation-character variant.
    """
    lp = _check_option_matrix("logprob_sums", logprob_sums)
    if char_lengths is not None:
        lengths = _check_option_matrix("char_lengths", char_lengths)
        if lengths.shape != lp.shape or (lengths <= 0).any():
            raise InputError(f"char_lengths: expected positive lengths of shape {lp.shape}, got shape {lengths.shape}")
        lp = lp / lengths
    return Accuracy.from_credit(argmax_credit(lp, answers, ties=ties, tolerance=tolerance, identical=identical))


def lm_eval_choice_lengths(choices) -> np.ndarray:
    """[question, option] lengths of the choice texts as lm-eval counts them for acc_norm: len(choice), no delimiter.

    choices: per question its choice strings (the answer texts for text/cloze, the letters "A".."D" for letters).
    """
    rows = [list(c) for c in choices]
    if not rows or len({len(r) for r in rows}) != 1 or not all(isinstance(t, str) for r in rows for t in r):
        raise InputError("lm_eval_choice_lengths: expected the same number of choice strings per question")
    lengths = np.array([[len(t) for t in r] for r in rows], dtype=np.int64)
    if (lengths <= 0).any():
        q, o = np.argwhere(lengths <= 0)[0]
        raise InputError(f"lm_eval_choice_lengths: question {q} option {o} has an empty choice text")
    return lengths


def acc_norm(logprob_sums, answers, choices, *, ties: str = "share", tolerance: Tolerance = LOGPROB_TIE,
             identical=None) -> Accuracy:
    """lm-eval's acc_norm: argmax over options of summed log-prob / len(choice text) (no leading space).

    choices: per question its choice strings (see lm_eval_choice_lengths). Ties within LOGPROB_TIE share credit.
    """
    return text_accuracy(logprob_sums, answers, char_lengths=lm_eval_choice_lengths(choices), ties=ties,
                         tolerance=tolerance, identical=identical)


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
