"""Tokens/s of data preparation: `python -m data.prepare` end to end, and the GPT-2 tokenizer's two encoders.

    python scripts/bench_tokenize.py                          # Shakespeare, this tree against HEAD
    python scripts/bench_tokenize.py --baseline-rev abc123 --rounds 5

End to end: `python -m data.prepare --source SOURCE` runs in a fresh process into a fresh directory, from this
working tree and from `--baseline-rev` (extracted with `git archive`), taking turns round after round so load
from other processes slows both alike; its own report (tokens / seconds spent reading, tokenising and writing)
and the process's wall time are kept. Encoders: the same texts through data.tokenizer's TextTokenizer with
tiktoken (what prepare uses) and with `tokenizers` (encode_batch_fast), alternating in this process; both must
give the same ids.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data.config import DataConfig
from data.sources import iter_documents, resolve_source
from data.tokenizer import PIECE_CHARS, TextTokenizer, gpt2_tokenizer, load_tokenizer
from experiments.revision import baseline_commit, extract_revision
from fileio.pages import REPO, command_line, write_page
from fileio.tables import cell, markdown_table

REPORT = re.compile(r"([\d,]+) tokens in ([\d.]+) s")


def prepare_once(tree: Path, source: str) -> tuple[int, float, float]:
    """(tokens, seconds prepare reports, wall seconds of the process) of one fresh `python -m data.prepare`."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "data.prepare", "--source", source, "--prepared-dir", out],
                                cwd=tree, capture_output=True, text=True, check=True,
                                env={**os.environ, "PYTHONPATH": str(tree)})
        wall = time.perf_counter() - start
    tokens, seconds = REPORT.search(result.stdout).groups()
    return int(tokens.replace(",", "")), float(seconds), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="shakespeare")
    parser.add_argument("--baseline-rev", default="HEAD", help="git revision timed beside the working tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="results/bench_tokenize")
    args = parser.parse_args()
    args.baseline_rev = baseline_commit(parser, args.baseline_rev)  # the page names the commit, not a moving name

    rows = []
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        baseline = extract_revision(args.baseline_rev, Path(scratch))
        trees = {"this tree": REPO, f"baseline {args.baseline_rev}": baseline}
        runs: dict[str, list[tuple[int, float, float]]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                runs[name].append(prepare_once(tree, args.source))
    for name, found in runs.items():
        tokens = found[0][0]
        rows.append(dict(what=f"python -m data.prepare, {name}", tokens=tokens,
                         seconds=statistics.median(r[1] for r in found),
                         m_tokens_per_s=tokens / statistics.median(r[1] for r in found) / 1e6,
                         wall_m_tokens_per_s=tokens / statistics.median(r[2] for r in found) / 1e6))

    texts = list(iter_documents(resolve_source(DataConfig(source=args.source)), "text"))
    encoders = {"tiktoken": load_tokenizer("gpt2"),
                "tokenizers": TextTokenizer("gpt2", 50256, 50257, gpt2_tokenizer, None, PIECE_CHARS)}
    times: dict[str, list[float]] = {name: [] for name in encoders}
    ids = {}
    for _ in range(args.rounds + 1):
        for name, tokenizer in encoders.items():
            start = time.perf_counter()
            ids[name] = tokenizer.encode_batch(texts)
            times[name].append(time.perf_counter() - start)
    if ids["tiktoken"] != ids["tokenizers"]:
        raise SystemExit("the two encoders disagree")
    tokens = sum(map(len, ids["tiktoken"]))
    for name in encoders:
        seconds = statistics.median(times[name][1:])
        rows.append(dict(what=f"GPT-2 encode_batch, {name}", tokens=tokens, seconds=seconds,
                         m_tokens_per_s=tokens / seconds / 1e6, wall_m_tokens_per_s=None))
    for row in rows:
        print(row, flush=True)

    table = markdown_table(["", "tokens", "seconds", "M tokens/s", "M tokens/s, process wall time"],
                           [[r["what"], f"{r['tokens']:,}", cell(r["seconds"]), cell(r["m_tokens_per_s"]),
                             cell(r["wall_m_tokens_per_s"])] for r in rows],
                           right=("tokens", "seconds", "M tokens/s", "M tokens/s, process wall time"))
    config = (f"source {args.source} ({len(texts)} documents, {sum(map(len, texts)):,} characters), GPT-2 BPE, "
              f"{os.cpu_count()} CPUs, medians of {args.rounds} alternating rounds (encoders: after an untimed one); "
              "prepare's seconds: reading, tokenising and writing, as it reports them; load average "
              f"{load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    write_page(args.out, rows, title="Data preparation speed",
               measured="tokens/s of `python -m data.prepare` end to end (this tree and a baseline revision, taking "
               "turns) and of the GPT-2 tokenizer's tiktoken and tokenizers encoders on the same texts",
               command=command_line(__file__), config=config, body=table)
    print(table)


if __name__ == "__main__":
    main()
