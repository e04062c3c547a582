"""Quality gates on the profile's SAE, measured on held-out text it was not trained on (claims SAE-*).

The sample is the card's "gate sample" (the first held-out sequences of the corpus split the SAE was trained
with), small enough for CI; thresholds and their justification are in the SAE's CARD.md.
"""

import numpy as np
import pytest

from harness.claims.measures import measure


@pytest.fixture(scope="module")
def gate_evaluation(profile, checkpoint, model, sae, cached):
    """The SAE measured on its card's gate sample of held-out text (BOS and norm outliers out, CE spliced); the
    model part (residuals and CE) comes from the activation cache, keyed by the sample's tokens and the SAE file."""
    from harness.runs.cache import digest_file
    from harness.sae.corpus import CorpusConfig, build_corpus, chunk_documents, split_documents
    from harness.sae.formats import read_card
    from harness.sae.splice import evaluation_from_arrays, gate_arrays

    params, meta = sae
    card = read_card(profile.sae)
    corpus, gate = card["corpus"], card["gate_sample"]
    config = CorpusConfig(seq_len=corpus["seq_len"], heldout_fraction=corpus["heldout_fraction"], seed=corpus["seed"])
    # the held-out chunks of train_heldout_chunks, without tokenizing the (9x larger) training split
    _, held = split_documents(build_corpus(config.sources).documents, heldout_fraction=config.heldout_fraction,
                              seed=config.seed)
    tokens = chunk_documents(held, checkpoint.tokenizer, seq_len=config.seq_len).tokens[: gate["n_sequences"]]
    run = dict(layer=meta.layer, where="pre", max_context=checkpoint.config.max_context,
               n_ce_sequences=gate["ce_n_predictions"] // (config.seq_len - 1), batch_size=8)
    key = {**run, "sae": digest_file(profile.sae), "tokens": np.asarray(tokens)}
    arrays = cached("SAE gate residuals and CE", key, lambda: gate_arrays(model, params, tokens, **run),
                    code=("sae/splice.py", "sae/sae.py", "sae/formats.py"))
    return evaluation_from_arrays(params, arrays, outlier_factor=gate["outlier_factor"])


@pytest.mark.measure("sae_gate")
def test_sae_quality_gates_on_held_out_text(claim, check_claim, gate_evaluation):
    check_claim(claim, measure(claim, gate_evaluation))
