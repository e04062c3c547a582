"""The original measurement's quirks (BRIEF §1) as switchable, composable transformations, and their ablation.

The original read a feature's accuracy on Hendrycks MMLU `data/val` (1) with pandas' default header row, losing the
first question of every subject file, (2) with prompts right-truncated at 256 tokens, which cuts the letter off long
questions so that their four option prompts become identical, (3) breaking ties to the first option (`np.argmax`),
and (4) reporting the better of argmax- and argmin-accuracy. The harness does the sound thing (all rows, nothing
truncated, tied credit shared, the argmax direction); `quirk_ablation` turns each quirk on alone and all together
on one per-question reading, so the distance between the original figure (0.561) and the sound one is explained
step by step. Only the truncation quirk touches the model's input; its effect on the argmax/argmin accuracy follows
from the prompt lengths alone (four identical prompts give four equal scores), its effect on the AUC needs the
truncated prompts' scores (`reread`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import numpy as np

from harness.data.records import N_CHOICES, MCQuestion
from harness.errors import InputError
from harness.scoring import scores, stats

ORIGINAL_MAX_TOKENS = 256  # micrlhf-progress: tokenizer(..., truncation=True, max_length=256), right padding (BRIEF §1)
QUIRK_NAMES: tuple[str, ...] = ("header", "truncate", "tie_first", "better_of")
_FILE_ROW = re.compile(r"^(?P<file>.+):(?P<row>\d+)$")
AUC_RESAMPLES = 1000


@dataclasses.dataclass(frozen=True, kw_only=True)
class Quirks:
    """Which of the original's quirks are on (all off = the sound measurement); see the module docstring."""

    header: bool = False              # pandas' header row: the first question of every subject file is lost
    truncate: int | None = None       # right-truncate prompts at this many tokens (the original: 256)
    tie_first: bool = False           # ties go to the first option (np.argmax) instead of shared credit
    better_of: bool = False           # report the better of argmax- and argmin-accuracy (AUC oriented by the winner)

    @classmethod
    def original(cls) -> "Quirks":
        """All four, as the original measured 0.561 (BRIEF §1)."""
        return cls(header=True, truncate=ORIGINAL_MAX_TOKENS, tie_first=True, better_of=True)

    @classmethod
    def named(cls, name: str) -> "Quirks":
        """`--quirks` values: "original" (all four) or "none" (sound)."""
        if name == "original":
            return cls.original()
        if name == "none":
            return cls()
        raise InputError(f"quirks {name!r}: expected 'original' or 'none'")

    def only(self, name: str) -> "Quirks":
        """These quirks with only `name` kept on."""
        if name not in QUIRK_NAMES:
            raise InputError(f"quirk {name!r}: expected one of {QUIRK_NAMES}")
        off = Quirks()
        return dataclasses.replace(off, **{name: getattr(self, name)})

    @property
    def label(self) -> str:
        on = [n if n != "truncate" else f"truncate {self.truncate}" for n in QUIRK_NAMES if getattr(self, n)]
        return " + ".join(on) if on else "sound (no quirk)"


# ------------------------------------------------------------------------------------------- the four quirks


def header_row_lost(questions: Sequence[MCQuestion], *, rows: str = "file") -> np.ndarray:
    """Mask [question] of the questions pandas' default `header=0` would have eaten (BRIEF §1: 1,474 of 1,531 kept).

    rows="file": the questions at row 0 of their CSV file, read from the Hendrycks qid "<source>/<subject>:<row>";
    rows="subject-order": the first question of each subject in the order given (for sets without file rows).
    """
    if rows == "file":
        lost = []
        from harness.data.mmlu import HENDRYCKS_SOURCE

        for q in questions:
            m = _FILE_ROW.match(q.qid)
            if q.source != HENDRYCKS_SOURCE or m is None:
                raise InputError(f"question {q.qid!r} (source {q.source!r}): not a Hendrycks CSV row, so no file row to "
                                 f"lose (expected source {HENDRYCKS_SOURCE!r}); use rows='subject-order' for other sets")
            lost.append(int(m["row"]) == 0)
        return np.array(lost, dtype=bool)
    if rows == "subject-order":
        seen: set[str] = set()
        lost = []
        for q in questions:
            lost.append(q.subject not in seen)
            seen.add(q.subject)
        return np.array(lost, dtype=bool)
    raise InputError(f"rows {rows!r}: expected 'file' or 'subject-order'")


