"""Quality gates on the profile's SAE, measured on held-out text it was not trained on (claims SAE-*).

The sample is the card's "gate sample" (the first held-out sequences of the corpus split the SAE was trained
with), small enough for CI; thresholds and their justification are in the SAE's CARD.md.
"""

import pytest

from harness.claims.measures import measure


@pytest.fixture(scope="module")
def gate_evaluation(profile, checkpoint, model, sae):
    """The SAE measured on its card's gate sample of held-out text (BOS and norm outliers out, CE spliced)."""
    from harness.sae.corpus import CorpusConfig, train_heldout_chunks
    from harness.sae.formats import read_card
    from harness.sae.splice import evaluate_sae

    params, meta = sae
    card = read_card(profile.sae)
    corpus, gate = card["corpus"], card["gate_sample"]
    config = CorpusConfig(seq_len=corpus["seq_len"], heldout_fraction=corpus["heldout_fraction"], seed=corpus["seed"])
    _, heldout, _ = train_heldout_chunks(checkpoint.tokenizer, config)
    return evaluate_sae(model, params, heldout.tokens[: gate["n_sequences"]], layer=meta.layer, where="pre",
                        max_context=checkpoint.config.max_context,
                        n_ce_sequences=gate["ce_n_predictions"] // (config.seq_len - 1),
                        outlier_factor=gate["outlier_factor"])


@pytest.mark.measure("sae_gate")
def test_sae_quality_gates_on_held_out_text(claim, check_claim, gate_evaluation):
    check_claim(claim, measure(claim, gate_evaluation))
