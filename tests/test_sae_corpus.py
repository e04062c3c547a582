"""The SAE training text: non-empty and deterministic, docstrings read without importing (skips counted),
a seeded document split that is disjoint and covers everything, and chunks that are the token stream cut
into BOS-led rows (checked against the tokenizer called directly)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from checkpoints import word_level_tokenizer
from harness.errors import InputError
from harness.model.tokenizer import ChatTokenizer
from harness.sae import corpus
from harness.sae.corpus import CorpusConfig, Document


def _doc(i: int, n_words: int = 7) -> Document:
    return Document(name=f"d{i}", source="test", text=" ".join(f"w{3 + (i * 5 + j) % 60}" for j in range(n_words)))


@pytest.fixture(scope="module")
def tokenizer():
    return ChatTokenizer(tokenizer=word_level_tokenizer(64), chat_template=None, bos_token="<s>", eos_token="</s>",
                         add_bos=False, source="word-level test tokenizer")


def test_pydoc_topics_are_a_nonempty_deterministic_corpus_of_prose():
    first, second = corpus.pydoc_topic_documents(), corpus.pydoc_topic_documents()
    assert first == second
    assert len(first) > 20 and sum(len(d.text) for d in first) > 100_000
    assert len({d.name for d in first}) == len(first)
    assert all(d.text.strip() for d in first)


def test_docstrings_are_read_from_sources_with_excluded_short_and_duplicate_ones_counted(tmp_path):
    long_text = "This module explains a thing at length. " * 5
    (tmp_path / "alpha.py").write_text(f'"""{long_text}"""\n\ndef f():\n    """Too short."""\n\n'
                                       f'class C:\n    """{long_text}"""\n')
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text(f'"""Another {long_text}"""\nraise SystemExit("never imported")\n')
    (tmp_path / "broken.py").write_text('"""unterminated\n')
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "test_x.py").write_text(f'"""Test {long_text}"""\n')
    docs, skipped = corpus.docstring_documents(tmp_path)
    assert [d.name for d in docs] == ["doc:alpha", "doc:pkg.__init__"]
    assert skipped == {"unparsable stdlib files": 1, "short docstrings": 1, "duplicate docstrings": 1}
    assert docs[0].text == inspect.cleandoc(long_text)


def test_split_is_seeded_disjoint_and_covers_every_document():
    docs = tuple(_doc(i) for i in range(50))
    train, held = corpus.split_documents(docs, heldout_fraction=0.2, seed=3)
    again = corpus.split_documents(docs, heldout_fraction=0.2, seed=3)
    other = corpus.split_documents(docs, heldout_fraction=0.2, seed=4)
    names_train, names_held = {d.name for d in train}, {d.name for d in held}
    assert (train, held) == again
    assert names_train.isdisjoint(names_held) and names_train | names_held == {d.name for d in docs}
    assert len(held) == 10
    assert {d.name for d in other[1]} != names_held


@pytest.mark.parametrize("fraction", [0.0, 0.001, 1.0])
def test_split_that_would_leave_a_part_empty_is_refused(fraction):
    with pytest.raises(InputError, match="heldout_fraction"):
        corpus.split_documents(tuple(_doc(i) for i in range(5)), heldout_fraction=fraction, seed=0)


def test_chunks_are_the_token_stream_cut_into_bos_led_rows(tokenizer):
    docs = tuple(_doc(i, n_words=3 + i) for i in range(9))
    chunks = corpus.chunk_documents(docs, tokenizer, seq_len=8)
    stream = []
    for d in docs:  # independent: the raw tokenizers.Tokenizer, blank line between documents is whitespace here
        stream += tokenizer.tokenizer.encode(d.text + "\n\n", add_special_tokens=False).ids
    n_rows = len(stream) // 7
    assert chunks.tokens.shape == (n_rows, 8)
    assert (chunks.tokens[:, 0] == tokenizer.token_id("<s>")).all()
    np.testing.assert_array_equal(chunks.tokens[:, 1:].reshape(-1), stream[: n_rows * 7])
    assert chunks.n_text_tokens == len(stream) and chunks.n_tail_tokens == len(stream) - n_rows * 7
    assert chunks.n_documents == len(docs)


def test_too_little_text_for_one_sequence_is_an_error_not_an_empty_array(tokenizer):
    with pytest.raises(InputError, match="seq_len-1=127"):
        corpus.chunk_documents((_doc(0),), tokenizer, seq_len=128)


def test_train_and_heldout_chunks_come_from_disjoint_documents(tokenizer):
    docs = tuple(_doc(i, n_words=20) for i in range(40))
    fake = corpus.Corpus(documents=docs, skipped={}, python_version="test")
    config = CorpusConfig(seq_len=6, heldout_fraction=0.25, seed=1)
    train, held, _ = corpus.train_heldout_chunks(tokenizer, config, fake)
    train_docs, held_docs = corpus.split_documents(docs, heldout_fraction=0.25, seed=1)
    assert train.n_documents == 30 and held.n_documents == 10
    expected_held = corpus.chunk_documents(held_docs, tokenizer, seq_len=6).tokens
    np.testing.assert_array_equal(held.tokens, expected_held)
    assert train.n_text_tokens + held.n_text_tokens == corpus.chunk_documents(docs, tokenizer, seq_len=6).n_text_tokens


@pytest.mark.parametrize("bad", [dict(seq_len=1), dict(heldout_fraction=1.5), dict(sources=("wikipedia",))])
def test_bad_corpus_config_is_a_one_line_input_error(bad):
    with pytest.raises(InputError) as caught:
        CorpusConfig(**bad)
    assert "\n" not in str(caught.value) and "CorpusConfig." in str(caught.value)


@pytest.mark.slow
def test_full_corpus_is_deterministic_and_large_enough():
    first, second = corpus.build_corpus(), corpus.build_corpus()
    assert first == second
    assert first.n_chars > 1_000_000
    assert {d.source for d in first.documents} == set(corpus.SOURCES)
