"""CAA contrast pairs (harness.data.pairs) as token ids for the two readouts, rendered as formats.py renders the letter
and cloze formats, into the harness's `QuestionPrompts` with the two options in A, B order:

  letter: user "{question}\n\nChoices:\n(A) {a}\n(B) {b}" (the file's own prompt), assistant "Answer: (" + letter; the
          letters are read from the next-token logits (formats.letter_probe), p(behaviour) normalised over A and B;
  cloze:  the question alone as the user message, each answer text as the assistant's reply (its summed log-prob).

A model without a chat template is prompted plainly (formats.user_turn). The tokenization is formats' own
(letter_options, join_tokens): the same boundary check and letter reading as the multiple-choice formats. The
behaviour's option is `pair.behaviour_index`. (runs.options still packs N_CHOICES = 4 slots per question; a two-option
QuestionPrompts is for the pair runner to come, not for collect/collect_formats as they are.)
"""

from __future__ import annotations

from harness.data.pairs import PAIR_LETTERS, ContrastPair
from harness.errors import InputError
from harness.model.tokenizer import ChatTokenizer
from harness.prompts.formats import (
    LETTER_ANSWER_PREFIX,
    PromptTooLong,
    QuestionPrompts,
    join_tokens,
    letter_options,
    user_turn,
)

PAIR_FORMATS = ("letter", "cloze")


def pair_user_message(pair: ContrastPair, fmt: str) -> str:
    """What the user says: the question with its choices as the file lists them (letter) or the question alone (cloze)."""
    return pair.question if _check_pair_format(fmt) == "cloze" else pair.prompt


def pair_context(tokenizer: ChatTokenizer, pair: ContrastPair, fmt: str) -> str:
    """The prompt up to the continuation: the user turn in the chat template (plain without one), then "Answer: ("
    for the letter readout, nothing for cloze."""
    rendered = user_turn(tokenizer, pair_user_message(pair, fmt))
    return rendered + (LETTER_ANSWER_PREFIX if fmt == "letter" else "")


def build_pair_prompts(tokenizer: ChatTokenizer, pair: ContrastPair, fmt: str, *, max_len: int) -> QuestionPrompts:
    """The pair's two option sequences (A, B order; `pair.behaviour_index` marks the behaviour's) in `fmt`, by the
    letter and cloze formats' own tokenization (formats.letter_options / join_tokens); PromptTooLong over `max_len`.

    Letter: the letter ids after "Answer: (" as formats.letter_probe reads them. Cloze: each answer text after the
    question alone, scored by its summed log-prob.
    """
    context = pair_context(tokenizer, pair, fmt)
    if fmt == "letter":
        options = letter_options(tokenizer, context, PAIR_LETTERS, where=f"pair {pair.pid}")
    else:
        context_ids = tokenizer.encode(context)
        options = tuple(join_tokens(tokenizer, context_ids, context, c) for c in pair.choices)
    prompts = QuestionPrompts(qid=pair.pid, fmt=fmt, context=context, options=options)
    if prompts.max_len > max_len:
        raise PromptTooLong(f"pair {pair.pid}: {fmt} sequence of {prompts.max_len} tokens exceeds the maximum of "
                            f"{max_len} (not truncated)")
    return prompts


def _check_pair_format(fmt: str) -> str:
    if fmt not in PAIR_FORMATS:
        raise InputError(f"pair readout {fmt!r}: expected one of {PAIR_FORMATS}")
    return fmt
