"""The claims report: a table at the end of `pytest evals/`, and claims.json + README.md under reports/<profile>/.

It formats results measured elsewhere (nothing is recomputed). claims.json merges by claim id across partial runs
(`-k C5` replaces only the C5 rows) and names what was run: model, SAE, question sets, versions, git revision.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import pathlib
import re
import subprocess
from typing import Iterable

from harness.claims.verdicts import Result

SCHEMA_VERSION = 2
COLUMNS = ("claim", "expected", "measured", "n", "CI", "statistic", "outcome")
PACKAGES = ("jax", "jaxlib", "penzai", "numpy", "scipy", "tokenizers", "gguf", "safetensors", "pytest")


def _ci(ci) -> str:
    return f"[{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""


def rows(entries: Iterable[dict]) -> list[tuple[str, ...]]:
    """One table row per claims.json entry (see `entry`): claim, expected, measured, n, CI, statistic, verdict."""
    return [(e["claim"], e["expected"], f"{e['value']:.4g}" + (f" p={e['p_value']:.2g}" if e.get("p_value") is not None else ""),
             "" if e["n"] is None else str(e["n"]), _ci(e["ci"]), e["statistic"], e["verdict"]) for e in entries]


def _table(header, body, *, markdown: bool) -> str:
    if markdown:
        esc = [[c.replace("|", "\\|") for c in row] for row in body]
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                          *["| " + " | ".join(row) + " |" for row in esc]])
    table = [header, *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def text_table(results: Iterable[Result]) -> str:
    """A fixed-width table for the terminal: one row per claim with its statistic, n, CI and outcome."""
    return _table(COLUMNS, rows(entry(r) for r in results), markdown=False)


def power_rows(entries: Iterable[dict]) -> list[tuple[str, ...]]:
    """(claim, n, effect, CI, minimum detectable effect, n for a conclusive verdict) of entries with a power block."""
    out = []
    for e in entries:
        p = (e.get("details") or {}).get("power")
        if not p:
            continue
        fmt = lambda v: "" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))
        out.append((e["claim"], fmt(p.get("n")), fmt(p.get("effect")), _ci(p.get("ci")), fmt(p.get("mde")),
                    fmt(p.get("n_for_conclusive"))))
    return out


def null_rows(entries: Iterable[dict]) -> list[tuple[str, ...]]:
    """(claim, feature, held-out accuracy, null 95th pct, null percentile, p, discovery max, best-of-N null 95th pct)
    of the feature claims measured against a null: selection shown beside what chance gives."""
    out = []
    for e in entries:
        d = e.get("details") or {}
        null = d.get("feature_null") if "feature-null" in e["claim"] else d.get("permutation_null")
        sel = d.get("selection") or {}
        if "null_percentile" not in d or not null:
            continue
        best = sel.get("null_of_best_of_n_discovery_max") or {}
        out.append((e["claim"], str(d.get("feature")), f"{null['observed']:.3f}", f"{null['null_quantile']:.3f}",
                    f"{d['null_percentile']:.3f}", f"{null['p_value']:.2g}", f"{sel.get('discovery_max', float('nan')):.3f}",
                    f"{best.get('q95', float('nan')):.3f} (N = {sel.get('best_of_n')})"))
    return out


def dose_response_entries(entries: Iterable[dict]) -> list[dict]:
    """The entries whose details carry a dose-response curve (measures.steering_dose_response)."""
    return [e for e in entries if (e.get("details") or {}).get("dose_response")]


def dose_response_rows(e: dict) -> list[tuple[str, ...]]:
    """(alpha, mean effect [lo, hi], wrong-way share) per alpha of one entry's curve, by alpha."""
    return [(f"{c['alpha']:g}", f"{c['effect']:.4g} {_ci((c['lo'], c['hi']))}", f"{c['wrong_way_share']:.3g}")
            for c in sorted(e["details"]["dose_response"], key=lambda c: c["alpha"])]


