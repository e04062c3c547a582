"""Plain English text that exists on every fresh machine, cut into fixed-length token sequences for SAEs.

Sources (BRIEF §4): Python's ``pydoc_data.topics`` (the language reference) and the docstrings
(module, class, function) of the standard library's own source files, read with ``ast`` — nothing
is imported or downloaded. Documents are split train/held-out by a seeded permutation *before*
chunking, so no held-out sequence shares text with a training sequence.

Axis order: ``Chunks.tokens`` is [sequence, position] int32, position 0 is always BOS.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import sys
import sysconfig
import warnings

import numpy as np

from harness.errors import InputError

SOURCE_TOPICS = "pydoc_data.topics"
SOURCE_DOCSTRINGS = "stdlib docstrings"
SOURCES = (SOURCE_TOPICS, SOURCE_DOCSTRINGS)
# Stdlib folders whose docstrings are not prose about Python (test fixtures, bundled pip/setuptools wheels).
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "ensurepip", "lib2to3"})
MIN_DOC_CHARS = 80  # shorter docstrings ("Return x.") are mostly signatures; counted as skipped


@dataclasses.dataclass(frozen=True, kw_only=True)
class Document:
    """One piece of text and where it came from (``name`` is unique within a corpus)."""

    name: str
    source: str
    text: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Corpus:
    """The documents plus counts of what was skipped and why, so nothing disappears silently."""

    documents: tuple[Document, ...]
    skipped: dict[str, int]
    python_version: str

    @property
    def n_chars(self) -> int:
        return sum(len(d.text) for d in self.documents)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CorpusConfig:
    """How text becomes sequences: length (BOS included), held-out share of documents, split seed."""

    seq_len: int = 128
    heldout_fraction: float = 0.1
    seed: int = 0
    sources: tuple[str, ...] = SOURCES

    def __post_init__(self):
        if self.seq_len < 2:
            raise InputError(f"CorpusConfig.seq_len={self.seq_len}, expected >= 2 (BOS plus text)")
        if not 0 < self.heldout_fraction < 1:
            raise InputError(f"CorpusConfig.heldout_fraction={self.heldout_fraction}, expected in (0, 1)")
        unknown = set(self.sources) - set(SOURCES)
        if unknown or not self.sources:
            raise InputError(f"CorpusConfig.sources={self.sources}, expected a non-empty subset of {SOURCES}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Chunks:
    """Token sequences [sequence, position] cut from documents, and the tail tokens that did not fill one."""

    tokens: np.ndarray
    n_documents: int
    n_text_tokens: int  # tokens of document text (BOS excluded) before chunking
    n_tail_tokens: int  # text tokens left over after the last full sequence, not used

    @property
    def n_sequences(self) -> int:
        return int(self.tokens.shape[0])


def pydoc_topic_documents() -> tuple[Document, ...]:
    """The language-reference topics shipped in ``pydoc_data.topics``, one document per topic, sorted."""
    from pydoc_data.topics import topics

    return tuple(Document(name=f"topic:{key}", source=SOURCE_TOPICS, text=topics[key].strip()) for key in sorted(topics))


def stdlib_files(stdlib: pathlib.Path | None = None) -> list[pathlib.Path]:
    """The standard library's .py files in sorted order, minus the EXCLUDED_DIRS folders."""
    root = pathlib.Path(stdlib or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise InputError(f"stdlib folder {root} does not exist, expected Python's standard library")
    return sorted(p for p in root.rglob("*.py") if not EXCLUDED_DIRS.intersection(p.relative_to(root).parts[:-1]))


def docstring_documents(stdlib: pathlib.Path | None = None) -> tuple[tuple[Document, ...], dict[str, int]]:
    """Every module/class/function docstring of ≥ MIN_DOC_CHARS in the stdlib sources, and skip counts."""
    root = pathlib.Path(stdlib or sysconfig.get_paths()["stdlib"])
    documents, seen = [], set()
    skipped = {"unparsable stdlib files": 0, "short docstrings": 0, "duplicate docstrings": 0}
    for path in stdlib_files(root):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SyntaxWarning)
                tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, UnicodeDecodeError):
            skipped["unparsable stdlib files"] += 1
            continue
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
        for node in nodes:
            text = ast.get_docstring(node, clean=True)
            if not text:
                continue
            if len(text) < MIN_DOC_CHARS:
                skipped["short docstrings"] += 1
                continue
            if text in seen:
                skipped["duplicate docstrings"] += 1
                continue
            seen.add(text)
            where = module if node is tree else f"{module}:{node.name}@{node.lineno}"
            documents.append(Document(name=f"doc:{where}", source=SOURCE_DOCSTRINGS, text=text))
    return tuple(documents), skipped


