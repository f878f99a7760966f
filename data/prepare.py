"""Turn a data source into token files: <prepared_dir>/<slug>/train.bin, val.bin and meta.json.

    python -m data.prepare --source shakespeare
    python -m data.prepare --source hf:HuggingFaceFW/fineweb-edu --subset sample-10BT --max-tokens 1000000000

The .bin files are flat token ids (uint16 when the vocabulary fits, else uint32); every document is followed by the
end-of-text id. Document i (counted from 0 in source order) goes to val iff i % val_every == val_every - 1; a source
of fewer than val_every documents (a single .txt file, say), which that rule leaves no val document, has its last
tokens // val_every tokens moved to val instead, so one text is a usable corpus.
Documents are streamed, tokenised in batches and appended to the files, so a source need not fit in memory; what must
fit is one batch (BATCH_DOCUMENTS documents, fewer once they hold CHUNK_CHARS characters): their text and their ids
as Python ints (~50 bytes a token). With the GPT-2 tokenizer a .txt file (one document) is read CHUNK_CHARS
characters at a time and tokenised chunk by chunk, cut at each read's last safe boundary (data/tokenizer.py), so a
file of any size takes a few chunks' memory; only text with no safe boundary (a newline between two non-space
characters) makes a chunk grow, so a single line of several GB must still fit whole. A row of .jsonl/.json/.parquet
files or of the hub is a document held whole, and so is a .txt file under a hub tokenizer, whose pre-tokenizer may
join characters across any cut: such a document must fit.
Outputs are written under temporary names and renamed (the next preparation deletes those of a killed one), and a
directory whose meta.json records the same input fingerprint (config, local files' sizes, modification and change
times and inodes, FORMAT_VERSION) is reused without reading the source again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import fcntl
import os
import re
import secrets
import sys
import time
import typing
from collections.abc import Iterable, Iterator
from contextlib import suppress
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.config import DataConfig
from data.errors import DataError
from data.sources import PREPARED_META, Source, invalid_utf8, iter_document_reads, resolve_source
from data.tokenizer import GPT2, TextTokenizer, load_tokenizer, tokenizer_identity
from fileio.atomic import write_text_atomic
from typedconfig.cli import ArgumentParser, with_flag_names

FORMAT_VERSION = 1  # bump when the bytes written for the same inputs change
BATCH_DOCUMENTS = 256  # documents (or chunks of them) tokenised per call (the tokenizer parallelises within a call)
CHUNK_CHARS = 1 << 22  # characters of a .txt file read at a time; a batch also ends once it holds this many
COPY_BYTES = 1 << 22  # bytes of a token file read at a time when its tail moves to val (a multiple of any itemsize)
META = PREPARED_META  # the dataset's description, beside its token files
SPLITS = ("train", "val")
# _TokenWriter's: its pid and a random tag (processes in other containers or on other machines may share a pid)
TEMP_NAME = re.compile(rf"\.(?:{'|'.join(SPLITS)})\.bin\.\d+-[0-9a-f]{{8}}\.tmp")
INPUT_FIELDS = ("source", "subset", "split", "text_field", "tokenizer", "val_every", "max_documents", "max_tokens")


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """The result of `prepare`."""

    path: Path  # the dataset directory holding train.bin, val.bin and meta.json
    meta: dict  # the contents of meta.json
    reused: bool  # True when the directory was already up to date and nothing was processed
    seconds: float  # time spent reading and tokenising (0 when reused)


def dataset_dir(cfg: DataConfig) -> Path:
    """<prepared_dir>/<source>-<tokenizer>-<hash of the input fields>: one directory per distinct dataset."""
    inputs = json.dumps({name: getattr(cfg, name) for name in INPUT_FIELDS}, sort_keys=True)
    readable = "-".join(_slug(text) for text in (cfg.source, cfg.tokenizer))
    return Path(cfg.prepared_dir) / f"{readable}-{hashlib.sha256(inputs.encode()).hexdigest()[:8]}"


def input_fingerprint(cfg: DataConfig, source: Source) -> str:
    """A hash of everything the token files depend on: the input fields, the local files' paths, sizes, modification
    and change times and inodes (a hub dataset is taken as it is), and FORMAT_VERSION. The change time and inode
    catch new contents that keep the size and the modification time (`cp -p`, `rsync -a`, `tar x` set the latter);
    no user can set the change time. A hub tokenizer adds its identity (`tokenizer_identity`): its name alone would
    reuse the ids of a revision since replaced."""
    stats = [(path, path.stat()) for path in source.files]
    files = [(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for path, st in stats]
    inputs = {"format": FORMAT_VERSION, "config": {name: getattr(cfg, name) for name in INPUT_FIELDS}, "files": files}
    if cfg.tokenizer != GPT2:  # (GPT-2's files are pinned with their package: its fingerprints stay as they were)
        inputs["tokenizer"] = tokenizer_identity(cfg.tokenizer)
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def prepare(cfg: DataConfig) -> PreparedData:
    """Tokenise `cfg.source` into the dataset directory, unless it already holds this exact input."""
    source = resolve_source(cfg)
    path = dataset_dir(cfg)
    remove_stale_temp_files(path)
    fingerprint = input_fingerprint(cfg, source)
    meta = _current_meta(path, fingerprint)
    if meta is not None:
        return PreparedData(path, meta, reused=True, seconds=0.0)

    start = time.perf_counter()
    replaced = replaced_bytes(source)
    tokenizer = load_tokenizer(cfg.tokenizer)
    dtype = token_dtype(tokenizer.vocab_size)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    writers = {split: _TokenWriter(path / f"{split}.bin", dtype, hashed=split == "val") for split in SPLITS}
    progress = tqdm(total=cfg.max_tokens, unit="tok", unit_scale=True, desc=path.name, disable=None, file=sys.stderr)
    try:
        documents = iter_document_reads(source, cfg.text_field, cfg.max_documents, CHUNK_CHARS)
        chunks = _tokenised(_document_chunks(documents, tokenizer), tokenizer)
        for split, ids, starts_document in _split_documents(chunks, cfg.val_every, cfg.max_tokens):
            writers[split].append(ids, starts_document)
            progress.update(len(ids))
        split_rule = f"document i -> val iff i % {cfg.val_every} == {cfg.val_every - 1}"
        if writers["val"].documents == 0:  # fewer documents than val_every (one text file, say): split the tokens
            read = writers["train"].tokens
            tail = read // cfg.val_every
            if tail == 0:
                raise DataError(
                    f"the val split is empty: {source.describe()} holds {read} token(s), too few to hold out 1 in "
                    f"{cfg.val_every} of them for val; add text"
                    + (f" or lower data.val_every to at most {read}" if read >= 2 else "")
                    + (" (or raise data.max_tokens)" if cfg.max_tokens is not None else "")
                )
            writers["train"].move_tail(tail, writers["val"])
            split_rule = (f"fewer than {cfg.val_every} documents: the last {tail} tokens (1 in {cfg.val_every}, "
                          "rounded down) -> val")
        (path / META).unlink(missing_ok=True)  # from here until the new meta.json lands, the directory is stale
        for writer in writers.values():
            writer.commit()
    finally:
        progress.close()
        for writer in writers.values():
            writer.discard()
        if created:  # a failed first preparation leaves no empty dataset folder behind (rmdir fails on a full one)
            with suppress(OSError):
                path.rmdir()
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        **{name: getattr(cfg, name) for name in INPUT_FIELDS},
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "separator": "eot_id after every document",
        "split_rule": split_rule,
        **{f"{split}_tokens": writers[split].tokens for split in SPLITS},
        **{f"{split}_documents": writers[split].documents for split in SPLITS},  # documents that start there
        "val_sha256": writers["val"].sha256,
        "invalid_utf8": replaced,
    }
    write_text_atomic(path / META, json.dumps(meta, indent=2) + "\n")
    return PreparedData(path, meta, reused=False, seconds=time.perf_counter() - start)


def is_prepared(cfg: DataConfig) -> bool:
    """Whether the dataset directory of `cfg` holds this exact input, complete (what `prepare` would reuse)."""
    return _current_meta(dataset_dir(cfg), input_fingerprint(cfg, resolve_source(cfg))) is not None


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Delete the temporary token files in `path` whose writer is gone (killed before it could clean up, e.g. by
    SIGTERM), since each can be gigabytes; returns what it deleted. A writer holds a lock on its file while it lives
    (`_TokenWriter`), which the kernel drops however the process ends: a process id would not tell a dead writer from
    a live one in another container or on another machine sharing the folder."""
    stale = [tmp for tmp in path.glob(".*.tmp") if TEMP_NAME.fullmatch(tmp.name) and _unlocked(tmp)]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def _unlocked(tmp: Path) -> bool:
    """Whether no writer holds the lock on a temporary token file (False too where it vanished meanwhile)."""
    try:
        with open(tmp, "rb") as handle:
            # shared: it conflicts with the writer's exclusive lock, and needs no write access (NFS emulates an
            # exclusive flock with a write lock, refused on a file opened for reading)
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released as the file closes
            return True
    except (BlockingIOError, FileNotFoundError, PermissionError):  # locked, vanished, or another user's
        return False