def _dose_response_section(entries: list[dict], directory: pathlib.Path) -> list[str]:
    """"Intervention claims: dose-response": one figure per behaviour (a panel per claim: harness.reporting.plots)
    and one table per claim; nothing when no entry carries a curve."""
    if not entries:
        return []
    from harness.reporting import plots  # matplotlib only when there is a curve to draw

    groups: dict[str, list[dict]] = {}
    for e in entries:
        groups.setdefault(str((e.get("args") or {}).get("behaviour") or e["claim"]), []).append(e)
    body = ["## Intervention claims: dose-response", "",
            ("Mean paired change of p(behaviour) on held-out pairs against the steering alpha (alpha 0 is the plain model; "
             "95% bootstrap interval over pairs as the band) and the share of pairs that moved against the steering "
             "direction (lower panel); the claim's own figure is the mean rank correlation in the table above."), ""]
    for behaviour, group in groups.items():
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", behaviour).strip("-") or "claims"
        image = plots.dose_response_curves(group, directory / f"dose-response-{name}.png",
                                           title=f"{behaviour}: steering dose-response")
        body += [f"![dose-response {behaviour}]({image.name})", ""]
        for e in group:
            body += [f"**{plots.dose_response_title(e)}**", "",
                     _table(("alpha", "mean effect [lo, hi]", "wrong-way share"), dose_response_rows(e), markdown=True), ""]
    return body


def _git_revision() -> str:
    root = pathlib.Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    if rev.returncode != 0:
        return "unknown (not a git checkout)"
    return rev.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def _versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def entry(r: Result) -> dict:
    m = r.measurement
    return {
        "claim": r.claim.id, "sentence": r.claim.sentence, "profile": r.profile, "measure": r.claim.measure,
        "args": r.claim.args, "statistic": m.statistic or r.claim.statistic, "alpha": r.claim.alpha,
        "expected": r.claim.expectation, "recorded": r.claim.recorded.value, "outcome": r.outcome.value,
        "verdict": r.verdict, "value": m.value, "n": m.n, "ci": list(m.ci) if m.ci else None, "p_value": m.p_value,
        "source": r.claim.source, "details": m.details,
    }


def against_float32(results: dict[str, dict], picks: dict[str, dict], reference: dict) -> dict:
    """A reduced-precision run beside the float32 report of the same profile: per run, the questions both scored and
    how many picks changed; per claim, both values, intervals and outcomes (nothing recomputed)."""
    runs = {}
    for key, mine in sorted(picks.items()):
        theirs = reference.get("picks", {}).get(key)
        if theirs is None:
            continue
        theirs = dict(zip(theirs["questions"], theirs["picks"]))
        pairs = [(p, theirs[q]) for q, p in zip(mine["questions"], mine["picks"]) if q in theirs]
        changed = sum(a != b for a, b in pairs)
        runs[key] = {"n": len(pairs), "changed": changed, "share": changed / len(pairs) if pairs else None}
    old = {e["claim"]: e for e in reference.get("results", [])}
    claims = {k: {"float32": {f: old[k].get(f) for f in ("value", "ci", "n", "outcome")},
                  "this": {f: e.get(f) for f in ("value", "ci", "n", "outcome")}} for k, e in results.items() if k in old}
    return {"runs": runs, "claims": claims}


def _comparison_section(comparison: dict, dtype: str, reference_path: pathlib.Path) -> list[str]:
    body = [f"## {dtype} against float32", "", f"Beside `{reference_path}` (the float32 run of this profile).", "",
            _table(("run", "questions in both", "picks changed", "share"),
                   [(k, str(v["n"]), str(v["changed"]), "" if v["share"] is None else f"{v['share']:.1%}")
                    for k, v in comparison["runs"].items()], markdown=True), ""]
    claim_rows = []
    for claim, both in comparison["claims"].items():
        f32, this = both["float32"], both["this"]
        flip = "" if f32["outcome"] == this["outcome"] else " **changed**"
        claim_rows.append((claim, f"{f32['value']:.4g} {_ci(f32['ci'])}", f32["outcome"],
                           f"{this['value']:.4g} {_ci(this['ci'])}", this["outcome"] + flip))
    return body + [_table(("claim", "float32", "outcome", dtype, "outcome"), claim_rows, markdown=True), ""]