def build_corpus(sources: tuple[str, ...] = SOURCES) -> Corpus:
    """All documents of the named sources in a fixed order (same Python version ⇒ same corpus)."""
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise InputError(f"corpus sources {sorted(unknown)}: expected some of {SOURCES}")
    documents, skipped = [], {}
    if SOURCE_TOPICS in sources:
        documents += pydoc_topic_documents()
    if SOURCE_DOCSTRINGS in sources:
        docs, skipped = docstring_documents()
        documents += docs
    if not documents:
        raise InputError(f"corpus from {sources}: no documents found, expected Python's pydoc_data and stdlib sources")
    return Corpus(documents=tuple(documents), skipped=skipped, python_version=sys.version.split()[0])


def split_documents(documents: tuple[Document, ...], *, heldout_fraction: float, seed: int
                    ) -> tuple[tuple[Document, ...], tuple[Document, ...]]:
    """(train, held-out) documents by a seeded permutation; each keeps the corpus order. Both non-empty."""
    n = len(documents)
    n_heldout = int(round(n * heldout_fraction))
    if n < 2 or not 0 < n_heldout < n:
        raise InputError(f"split of {n} documents with heldout_fraction={heldout_fraction}: expected both parts non-empty")
    heldout = set(np.random.default_rng(seed).permutation(n)[:n_heldout].tolist())
    train = tuple(d for i, d in enumerate(documents) if i not in heldout)
    held = tuple(d for i, d in enumerate(documents) if i in heldout)
    return train, held


def chunk_documents(documents: tuple[Document, ...], tokenizer, *, seq_len: int) -> Chunks:
    """Pack the documents' tokens (each followed by a blank line) into [n, seq_len] sequences, BOS first.

    ``tokenizer`` is a harness ChatTokenizer; its BOS token starts every sequence. The tail that does not
    fill a last sequence is counted in ``n_tail_tokens``, not padded.
    """
    if tokenizer.bos_token is None:
        raise InputError(f"{tokenizer.source}: tokenizer has no BOS token, expected one to start each sequence")
    bos = tokenizer.token_id(tokenizer.bos_token)
    stream: list[int] = []
    for doc in documents:
        stream += tokenizer.encode(doc.text + "\n\n", add_bos=False)
    body = seq_len - 1
    n_seq = len(stream) // body
    if n_seq == 0:
        raise InputError(f"{len(documents)} documents give {len(stream)} tokens, expected at least seq_len-1={body}")
    text = np.asarray(stream[: n_seq * body], dtype=np.int32).reshape(n_seq, body)
    tokens = np.concatenate([np.full((n_seq, 1), bos, dtype=np.int32), text], axis=1)
    return Chunks(tokens=tokens, n_documents=len(documents), n_text_tokens=len(stream),
                  n_tail_tokens=len(stream) - n_seq * body)


def train_heldout_chunks(tokenizer, config: CorpusConfig, corpus: Corpus | None = None) -> tuple[Chunks, Chunks, Corpus]:
    """(train chunks, held-out chunks, corpus) for ``config``; deterministic for one Python version."""
    corpus = corpus or build_corpus(config.sources)
    train, held = split_documents(corpus.documents, heldout_fraction=config.heldout_fraction, seed=config.seed)
    return (chunk_documents(train, tokenizer, seq_len=config.seq_len),
            chunk_documents(held, tokenizer, seq_len=config.seq_len), corpus)