def truncated(lengths, *, max_tokens: int = ORIGINAL_MAX_TOKENS) -> np.ndarray:
    """Mask [question] of the prompts right truncation at `max_tokens` cuts the letter from (BRIEF §1).

    `lengths` [question]: the longest of the question's four letter prompts in tokens, BOS included, as the
    original tokenized them (the prompts differ only in the final letter, so truncation makes all four the same).
    """
    n = np.asarray(lengths)
    if n.ndim != 1 or not np.issubdtype(n.dtype, np.integer) or (n.size and n.min() < 1):
        raise InputError(f"lengths: expected positive integer token counts [question], got {n.dtype} shape {n.shape}")
    if max_tokens < 1:
        raise InputError(f"max_tokens: expected a positive integer, got {max_tokens}")
    return n > max_tokens


def letter_prompt_lengths(tokenizer, questions: Sequence[MCQuestion]) -> np.ndarray:
    """[question] the longest letter-format option sequence in tokens (the original's prompt, never truncated here)."""
    from harness.prompts.formats import build_prompts

    return np.array([build_prompts(tokenizer, q, "letter", max_len=10**9).max_len for q in questions], dtype=np.int64)


def with_truncation(option_scores, lost, reread: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Scores [question, option] as the truncated prompts give them: rows in `lost` become four equal values.

    `reread(indices) -> [len(indices), 4]` gives the truncated prompts' real scores (one forward of the first
    `max_tokens` tokens); without it those rows are NaN apart from being tied, which fixes every argmax/argmin
    accuracy (a four-way tie) but not the AUC.
    """
    s = np.array(option_scores, dtype=float)
    lost = np.asarray(lost, dtype=bool)
    if s.ndim != 2 or s.shape[1] != N_CHOICES or lost.shape != (s.shape[0],):
        raise InputError(f"with_truncation: expected scores [question, {N_CHOICES}] and a mask [question], got {s.shape}, {lost.shape}")
    idx = np.flatnonzero(lost)
    if idx.size == 0:
        return s
    if reread is None:
        s[idx] = np.nan
        return s
    got = np.asarray(reread(idx), dtype=float)
    if got.shape != (idx.size, N_CHOICES):
        raise InputError(f"reread: returned shape {got.shape}, expected ({idx.size}, {N_CHOICES})")
    if not np.allclose(got, got[:, :1], rtol=1e-5, atol=1e-6):
        raise InputError("reread: the truncated prompts of a question gave different scores; they are identical token "
                         "sequences, so the scores must be equal (was the letter really cut?)")
    s[idx] = got
    return s


def credit(option_scores, answers, *, tie_first: bool, direction: str = "argmax") -> np.ndarray:
    """Per-question credit [question] of picking the largest (argmax) or smallest (argmin) score.

    tie_first: np.argmax / np.argmin's rule, the first extreme option wins; else a t-way tie holding the answer
    gives 1/t. A row that is all NaN (truncated, not re-read) is a four-way tie.
    """
    s = np.array(option_scores, dtype=float)
    tied = np.all(np.isnan(s), axis=1)
    s[tied] = 0.0
    if np.isnan(s).any():
        raise InputError("credit: scores hold NaN outside whole truncated rows")
    if direction not in ("argmax", "argmin"):
        raise InputError(f"direction {direction!r}: expected 'argmax' or 'argmin'")
    if direction == "argmin":
        s = -s
    return scores.argmax_credit(s, np.asarray(answers), ties="first" if tie_first else "share")


# ------------------------------------------------------------------------------------------- the ablation


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuirkRow:
    """One line of the ablation: the quirks on, the accuracy (Wilson) and AUC (bootstrap) they give, and counts."""

    quirks: Quirks
    accuracy: stats.Accuracy
    direction: str                   # "argmax", or "argmin" when better_of chose it
    auc: float                       # NaN when truncated rows were not re-read
    auc_ci: tuple[float, float]
    n: int                           # questions counted
    n_header_lost: int
    n_truncated: int

    @property
    def label(self) -> str:
        return self.quirks.label


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuirkAblation:
    """Rows: sound, each quirk alone, all together (in that order)."""

    rows: tuple[QuirkRow, ...]
    notes: tuple[str, ...] = ()

    def row(self, label: str) -> QuirkRow:
        for r in self.rows:
            if r.label == label:
                return r
        raise InputError(f"quirk ablation: no row {label!r}; rows are {[r.label for r in self.rows]}")

    def markdown(self) -> str:
        """The report table: one line per quirk setting, accuracy and AUC with their intervals and n."""
        lines = ["| quirks on | direction | accuracy [95% Wilson] | ROC-AUC [95% bootstrap] | n | header rows lost | letters truncated |",
                 "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            auc = "needs re-read" if np.isnan(r.auc) else f"{r.auc:.3f} [{r.auc_ci[0]:.3f}, {r.auc_ci[1]:.3f}]"
            lines.append(f"| {r.label} | {r.direction} | {r.accuracy.value:.3f} [{r.accuracy.lo:.3f}, {r.accuracy.hi:.3f}] "
                         f"| {auc} | {r.n} | {r.n_header_lost} | {r.n_truncated} |")
        return "\n".join(lines + [""] + [f"- {n}" for n in self.notes]) + "\n"

    def as_details(self) -> dict:
        """Plain data for Measurement.details / claims.json."""
        return {"rows": [{"quirks": r.label, "direction": r.direction, "accuracy": round(r.accuracy.value, 4),
                          "accuracy_ci": [round(r.accuracy.lo, 4), round(r.accuracy.hi, 4)], "auc": r.auc,
                          "auc_ci": list(r.auc_ci), "n": r.n, "n_header_lost": r.n_header_lost,
                          "n_truncated": r.n_truncated} for r in self.rows], "notes": list(self.notes)}


def _auc_with_ci(option_scores, answers, *, seed: int, n_resamples: int) -> tuple[float, tuple[float, float]]:
    """ROC-AUC over (question, option) pairs, correct option positive, ties ½; percentile bootstrap over questions."""
    s, a = np.asarray(option_scores, float), np.asarray(answers)
    if np.isnan(s).any():
        return float("nan"), (float("nan"), float("nan"))
    value = float(scores.option_auc(s, a))
    if s.shape[0] < 2:
        return value, (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, s.shape[0], size=(n_resamples, s.shape[0]))
    boots = np.array([scores.option_auc(s[i], a[i]) for i in idx])
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return value, (float(lo), float(hi))


def measure(option_scores, answers, quirks: Quirks, *, header_lost=None, lengths=None,
            reread: Callable[[np.ndarray], np.ndarray] | None = None, seed: int = 0,
            n_resamples: int = AUC_RESAMPLES) -> QuirkRow:
    """Accuracy and AUC of one feature reading `option_scores` [question, option] with `quirks` on.

    header_lost [question] (from `header_row_lost`) is needed when quirks.header is on; lengths [question] (from
    `letter_prompt_lengths`) when quirks.truncate is set; `reread` as in `with_truncation`.
    """
    s = np.asarray(option_scores, dtype=float)
    a = np.asarray(answers)
    if s.ndim != 2 or s.shape[1] != N_CHOICES or a.shape != (s.shape[0],):
        raise InputError(f"quirk measure: expected scores [question, {N_CHOICES}] and answers [question], got {s.shape}, {a.shape}")
    keep = np.ones(s.shape[0], dtype=bool)
    n_header = 0
    if quirks.header:
        if header_lost is None:
            raise InputError("quirk 'header' is on: pass header_lost (harness.studies.quirks.header_row_lost)")
        header_lost = np.asarray(header_lost, dtype=bool)
        if header_lost.shape != keep.shape:
            raise InputError(f"header_lost: expected shape {keep.shape}, got {header_lost.shape}")
        keep &= ~header_lost
        n_header = int(header_lost.sum())
    n_trunc = 0
    if quirks.truncate is not None:
        if lengths is None:
            raise InputError(f"quirk 'truncate {quirks.truncate}' is on: pass lengths (harness.studies.quirks.letter_prompt_lengths)")
        lost = truncated(lengths, max_tokens=quirks.truncate)
        if lost.shape != keep.shape:
            raise InputError(f"lengths: expected shape {keep.shape}, got {lost.shape}")
        s = with_truncation(s, lost, reread)
        n_trunc = int((lost & keep).sum())
    s, a = s[keep], a[keep]
    if s.shape[0] == 0:
        raise InputError("quirk measure: no question left")
    up = credit(s, a, tie_first=quirks.tie_first)
    direction, chosen = "argmax", up
    if quirks.better_of:
        down = credit(s, a, tie_first=quirks.tie_first, direction="argmin")
        if down.mean() > up.mean():
            direction, chosen = "argmin", down
    oriented = s if direction == "argmax" else -s
    auc, auc_ci = _auc_with_ci(oriented, a, seed=seed, n_resamples=n_resamples)
    return QuirkRow(quirks=quirks, accuracy=stats.Accuracy.from_credit(chosen), direction=direction, auc=auc,
                    auc_ci=auc_ci, n=int(s.shape[0]), n_header_lost=n_header, n_truncated=n_trunc)


def quirk_ablation(option_scores, answers, *, quirks: Quirks | None = None, header_lost=None, lengths=None,
                   reread: Callable[[np.ndarray], np.ndarray] | None = None, seed: int = 0,
                   n_resamples: int = AUC_RESAMPLES) -> QuirkAblation:
    """The ablation table: sound, each quirk of `quirks` (default: the original's four) alone, then all together.

    No model forward is needed except `reread` for the AUC of truncated prompts (see `with_truncation`). The
    better-of row's Wilson interval is nominal: choosing the better direction after seeing the data inflates it.
    """
    quirks = Quirks.original() if quirks is None else quirks
    kwargs = dict(header_lost=header_lost, lengths=lengths, reread=reread, seed=seed, n_resamples=n_resamples)
    settings = [Quirks()] + [quirks.only(n) for n in QUIRK_NAMES if getattr(quirks, n)] + [quirks]
    rows = tuple(measure(option_scores, answers, q, **kwargs) for q in settings)
    notes = ["accuracy CIs are Wilson 95% over the questions counted (ties shared: fractional credit); AUC CIs are "
             f"percentile bootstrap 95% over questions ({n_resamples} resamples, seed {seed})",
             "better_of picks the direction after seeing the data: its interval is nominal (selection inflates it)"]
    if quirks.truncate is not None and reread is None:
        notes.append("truncated prompts were not re-read: their four option scores are tied (exact for accuracy), "
                     "the AUC of rows with truncation is not computed")
    return QuirkAblation(rows=rows, notes=tuple(notes))


def truncation_reread(model, checkpoint, questions: Sequence[MCQuestion], reading: Callable[[np.ndarray], np.ndarray], *,
                      layer: int, hook: str = "resid_pre", max_tokens: int = ORIGINAL_MAX_TOKENS,
                      batch_size: int = 8) -> Callable[[np.ndarray], np.ndarray]:
    """`reread` for `with_truncation`: question i's letter prompt cut to its first `max_tokens` tokens (the four options'
    cuts are one sequence), the residual at its last position, read by `reading(resid [n, embedding]) -> [n]`.

    Every truncated prompt has exactly `max_tokens` tokens; the forwards go through runs.batching.run_batches.
    """
    from harness.model import capture
    from harness.prompts.formats import build_prompts
    from harness.runs.batching import Batch, run_batches
    from harness.runs.options import HOOKS

    if hook not in HOOKS:
        raise InputError(f"hook {hook!r}: expected one of {tuple(HOOKS)}")
    tok, qs = checkpoint.tokenizer, tuple(questions)

    def reread(idx: np.ndarray) -> np.ndarray:
        rows = []
        for i in np.asarray(idx, dtype=int):
            options = build_prompts(tok, qs[i], "letter", max_len=10**9).options
            cuts = {o.ids[:max_tokens] for o in options}
            if len(cuts) != 1 or len(next(iter(cuts))) != max_tokens:
                raise InputError(f"question {qs[i].qid}: its letter prompts are not cut to one {max_tokens}-token sequence "
                                 "(not longer than the limit, or they differ before it)")
            rows.append(next(iter(cuts)))
        out = np.empty((len(rows), N_CHOICES))

        def forward(batch: Batch):
            return capture.residual(model, batch.tokens, layer=layer, where=HOOKS[hook], max_context=max_tokens)

        def take(batch: Batch, resid) -> None:
            k = len(batch.members)
            read = np.asarray(reading(np.asarray(resid)[:k, -1]), dtype=float)
            if read.shape != (k,):
                raise InputError(f"reading: returned shape {read.shape}, expected ({k},)")
            out[batch.members] = read[:, None]

        run_batches(rows, forward=forward, take=take, max_len=max_tokens, batch_size=batch_size,
                    label="truncated letter prompts")
        return out

    return reread


def feature_quirk_ablation(run, params, feature: int, *, checkpoint, model=None, rows: str = "file",
                           quirks: Quirks | None = None, seed: int = 0, n_resamples: int = AUC_RESAMPLES) -> QuirkAblation:
    """The ablation of one SAE feature read the original's way (decoder projection) on a letter-format OptionRun.

    Header rows come from the run's questions (`rows` as in `header_row_lost`), prompt lengths from the tokenizer;
    with `model` given the truncated prompts are re-read (one forward each), else their AUC is left out.
    """
    from harness.sae.readings import feature_readings

    if run.fmt != "letter":
        raise InputError(f"feature_quirk_ablation: expected the letter-format run (the original's prompt), got {run.fmt!r}")
    quirks = Quirks.original() if quirks is None else quirks
    dec = np.asarray(feature_readings(run.resid, params, reading="decoder", features=[feature]))[:, :, 0]
    lengths = letter_prompt_lengths(checkpoint.tokenizer, run.questions) if quirks.truncate is not None else None
    reread = None
    if model is not None and quirks.truncate is not None:
        def reading(resid):
            return np.asarray(feature_readings(resid[:, None, :], params, reading="decoder", features=[feature]))[:, 0, 0]

        reread = truncation_reread(model, checkpoint, run.questions, reading, layer=run.layer, hook=run.hook,
                                   max_tokens=quirks.truncate)
    header = header_row_lost(run.questions, rows=rows) if quirks.header else None
    return quirk_ablation(dec, run.answers, quirks=quirks, header_lost=header, lengths=lengths, reread=reread, seed=seed,
                          n_resamples=n_resamples)
