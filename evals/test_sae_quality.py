"""Quality gates on the profile's SAE, measured on held-out text it was not trained on (claims SAE-*).

The sample is the card's "gate sample" (the first held-out sequences of the corpus split the SAE was
trained with), small enough for CI; thresholds and their justification are in the SAE's CARD.md.
"""

from __future__ import annotations

import pytest

from harness.claims import Measurement
from harness.sae.corpus import CorpusConfig, train_heldout_chunks
from harness.sae.formats import read_card
from harness.sae.splice import SAEEvaluation, evaluate_sae


@pytest.fixture(scope="module")
def gate_evaluation(profile, checkpoint, model, sae) -> SAEEvaluation:
    """The SAE measured on its card's gate sample of held-out text (BOS and norm outliers out, CE spliced)."""
    params, meta = sae
    card = read_card(profile.sae)
    corpus, gate = card["corpus"], card["gate_sample"]
    config = CorpusConfig(seq_len=corpus["seq_len"], heldout_fraction=corpus["heldout_fraction"], seed=corpus["seed"])
    _, heldout, _ = train_heldout_chunks(checkpoint.tokenizer, config)
    return evaluate_sae(model, params, heldout.tokens[: gate["n_sequences"]], layer=meta.layer, where="pre",
                        max_context=checkpoint.config.max_context,
                        n_ce_sequences=gate["ce_n_predictions"] // (config.seq_len - 1),
                        outlier_factor=gate["outlier_factor"])


def _details(ev: SAEEvaluation) -> dict:
    return dict(n_sequences=ev.n_sequences, n_outliers=ev.n_outliers, ce_clean=ev.ce.ce_clean,
                ce_sae=ev.ce.ce_spliced, ce_zero_ablate=ev.ce.ce_zero_ablate, ce_predictions=ev.ce.n_predictions)


@pytest.mark.claims("SAE-fvu")
def test_sae_reconstruction_leaves_little_variance_unexplained(claim, check_claim, gate_evaluation):
    ev = gate_evaluation
    check_claim(claim, Measurement(value=ev.quality.fvu, n=ev.quality.n_tokens, details=_details(ev)))


@pytest.mark.claims("SAE-l0")
def test_sae_uses_about_k_features_per_token(claim, check_claim, gate_evaluation):
    ev = gate_evaluation
    check_claim(claim, Measurement(value=ev.quality.mean_l0, n=ev.quality.n_tokens, details=_details(ev)))


@pytest.mark.claims("SAE-dead")
def test_few_sae_features_are_dead_on_held_out_text(claim, check_claim, gate_evaluation):
    ev = gate_evaluation
    check_claim(claim, Measurement(value=ev.quality.dead_fraction, n=ev.quality.n_tokens, details=_details(ev)))


@pytest.mark.claims("SAE-dense")
def test_few_sae_features_fire_on_more_than_a_tenth_of_tokens(claim, check_claim, gate_evaluation):
    ev = gate_evaluation
    check_claim(claim, Measurement(value=ev.quality.dense_fraction_10pct, n=ev.quality.n_tokens, details=_details(ev)))


@pytest.mark.claims("SAE-ce-recovered")
def test_splicing_the_sae_recovers_most_of_the_ce_loss(claim, check_claim, gate_evaluation):
    ev = gate_evaluation
    check_claim(claim, Measurement(value=ev.ce.recovered, n=ev.ce.n_predictions, details=_details(ev)))
