"""Prompts: the original's Phi-3 letter prompt string exactly, SmolLM2's template with its default system prompt,
the token-boundary check (a token spanning the join, SentencePiece's prepended "▁"), and no truncation."""

from __future__ import annotations

import dataclasses

import pytest
import tokenizers
from checkpoints import tiny_gguf
from test_gguf_reader import sentencepiece_vocab
from tokenizers import models

from harness.data.records import MCQuestion
from harness.errors import InputError
from harness.model.gguf_reader import read_gguf
from harness.model.sources import read_checkpoint
from harness.model.tokenizer import ChatTokenizer
from harness.prompts.formats import (
    PromptTooLong,
    build_prompts,
    context_text,
    continuations,
    join_tokens,
    letter_continuations,
    letter_options,
    letter_probe,
    token_texts,
    user_message,
)

# microsoft/Phi-3-mini-4k-instruct tokenizer_config.json "chat_template" (revision of 2024-05), verbatim.
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
QUESTION = MCQuestion(question="What is the capital of France?", choices=("Berlin", "Paris", "Rome", "Madrid"),
                      answer=1, subject="geography", source="test", qid="test:0")


def _phi3_tokenizer() -> ChatTokenizer:
    tok = tokenizers.Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return ChatTokenizer(tokenizer=tok, chat_template=PHI3_TEMPLATE, bos_token="<s>", eos_token="<|endoftext|>",
                         add_bos=True, source="phi3-template")


@pytest.fixture(scope="module")
def smollm2():
    return read_checkpoint(None).tokenizer


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "byte.gguf"
    tiny_gguf(path, arch="llama", n_layers=1)
    return read_gguf(path).tokenizer


@pytest.mark.parametrize("letter", "ABCD")
def test_phi3_letter_prompt_is_the_originals_string(letter):
    q = QUESTION
    original = (f"<|user|>\n{q.question}\nChoices:\n(A) {q.choices[0]}\n(B) {q.choices[1]}\n(C) {q.choices[2]}\n"
                f"(D) {q.choices[3]}<|end|>\n<|assistant|>\nAnswer: ({letter}")
    assert context_text(_phi3_tokenizer(), q, "letter") + continuations(q, "letter")["ABCD".index(letter)] == original


def test_smollm2_prompt_keeps_the_default_system_prompt_and_formats_differ_as_specified(smollm2):
    system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    head = f"{system}<|im_start|>user\n"
    tail = "<|im_end|>\n<|im_start|>assistant\n"
    assert context_text(smollm2, QUESTION, "cloze") == head + QUESTION.question + tail
    listed = user_message(QUESTION, "text")
    assert context_text(smollm2, QUESTION, "text") == head + listed + tail + "Answer:"
    assert context_text(smollm2, QUESTION, "letter") == head + listed + tail + "Answer: ("
    assert continuations(QUESTION, "text") == (" Berlin", " Paris", " Rome", " Madrid")
    assert continuations(QUESTION, "cloze") == QUESTION.choices


@pytest.mark.parametrize("fmt", ["letter", "text", "cloze"])
def test_smollm2_sequences_are_the_joined_strings_tokens(smollm2, fmt):
    prompts = build_prompts(smollm2, QUESTION, fmt, max_len=8192)
    assert prompts.boundary_mismatches == 0
    for option, cont in zip(prompts.options, continuations(QUESTION, fmt)):
        assert list(option.ids) == smollm2.encode(prompts.context + cont)
        assert list(option.ids[: option.cont_start]) == smollm2.encode(prompts.context)
        assert smollm2.decode(option.ids[option.cont_start:]) == cont
        assert option.n_chars == len(cont) and option.scored_position == len(option.ids) - 1


def test_letter_tokens_are_the_last_token_of_each_original_prompt(smollm2):
    prompts = build_prompts(smollm2, QUESTION, "letter", max_len=8192)
    expected = [smollm2.encode(prompts.context + letter)[-1] for letter in "ABCD"]
    assert list(letter_probe(prompts)) == expected
    assert [smollm2.decode([i]) for i in expected] == list("ABCD")


def test_a_token_spanning_the_join_is_counted_and_the_context_kept(byte_level):
    # the tiny vocabulary merges "he"+"ll" -> "hell": "xh" + "ello" tokenizes across the join
    ctx_ids = byte_level.encode("xh")
    seq = join_tokens(byte_level, ctx_ids, "xh", "ello")
    assert byte_level.encode("xhello")[: len(ctx_ids)] != ctx_ids  # the premise: the joint string splits differently
    assert seq.boundary_mismatch
    assert list(seq.ids) == ctx_ids + byte_level.encode("ello", add_bos=False)
    clean = join_tokens(byte_level, byte_level.encode("x"), "x", " world")
    assert not clean.boundary_mismatch and list(clean.ids) == byte_level.encode("x world")


