"""The context finder: a PLANTED feature (an SAE direction that fires on a known token pattern) is found on top
and shows in its dashboard; feature readings match the SAE's own encode; padding in batched forwards changes nothing."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from checkpoints import tiny_gguf

from harness.model import capture, forms
from harness.model.gguf_reader import read_gguf
from harness.reporting import dashboards
from harness.sae import sae as sae_lib
from harness.sae.readings import feature_subset
from harness.studies import feature_contexts

D, D_SAE, PLANTED = 16, 12, 11
PATTERN = (3, 7)  # the planted feature fires on token 7 right after token 3


def small_sae(architecture: str = "relu", seed: int = 0) -> sae_lib.SAEParams:
    """A random SAE whose last feature reads the unit direction e_0 with a threshold of 1 (bias -1)."""
    rng = np.random.default_rng(seed)
    W_enc = rng.normal(0, 0.1, (D, D_SAE)).astype(np.float32)
    W_enc[:, PLANTED] = 0.0
    W_enc[0, PLANTED] = 1.0
    b_enc = np.full(D_SAE, -0.05, np.float32)
    b_enc[PLANTED] = -1.0
    extra = {}
    if architecture == "gated":
        extra = dict(mag_scale=jnp.ones(D_SAE), b_mag=jnp.asarray(b_enc))
    if architecture == "jumprelu":
        extra = dict(threshold=jnp.full(D_SAE, 0.01))
    return sae_lib.SAEParams(W_enc=jnp.asarray(W_enc), b_enc=jnp.asarray(b_enc),
                             W_dec=jnp.asarray(rng.normal(0, 0.3, (D_SAE, D)).astype(np.float32)),
                             b_dec=jnp.zeros(D), architecture=architecture, k=3 if architecture == "topk" else None,
                             **extra)


def synthetic_residuals(tokens: np.ndarray, rng) -> np.ndarray:
    """Noise everywhere; + (2 + u)·e_0 where the pattern ends (token 7 after 3), so the planted feature fires there."""
    x = rng.normal(0, 0.1, tokens.shape + (D,)).astype(np.float32)
    hit = np.zeros(tokens.shape, bool)
    hit[..., 1:] = (tokens[..., :-1] == PATTERN[0]) & (tokens[..., 1:] == PATTERN[1])
    x[hit, 0] += 2.0 + rng.uniform(0, 1, hit.sum())
    return x, hit


def _sets(params, rng, *, plant_in_answers: bool):
    plain = rng.integers(10, 50, (40, 32))
    plain[:6, 10:12] = PATTERN  # six plain-text sequences carry the pattern
    x, hit = synthetic_residuals(plain, rng)
    acts = feature_subset(params, x, [PLANTED], reading="encoder")[..., 0]
    plain_set = feature_contexts.plain_token_set(plain, list(acts), note="synthetic")
    mc_ids, mc_acts, counted, answer = [], [], [], []
    for q in range(10):
        ctx = rng.integers(10, 50, 20)
        for k in range(4):
            seq = np.concatenate([ctx, [PATTERN[0], PATTERN[1]] if (plant_in_answers and k == 0) else rng.integers(10, 50, 2)])
            xs, _ = synthetic_residuals(seq, rng)
            mc_ids.append(seq)
            mc_acts.append(feature_subset(params, xs, [PLANTED], reading="encoder")[:, 0])
            c = np.zeros(seq.size, bool)
            c[1 if k == 0 else 20:] = True
            a = np.zeros(seq.size, bool)
            a[-1] = True
            counted.append(c), answer.append(a)
    mc = feature_contexts.MCSequences(ids=tuple(mc_ids), counted=tuple(counted), answer=tuple(answer),
                        labels=tuple(f"q{i // 4} option {'ABCD'[i % 4]}" for i in range(40)), skipped=(), fmt="letter")
    return plain_set, feature_contexts.mc_token_set(mc, mc_acts), int(hit.any(axis=1).sum())


@pytest.mark.parametrize("architecture", ["relu", "gated", "jumprelu", "topk"])
def test_feature_subset_equals_the_saes_own_encode(architecture):
    params = small_sae(architecture)
    x = np.random.default_rng(1).normal(0, 1, (5, 7, D)).astype(np.float32)
    full = np.asarray(sae_lib.encode(params, x))
    feats = [0, 4, PLANTED]
    np.testing.assert_allclose(feature_subset(params, x, feats, reading="encoder"), full[..., feats], rtol=1e-5, atol=1e-6)
    dec = x @ np.asarray(params.W_dec)[feats].T
    np.testing.assert_allclose(feature_subset(params, x, feats, reading="decoder"), dec, rtol=1e-4, atol=1e-5)


def test_topk_ties_at_the_kth_value_go_to_the_lowest_index_as_in_encode():
    params = dataclasses.replace(small_sae("topk"), W_enc=jnp.zeros((D, D_SAE)), b_enc=jnp.ones(D_SAE))
    x = np.ones((2, D), np.float32)
    np.testing.assert_array_equal(feature_subset(params, x, range(D_SAE), reading="encoder"), np.asarray(sae_lib.encode(params, x)))


def test_a_planted_feature_is_found_on_its_pattern_and_tops_the_dashboard(tmp_path):
    rng = np.random.default_rng(0)
    plain, mc, n_planted = _sets(small_sae(), rng, plant_in_answers=False)
    top = feature_contexts.pooled_top([plain, mc], 10)
    decode = lambda t: f"<{t}>"  # noqa: E731
    ctxs = feature_contexts.contexts([plain, mc], top, decode)
    # exactly the planted sequences come first, each peaking on the pattern's second token
    assert n_planted == 6
    assert all(c.origin == feature_contexts.PLAIN and c.tokens[c.peak] == f"<{PATTERN[1]}>" and c.tokens[c.peak - 1] == f"<{PATTERN[0]}>"
               for c in ctxs[:n_planted])
    assert len(ctxs) == n_planted  # 10 asked for, only the 6 sequences that fire compete: no zero-valued padding
    fire = feature_contexts.firing([plain, mc], feature=PLANTED, reading="encoder", top_n=10)
    assert fire.top_n == n_planted and fire.top_n_requested == 10
    assert fire.answer_share_top == 0.0 and fire.plain_share_top == 1.0
    assert fire.max[feature_contexts.PLAIN] > 2.0 - 0.5 and fire.max[feature_contexts.ANSWER] == 0.0
    assert np.isnan(fire.max_ratio)  # never inf
    share = feature_contexts.answer_share(fire)
    assert share.value == 0.0 and share.n == n_planted and share.ci[0] == 0.0 and 0 < share.ci[1] < 1
    comp = feature_contexts.max_comparison(fire)
    assert np.isfinite(comp.value) and comp.n == fire.n_positions[feature_contexts.ANSWER] and comp.ci[0] >= 0

    study = feature_contexts.FeatureStudy(feature=PLANTED, reading="encoder", sets=(plain, mc), firing=fire, contexts=tuple(ctxs[:n_planted]))
    html_path, md_path = dashboards.write_dashboard(dashboards.dashboard_of(study, profile="test"), tmp_path)
    page = html_path.read_text()
    first_row = page.split("<tr><td>1</td>", 1)[1].split("</tr>", 1)[0]
    assert "plain text" in first_row and f"&lt;{PATTERN[1]}&gt;</span>" in first_row and "outline" in first_row
    assert "**[<7>]**" in md_path.read_text()


def test_when_the_pattern_sits_at_the_answer_positions_the_share_says_so():
    rng = np.random.default_rng(1)
    plain, mc, n_planted = _sets(small_sae(), rng, plant_in_answers=True)
    fire = feature_contexts.firing([plain, mc], feature=PLANTED, reading="encoder", top_n=n_planted + 10)
    # 6 planted plain sequences + 10 planted answer positions: the 16 contexts that fire
    assert fire.top_origins[feature_contexts.ANSWER] == 10 and fire.top_origins[feature_contexts.PLAIN] == 6
    assert fire.answer_share_top == pytest.approx(10 / 16)
    assert fire.n_positions[feature_contexts.ANSWER] == 40
    # counted: plain 40 x 31 (BOS left out); option A 21 positions (context + 2), options B-D their 2 continuation tokens
    assert fire.answer_base_rate == pytest.approx(40 / (40 * 31 + 10 * 21 + 30 * 2))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("fc") / "tiny.gguf"
    tiny_gguf(path, arch="llama", n_layers=2, seed=3)
    ck = read_gguf(path)
    return ck, forms.build_model(ck, form=forms.Form.SCAN)


def test_batched_padded_activations_equal_one_sequence_at_a_time(tiny):
    ck, model = tiny
    d = ck.config.d_model
    rng = np.random.default_rng(0)
    params = sae_lib.SAEParams(W_enc=jnp.asarray(rng.normal(0, 1, (d, 6)), jnp.float32), b_enc=jnp.zeros(6),
                               W_dec=jnp.asarray(rng.normal(0, 1, (6, d)), jnp.float32), b_dec=jnp.zeros(d))
    seqs = [rng.integers(3, ck.config.vocab_size, n) for n in (4, 11, 7, 30, 2)]
    got = feature_contexts.sequence_activations(model, params, [1, 5], seqs, layer=1, hook="resid_pre",
                                  max_context=ck.config.max_context, batch_size=2)
    for i, s in enumerate(seqs):
        r = np.asarray(capture.residual(model, s[None], layer=1, where="pre", max_context=ck.config.max_context))[0]
        expected = np.maximum(r @ np.asarray(params.W_enc)[:, [1, 5]], 0)
        np.testing.assert_allclose(got[1][i], expected[:, 0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[5][i], expected[:, 1], rtol=1e-4, atol=1e-4)


def _token_set(name, acts, *, answer_last: bool):
    """A TokenSet of given activation rows (all positions counted; the last one an answer position if answer_last)."""
    acts = [np.asarray(a, np.float32) for a in acts]
    answer = []
    for a in acts:
        m = np.zeros(a.size, bool)
        m[-1] = answer_last
        answer.append(m)
    return feature_contexts.TokenSet(name=name, tokens=tuple(np.arange(a.size) for a in acts), acts=tuple(acts),
                       counted=tuple(np.ones(a.size, bool) for a in acts), answer=tuple(answer),
                       labels=tuple(f"{name} {i}" for i in range(len(acts))))


def test_ties_are_not_ordered_in_favour_of_plain_text():
    plain = _token_set(feature_contexts.PLAIN, [[0, 1.0, 0]] * 50, answer_last=False)  # every sequence peaks at exactly 1.0
    mc = _token_set("MC prompt (letter)", [[0, 0, 1.0]] * 50, answer_last=True)  # ... and so does every answer
    fire = feature_contexts.firing([plain, mc], feature=0, reading="encoder", top_n=20, seed=0)
    # plain text used to win every tie (it comes first); now ties are ordered at random: about half answers
    assert 4 <= fire.top_origins[feature_contexts.ANSWER] <= 16 and fire.top_n == 20
    again = feature_contexts.firing([plain, mc], feature=0, reading="encoder", top_n=20, seed=0)
    assert again.top_origins == fire.top_origins  # seeded


def test_a_feature_that_never_fires_gives_an_undecidable_measurement_not_inf_or_padding():
    plain = _token_set(feature_contexts.PLAIN, [[0, 0, 0]] * 30, answer_last=False)
    mc = _token_set("MC prompt (letter)", [[0, -1.0, 0]] * 30, answer_last=True)
    fire = feature_contexts.firing([plain, mc], feature=0, reading="decoder", top_n=20)
    assert fire.top_n == 0 and np.isnan(fire.answer_share_top)
    share, comp = feature_contexts.answer_share(fire), feature_contexts.max_comparison(fire)
    assert np.isnan(share.value) and share.ci is None and share.details["decidable"] is False
    assert np.isnan(comp.value) and comp.ci is None and "undecidable" in comp.statistic
    assert not any(np.isinf(x) for x in (fire.max_ratio, comp.value, share.value))


@pytest.mark.parametrize("shift,expected", [(1.0, "plain"), (-1.0, "answer"), (0.0, "undecided")])
def test_equal_size_maxima_compare_like_with_like(shift, expected):
    rng = np.random.default_rng(3)
    plain = rng.exponential(size=20_000)  # many plain-text tokens, same distribution as the answers when shift = 0
    answer = rng.exponential(size=200) + max(0.0, -shift) * 8
    plain = plain + max(0.0, shift) * 8
    got = feature_contexts.equal_size_maxima(plain, answer, seed=0, n_resamples=500)
    lo, hi = got["ci"]
    if expected == "plain":
        assert lo > 0
    elif expected == "answer":
        assert hi < 0
    else:  # the raw max over 20,000 tokens beats the one over 200 almost surely; equal-size draws do not
        assert plain.max() > answer.max() and lo < 0 < hi
    assert got["m"] == 200 and got["decidable"]


def test_the_split_study_on_activations_round_tripped_through_the_cache_equals_study_features(tiny, tmp_path):
    """The evals fixture's path (study_sequences, activations concatenated into the disk cache and split back,
    studies_from_activations) gives the same study as study_features in one go."""
    from harness.data.records import MCQuestion
    from harness.runs.cache import ActivationCache
    from harness.sae.corpus import Corpus, Document

    ck, model = tiny
    rng = np.random.default_rng(2)
    d = ck.config.d_model
    params = sae_lib.SAEParams(W_enc=jnp.asarray(rng.normal(0, 1, (d, 6)), jnp.float32), b_enc=jnp.zeros(6),
                               W_dec=jnp.asarray(rng.normal(0, 1, (6, d)), jnp.float32), b_dec=jnp.zeros(d))
    corpus = Corpus(documents=tuple(Document(name=f"d{i}", source="t", text=f"plain words {i} " * (5 + i))
                                    for i in range(30)), skipped={}, python_version="test")
    questions = [MCQuestion(question=f"q {i}?", choices=tuple(f"c{i}{k}" for k in range(4)), answer=i % 4,
                            subject="s", source="t", qid=f"t:{i}") for i in range(3)]
    feats = [1, 5]
    common = dict(fmt="cloze", n_plain_tokens=60, seed=0, corpus=corpus)
    run = dict(layer=1, hook="resid_pre", max_context=ck.config.max_context, reading="encoder", batch_size=4)
    whole = feature_contexts.study_features(model, ck, params, feats, questions, top_n=5, **common,
                              **{k: v for k, v in run.items() if k != "max_context"})

    plain, note, mc = feature_contexts.study_sequences(ck.tokenizer, questions, max_context=ck.config.max_context, **common)
    cache = ActivationCache(directory=tmp_path)

    def acts(seqs):
        lengths = [len(s) for s in seqs]
        key = {"tokens": np.concatenate(seqs), "lengths": np.array(lengths)}
        arrays = cache.get_or_compute(key, lambda: {str(f): np.concatenate(a) for f, a in feature_contexts.sequence_activations(
            model, params, feats, seqs, **run).items()})
        return {f: tuple(np.split(arrays[str(f)], np.cumsum(lengths)[:-1])) for f in feats}

    acts(list(plain)), acts(list(mc.ids))  # the first call fills the cache; the split path below reads it back
    assert cache.misses == 2
    split = feature_contexts.studies_from_activations(ck.tokenizer, feats, plain, note, mc, acts(list(plain)), acts(list(mc.ids)),
                                        top_n=5, reading="encoder", seed=0)
    assert cache.hits == 2 and sorted(split) == feats
    for f in feats:
        assert split[f].contexts == whole[f].contexts and repr(split[f].firing) == repr(whole[f].firing)
        for a, b in zip(split[f].sets, whole[f].sets):
            assert a.note == b.note and all(np.array_equal(x, y) for x, y in zip(a.acts, b.acts))
            assert len(a.acts) == len(b.acts) > 0
