"""Time of the direct attention form, tiled against compiled flex_attention (model/attention/flex.py), alternating.

    python scripts/bench_flex.py                            # expressive, expressive_sq, taylor; fp32, bf16; 1k, 4k
    python scripts/bench_flex.py --tokens 1024 --heads 4 --dtypes float32

Both forms compute the same y for the weight of each backend (expressive's s²/(1+s²), expressive_sq's and taylor's
quadratic kernels, the latter on unit q and k as taylor's q/k transform makes them). They take turns, round after
round, in one process, and each round's flex time is divided by the tiled time of the same round (the median of
these ratios is reported), so load from other processes slows both alike. The first call of the compiled flex
(torch.compile's caches off, as a first run pays it) is reported on its own.

On the CPU torch's flex kernel runs inference only: the script tries one forward+backward and reports the error,
and times the forward pass under no_grad. That kernel returns no logsumexp, so both forms run with eps = 0 (the
tiled kernel's cost does not depend on eps; flex's would grow by the eps factor). `DIRECT_FORMS` in
model/attention/flex.py records the choice these numbers support.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fileio.pages import command_line, write_page
from fileio.tables import cell, markdown_table
from model.attention.direct import tiled_direct_attention
from model.attention.expressive import ExpressiveAttention, ExpressiveSquaredAttention
from model.attention.flex import LogPointwiseWeight, flex_causal_attention
from model.attention.taylor import TaylorAttention

BLOCK = 128  # the backends' default block_size


def weights(d: int) -> dict[str, tuple[LogPointwiseWeight, bool]]:
    """backend -> (its weight of q·k, whether q and k are unit vectors)."""
    return {
        "expressive": (ExpressiveAttention().weight(d), False),
        "expressive_sq": (ExpressiveSquaredAttention().kernel(d), False),
        "taylor": (TaylorAttention().kernel(d), True),
    }


def inputs(heads: int, n: int, d: int, dtype: torch.dtype, unit: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, d, generator=g) for _ in range(3))
    if unit:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    return [x.to(dtype) for x in (q, k, v)]


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def backward_error(weight: LogPointwiseWeight, d: int) -> str:
    """What the compiled flex says to one forward+backward on the CPU ('' when it runs)."""
    q, k, v = (x.requires_grad_() for x in inputs(1, 128, d, torch.float32, False))
    try:
        flex_causal_attention(q, k, v, weight.log, eps=0.0).sum().backward()
    except Exception as exc:  # noqa: BLE001 - reported, not handled
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return ""


def measure(weight: LogPointwiseWeight, unit: bool, heads: int, n: int, d: int, dtype: torch.dtype,
            reps: int) -> dict[str, float]:
    """Forward seconds of both forms (medians), the median over rounds of flex / tiled, the first compiled call's
    seconds, and the largest |flex - tiled| of the outputs."""
    q, k, v = inputs(heads, n, d, dtype, unit)
    forms = {
        "tiled": lambda: tiled_direct_attention(q, k, v, weight, eps=0.0, block=BLOCK),
        "flex": lambda: flex_causal_attention(q, k, v, weight.log, eps=0.0),
    }
    with torch.no_grad():
        first_call, y_flex = timed(forms["flex"])
        _, y_tiled = timed(forms["tiled"])  # untimed round
        rounds = [{name: timed(fn)[0] for name, fn in forms.items()} for _ in range(reps)]
    return dict(
        tiled_s=statistics.median(r["tiled"] for r in rounds),
        flex_s=statistics.median(r["flex"] for r in rounds),
        flex_over_tiled=statistics.median(r["flex"] / r["tiled"] for r in rounds),
        first_call_s=first_call,
        max_abs_diff=(y_flex.float() - y_tiled.float()).abs().max().item(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--backends", nargs="+", default=["expressive", "expressive_sq", "taylor"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/bench_flex")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.compiler.config.force_disable_caches = True  # the compile time a first run pays
    d, found = args.head_dim, weights(args.head_dim)
    load_before = os.getloadavg()[0]
    rows = []
    for dtype_name in args.dtypes:
        for n in args.tokens:
            for name in args.backends:
                weight, unit = found[name]
                result = measure(weight, unit, args.heads, n, d, getattr(torch, dtype_name), args.reps)
                rounded = {key: float(f"{value:.4g}") for key, value in result.items()}
                row = dict(backend=name, dtype=dtype_name, tokens=n, **rounded)
                rows.append(row)
                print(row, flush=True)

    # Last: a call that raises while dynamo traces it leaves flex_attention to run eagerly (unfused) from then on.
    errors = {name: backward_error(found[name][0], d) for name in args.backends}
    table = markdown_table(
        ["backend", "dtype", "tokens", "tiled s", "flex s", "flex / tiled", "first flex call s", "max |flex - tiled|"],
        [[r["backend"], r["dtype"], r["tokens"], cell(r["tiled_s"]), cell(r["flex_s"]), cell(r["flex_over_tiled"], "x"),
          cell(r["first_call_s"]), cell(r["max_abs_diff"], "e")] for r in rows],
        right=("tokens", "tiled s", "flex s", "flex / tiled", "first flex call s", "max |flex - tiled|"),
    )
    failures = sorted({message for message in errors.values() if message})
    backward = ("Forward+backward of the compiled flex on the CPU: " + "; ".join(failures) if failures
                else "Forward+backward of the compiled flex ran on the CPU (not timed here).")
    config = (f"B = 1, H = {args.heads}, d = {d}, causal, no padding, eps = 0 in both forms (the CPU flex kernel "
              f"returns no logsumexp), tiled block {BLOCK}, {args.threads} thread(s), forward under no_grad, "
              f"{args.reps} rounds after an untimed one, the forms taking turns in each round; seconds: median; "
              f"flex / tiled: median over rounds of the ratio in the same round; first flex call: torch.compile "
              f"with its caches off, compile included (the first row's a cold compile, each later row's a "
              f"recompile of the one compiled flex for its weight, dtype and length); load average {load_before:.1f} before and "
              f"{os.getloadavg()[0]:.1f} after (other jobs on the machine); torch {torch.__version__}")
    *others, last = args.backends
    measured = f"{', '.join(others)} and {last}" if others else last
    write_page(args.out, rows, title="Direct attention form: tiled kernel and compiled flex_attention",
               measured=f"forward seconds of the direct form of {measured}, tiled (model/attention/direct.py) and "
               "through compiled flex_attention (model/attention/flex.py), alternating in one process",
               command=command_line(__file__), config=config, body=table + "\n\n" + backward)
    print(table)
    print(backward)


if __name__ == "__main__":
    main()
