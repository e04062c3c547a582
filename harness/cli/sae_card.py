"""Print a built-in profile's committed SAE card figures recomputed on held-out text and check them against the card.

Re-measures the "heldout" and "gate_sample" evaluations written by scripts/train_default_sae.py (same
corpus split, same sequences, the committed float16 weights) and compares each figure with sae.json's
card within TOLERANCES; also checks that CARD.md shows the card's values. Exit status 1 on any mismatch.
Takes a few minutes on 2 CPU cores (the CE forwards dominate).

    claims-harness sae-card [--profile NAME] [--sae DIR] [--only heldout|gate_sample]
"""

from __future__ import annotations

import argparse
import pathlib

from harness.model.forms import Form, build_model
from harness.model.sources import read_checkpoint
from harness.cli.train_sae import MODELS, evaluation_card, trainable
from harness.sae.corpus import CorpusConfig, train_heldout_chunks
from harness.sae.formats import load_sae, read_card
from harness.sae.splice import evaluate_sae

# Absolute tolerances: float reductions differ slightly across CPUs/XLA builds; counts must match exactly.
# Dead/dense fractions may move by a couple of features that sit on the firing threshold.
EXACT = ("n_sequences", "n_tokens", "n_outliers_dropped", "n_tokens_measured", "ce_n_predictions", "outlier_factor")


def tolerances(d_sae: int) -> dict[str, float]:
    """Allowed |recomputed − card| per figure."""
    fraction = 2.0 / d_sae
    return dict(fvu=1e-3, explained_variance=1e-3, mean_l0=0.05, dead_fraction=fraction,
                dense_fraction_1pct=fraction, dense_fraction_10pct=fraction, cosine_similarity=1e-3,
                relative_reconstruction_bias=1e-3, ce_clean=2e-3, ce_sae=2e-3, ce_zero_ablate=2e-3,
                ce_loss_recovered=2e-3)


def compare(card: dict, measured: dict, tol: dict[str, float]) -> list[str]:
    """One line per figure: name, card value, recomputed value, verdict; mismatches start with 'MISMATCH'."""
    lines = []
    for key in [*EXACT, *tol]:
        want, got = card.get(key), measured[key]
        ok = want is not None and (want == got if key in EXACT else abs(got - want) <= tol[key])
        limit = "exact" if key in EXACT else f"±{tol[key]:g}"
        lines.append(f"{'ok      ' if ok else 'MISMATCH'} {key:30s} card={want!s:>22} recomputed={got!s:>22} ({limit})")
    return lines


def main(argv=None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smollm2-default", help=f"the built-in profile whose SAE to check: {sorted(MODELS)}")
    parser.add_argument("--sae", type=pathlib.Path, default=None, help="the SAE folder (default: the profile's)")
    parser.add_argument("--only", choices=("heldout", "gate_sample"), default=None)
    args = parser.parse_args(argv)
    profile = trainable(args.profile)
    args.sae = args.sae or pathlib.Path(profile.sae)
    card = read_card(args.sae)
    params, meta = load_sae(args.sae)
    checkpoint = read_checkpoint(profile.model)
    model = build_model(checkpoint, form=Form.SCAN)
    corpus = card["corpus"]
    config = CorpusConfig(seq_len=corpus["seq_len"], heldout_fraction=corpus["heldout_fraction"], seed=corpus["seed"])
    _, heldout, _ = train_heldout_chunks(checkpoint.tokenizer, config)
    card_md = (args.sae / "CARD.md").read_text()
    failures = 0
    for name in [args.only] if args.only else ["heldout", "gate_sample"]:
        entry = card[name]
        n_ce = entry["ce_n_predictions"] // (config.seq_len - 1)
        ev = evaluate_sae(model, params, heldout.tokens[: entry["n_sequences"]], layer=meta.layer, where="pre",
                          max_context=checkpoint.config.max_context, n_ce_sequences=n_ce,
                          outlier_factor=entry["outlier_factor"])
        print(f"== {name}: {ev.n_sequences} held-out sequences, SAE {args.sae} (layer {meta.layer} {meta.hook})")
        lines = compare(entry, evaluation_card(ev), tolerances(params.d_sae))
        for key in ("fvu", "ce_loss_recovered", "dead_fraction"):
            if f"{entry[key]:.4f}" not in card_md:
                lines.append(f"MISMATCH CARD.md does not show {name} {key}={entry[key]:.4f}")
        print("\n".join(lines))
        failures += sum(line.startswith("MISMATCH") for line in lines)
    if meta.layer != profile.layer or meta.hook != profile.hook:
        print(f"MISMATCH SAE reads layer {meta.layer} {meta.hook}, profile {profile.name} reads {profile.layer} {profile.hook}")
        failures += 1
    print(f"{failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
