"""Format robustness (C2b): rotations move the answer key, a model that always picks "B" gets the accuracy the
rotated key predicts, position bias and the pick test see it; the readout from the last block equals the logits."""

from __future__ import annotations

import numpy as np
import pytest
from checkpoints import tiny_gguf
from hypothesis import given
from hypothesis import strategies as st

from harness.data.records import MCQuestion
from harness.errors import InputError
from harness.model import capture, forms
from harness.model.gguf_reader import read_gguf
from harness.model.tokenizer import ChatTokenizer
from harness.prompts import formats
from harness.studies import format_robustness


def _questions(n: int, seed: int = 0) -> tuple[MCQuestion, ...]:
    rng = np.random.default_rng(seed)
    return tuple(MCQuestion(question=f"question {i}?", choices=tuple(f"q{i} choice {k}" for k in range(4)),
                            answer=int(rng.integers(0, 4)), subject="s", source="test", qid=f"t{i}") for i in range(n))


def always(letter_index: int):
    """A stub scorer: the given option always has the largest score (e.g. 1 = "B")."""

    def score(questions, shift):
        s = np.zeros((len(questions), 4))
        s[:, letter_index] = 1.0
        return s

    return score


def knows_the_answer(questions, shift):
    """A stub scorer that reads the correct answer's text (ends with the original index == answer)."""
    return np.array([[1.0 if c == q.choices[q.answer] else 0.0 for c in q.choices] for q in questions])


@given(st.integers(0, 3), st.integers(0, 7))
def test_rotation_moves_the_answer_text_with_the_key(answer, shift):
    q = MCQuestion(question="q?", choices=("a", "b", "c", "d"), answer=answer, subject="s", source="t", qid="x")
    r = format_robustness.rotate(q, shift)
    assert r.choices[r.answer] == q.choices[q.answer]
    assert sorted(r.choices) == sorted(q.choices)
    assert format_robustness.rotate(format_robustness.rotate(q, shift), 4 - shift % 4).choices == q.choices


def test_a_model_that_always_picks_b_gets_the_share_of_b_answers_in_each_rotation():
    qs = _questions(200, seed=3)
    study = format_robustness.rotation_study(qs, always(1), name="always-B")
    original = np.array([q.answer for q in qs])
    for shift, acc in zip(format_robustness.SHIFTS, study.accuracy):
        assert acc.value == pytest.approx(np.mean((original + shift) % 4 == 1))
        assert acc.n == 200
    assert [a.value for a in study.by_position] == [0.0, 1.0, 0.0, 0.0]
    assert study.picks == (0.0, 800.0, 0.0, 0.0)
    assert study.key == (200, 200, 200, 200)
    assert study.test.pvalue < 1e-100
    expected = [np.mean((original + s) % 4 == 1) for s in format_robustness.SHIFTS]
    assert study.spread == pytest.approx(max(expected) - min(expected))


def test_a_model_that_reads_the_answer_is_robust_and_picks_like_the_key():
    study = format_robustness.rotation_study(_questions(60), knows_the_answer, name="oracle")
    assert [a.value for a in study.accuracy] == [1.0] * 4
    assert study.spread == 0.0
    assert study.test.pvalue == pytest.approx(1.0)


def test_a_question_unscored_in_one_rotation_is_left_out_of_all_and_counted():
    def score(questions, shift):
        s = always(1)(questions, shift)
        if shift == 2:
            s[0] = np.nan
        return s

    study = format_robustness.rotation_study(_questions(10), score, name="one-missing")
    assert study.n == 9 and study.n_unscored == 1
    assert all(a.n == 9 for a in study.accuracy)


def test_a_scorer_returning_the_wrong_shape_is_an_input_error():
    with pytest.raises(InputError, match="shape"):
        format_robustness.rotation_study(_questions(5), lambda qs, s: np.zeros((len(qs), 3)), name="bad")


def test_variant_spread_is_decided_on_a_question_bootstrap_of_the_same_questions():
    from harness.claims.measures import FormatCredits, variant_spread

    credits = FormatCredits(study=None, rotations={}, variants={"x": np.array([1, 0, 0, 1] * 25), "y": np.array([1, 1, 1, 0] * 25)})
    m = variant_spread(credits)
    assert m.value == pytest.approx(0.25) and m.n == 100 and m.ci[0] <= 0.25 <= m.ci[1] and m.ci[1] - m.ci[0] > 0.05
    with pytest.raises(InputError, match="same questions"):
        variant_spread(FormatCredits(study=None, rotations={}, variants={"x": np.ones(4), "y": np.ones(2)}))


def test_the_original_variant_renders_the_harness_letter_prompt():
    from checkpoints import word_level_tokenizer

    template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>\n{% endfor %}"
                "{% if add_generation_prompt %}<assistant>{% endif %}")
    tok = ChatTokenizer(tokenizer=word_level_tokenizer(8), chat_template=template, bos_token=None, eos_token=None,
                        add_bos=False)
    for q in _questions(3):
        assert format_robustness.variant_context(tok, q, format_robustness.VARIANT_BY_NAME["paren-open"]) == formats.context_text(tok, q, "letter")
        dot = format_robustness.variant_context(tok, q, format_robustness.VARIANT_BY_NAME["dot-space"])
        assert dot.endswith("Answer:") and f"\nA. {q.choices[0]}\n" in dot


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("fr") / "tiny.gguf"
    tiny_gguf(path, arch="llama", n_layers=2, seed=7)
    ck = read_gguf(path)
    return ck, forms.build_model(ck, form=forms.Form.SCAN)