def replaced_bytes(source: Source) -> dict[str, dict[str, int]]:
    """Per text file with invalid UTF-8: how many sequences become U+FFFD and the first one's byte offset; each is
    reported on stdout with the run's other warnings (and recorded in meta.json), so a stray byte neither stops the
    preparation nor passes silently."""
    found = {}
    for path in source.files if source.dataset == "text" else ():
        count, first = invalid_utf8(path)
        if count:
            found[str(path)] = {"count": count, "first_byte": first}
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")  # a name not UTF-8 itself prints too
            print(f"warning: {shown}: {count} invalid UTF-8 byte sequence(s) replaced with U+FFFD "
                  f"(first at byte {first})", flush=True)
    return found


def load_prepared(dataset: DataConfig | str | Path) -> tuple[dict, np.memmap, np.memmap]:
    """(meta, train tokens, val tokens) of a prepared dataset: its directory, or the config that names it."""
    path = dataset_dir(dataset) if isinstance(dataset, DataConfig) else Path(dataset)
    meta = _read_meta(path)
    if meta is None:
        raise DataError(f"{path} is not a prepared dataset (no {META}); run: python -m data.prepare --source ...")
    if not _files_match(path, meta):
        raise DataError(f"{path}: token files do not match {META} (interrupted or edited); prepare it again")
    train, val = (np.memmap(path / f"{split}.bin", dtype=meta["dtype"], mode="r") for split in SPLITS)
    return meta, train, val