def test_sentencepiece_prefix_space_is_counted_and_the_joined_tokens_used(tmp_path):
    path = tmp_path / "spm.gguf"
    tiny_gguf(path, arch="llama", n_layers=1, tokenizer=sentencepiece_vocab())
    tok = read_gguf(path).tokenizer
    ctx_ids = tok.encode("hello")
    seq = join_tokens(tok, ctx_ids, "hello", " world")
    joint = tok.encode("hello world")
    assert joint[: len(ctx_ids)] == ctx_ids and tok.encode(" world", add_bos=False) != joint[len(ctx_ids):]
    assert seq.boundary_mismatch and list(seq.ids) == joint


def test_an_over_long_question_raises_naming_it_never_truncates(smollm2):
    long_q = MCQuestion(question="word " * 400, choices=("a", "b", "c", "d"), answer=0, subject="s", source="t", qid="t:long")
    n = len(smollm2.encode(context_text(smollm2, long_q, "text") + " a"))
    build_prompts(smollm2, long_q, "text", max_len=n)  # exactly fits
    with pytest.raises(PromptTooLong) as caught:
        build_prompts(smollm2, long_q, "text", max_len=n - 1)
    assert "t:long" in str(caught.value) and str(n) in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, InputError)


def test_an_unknown_format_is_rejected(smollm2):
    with pytest.raises(InputError, match="'mcf'"):
        build_prompts(smollm2, QUESTION, "mcf", max_len=100)


@pytest.mark.parametrize("template", [None, ""])
def test_a_tokenizer_without_a_chat_template_gets_plain_prompts(smollm2, template):
    """A base model (GPT-2, Gemma-3 270M: no chat template) is prompted plainly: the user message, a newline, then
    the assistant part ("Answer: (" + letter, "Answer:" + " text", or the answer text alone for cloze)."""
    base = dataclasses.replace(smollm2, chat_template=template, source="no-template")
    listed = user_message(QUESTION, "letter")
    assert context_text(base, QUESTION, "letter") == listed + "\nAnswer: ("
    assert context_text(base, QUESTION, "text") == listed + "\nAnswer:"
    assert context_text(base, QUESTION, "cloze") == QUESTION.question + "\n"
    for fmt in ("letter", "text", "cloze"):
        prompts = build_prompts(base, QUESTION, fmt, max_len=256)
        assert prompts.context == context_text(base, QUESTION, fmt)
        for option, continuation in zip(prompts.options, continuations(QUESTION, fmt)):
            assert base.decode(option.ids) == prompts.context + continuation  # nothing of the template, no BOS
    assert letter_probe(build_prompts(base, QUESTION, "letter", max_len=256)) is not None


@pytest.fixture(scope="module")
def phi3_sp(tmp_path_factory):
    """The stand-in Phi-3 tokenizer (SentencePiece-BPE, Phi-3's specials and chat template)."""
    import standins

    from harness.model.hf_reader import read_hf_tokenizer

    return read_hf_tokenizer(standins.phi3_tokenizer_files(tmp_path_factory.mktemp("phi3tok")), vocab_size=32064)


def test_on_sentencepiece_the_letter_probe_is_the_joined_letter_not_the_lone_one(phi3_sp):
    prompts = build_prompts(phi3_sp, QUESTION, "letter", max_len=4096)
    probe = letter_probe(prompts)
    assert probe == tuple(phi3_sp.encode(prompts.context + l)[-1] for l in "ABCD")
    assert [phi3_sp.tokenizer.id_to_token(i) for i in probe] == list("ABCD")
    assert not set(probe) & {phi3_sp.encode(l, add_bos=False)[0] for l in "ABCD"}  # lone "A" is "▁A"


def test_letters_of_several_tokens_are_kept_as_sequences_not_rejected(phi3_sp):
    lc = letter_continuations(phi3_sp, "Answer:", [" A", " B", " C", " D"])
    assert lc.single_tokens is None and lc.start == len(phi3_sp.encode("Answer:"))
    assert [len(i) - lc.start for i in lc.ids] == [1, 2, 2, 2]  # "▁A" is a piece, "▁B" is "▁" + "B"
    options = letter_options(phi3_sp, "Answer:", [" A", " B", " C", " D"])
    assert [o.n_tokens for o in options] == [1, 2, 2, 2] and all(o.cont_start == lc.start for o in options)


def test_token_texts_keep_sentencepiece_spaces(phi3_sp):
    ids = phi3_sp.encode("Once the first time came", add_bos=False)
    texts = token_texts(phi3_sp, ids)
    assert "".join(texts) == "Once the first time came"
    assert " first" in texts and " time" in texts
    assert [phi3_sp.decode([i]) for i in ids] != list(texts)  # one token at a time loses the spaces ("thefirsttime")
    assert token_texts(phi3_sp, ids, skip=1) == texts[1:]


def test_token_texts_give_a_split_character_to_the_token_that_completes_it(phi3_sp):
    ids = phi3_sp.encode("x 東", add_bos=False)  # "東" is not a piece: three byte-fallback tokens
    texts = token_texts(phi3_sp, ids)
    assert "".join(texts) == "x 東" and texts[-3:-1] == ("", "") and texts[-1] == "東"
