"""The direct form of a pointwise weight `w(s)` through torch's `flex_attention`, a fused kernel, and the choice of
that form or the tiled one (model/attention/direct.py) per device.

    y_i = sum_{j <= i} w(s_ij) v_j / (sum_{j <= i} w(s_ij) + eps),   s_ij = q_i·k_j

`flex_attention` computes softmax(score_mod(s)) V with FlashAttention's tiling (Dao et al., arXiv 2205.14135):
the tiles of a query block are fused in one generated kernel, the n × n weights never reach memory, and the
backward pass recomputes them. With `score_mod = log w` its softmax is exp(log w_ij) / sum_j exp(log w_ij)
= w_ij / sum_j w_ij exactly (the running max it subtracts cancels), so every weight that is >= 0 runs on it:
expressive's s²/(1+s²) and the quadratic kernels of expressive_sq and taylor below their crossover.

- log 0 = -inf (s = 0 for the squares) has an infinite derivative, and the softmax's backward would multiply it by
  the weight's zero probability (NaN). So each weight's `log` floors w at WEIGHT_FLOOR: log and its derivative
  stay finite in fp32, and a weight changes by at most the floor, y by at most n · floor / (sum + eps).
- eps: flex normalises by sum_j w_ij alone. Its logsumexp L_i = log sum_j w_ij gives the missing factor exactly,
  sum / (sum + eps) = sigmoid(L_i - log eps), and torch differentiates through L_i.
- Masks: the causal and padding keys go through the block mask (mask_mod), so they are skipped, not weighted. A
  query that sees no key (left padding) gets 0 and L_i = -inf, hence factor 0: finite, for the caller to zero.
- The scores reach score_mod in fp32 (fp64 for fp64): the CPU kernel otherwise evaluates score_mod in the input
  dtype, and log w in bf16 is off by O(1) there.

Which form runs (DIRECT_FORMS): on CUDA flex, as FlashAttention runs softmax there; a rule, not a measurement (no
GPU was available to time it). On the CPU the tiled form: torch's CPU flex kernel runs inference only (no backward,
and no logsumexp, so eps = 0 only, which the expressive backends' option refuses), and there it gains little in fp32
and loses in bf16, after seconds of compiling (results/bench_flex.md, `python scripts/bench_flex.py`). fp64 runs
tiled everywhere.
flex needs torch.compile for its fused kernel; when the model is not already being compiled, a module-level
compiled flex_attention is called (compiled lazily, once per input shape, dtype and weight). If that raises (no C++
compiler, an unsupported case), the direct form runs tiled for the rest of the process, after one warning line.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import Literal, Protocol

import torch
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, create_block_mask, flex_attention

from model.attention.direct import PointwiseWeight, tiled_direct_attention
from model.compiling import EAGER_BACKWARD_COMPILE, out_of_memory

# Static shapes recompile flex_attention for every (batch, length, dtype, grad mode) met, and past dynamo's
# recompile_limit (8) torch runs it uncompiled, silently: unfused, the whole score matrix in memory. A run with its
# evaluations, or an evaluation harness's many lengths, meets more shapes than that; the limit is raised for it alone.
FLEX_RECOMPILE_LIMIT = 256
WEIGHT_FLOOR = 1e-30  # the least weight `log` sees: 1/floor and log(floor) are finite in fp32

DirectForm = Literal["flex", "tiled"]
# (device type, dtype of q) -> the direct form that runs; pairs not listed run "tiled" (fp64, the tests' exact mode,
# everywhere). CUDA: the fused kernel (a rule, not measured); CPU: measured, results/bench_flex.md.
DIRECT_FORMS: dict[tuple[str, torch.dtype], DirectForm] = {
    ("cuda", torch.float32): "flex",
    ("cuda", torch.bfloat16): "flex",
    ("cuda", torch.float16): "flex",
    ("cpu", torch.float32): "tiled",
    ("cpu", torch.bfloat16): "tiled",
}


class LogPointwiseWeight(PointwiseWeight, Protocol):
    def log(self, s: torch.Tensor) -> torch.Tensor:
        """log w(s) with w floored at WEIGHT_FLOOR, out of place (it is traced as flex's score_mod)."""
        ...


_compiled_flex_attention: Callable | None = None  # built on first use: importing torch.compile's machinery is slow, and most machines never run flex
_flex_failed = False  # set once flex has raised: the direct form runs tiled from then on


def _causal(b, h, q_idx, kv_idx):
    return kv_idx <= q_idx


@functools.lru_cache(maxsize=16)
def _causal_block_mask(t: int, device: torch.device) -> BlockMask:
    """The causal block mask, built once per length: building it costs a pass over all n² pairs."""
    return create_block_mask(_causal, None, None, t, t, device=device)


def _block_mask(t: int, mask: torch.Tensor | None, device: torch.device) -> BlockMask:
    """Causal, and with `mask` (B, T) the padding keys (False) masked too."""
    if mask is None:
        if torch.compiler.is_compiling():  # traced into the caller's graph; the cache serves eager calls
            return create_block_mask(_causal, None, None, t, t, device=device)
        return _causal_block_mask(t, device)

    def causal_real_keys(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & mask[b, kv_idx]

    return create_block_mask(causal_real_keys, mask.shape[0], None, t, t, device=device)


def flex_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_weight: Callable[[torch.Tensor], torch.Tensor], *,
    eps: float, mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The equation of the module docstring, (B, H, T, d) x 3 -> (B, H, T, d_v) in q's dtype.

    `log_weight(s)`: log w of the scores (any scale of them its own), finite with a finite derivative.
    `mask` (B, T): False for padding (keys left out; the queries' outputs are finite, for the caller to zero). Runs
    the module's compiled flex_attention, or flex_attention itself while the caller is being compiled.
    """
    kernel = flex_attention if torch.compiler.is_compiling() else _compiled_kernel()
    score_dtype = torch.promote_types(q.dtype, torch.float32)

    def log_w(score, b, h, q_idx, kv_idx):
        return log_weight(score.to(score_dtype))

    block_mask = _block_mask(q.shape[2], mask, q.device)
    if not eps:
        return kernel(q, k, v, score_mod=log_w, block_mask=block_mask, scale=1.0)  # (flex's default: 1/sqrt(d))
    y, aux = kernel(q, k, v, score_mod=log_w, block_mask=block_mask, scale=1.0, return_aux=AuxRequest(lse=True))
    return y * torch.sigmoid(aux.lse - math.log(eps)).to(y.dtype)[..., None]  # sum / (sum + eps)


def _compiled_kernel() -> Callable:
    global _compiled_flex_attention
    if _compiled_flex_attention is None:
        from torch._dynamo import config as dynamo_config  # imported by torch.compile anyway

        # Static: a float of a weight (taylor's a, b, c) that dynamo made dynamic after a recompile fails to lower
        # on the CPU.
        compiled = torch.compile(flex_attention, dynamic=False)

        # torch releases before 2.7 call the limit cache_size_limit; the patch holds during each call, when dynamo
        # looks up its compiled variants
        limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        _compiled_flex_attention = dynamo_config.patch(**{limit: FLEX_RECOMPILE_LIMIT})(compiled)
    return _compiled_flex_attention


def direct_form_for(device: torch.device, dtype: torch.dtype) -> DirectForm:
    return DIRECT_FORMS.get((device.type, dtype), "tiled")


def direct_form(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weight: LogPointwiseWeight, *, eps: float, block: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact causal attention with weights w(q·k), by the form DIRECT_FORMS names for q's device and dtype:
    (B, H, T, d) x 3 -> (B, H, T, d_v) in q's dtype, the padding queries' outputs finite (the caller zeros them)."""
    if direct_form_for(q.device, q.dtype) == "flex" and not _flex_failed:
        if torch.compiler.is_compiling():  # no try here: dynamo cannot trace it; a failure inside a compiled model
            # surfaces when the model compiles, where training/compile.py falls back to eager
            return flex_causal_attention(q, k, v, weight.log, eps=eps, mask=mask)
        try:
            with EAGER_BACKWARD_COMPILE:  # a backward that fails to compile fails here, inside the fallback
                return flex_causal_attention(q, k, v, weight.log, eps=eps, mask=mask)
        except Exception as exc:  # noqa: BLE001 - dynamo, inductor and the C++ compiler raise many types
            if (memory := out_of_memory(exc)) is not None:  # the inputs': the tiled form would not be the cure
                raise memory from exc
            _fall_back(exc)
    return tiled_direct_attention(q, k, v, weight, eps=eps, block=block, mask=mask)


def _fall_back(exc: Exception) -> None:
    global _flex_failed
    _flex_failed = True
    lines = str(exc).strip().splitlines()
    print(f"warning: flex_attention failed ({type(exc).__name__}: {lines[0] if lines else 'no message'}); "
          "the direct attention form runs tiled", file=sys.stderr)
