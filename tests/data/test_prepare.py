"""prepare: a source becomes train.bin / val.bin / meta.json; documents end in <|endoftext|>, val takes every
val_every-th document, and an up-to-date dataset is reused without reading the source."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.config import DataConfig
from data.errors import DataError
import data.prepare as prepare_module
from data.prepare import FLAGS, _TokenWriter, dataset_dir, is_prepared, load_prepared, main, prepare, token_dtype
from data.tokenizer import TextTokenizer, gpt2_encoding, gpt2_tokenizer, load_tokenizer
from typedconfig.cli import with_flag_names

DOCS = [f"Document {i}: {'Lorem ipsum dolor sit amet. ' * i}\n\nÆsop's 🐢 line\tend  " for i in range(7)]
EOT = 50256


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("gpt2")


def config(tmp_path, source, **fields) -> DataConfig:
    return DataConfig(source=str(source), prepared_dir=str(tmp_path / "prepared"), val_every=3, **fields)


def write_source(tmp_path, kind: str, docs: list[str]):
    """The documents as a local source of the given kind: a folder of .txt files, one .jsonl or one .parquet."""
    if kind == "txt":
        folder = tmp_path / "texts"
        folder.mkdir()
        for i, doc in enumerate(docs):
            (folder / f"{i:03d}.txt").write_text(doc)
        return folder
    if kind == "jsonl":
        path = tmp_path / "docs.jsonl"
        path.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs))
        return path
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": docs}), path)
    return path


def expected_tokens(tok, docs: list[str]) -> list[int]:
    return [i for doc in docs for i in [*tok.encode(doc), EOT]]


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_documents_end_in_eot_and_every_third_goes_to_val(tmp_path, tok, kind):
    result = prepare(config(tmp_path, write_source(tmp_path, kind, DOCS)))
    meta, train, val = load_prepared(result.path)
    train_docs, val_docs = [DOCS[i] for i in (0, 1, 3, 4, 6)], [DOCS[i] for i in (2, 5)]
    assert train.tolist() == expected_tokens(tok, train_docs)
    assert val.tolist() == expected_tokens(tok, val_docs)
    assert train.dtype == np.uint16 and meta["dtype"] == "uint16"
    assert (meta["train_documents"], meta["val_documents"]) == (5, 2)
    assert meta["train_tokens"] + meta["val_tokens"] == sum(len(tok.encode(d)) + 1 for d in DOCS)
    assert meta["split_rule"] == "document i -> val iff i % 3 == 2"
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_id"]) == ("gpt2", 50257, EOT)
    assert meta["val_sha256"] == hashlib.sha256((result.path / "val.bin").read_bytes()).hexdigest()
    assert sorted(p.name for p in result.path.iterdir()) == ["meta.json", "train.bin", "val.bin"]  # no temp files


def tricky_text_file() -> bytes:
    """~100 KB whose reads of 1000 characters end on "\r\n", lone "\r"s, multibyte characters, invalid bytes and
    whitespace runs, with `<|endoftext|>` as text and long stretches without a safe boundary."""
    rng = random.Random(0)
    parts = [b"word ", b"line\n", b"dos\r\n", b"mac\r", b"\r\r\n", b"\n\n", b"  \n", b"\n  indented", b"\t\t  ",
             "caf\u00e9 ".encode(), "\U0001f422".encode(), "\u6771\u4eac\n".encode(), b"\xff", b"\xe2\x82",
             b"<|endoftext|>", "\u00a0\u2028".encode()]
    blocks = [b"".join(rng.choices(parts, k=rng.randint(1, 400))) for _ in range(100)]
    blocks.insert(30, b"no newline at all " * 200)
    blocks.insert(60, b"\n indented, so no safe boundary" * 150)
    return b"".join(blocks)


def text_of(raw: bytes) -> str:
    """A .txt file's text as `datasets`' text builder reads it: invalid UTF-8 replaced, "\r\n" and "\r" as "\n"."""
    return raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize("big_at, cut", [(2, False), (3, True)], ids=["in val", "cut by max_tokens"])
def test_a_long_text_file_is_tokenised_in_chunks_into_the_bytes_of_the_whole_text(tmp_path, tok, monkeypatch,
                                                                                   big_at, cut):
    raw = tricky_text_file()
    text = text_of(raw)
    docs = list(DOCS[:3])
    docs.insert(big_at, text)
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, doc in enumerate(docs):
        (folder / f"{i}.txt").write_bytes(raw if i == big_at else doc.encode())
    encoding = gpt2_encoding()  # the whole text in one call, no pieces
    ids = [[*encoding.encode_ordinary(doc), EOT] for doc in docs]
    kept = int(0.8 * len(ids[big_at]))  # inside a late chunk
    max_tokens = sum(map(len, ids[:big_at])) + kept if cut else None
    if cut:
        ids = [*ids[:big_at], ids[big_at][:kept]]
    expected = {"train": [i for n, d in enumerate(ids) if n != 2 for i in d], "val": ids[2]}

    longest = []
    encode_batch = tok.encode_batch
    monkeypatch.setattr(tok, "encode_batch", lambda texts: longest.append(max(map(len, texts))) or encode_batch(texts))
    prepared = {}
    for chunk_chars in (1000, 1 << 20):
        monkeypatch.setattr("data.prepare.CHUNK_CHARS", chunk_chars)
        cfg = config(tmp_path / str(chunk_chars), folder, max_tokens=max_tokens)
        path = prepare(cfg).path
        prepared[chunk_chars] = [(path / name).read_bytes() for name in ("train.bin", "val.bin", "meta.json")]
        if chunk_chars == 1000:
            assert max(longest) < len(text) / 10  # the document was never handed over whole
    assert prepared[1000] == prepared[1 << 20]
    meta, train, val = load_prepared(path)
    assert train.tolist() == expected["train"] and val.tolist() == expected["val"]
    assert (meta["train_documents"], meta["val_documents"]) == (3, 1)


def test_a_tokenizer_without_safe_cuts_is_handed_each_text_file_whole(tmp_path, monkeypatch):
    whole = TextTokenizer("gpt2", EOT, 50257, gpt2_tokenizer, None, piece_chars=None)  # as hub tokenizers are built
    seen = []
    encode_batch = whole.encode_batch
    monkeypatch.setattr(whole, "encode_batch", lambda texts: seen.extend(texts) or encode_batch(texts))
    monkeypatch.setattr("data.prepare.load_tokenizer", lambda name: whole)
    monkeypatch.setattr("data.prepare.CHUNK_CHARS", 1000)
    raw = tricky_text_file()
    folder = write_source(tmp_path, "txt", DOCS[:2])
    (folder / "002.txt").write_bytes(raw)
    prepare(config(tmp_path, folder))
    assert seen == [*DOCS[:2], text_of(raw)]


def test_a_long_text_file_is_prepared_in_a_fraction_of_the_memory_it_takes_whole(tmp_path, tok, monkeypatch):
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(1, 9))) for _ in range(2000)]
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "0.txt").write_text("".join(" ".join(rng.choices(words, k=12)) + ".\n" for _ in range(50_000)))
    (folder / "1.txt").write_text("a small document\n")
    (folder / "2.txt").write_text("another, in val\n")
    monkeypatch.setattr("data.prepare.CHUNK_CHARS", 1 << 14)
    tracemalloc.start()  # (the tok fixture has loaded the tokenizer already)
    try:
        meta = prepare(config(tmp_path, folder)).meta
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert meta["train_tokens"] > 1_000_000
    assert peak < 50 * meta["train_tokens"] / 10  # held whole, its text and ids as Python ints take ~50 bytes a token


def test_the_dataset_directory_is_named_after_source_tokenizer_and_inputs(tmp_path):
    cfg = config(tmp_path, "shakespeare")
    assert dataset_dir(cfg).parent == tmp_path / "prepared"
    assert dataset_dir(cfg).name.startswith("shakespeare-gpt2-")
    assert dataset_dir(config(tmp_path, "shakespeare", max_tokens=1000)) != dataset_dir(cfg)
    assert dataset_dir(DataConfig(prepared_dir=cfg.prepared_dir, val_every=3, block_size=8)) == dataset_dir(cfg)


def test_a_second_prepare_reuses_and_a_changed_file_prepares_again(tmp_path, tok):
    source = write_source(tmp_path, "txt", DOCS)
    first = prepare(config(tmp_path, source))
    assert not first.reused and first.seconds > 0
    stamp = (first.path / "train.bin").stat().st_mtime_ns
    second = prepare(config(tmp_path, source))
    assert second.reused and second.meta == first.meta
    assert (first.path / "train.bin").stat().st_mtime_ns == stamp  # not rewritten
    (source / "000.txt").write_text("changed")
    third = prepare(config(tmp_path, source))
    assert not third.reused and third.path == first.path
    assert load_prepared(third.path)[1][: len(tok.encode("changed")) + 1].tolist() == [*tok.encode("changed"), EOT]


def test_new_contents_of_the_same_size_and_modification_time_prepare_again(tmp_path, tok):
    """As `cp -p` or `rsync -a` leave a file: other bytes, the old size and the old modification time."""
    source = write_source(tmp_path, "txt", ["first text"])
    first = prepare(config(tmp_path, source))
    old = (source / "000.txt").stat()
    (source / "000.txt").write_text("other text")  # the same length
    os.utime(source / "000.txt", ns=(old.st_atime_ns, old.st_mtime_ns))
    again = prepare(config(tmp_path, source))
    assert not again.reused and again.path == first.path
    assert tok.decode(load_prepared(again.path)[1][:3].tolist()).startswith("other")


def test_max_documents_and_max_tokens_limit_what_is_read(tmp_path, tok):
    source = write_source(tmp_path, "jsonl", DOCS)
    meta = prepare(config(tmp_path, source, max_documents=3)).meta
    assert (meta["train_documents"], meta["val_documents"]) == (2, 1)
    limit = len(tok.encode(DOCS[0])) + len(tok.encode(DOCS[1])) + len(tok.encode(DOCS[2])) + 3 + 5
    meta, train, val = load_prepared(prepare(config(tmp_path, source, max_tokens=limit)).path)
    assert meta["train_tokens"] + meta["val_tokens"] == limit  # the fourth document is cut after 5 tokens
    assert train.tolist() == expected_tokens(tok, DOCS[:2]) + tok.encode(DOCS[3])[:5]
    assert meta["train_documents"] == 3


def test_prepare_can_be_found_again_from_its_config(tmp_path):
    cfg = config(tmp_path, write_source(tmp_path, "parquet", DOCS))
    result = prepare(cfg)
    meta, train, val = load_prepared(cfg)
    assert meta == result.meta and len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]


@pytest.mark.parametrize("kind", ["txt file", "jsonl"])
def test_a_source_of_fewer_documents_than_val_every_gives_its_last_tokens_to_val(tmp_path, tok, monkeypatch, kind):
    """One .txt file (or 2 rows at val_every 3) has no document i with i % 3 == 2: the last tokens // 3 tokens go to
    val instead. Moved a few bytes at a time here, so the blocks and the kept part's hash are exercised."""
    monkeypatch.setattr("data.prepare.COPY_BYTES", 8)
    docs = DOCS[:1] if kind == "txt file" else DOCS[:2]
    if kind == "txt file":
        source = tmp_path / "one.txt"
        source.write_text(docs[0])
    else:
        source = write_source(tmp_path, "jsonl", docs)
    meta, train, val = load_prepared(prepare(config(tmp_path, source)).path)
    tokens = expected_tokens(tok, docs)
    held_out = len(tokens) // 3
    assert train.tolist() == tokens[:-held_out] and val.tolist() == tokens[-held_out:]
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(tokens) - held_out, held_out)
    assert (meta["train_documents"], meta["val_documents"]) == (len(docs), 0)  # val starts inside the last document
    assert meta["split_rule"] == f"fewer than 3 documents: the last {held_out} tokens (1 in 3, rounded down) -> val"
    assert meta["val_sha256"] == hashlib.sha256(np.asarray(val).tobytes()).hexdigest()


