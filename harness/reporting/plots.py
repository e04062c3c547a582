"""Report plots (matplotlib Figures, no global backend): feature accuracy letter vs text, per subject, tie rules;
the intervention claims' dose-response curves.

Each function writes one PNG and returns its path; `feature_sections` returns markdown that links them.
They draw figures computed elsewhere (harness.studies.features, the measures' details) and never recompute a score.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from harness.errors import InputError
from harness.scoring.stats import Accuracy

GROUP_STYLE = {"top": ("tab:red", "o"), "pursuit": ("tab:blue", "s"), "control": ("tab:gray", "^")}
CHANCE = 0.25


def _axes(figsize: tuple[float, float]):
    """A fresh Figure (not registered with pyplot, so no backend is chosen and nothing needs closing) and its Axes."""
    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def accuracy_scatter(acc_x, acc_y, groups: Mapping[str, Sequence[int]], path, *, x_label: str, y_label: str,
                     title: str) -> pathlib.Path:
    """All features' accuracy in two formats (grey cloud) with the candidate features marked by group."""
    x, y = np.asarray(acc_x, float), np.asarray(acc_y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise InputError(f"accuracy_scatter: expected two equal 1-D per-feature arrays, got {x.shape} and {y.shape}")
    fig, ax = _axes((5.5, 5))
    ax.scatter(x, y, s=4, c="lightgray", label=f"all {x.size} features", rasterized=True)
    for group, feats in groups.items():
        color, marker = GROUP_STYLE.get(group, ("black", "x"))
        f = np.asarray(list(feats), dtype=int)
        ax.scatter(x[f], y[f], s=28, c=color, marker=marker, label=f"{group} ({f.size})", edgecolors="black", linewidths=0.4)
    lo, hi = min(x.min(), y.min(), CHANCE) - 0.02, max(x.max(), y.max(), CHANCE) + 0.02
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.6, ls=":")
    ax.axhline(CHANCE, color="black", lw=0.5, ls="--")
    ax.axvline(CHANCE, color="black", lw=0.5, ls="--")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel=x_label, ylabel=y_label, title=title)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, pathlib.Path(path))


def subject_accuracies(per_subject: Mapping[str, Mapping[str, Accuracy]], path, *, title: str) -> pathlib.Path:
    """Accuracy with its Wilson interval per subject, one series per reading/format (e.g. model letter, feature)."""
    if not per_subject:
        raise InputError("subject_accuracies: no series to plot")
    subjects = sorted(set().union(*(s.keys() for s in per_subject.values())))
    fig, ax = _axes((7, max(3.0, 0.22 * len(subjects) + 1)))
    offsets = np.linspace(-0.25, 0.25, len(per_subject)) if len(per_subject) > 1 else [0.0]
    for (name, series), dy in zip(per_subject.items(), offsets):
        ys = [i + dy for i, s in enumerate(subjects) if s in series]
        accs = [series[s] for s in subjects if s in series]
        v = np.array([a.value for a in accs])
        err = error_bars(accs)
        ax.errorbar(v, ys, xerr=err, fmt="o", ms=3, lw=0.8, capsize=1.5, label=name)
    ax.axvline(CHANCE, color="black", lw=0.5, ls="--")
    ax.set_yticks(range(len(subjects)), [f"{s} (n={_n_of(per_subject, s)})" for s in subjects], fontsize=6)
    ax.set(xlabel="accuracy (95% Wilson)", xlim=(0, 1), title=title)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, pathlib.Path(path))


def error_bars(accs: Sequence[Accuracy]) -> np.ndarray:
    """matplotlib xerr [2, n] of value − lo and hi − value, clamped at 0.

    Wilson bounds can stray outside [lo, hi] ∋ value by float error (wilson(0, 7) gave lo ≈ 2.8e-17 > value 0),
    and matplotlib rejects negative error bars; a negative length larger than float error is an InputError.
    """
    err = np.array([[a.value - a.lo for a in accs], [a.hi - a.value for a in accs]], dtype=float).reshape(2, -1)
    if err.size and err.min() < -1e-9:
        raise InputError(f"error_bars: an interval excludes its value by {-err.min():.3g} (expected lo <= value <= hi)")
    return np.clip(err, 0.0, None)


def _n_of(per_subject, subject) -> int:
    return max(s[subject].n for s in per_subject.values() if subject in s)


def tie_rule_difference(acc_share, acc_first, path, *, title: str) -> pathlib.Path:
    """Histogram over features of tie-to-first minus tie-aware accuracy: what np.argmax's tie rule adds or removes."""
    share, first = np.asarray(acc_share, float), np.asarray(acc_first, float)
    if share.shape != first.shape or share.ndim != 1:
        raise InputError(f"tie_rule_difference: expected two equal 1-D per-feature arrays, got {share.shape} and {first.shape}")
    d = first - share
    fig, ax = _axes((5.5, 3.5))
    ax.hist(d, bins=60, color="tab:purple")
    ax.axvline(0, color="black", lw=0.6)
    ax.set(xlabel="accuracy(tie-to-first) − accuracy(ties shared)", ylabel="features", yscale="log",
           title=f"{title}\n{int(np.sum(d != 0))} of {d.size} features change; max |Δ| = {np.max(np.abs(d)):.3f}")
    return _save(fig, pathlib.Path(path))


