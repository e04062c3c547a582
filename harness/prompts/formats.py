"""Multiple-choice questions → token ids to score: the letter, text and cloze formats in the model's chat template
(a model without one, a base model, is prompted plainly: the user message, a newline, then the assistant part).

Every option becomes one sequence, context + continuation; the scored position is the continuation's last token.
  letter: user "{question}\\nChoices:\\n(A) {a}\\n…(D) {d}", assistant "Answer: (" + letter (the original's prompt);
          the shared context (ending "Answer: (") gives the next-token logits over the 4 letter tokens.
  text:   the same user message, assistant "Answer:" + " " + answer text (the original authors' proposal).
  cloze:  the question alone as the user message, the answer text as the assistant's reply (OLMES' CF).
Context and continuation are tokenized separately and compared with tokenizing the joined string (a token can
span the join, and SentencePiece prepends "▁" to a lone continuation): the sequence scored is the joined string's
tokens whenever they begin with the context's tokens, the separate concatenation otherwise, and every sequence
where the two disagree is counted in `boundary_mismatches`. Nothing is truncated: an over-long sequence raises.

Letters are read as they occur after their prefix in the joined encoding, never lone-encoded (SentencePiece encodes a
lone "A" as "▁A", but after "(" the letter is the bare "A"; a lone " A" is two tokens): `letter_continuations` scores
every letter from the longest token prefix that the context and all four joined encodings share, so a letter that
is several tokens (or re-tokenizes the context's last token) is scored as a sequence (summed log-prob), not rejected.
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


def user_turn(tokenizer: ChatTokenizer, user: str) -> str:
    """The user's message as the model is prompted: in its chat template with the assistant turn opened, or, for a
    model without one (a base model: GPT-2, Gemma-3 270M), the plain message and a newline."""
    if not tokenizer.chat_template:
        return user + "\n"
    return tokenizer.render_chat([{"role": "user", "content": user}], add_generation_prompt=True)


def context_text(tokenizer: ChatTokenizer, question: MCQuestion, fmt: str) -> str:
    """The prompt up to the continuation (the assistant turn opened by the template, or the plain prompt's next line)."""
    rendered = user_turn(tokenizer, user_message(question, fmt))
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class LetterContinuations:
    """Four continuations read from their joined encodings: `ids[i]` = encode(context + continuation i).

    `start` is the longest token prefix shared by the context's own encoding and all four joined encodings, so
    `ids[i][start:]` are the tokens scored for option i after one shared prefix. `start < len(context_ids)` means a
    continuation re-tokenized the end of the context (a boundary mismatch: those context tokens are scored too).
    """

    context_ids: tuple[int, ...]
    ids: tuple[tuple[int, ...], ...]
    start: int

    @property
    def boundary_mismatches(self) -> int:
        """Continuations whose joined tokens do not begin with the context's tokens."""
        n = len(self.context_ids)
        return sum(tuple(i[:n]) != self.context_ids for i in self.ids)

    @property
    def single_tokens(self) -> tuple[int, ...] | None:
        """The continuations' ids when each is exactly one token right after the whole context, else None."""
        n = len(self.context_ids)
        if self.start == n and all(len(i) == n + 1 for i in self.ids):
            return tuple(i[n] for i in self.ids)
        return None


def _common_prefix(sequences) -> int:
    """Length of the longest prefix all `sequences` share."""
    n = min(len(s) for s in sequences)
    for k in range(n):
        if len({s[k] for s in sequences}) > 1:
            return k
    return n


def letter_continuations(tokenizer: ChatTokenizer, context: str, letters, *, where: str = "") -> LetterContinuations:
    """The letters (or any short continuations) as they occur after `context` in the joined encoding (see the module doc).

    InputError when a continuation adds no token, or when two continuations give the same token sequence.
    """
    context_ids = tuple(tokenizer.encode(context))
    joined = tuple(tuple(tokenizer.encode(context + c)) for c in letters)
    start = _common_prefix([context_ids, *joined])
    for c, ids in zip(letters, joined):
        if len(ids) <= start:
            raise InputError(f"{where or 'prompt'}: continuation {c!r} after {context[-20:]!r} adds no token")
    if len({ids[start:] for ids in joined}) != len(joined):
        raise InputError(f"{where or 'prompt'}: continuations {tuple(letters)} tokenize to repeated token sequences "
                         f"{[ids[start:] for ids in joined]}")
    return LetterContinuations(context_ids=context_ids, ids=joined, start=start)


def letter_options(tokenizer: ChatTokenizer, context: str, letters, *, where: str = "") -> tuple[OptionSequence, ...]:
    """The letter format's four option sequences: joined encodings, scored from their shared prefix."""
    lc = letter_continuations(tokenizer, context, letters, where=where)
    n = len(lc.context_ids)
    return tuple(OptionSequence(ids=ids, cont_start=lc.start, n_chars=len(c), boundary_mismatch=ids[:n] != lc.context_ids)
                 for c, ids in zip(letters, lc.ids))


def build_prompts(tokenizer: ChatTokenizer, question: MCQuestion, fmt: str, *, max_len: int) -> QuestionPrompts:
    """The question's four option sequences; PromptTooLong (an InputError) when one is longer than `max_len`."""
    context = context_text(tokenizer, question, fmt)
    if fmt == "letter":
        options = letter_options(tokenizer, context, continuations(question, fmt), where=f"question {question.qid}")
    else:
        context_ids = tokenizer.encode(context)
        options = tuple(join_tokens(tokenizer, context_ids, context, c) for c in continuations(question, fmt))
    prompts = QuestionPrompts(qid=question.qid, fmt=fmt, context=context, options=options)
    if prompts.max_len > max_len:
        raise PromptTooLong(
            f"question {question.qid}: {fmt} sequence of {prompts.max_len} tokens exceeds the maximum of {max_len} (not truncated)"
        )
    return prompts


def letter_probe(prompts: QuestionPrompts) -> tuple[int, int, int, int] | None:
    """The four letter ids read by one next-token step after the shared "Answer: (" context, as they occur in the
    joined encoding; None when a letter is several tokens (then its summed log-prob is its score)."""
    if prompts.fmt != "letter":
        raise InputError(f"question {prompts.qid}: letter tokens asked of a {prompts.fmt!r} prompt")
    if all(o.n_tokens == 1 and not o.boundary_mismatch for o in prompts.options):
        return tuple(o.ids[-1] for o in prompts.options)
    return None


def token_texts(tokenizer: ChatTokenizer, ids, *, skip: int = 0) -> tuple[str, ...]:
    """The text each of `ids[skip:]` contributes to decode(ids): SentencePiece's "▁" spaces survive ("the first time").

    Decoding one token alone strips the leading space; here each token's text is the growth of the decoded prefix.
    The first `skip` ids are context only. A token that ends inside a multi-byte character gets "" and the
    character goes to the token that completes it.
    """
    ids = [int(i) for i in ids]
    texts, previous = [], tokenizer.decode(ids[:skip]) if skip else ""
    for k in range(skip, len(ids)):
        current = tokenizer.decode(ids[: k + 1])
        if current.endswith("\ufffd") or not current.startswith(previous):
            texts.append("")  # incomplete character or a decoder that rewrote the prefix: settle at the next token
            continue
        texts.append(current[len(previous):])
        previous = current
    return tuple(texts)
