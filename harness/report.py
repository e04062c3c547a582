"""The claims report: a table at the end of `pytest evals/`, and JSON + markdown under reports/<profile>/.

It only formats `claims.Result`s measured elsewhere; nothing is recomputed here.
"""

from __future__ import annotations

import json
import pathlib

from harness.claims import Result

COLUMNS = ("claim", "profile", "expected", "measured", "n", "CI", "verdict")


def rows(results: list[Result]) -> list[tuple[str, ...]]:
    out = []
    for r in results:
        m = r.measurement
        ci = f"[{m.ci[0]:.3g}, {m.ci[1]:.3g}]" if m.ci else ""
        out.append((r.claim.id, r.profile, r.claim.expectation, f"{m.value:.4g}", "" if m.n is None else str(m.n), ci, r.verdict))
    return out


def text_table(results: list[Result]) -> str:
    """A fixed-width table for the terminal."""
    table = [COLUMNS, *rows(results)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def markdown_table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines)


def to_json(results: list[Result]) -> list[dict]:
    return [
        {
            "claim": r.claim.id,
            "sentence": r.claim.sentence,
            "profile": r.profile,
            "quantity": r.claim.quantity,
            "expected": r.claim.expectation,
            "expect_holds": r.claim.expect_holds,
            "value": r.measurement.value,
            "n": r.measurement.n,
            "ci": r.measurement.ci,
            "holds": r.holds,
            "verdict": r.verdict,
            "details": r.measurement.details,
        }
        for r in results
    ]


def write_report(results: list[Result], directory: pathlib.Path, *, title: str, sections: list[str] = ()) -> pathlib.Path:
    """Write claims.json and README.md (table, sentences, extra sections such as plots) to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "claims.json").write_text(json.dumps(to_json(results), indent=2, default=str))
    sentences = [f"- **{r.claim.id}**: {r.claim.sentence} ({r.claim.source})" for r in results]
    body = [f"# {title}", "", markdown_table(results), "", "## Claims", "", *sentences, "", *sections]
    path = directory / "README.md"
    path.write_text("\n".join(body) + "\n")
    return path