def dose_response_title(entry: Mapping) -> str:
    """"claim id: readout, vector, n" of a claims.json entry carrying a dose-response curve."""
    d = entry.get("details") or {}
    vector = (entry.get("args") or {}).get("vector") or ", ".join(d.get("vectors") or ()) or "?"
    n = d.get("n_heldout", entry.get("n"))
    return f"{entry['claim']}: {d.get('readout', '?')}, {vector}, n={n}"


def dose_response_curves(entries: Sequence[Mapping], path, *, title: str = "") -> pathlib.Path:
    """One panel per claims.json entry (details["dose_response"]: alpha, effect, lo, hi, wrong_way_share): the mean
    paired change of p(behaviour) against alpha with its interval as a band, and below it a small panel with the share
    of pairs that moved the wrong way."""
    if not entries:
        raise InputError("dose_response_curves: no dose-response results to plot")
    fig = Figure(figsize=(4.2 * len(entries), 4.2))
    grid = fig.add_gridspec(2, len(entries), height_ratios=(3, 1), hspace=0.08)
    for i, e in enumerate(entries):
        curve = sorted((e.get("details") or {}).get("dose_response") or [], key=lambda c: c["alpha"])
        if not curve:
            raise InputError(f"dose_response_curves: {e.get('claim')} has no details['dose_response'] curve")
        a, mean, lo, hi, wrong = (np.array([float(c[k]) for c in curve])
                                  for k in ("alpha", "effect", "lo", "hi", "wrong_way_share"))
        top = fig.add_subplot(grid[0, i])
        bottom = fig.add_subplot(grid[1, i], sharex=top)
        top.fill_between(a, lo, hi, color="tab:blue", alpha=0.25, lw=0, label="95% interval")
        top.plot(a, mean, "o-", color="tab:blue", ms=4, lw=1.2, label="mean effect")
        top.axhline(0, color="black", lw=0.5, ls="--")
        top.set_title(dose_response_title(e), fontsize=8)
        top.tick_params(labelbottom=False)
        if i == 0:
            top.set_ylabel("Δ p(behaviour) vs alpha 0")
            bottom.set_ylabel("wrong way", fontsize=8)
            top.legend(fontsize=7, loc="upper left")
        bottom.bar(a, wrong, width=0.6 * (np.min(np.diff(a)) if a.size > 1 else 1.0), color="tab:orange")
        bottom.axhline(0.5, color="black", lw=0.5, ls=":")
        bottom.set(ylim=(0, 1), xlabel="alpha")
        bottom.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, pathlib.Path(path))


def markdown_section(heading: str, images: Sequence[pathlib.Path], directory, lines: Sequence[str] = ()) -> str:
    """A markdown section with `lines` of text and the images linked relative to the report `directory`."""
    directory = pathlib.Path(directory)
    body = [f"## {heading}", "", *lines, ""]
    body += [f"![{p.stem}]({pathlib.Path(p).resolve().relative_to(directory.resolve()).as_posix()})" for p in images]
    return "\n".join(body) + "\n"


def feature_sections(directory, *, letter, text, cloze=None, subjects: Mapping[str, Mapping[str, Accuracy]] | None = None,
                     label: str = "") -> list[str]:
    """Draw the feature plots of one question set into `directory`; return markdown sections linking them.

    letter, text, cloze: `harness.studies.features.Analysis` of the same questions, reading and split (held-out scores plotted).
    """
    directory = pathlib.Path(directory)
    tag = f"{label}-" if label else ""
    groups = {"top": letter.candidates.top, "pursuit": letter.candidates.pursuit, "control": letter.candidates.control}
    images, lines = [], []
    for other in [a for a in (text, cloze) if a is not None]:
        images.append(accuracy_scatter(
            letter.heldout.share, other.heldout.share, groups, directory / f"{tag}feature-accuracy-letter-vs-{other.fmt}.png",
            x_label=f"accuracy, letter format ({letter.reading}, held-out n={letter.heldout.n})",
            y_label=f"accuracy, {other.fmt} format", title=f"{label}: feature accuracy, letter vs {other.fmt}"))
    best = letter.heldout_accuracy(letter.best)
    lines.append(f"Feature {letter.best} (chosen on the discovery half, n={letter.discovery.n}): discovery {letter.discovery_max:.3f}"
                 f" (best of {letter.discovery.share.size}, inflated by selection), held-out {best.value:.3f}"
                 f" [{best.lo:.3f}, {best.hi:.3f}] (n={best.n}). Candidates marked: top (red), pursuit (blue), controls (grey).")
    images.append(tie_rule_difference(letter.heldout.share, letter.heldout.first, directory / f"{tag}tie-rule-difference.png",
                                      title=f"{label}: tie-to-first vs ties shared ({letter.reading}, letter)"))
    if subjects:
        images.append(subject_accuracies(subjects, directory / f"{tag}subject-accuracies.png", title=f"{label}: accuracy per subject"))
    return [markdown_section(f"Features: {label}" if label else "Features", images, directory, lines)]