def test_one_text_file_prepares_from_the_command_line_at_the_default_val_every(tmp_path, tok, capsys):
    (tmp_path / "hello.txt").write_text(DOCS[5])
    assert main(["--source", str(tmp_path / "hello.txt"), "--prepared-dir", str(tmp_path / "prepared")]) == 0
    held_out = len(expected_tokens(tok, DOCS[5:6])) // 20
    assert f"(fewer than 20 documents: the last {held_out} tokens (1 in 20, rounded down) -> val)" in \
        capsys.readouterr().out


def test_a_source_too_small_to_split_is_an_error_and_leaves_nothing_behind(tmp_path):
    """'a' and its end-of-text id are 2 tokens: 2 // 3 leaves none for val."""
    source = tmp_path / "a.txt"
    source.write_text("a")
    cfg = config(tmp_path, source)
    with pytest.raises(DataError, match=rf"^the val split is empty: {source} holds 2 token\(s\), too few to hold out 1 "
                                        "in 3 of them for val; add text or lower data.val_every to at most 2$"):
        prepare(cfg)
    assert not dataset_dir(cfg).exists()  # not even the folder a first preparation made
    dataset_dir(cfg).mkdir(parents=True)
    with pytest.raises(DataError, match="too few to hold out"):
        prepare(cfg)
    assert list(dataset_dir(cfg).iterdir()) == []  # a folder that was there stays