def _previous(path: pathlib.Path) -> dict:
    """The claims.json already there (schema 2), or an empty one (an older or unreadable file is replaced)."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) and old.get("schema_version") == SCHEMA_VERSION else {}


def write_report(run, directory: pathlib.Path, *, title: str) -> pathlib.Path:
    """Merge this run's results into claims.json by claim id and write README.md (tables, provenance, sections)."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "claims.json"
    old = _previous(json_path)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    provenance = {**run.provenance, "packages": _versions(), "git": _git_revision(), "finished": stamp}
    known = {c.id for c in run.claims if c.applies_to(run.profile.name)}  # a renamed or removed claim leaves the report
    results = {e["claim"]: e for e in old.get("results", []) if e.get("claim") in known}
    for r in run.results.values():
        results[r.claim.id] = {**entry(r), "run": stamp}
    not_measured = {k: v for k, v in old.get("not_measured", {}).items() if k not in run.results and k in known}
    for claim_id, (status, reason) in run.outcomes.items():
        if claim_id not in run.results and status != "checked":
            not_measured[claim_id] = {"status": status, "reason": reason, "run": stamp}
            results.pop(claim_id, None)
    picks = {**old.get("picks", {}), **run.picks}
    data = {"schema_version": SCHEMA_VERSION, "profile": run.profile.name, "dtype": run.profile.dtype,
            "provenance": provenance,
            "runs": [*old.get("runs", []), {"finished": stamp, "claims": sorted(run.results)}][-20:],
            "results": list(results.values()), "not_measured": not_measured, "picks": picks}
    comparison_section = []
    if run.profile.dtype != "float32":  # the same profile's float32 report, beside this one under the reports folder
        reference_path = directory.parent / run.profile.name / "claims.json"
        reference = _previous(reference_path)
        if reference:
            data["against_float32"] = against_float32(results, picks, reference)
            comparison_section = _comparison_section(data["against_float32"], run.profile.dtype, reference_path)
        else:
            comparison_section = [f"## {run.profile.dtype} against float32", "",
                                  f"No float32 report at `{reference_path}`: run `pytest evals/` first to compare.", ""]
    json_path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")

    counts = {o: sum(e["outcome"] == o for e in results.values()) for o in ("holds", "does not hold", "inconclusive")}
    body = [f"# {title}", "",
            f"{len(results)} claims measured: {counts['holds']} hold, {counts['does not hold']} do not hold, "
            f"{counts['inconclusive']} inconclusive; {len(not_measured)} not measured.", "",
            _table(COLUMNS, rows(results.values()), markdown=True), ""]
    if not_measured:
        body += ["## Not measured", "", *[f"- **{k}**: {v['status']} — {v['reason']}" for k, v in not_measured.items()], ""]
    power = power_rows(results.values())
    if power:
        body += ["## Power", "", "Whether \"does not hold\" or \"inconclusive\" means false or too few questions.", "",
                 _table(("claim", "n", "effect", "CI", "min. detectable effect", "n for a conclusive verdict"), power,
                        markdown=True), ""]
    nulls = null_rows(results.values())
    if nulls:
        body += ["## Selection and nulls", "", "The feature chosen on the discovery half, on held-out questions, against the null; "
                 "its discovery maximum beside what a best-of-N maximum gives by chance.", "",
                 _table(("claim", "feature", "held-out acc.", "null 95th pct", "null percentile", "p", "discovery max",
                         "best-of-N null 95th pct"), nulls, markdown=True), ""]
    body += _dose_response_section(dose_response_entries(results.values()), directory)
    body += comparison_section
    if run.data_notes:
        body += ["## Data rows not used", "", *[f"- {note}" for note in run.data_notes], ""]
    body += ["## What was run", ""]
    for key, value in provenance.items():
        if isinstance(value, dict):
            body.append(f"- {key}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
        elif isinstance(value, list):
            body += [f"- {key}:"] + [f"  - {v}" for v in value]
        else:
            body.append(f"- {key}: {value}")
    body += ["", "## Claims", "", *[f"- **{e['claim']}** ({e['statistic']}): {e['sentence']} — source: {e['source']}"
                                   for e in results.values()], "", *run.sections]
    path = directory / "README.md"
    path.write_text("\n".join(body) + "\n", encoding="utf-8")
    return path
