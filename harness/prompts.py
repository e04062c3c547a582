"""Multiple-choice questions → token ids to score: the letter, text and cloze formats in the model's chat template.

Every option becomes one sequence, context + continuation; the scored position is the continuation's last token.
  letter: user "{question}\\nChoices:\\n(A) {a}\\n…(D) {d}", assistant "Answer: (" + letter (the original's prompt);
          the shared context (ending "Answer: (") gives the next-token logits over the 4 letter tokens.
  text:   the same user message, assistant "Answer:" + " " + answer text (the original authors' proposal).
  cloze:  the question alone as the user message, the answer text as the assistant's reply (OLMES' CF).
Context and continuation are tokenized separately and compared with tokenizing the joined string (a token can
span the join, and SentencePiece prepends "▁" to a lone continuation): the sequence scored is the joined string's
tokens whenever they begin with the context's tokens, the separate concatenation otherwise, and every sequence
where the two disagree is counted in `boundary_mismatches`. Nothing is truncated: an over-long sequence raises.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from harness.data.records import LETTERS, MCQuestion
from harness.errors import InputError
from harness.model.tokenizer import ChatTokenizer

Format = Literal["letter", "text", "cloze"]
FORMATS: tuple[str, ...] = ("letter", "text", "cloze")
LETTER_ANSWER_PREFIX = "Answer: ("
TEXT_ANSWER_PREFIX = "Answer:"
TEXT_DELIMITER = " "


class PromptTooLong(InputError):
    """A question's sequence is longer than the model's context (or the stated maximum); never truncated."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptionSequence:
    """One option's token ids; `ids[cont_start:]` is the continuation, the scored position is `len(ids) - 1`."""

    ids: tuple[int, ...]
    cont_start: int
    n_chars: int
    boundary_mismatch: bool

    @property
    def scored_position(self) -> int:
        return len(self.ids) - 1

    @property
    def n_tokens(self) -> int:
        return len(self.ids) - self.cont_start


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuestionPrompts:
    """The four option sequences of one question in one format (options in A..D order)."""

    qid: str
    fmt: str
    context: str
    options: tuple[OptionSequence, OptionSequence, OptionSequence, OptionSequence]

    @property
    def boundary_mismatches(self) -> int:
        return sum(o.boundary_mismatch for o in self.options)

    @property
    def max_len(self) -> int:
        return max(len(o.ids) for o in self.options)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InputError(f"format {fmt!r}: expected one of {FORMATS}")
    return fmt


def choices_block(question: MCQuestion) -> str:
    """The question with its choices listed as the original listed them: "\\nChoices:\\n(A) …\\n(D) …"."""
    listed = "\n".join(f"({letter}) {choice}" for letter, choice in zip(LETTERS, question.choices))
    return f"{question.question}\nChoices:\n{listed}"


def user_message(question: MCQuestion, fmt: str) -> str:
    """What the user says: the question with its choices (letter, text) or the question alone (cloze)."""
    return question.question if check_format(fmt) == "cloze" else choices_block(question)


def context_text(tokenizer: ChatTokenizer, question: MCQuestion, fmt: str) -> str:
    """The chat-rendered prompt up to the continuation (the assistant turn opened by the template)."""
    rendered = tokenizer.render_chat([{"role": "user", "content": user_message(question, fmt)}], add_generation_prompt=True)
    return rendered + {"letter": LETTER_ANSWER_PREFIX, "text": TEXT_ANSWER_PREFIX, "cloze": ""}[fmt]


def continuations(question: MCQuestion, fmt: str) -> tuple[str, str, str, str]:
    """Each option's continuation text: its letter, " " + its text, or its text."""
    check_format(fmt)
    if fmt == "letter":
        return LETTERS
    prefix = TEXT_DELIMITER if fmt == "text" else ""
    return tuple(prefix + c for c in question.choices)


def join_tokens(tokenizer: ChatTokenizer, context_ids: list[int], context: str, continuation: str) -> OptionSequence:
    """Context + continuation ids, with the token-boundary check (see the module docstring)."""
    if not continuation:
        raise InputError(f"continuation after {context[-30:]!r}: empty answer text (nothing to score)")
    separate = tokenizer.encode(continuation, add_bos=False)
    joined = tokenizer.encode(context + continuation)
    n = len(context_ids)
    if joined == context_ids + separate:
        ids, mismatch = joined, False
    elif joined[:n] == context_ids and len(joined) > n:
        ids, mismatch = joined, True
    else:
        ids, mismatch = context_ids + separate, True
    if len(ids) <= n:
        raise InputError(f"continuation {continuation!r:.60}: tokenizes to no tokens")
    return OptionSequence(ids=tuple(ids), cont_start=n, n_chars=len(continuation), boundary_mismatch=mismatch)


def build_prompts(tokenizer: ChatTokenizer, question: MCQuestion, fmt: str, *, max_len: int) -> QuestionPrompts:
    """The question's four option sequences; PromptTooLong (an InputError) when one is longer than `max_len`."""
    context = context_text(tokenizer, question, fmt)
    context_ids = tokenizer.encode(context)
    options = tuple(join_tokens(tokenizer, context_ids, context, c) for c in continuations(question, fmt))
    prompts = QuestionPrompts(qid=question.qid, fmt=fmt, context=context, options=options)
    if prompts.max_len > max_len:
        raise PromptTooLong(
            f"question {question.qid}: {fmt} sequence of {prompts.max_len} tokens exceeds the maximum of {max_len} (not truncated)"
        )
    if fmt == "letter":
        letter_token_ids(prompts)
    return prompts


def letter_token_ids(prompts: QuestionPrompts) -> tuple[int, int, int, int]:
    """The four letter tokens after the shared "Answer: (" context; InputError unless each letter is one token."""
    if prompts.fmt != "letter":
        raise InputError(f"question {prompts.qid}: letter tokens asked of a {prompts.fmt!r} prompt")
    for letter, option in zip(LETTERS, prompts.options):
        if option.n_tokens != 1:
            raise InputError(f"question {prompts.qid}: letter {letter} after {LETTER_ANSWER_PREFIX!r} is {option.n_tokens} tokens, expected 1")
    ids = tuple(o.ids[-1] for o in prompts.options)
    if len(set(ids)) != len(ids):
        raise InputError(f"question {prompts.qid}: the letters tokenize to repeated ids {ids}")
    return ids