class _TokenWriter:
    """Appends documents' ids, a chunk at a time, to a temporary file next to `path`; `commit` renames it to
    `path`. With `hashed`, it keeps the sha256 of what it wrote (meta.json records the val split's)."""

    def __init__(self, path: Path, dtype: np.dtype, hashed: bool = False) -> None:
        self.path, self.dtype = path, dtype
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        self.file = open(self.tmp, "xb")  # a new file: never another writer's, emptied
        fcntl.flock(self.file, fcntl.LOCK_EX)  # held while this process lives: remove_stale_temp_files keeps it
        self.tokens = self.documents = 0
        self._hash = hashlib.sha256() if hashed else None

    def append(self, ids: list[int] | np.ndarray, starts_document: bool) -> None:
        data = np.asarray(ids, dtype=self.dtype).tobytes()
        self.file.write(data)
        if self._hash is not None:
            self._hash.update(data)
        self.tokens += len(ids)
        self.documents += starts_document

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def move_tail(self, count: int, to: _TokenWriter) -> None:
        """Move the last `count` tokens of this unhashed writer (the train split) to the empty writer `to`, where
        they start no document, a block at a time."""
        keep = (self.tokens - count) * self.dtype.itemsize
        self.file.flush()
        with open(self.tmp, "rb") as handle:
            handle.seek(keep)
            while block := handle.read(COPY_BYTES):
                to.append(np.frombuffer(block, dtype=self.dtype), starts_document=False)
        self.file.truncate(keep)
        self.file.seek(keep)
        self.tokens -= count

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        """Remove the temporary file if `commit` did not happen."""
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _document_chunks(documents: Iterable[Iterable[str]], tokenizer: TextTokenizer) -> Iterator[tuple[int, str, bool]]:
    """(document index, chunk, whether it is the document's last) for each chunk `tokenizer` makes of each document's
    reads."""
    for i, reads in enumerate(documents):
        chunks = tokenizer.chunks(reads)
        chunk = next(chunks)
        for following in chunks:
            yield i, chunk, False
            chunk = following
        yield i, chunk, True