@pytest.mark.parametrize(
    "make_source, fields, message",
    [
        (lambda p: p / "missing.txt", {}, "does not exist"),
        (lambda p: p / "d.csv", {}, "cannot read .csv files"),
        (lambda p: p / "d.jsonl", {"text_field": "body"}, "data.text_field 'body' is not a column .*; columns: text"),
    ],
    ids=["missing path", "unknown extension", "missing text field"],
)
def test_unusable_sources_fail_with_the_fix_in_the_message(tmp_path, make_source, fields, message):
    (tmp_path / "d.csv").write_text("text\nx\n")
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DataError, match=message):
        prepare(config(tmp_path, make_source(tmp_path), **fields))


def test_loading_what_was_not_prepared_or_was_damaged_is_an_error(tmp_path):
    with pytest.raises(DataError, match="is not a prepared dataset .*python -m data.prepare"):
        load_prepared(tmp_path)
    path = prepare(config(tmp_path, write_source(tmp_path, "jsonl", DOCS))).path
    with open(path / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(DataError, match="token files do not match meta.json"):
        load_prepared(path)
    assert not prepare(config(tmp_path, tmp_path / "docs.jsonl")).reused  # damaged files are never reused


def test_is_prepared_only_when_prepare_would_reuse_the_directory(tmp_path):
    cfg = config(tmp_path, write_source(tmp_path, "jsonl", DOCS))
    assert not is_prepared(cfg)
    path = prepare(cfg).path
    assert is_prepared(cfg)
    with open(path / "val.bin", "r+b") as f:
        f.truncate(10)
    assert not is_prepared(cfg)


def test_a_preparation_killed_by_sigterm_leaves_temp_files_that_the_next_one_deletes(tmp_path):
    """SIGTERM ends the process without running its cleanup; the next prepare of the directory removes what it
    left, and keeps the temporary files of a writer still alive (it holds their lock, whatever its process id) and
    files that are not token files."""
    cfg = config(tmp_path, write_source(tmp_path, "jsonl", DOCS))
    path = prepare(cfg).path
    killed = ("import os, signal; import numpy as np; from pathlib import Path; from data.prepare import _TokenWriter; "
              f"[_TokenWriter(Path({str(path)!r}) / f'{{s}}.bin', np.dtype('uint16')).append([1, 2], True) "
              "for s in ('train', 'val')]; os.kill(os.getpid(), signal.SIGTERM)")
    assert subprocess.run([sys.executable, "-c", killed]).returncode == -signal.SIGTERM
    left = sorted(p.name for p in path.glob(".*.tmp"))
    assert len(left) == 2 and left[0].startswith(".train.bin.") and left[1].startswith(".val.bin.")
    writer, unrelated = _TokenWriter(path / "train.bin", np.dtype("uint16")), path / ".notes.tmp"
    unrelated.write_text("not a token file")
    unlocked = path / ".val.bin.1-0123abcd.tmp"  # a process id that lives (init's), but no writer holds it
    unlocked.write_bytes(b"\0\0")
    assert prepare(cfg).reused
    assert sorted(path.glob(".*.tmp")) == sorted([writer.tmp, unrelated])
    writer.discard()


def test_invalid_utf8_is_a_warning_on_stdout_with_the_rest_of_the_run_log(tmp_path, capsys):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, doc in enumerate(DOCS[:3]):
        (folder / f"{i}.txt").write_bytes(doc.encode() + (b"\xff tail" if i == 1 else b""))
    prepare(config(tmp_path, folder))
    captured = capsys.readouterr()
    assert captured.out == (f"warning: {folder / '1.txt'}: 1 invalid UTF-8 byte sequence(s) replaced with U+FFFD "
                            f"(first at byte {len(DOCS[1].encode())})\n")
    assert "warning" not in captured.err


def test_token_files_are_uint16_while_the_vocabulary_fits():
    assert token_dtype(50257) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_the_command_line_prepares_shakespeare_and_then_reuses_it(tmp_path, capsys):
    args = ["--source", "shakespeare", "--max-documents", "4", "--val-every", "2", "--prepared-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 / 2 documents (document i -> val iff i % 2 == 1)" in out and "M tokens/s" in out
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out


def test_the_command_line_reports_errors_in_one_line(tmp_path, capsys):
    assert main(["--source", str(tmp_path / "missing.txt"), "--prepared-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --source")


def test_a_full_disk_is_one_line_naming_where_the_token_files_go(tmp_path, capsys, monkeypatch):
    def full(cfg):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare_module, "prepare", full)
    assert main(["--source", "shakespeare", "--prepared-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: No space left on device; the source files must be readable, and "
                                       f"--prepared-dir ({tmp_path}) writable with room for the token files\n")


def test_ctrl_c_on_the_command_line_is_one_line_and_exit_status_130(tmp_path, capsys, monkeypatch):
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "prepare", interrupted)
    assert main(["--source", "shakespeare", "--prepared-dir", str(tmp_path)]) == 130
    assert capsys.readouterr().err == ("interrupted: nothing was kept; run the same command again to prepare the "
                                       "data\n")


def test_the_command_line_names_its_flags_where_the_shared_checks_name_config_keys(tmp_path, capsys):
    (tmp_path / "short.txt").write_text("a few words")
    argv = ["--source", str(tmp_path / "short.txt"), "--val-every", "50", "--prepared-dir", str(tmp_path / "prepared")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "lower --val-every to at most" in err and "data." not in err
    message = "data.block_size is a training key; data.max_tokens and data.prepared_dir are flags"
    assert (with_flag_names(message, FLAGS)
            == "data.block_size is a training key; --max-tokens and --prepared-dir are flags")


def test_an_empty_source_is_refused_rather_than_read_as_the_current_directory(tmp_path, capsys, monkeypatch):
    (tmp_path / "a.txt").write_text("a document that must not be read\n")
    monkeypatch.chdir(tmp_path)
    assert main(["--source", "", "--prepared-dir", str(tmp_path / "prepared")]) == 2
    assert capsys.readouterr().err == ("error: --source is empty; give 'shakespeare', a file, directory or glob, "
                                       "'hf:<dataset>' or 'mqar'\n")
    assert not (tmp_path / "prepared").exists()


def test_preparing_text_files_imports_neither_torch_nor_datasets(tmp_path):
    # their imports took longer than tokenising the whole Shakespeare corpus (results/bench_tokenize.md)
    (tmp_path / "a.txt").write_text("one document\n")
    (tmp_path / "b.txt").write_text("another\n")
    argv = ["--source", str(tmp_path), "--val-every", "2", "--prepared-dir", str(tmp_path / "prepared")]
    check = (f"import sys; from data.prepare import main; assert main({argv!r}) == 0; "
             "assert not {'torch', 'datasets'} & set(sys.modules), sorted({'torch', 'datasets'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", check], check=True, capture_output=True)


def test_a_hub_tokenizer_replaced_in_the_cache_prepares_the_data_again(tmp_path, monkeypatch):
    """The name alone was the fingerprint: a new revision's ids were never written, the old ones reused."""
    from data import tokenizer as tokenizer_module
    from data.tokenizer import gpt2_tokenizer

    cached = tmp_path / "tokenizer.json"
    gpt2_tokenizer().save(str(cached))
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda name, filename: str(cached))
    monkeypatch.setattr(tokenizer_module.Tokenizer, "from_pretrained", lambda name: gpt2_tokenizer())
    new_process = (tokenizer_module.load_tokenizer.cache_clear, tokenizer_module.tokenizer_identity.cache_clear)
    for clear in new_process:
        clear()
    try:
        cfg = config(tmp_path, write_source(tmp_path, "jsonl", DOCS), tokenizer="org/tok")
        assert not prepare(cfg).reused and prepare(cfg).reused
        cached.write_text(cached.read_text().replace('"<|endoftext|>"', '"<|endoftext|>" '))  # another revision
        for clear in new_process:  # a later process (one process reads a tokenizer's identity once)
            clear()
        assert not prepare(cfg).reused
    finally:
        for clear in new_process:
            clear()


def test_two_writers_of_one_process_id_never_share_a_temporary_file(tmp_path):
    """Processes in two containers may have the same id: the second writer emptied the first one's live file."""
    first = _TokenWriter(tmp_path / "train.bin", np.dtype("uint16"))
    first.append([1, 2, 3], True)
    first.file.flush()
    second = _TokenWriter(tmp_path / "train.bin", np.dtype("uint16"))
    assert first.tmp != second.tmp and first.tmp.stat().st_size == 6
    for writer in (first, second):
        writer.discard()