def test_logits_read_out_from_the_last_block_equal_the_full_forward(tiny):
    ck, model = tiny
    rng = np.random.default_rng(0)
    contexts = [list(rng.integers(3, ck.config.vocab_size, size=n)) for n in (5, 9, 3, 12)]
    probes = [list(rng.choice(ck.config.vocab_size, size=4, replace=False)) for _ in contexts]
    got = format_robustness.next_token_logits(model, ck, contexts, probes, batch_size=2)
    for c, p, g in zip(contexts, probes, got):
        full = np.asarray(capture.logits(model, np.array([c]), max_context=ck.config.max_context))[0, -1]
        np.testing.assert_allclose(g, full[p], rtol=1e-4, atol=1e-4)


# --- letters on a SentencePiece tokenizer with Phi-3's specials (tests/standins.py) ----------------------------


@pytest.fixture(scope="module")
def phi3_tiny(tmp_path_factory):
    """A 2-layer stand-in Phi-3 (SentencePiece-BPE tokenizer, Phi-3 specials and template) and its scan model."""
    import standins

    folder = standins.phi3_hf_folder(tmp_path_factory.mktemp("phi3") / "phi3",
                                     config=standins.phi3_config(num_hidden_layers=2))
    from harness.model.hf_reader import read_hf_dir

    ck = read_hf_dir(folder)
    return ck, forms.build_model(ck, form=forms.Form.SCAN)


@pytest.mark.parametrize("variant", format_robustness.VARIANTS, ids=lambda v: v.name)
def test_every_variant_reads_its_letters_from_the_joined_encoding(phi3_tiny, variant):
    tok = phi3_tiny[0].tokenizer
    q = _questions(1)[0]
    context = format_robustness.variant_context(tok, q, variant)
    read = format_robustness.letter_reading(tok, context, variant)  # the lone " A" is two tokens: this used to raise
    for letter, ids in zip("ABCD", read.ids):
        cont = variant.continuation.format(letter=letter)
        assert list(ids) == tok.encode(context + cont)
        assert list(ids[: read.start]) == tok.encode(context)
    lengths = [len(ids) - read.start for ids in read.ids]
    assert read.boundary_mismatches == 0 and min(lengths) >= 1
    assert read.single_tokens == (tuple(ids[-1] for ids in read.ids) if lengths == [1] * 4 else None)
    if variant.name == "paren-open":  # after "(" the letter is the bare "A", not the lone-encoded "▁A"
        assert not set(read.single_tokens) & {tok.encode(l, add_bos=False)[0] for l in "ABCD"}
    else:  # " B" is "▁" + "B" in this vocabulary ("▁B" is no piece): a two-token letter, scored as a sequence
        assert max(lengths) == 2


def _reference_logprob(model, ck, ids, start):
    logits = np.asarray(capture.logits(model, np.array([ids]), max_context=ck.config.max_context), np.float64)[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    return sum(logp[t - 1, ids[t]] for t in range(start, len(ids)))


def test_single_token_letters_score_by_their_logits_and_multi_token_ones_by_summed_logprob(phi3_tiny):
    ck, model = phi3_tiny
    tok = ck.tokenizer
    qs = _questions(2, seed=5)
    single = format_robustness.letter_scorer(model, ck, format_robustness.VARIANT_BY_NAME["paren-open"])(qs, 0)
    for q, row in zip(qs, single):
        ctx = format_robustness.variant_context(tok, q, format_robustness.VARIANT_BY_NAME["paren-open"])
        ids = tok.encode(ctx)
        full = np.asarray(capture.logits(model, np.array([ids]), max_context=ck.config.max_context))[0, -1]
        np.testing.assert_allclose(row, full[[tok.encode(ctx + l)[-1] for l in "ABCD"]], rtol=1e-4, atol=1e-4)
    wrapped = format_robustness.LetterVariant(name="wrapped", label="({letter}) {choice}", prefix="Answer:", continuation=" ({letter})")
    scorer = format_robustness.letter_scorer(model, ck, wrapped)
    multi = scorer(qs, 0)
    assert scorer.sequence_scored == [2]
    for q, row in zip(qs, multi):
        read = format_robustness.letter_reading(tok, format_robustness.variant_context(tok, q, wrapped), wrapped)
        assert all(len(ids) - read.start == 3 for ids in read.ids)  # "▁(", letter, ")"
        expected = [_reference_logprob(model, ck, list(ids), read.start) for ids in read.ids]
        np.testing.assert_allclose(row, expected, rtol=1e-4, atol=1e-3)


def test_a_continuation_that_retokenizes_the_context_is_scored_from_the_shared_prefix(byte_level_tok):
    # "xh" + "ello": the joined string merges across the join ("hell"), so the context's last token is re-read too
    read = formats.letter_continuations(byte_level_tok, "xh", ["ello", "ey", "i", "o"])
    ctx = byte_level_tok.encode("xh")
    assert read.start < len(ctx) and read.boundary_mismatches >= 1 and read.single_tokens is None
    for cont, ids in zip(["ello", "ey", "i", "o"], read.ids):
        assert list(ids) == byte_level_tok.encode("xh" + cont) and list(ids[: read.start]) == ctx[: read.start]


@pytest.fixture(scope="module")
def byte_level_tok(tiny):
    return tiny[0].tokenizer