def _tokenised(chunks: Iterable[tuple[int, str, bool]], tokenizer: TextTokenizer) -> Iterator[tuple[int, list[int]]]:
    """(document index, ids) per chunk, the end-of-text id after a document's last chunk."""
    for batch in _batches(chunks):
        indices, texts, lasts = zip(*batch)
        for i, ids, last in zip(indices, tokenizer.encode_batch(list(texts)), lasts):
            if last:
                ids.append(tokenizer.eot_id)
            yield i, ids


def _batches(chunks: Iterable[tuple[int, str, bool]]) -> Iterator[list[tuple[int, str, bool]]]:
    """`chunks` in lists of BATCH_DOCUMENTS, or fewer once they hold CHUNK_CHARS characters: many small documents
    share one call to the tokenizer, and chunks of a long one do not pile up in memory."""
    batch, chars = [], 0
    for chunk in chunks:
        batch.append(chunk)
        chars += len(chunk[1])
        if len(batch) == BATCH_DOCUMENTS or chars >= CHUNK_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _split_documents(
    chunks: Iterable[tuple[int, list[int]]], val_every: int, max_tokens: int | None
) -> Iterator[tuple[str, list[int], bool]]:
    """("train" | "val", ids, whether they start a document) per chunk, by its document's index; the document that
    reaches max_tokens is cut there and is the last."""
    total, previous = 0, None
    for i, ids in chunks:
        if max_tokens is not None:
            ids = ids[: max_tokens - total]
        total += len(ids)
        yield ("val" if i % val_every == val_every - 1 else "train"), ids, i != previous
        previous = i
        if max_tokens is not None and total >= max_tokens:
            return


def _current_meta(path: Path, fingerprint: str) -> dict | None:
    """meta.json of dataset directory `path` when it records `fingerprint` and both token files match it."""
    meta = _read_meta(path)
    if meta is None or meta.get("fingerprint") != fingerprint or not _files_match(path, meta):
        return None
    return meta


def _read_meta(path: Path) -> dict | None:
    """meta.json's contents, or None when there is none or it is unusable (prepare then writes the directory anew)."""
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and {"dtype", "train_tokens", "val_tokens"} <= set(meta) else None


def _files_match(path: Path, meta: dict) -> bool:
    """Whether both token files exist with the sizes meta.json records."""
    itemsize = np.dtype(meta["dtype"]).itemsize
    files = {split: path / f"{split}.bin" for split in SPLITS}
    return all(f.is_file() and f.stat().st_size == meta[f"{split}_tokens"] * itemsize for split, f in files.items())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "_", text).strip("._")[-48:] or "data"


# The command line's flags, by the data.* config key each sets.
FLAGS = {f"data.{name}": f"--{name.replace('_', '-')}" for name in (*INPUT_FIELDS, "prepared_dir")}


def main(argv: list[str] | None = None) -> int:
    defaults, hints = DataConfig(), typing.get_type_hints(DataConfig)
    parser = ArgumentParser(prog="python -m data.prepare", description=__doc__)
    for key, flag in FLAGS.items():
        name = key.removeprefix("data.")
        parse = int if int in (hints[name], *typing.get_args(hints[name])) else str
        parser.add_argument(flag, type=parse, default=getattr(defaults, name), help=key)
    args = parser.parse_args(argv)
    try:
        result = prepare(DataConfig(**vars(args)))
    except ValueError as exc:  # DataError, DataConfig's checks
        print(f"error: {with_flag_names(str(exc), FLAGS)}", file=sys.stderr)
        return 2
    except OSError as exc:  # reading the source, or writing the token files
        named = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{named}; the source files must be readable, and --prepared-dir "
              f"({args.prepared_dir}) writable with room for the token files", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # prepare() has removed its partial files on the way out
        print("interrupted: nothing was kept; run the same command again to prepare the data", file=sys.stderr)
        return 130
    meta = result.meta
    print(f"{result.path}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
          f"{meta['train_documents']:,} / {meta['val_documents']:,} documents ({meta['split_rule']})")
    if result.reused:
        print("up to date: reused without reading the source")
    else:
        tokens = meta["train_tokens"] + meta["val_tokens"]
        print(f"{tokens:,} tokens in {result.seconds:.2f} s = {tokens / result.seconds / 1e6:.2f} M tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
