"""Dashboards of the C6 candidate features (the claims' feature and the best control) beside the C6 claims, which
the tests the claims plugin generates from the registry measure on its `feature_candidates` and `feature_studies`.
"""

from __future__ import annotations

import numpy as np

from harness.reporting import dashboards


def test_dashboards_of_the_candidates_are_written(profile, checkpoint, sae, feature_candidates, feature_studies,
                                                   reports_dir, report_sections):
    candidates, studies = feature_candidates, feature_studies
    base = reports_dir / profile.name
    recorded = base / "claims.json"
    links = []
    for f, why in candidates.why.items():
        a = dict(candidates.accuracies.get(f, {}))
        a |= {f"{k} (previous report)": v for k, v in dashboards.accuracies_from_claims(recorded, f).items()}
        d = dashboards.dashboard_of(studies[f], profile=profile.name, checkpoint=checkpoint, params=sae[0], accuracies=a)
        html_path, md_path = dashboards.write_dashboard(d, base / "features")
        assert html_path.stat().st_size > 5000 and md_path.exists()
        links.append((f, why, html_path))
    section = dashboards.section(profile.name, links, base)
    dashboards.write_index(profile.name, links, base / "features", report=base / "README.md")
    top = studies[next(iter(candidates.why))].contexts
    assert top and all(np.isfinite(c.value) for c in top)
    report_sections.append(section)
