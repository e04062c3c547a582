"""The report's format-robustness section beside the C2b claims (measured by the tests the claims plugin generates
from the registry, on its `format_credits`: the MMLU questions under 4 rotations, letter variants, text and cloze).
"""

from __future__ import annotations

from harness.studies import format_robustness


def test_format_robustness_section_is_written(profile, format_credits, reports_dir, report_sections):
    from harness.scoring.stats import Accuracy

    accs = {k: Accuracy.from_credit(c) for k, c in format_credits.variants.items()}
    section = format_robustness.markdown_section(format_credits.study, accs)
    directory = reports_dir / profile.name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "format_robustness.md").write_text(section)
    assert "shift 3" in section and len(accs) == 5
    report_sections.append(section)
