"""Forward+backward time of the LM-head loss in its two forms (model/loss.py), alternating in one process.

    python scripts/bench_loss.py                                  # GPT-2 small head, 1024 and 4096 tokens
    python scripts/bench_loss.py --tokens 4096 --dtypes bfloat16 --chunks 1024 2048 4096

The full form (all logits, then cross-entropy: nanoGPT's `F.linear` + `F.cross_entropy`) is timed beside the
chunked form at each `--chunks` row count, with its head padded to a multiple of VOCAB_ALIGN rows (as it runs) and
without; the forms take turns round after round, so load from other processes
slows them alike, and each form's time is divided by the full form's of the same round (the median of these
ratios is reported). malloc keeps freed memory, as train.py on the CPU (training/malloc.py).
`model.loss.LOSS_FORMS` records the choice these measurements support.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from fileio.pages import command_line, write_page
from fileio.tables import cell, markdown_table, range_cell
from model.loss import VOCAB_ALIGN, chunked_linear_cross_entropy, linear_cross_entropy_reference
from training.malloc import malloc_setting

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def forms(chunks: list[int], tokens: int) -> dict[str, Loss]:
    """The full form, and the chunked form at each distinct rows-per-chunk (a chunk of >= N rows is one chunk), with
    its head padded to VOCAB_ALIGN rows (as it runs) and unpadded."""
    found: dict[str, Loss] = {"full": linear_cross_entropy_reference}
    for rows in sorted({min(rows, tokens) for rows in chunks}):
        found[f"chunked, {rows} rows"] = lambda h, w, t, rows=rows: chunked_linear_cross_entropy(h, w, t, rows)
        found[f"chunked, {rows} rows, head unpadded"] = (
            lambda h, w, t, rows=rows: chunked_linear_cross_entropy(h, w, t, rows, vocab_align=1))
    return found


def time_once(loss_fn: Loss, h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, dtype: torch.dtype) -> float:
    h.grad = w.grad = None
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = loss_fn(h, w, t)
    loss.backward()
    return time.perf_counter() - start


def measure(tokens: int, hidden: int, vocab: int, dtype: torch.dtype, chunks: list[int],
            reps: int) -> dict[str, tuple[float, float, float, float]]:
    """Per form: (median seconds of forward+backward, median over rounds of its time / the full form's time in the
    same round, and the least and largest of those ratios). The forms take turns, round after round, after one
    untimed round."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=g).requires_grad_()
    w = (0.02 * torch.randn(vocab, hidden, generator=g)).requires_grad_()
    t = torch.randint(0, vocab, (tokens,), generator=g)
    candidates = forms(chunks, tokens)
    rounds = [{name: time_once(loss_fn, h, w, t, dtype) for name, loss_fn in candidates.items()}
              for _ in range(reps + 1)][1:]
    ratios = {name: [r[name] / r["full"] for r in rounds] for name in candidates}
    return {name: (statistics.median(r[name] for r in rounds), statistics.median(ratios[name]), min(ratios[name]),
                   max(ratios[name])) for name in candidates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096], help="rows N of the loss")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="bfloat16: autocast")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1024, 2048], help="rows per chunk to time")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/bench_loss")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc = malloc_setting(True)  # as train.py on the CPU

    rows = []
    for dtype_name in args.dtypes:
        for tokens in args.tokens:
            found = measure(tokens, args.hidden, args.vocab, getattr(torch, dtype_name), args.chunks, args.reps)
            for name, (seconds, ratio, low, high) in found.items():
                row = dict(dtype=dtype_name, tokens=tokens, form=name, seconds=round(seconds, 4),
                           ratio_to_full=round(ratio, 3), ratio_min=round(low, 3), ratio_max=round(high, 3))
                rows.append(row)
                print(row, flush=True)

    # the range shows which forms the rounds told apart: overlapping ranges did not
    table = markdown_table(["dtype", "tokens", "form", "seconds", "time / full form's", "range over rounds"],
                           [[r["dtype"], r["tokens"], r["form"], cell(r["seconds"]), cell(r["ratio_to_full"], "x"),
                             range_cell(r["ratio_min"], r["ratio_max"], "x")] for r in rows],
                           right=("tokens", "seconds", "time / full form's"))
    config = (f"hidden {args.hidden}, vocabulary {args.vocab}, fp32 weights (bfloat16: autocast), {args.threads} "
              f"thread(s), {args.reps} rounds after an untimed one, the forms taking turns in each round; seconds: "
              f"median; ratio: median over rounds of the time / the full form's time in the same round, "
              f"malloc {malloc} (training/malloc.py), torch {torch.__version__}")
    write_page(args.out, rows, title="LM-head loss: full and chunked forms",
               measured="forward+backward seconds of the LM-head cross-entropy (model/loss.py) in the full form "
               "(F.linear + cross-entropy) and the chunked form (head padded to a multiple of "
               f"{VOCAB_ALIGN} rows, as it runs, and unpadded), alternating in one process",
               command=command_line(__file__), config=config, body=table)
    print(table)


if __name__ == "__main__":
    main()
