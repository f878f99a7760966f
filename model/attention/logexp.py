"""Log-exp attention (Heinsen, "Softmax Attention with Constant Cost per Token", arXiv 2404.05843).

    Softmax(log(exp(Q) exp(K)ᵀ)) V,   i.e.   w_ij = sum_l exp(q_il + k_jl),   y_i = sum_{j<=i} w_ij v_j / sum_{j<=i} w_ij

(linear attention with the elementwise feature map exp; the author accepted this reading in the official
repository, https://github.com/glassroom/heinsen_attention/issues/1). It is not exp(q·k). The paper evaluates it in
log space with log V, which only works for V > 0; here V is signed and everything runs in the linear domain with
shifts that keep every exponent <= 0:

- the state per head is `S = sum_j exp(k_j - m) v_jᵀ` (d × d_v), `z = sum_j exp(k_j - m)` (d) and the running
  per-feature key max `m` (d), which starts at -inf (an empty state, not the paper's phantom key H_0 = 0);
- per chunk of C tokens: the intra-chunk logits `L_ij = logsumexp_l(q_il + k_jl)` with the causal mask, the
  logits against the state `G = q + m`, a per-query shift `r = max(rowmax L, rowmax G)`, and
  `y = (exp(L - r) [v|1] + exp(G - r) [S|z])`, normalised by its last column; then
  `m' = max(m, colmax k)`, `[S|z] = exp(m - m') [S|z] + exp(k - m')ᵀ [v|1]`, `m = m'`.
  The intra-chunk logits are one GEMM per chunk, `L = a_i + b_j + log(exp(q - a) exp(k - b)ᵀ)` with the row maxima
  a, b of q and k; the rare visible pairs whose factored sum underflows (q and k large in different features) are
  recomputed in log space, so L is exact to working precision for any input. The backward pass is GEMMs too.
Only the keys already folded into the state set m: shifting the intra-chunk part by a max over future keys would let
one huge masked key underflow everything else. The backward pass recomputes the states (forward sweep) and runs
their adjoint (reverse sweep), so training memory is O(n (d + d_v + C)). Decoding is the same code from a state.

Padding: a padding key enters as -1e30 in every feature, a log-weight whose exp(q + k) against any real key, and
against a state holding one, is exactly 0 in fp32 and fp64, while every shift stays finite (-inf would give
inf - inf = NaN where a row or a state holds nothing else). So it never sets m beside a real key; a state that
has seen only padding has m = -1e30 and is wiped (scaled by exp(-1e30 - m') = 0) by the first real key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.attention.base import AttentionBackend, check_inputs, check_state, zero_masked_queries
from model.attention.direct import naive_causal_softmax
from model.attention.linear_state import LinearAttentionState
from model.attention.numerics import (
    accumulation_dtype,
    autocast_off,
    chunk_bounds,
    chunk_groups,
    fold_heads,
    fold_mask,
    merge_chunks,
    split_chunks,
    unfold_heads,
    with_ones_column,
    without_autocast,
)
from model.attention.options import check_count

PADDING_KEY = -1e30  # every feature of a padding key (see the module docstring)


def _keys(k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The folded keys (B*H, T, d) in the accumulation dtype, with the padding keys (False in mask (B, T)) at
    PADDING_KEY (after the cast: fp16 cannot hold it)."""
    kf = fold_heads(k)
    return kf if mask is None else kf.masked_fill(~fold_mask(mask, k.shape[1])[..., None], PADDING_KEY)


@dataclass
class LogExpState(LinearAttentionState):
    """`[S | z]` (B, H, d, d_v + 1) relative to the running per-feature key max `m`."""

    m: torch.Tensor  # (B, H, d); -inf when empty


@dataclass
class _PairSums:
    """Intra-chunk pair terms in factored form: L_ij = logsumexp_l(q_il + k_jl) = a_i + b_j + log sums_ij.

    With the row maxima a_i = max_l q_il and b_j = max_l k_jl, sums = exp(q - a) exp(k - b)ᵀ is one GEMM per chunk
    and every factor is <= 1. It is exact to working precision unless a visible pair's sum underflows (q and k with
    spreads of tens of nats in different features); `exact` lists those pairs, whose logits are recomputed in log
    space.
    """

    eq: torch.Tensor  # exp(q - a), (BH, n, C, d)
    ek: torch.Tensor  # exp(k - b), (BH, n, C, d)
    sums: torch.Tensor  # (BH, n, C, C)
    logits: torch.Tensor  # L, (BH, n, C, C); -inf above the diagonal
    exact: tuple[torch.Tensor, ...] | None  # indices (bh, chunk, i, j) of the recomputed pairs


def _pair_sums(qc: torch.Tensor, kc: torch.Tensor) -> _PairSums:
    """The intra-chunk logits of chunks qc, kc (BH, n, C, d): L_ij = logsumexp_l(q_il + k_jl) (arXiv 2404.05843's
    log(exp(Q) exp(K)ᵀ)) as a_i + b_j + log(exp(q - a) exp(k - b)ᵀ) with the row maxima a, b, -inf above the diagonal;
    the visible pairs whose factored sum is too small to trust are recomputed in log space (the module docstring)."""
    a, b = qc.amax(-1, keepdim=True), kc.amax(-1, keepdim=True)
    eq, ek = torch.exp(qc - a), torch.exp(kc - b)
    sums = eq @ ek.transpose(-1, -2)
    future = torch.full((qc.shape[2], kc.shape[2]), float("-inf"), dtype=sums.dtype, device=sums.device).triu_(1)
    logits = torch.log(sums).add_(a).add_(b.transpose(-1, -2)).add_(future)  # causal mask: -inf above the diagonal
    # Below this the flushed terms (< tiny each, d of them) could change the sum by more than its rounding. The
    # range is the accumulation dtype's, which the sums are computed in (the callers switch autocast off).
    info = torch.finfo(accumulation_dtype(qc.dtype))
    unreliable = (sums < qc.shape[-1] * info.tiny / info.eps).tril_()
    exact = None
    if unreliable.any():
        exact = unreliable.nonzero(as_tuple=True)
        bh, c, i, j = exact
        logits[exact] = torch.logsumexp(qc[bh, c, i] + kc[bh, c, j], dim=-1)
    return _PairSums(eq, ek, sums, logits, exact)


def _fold_chunk(kv: torch.Tensor, m: torch.Tensor, k: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Adds a chunk of keys k (BH, C, d) with values v1 = [v | 1] (BH, C, d_v + 1) to the state (kv, m):

        m' = max(m, colmax k),   [S | z] = exp(m - m') [S | z] + exp(k - m')ᵀ [v | 1],

    so every exponent stays <= 0. kv is updated in place; returns the new key max m'.
    """
    new_max = torch.maximum(m, k.amax(1))
    kv.mul_(torch.exp(m - new_max)[..., None])
    kv.baddbmm_(torch.exp(k - new_max[:, None]).transpose(1, 2), v1)
    return new_max


def _attend_and_fold(q, k, v1, chunk: int, kv: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y (BH, T, d_v) and log-normaliser (BH, T) of t new tokens after the state (kv, m), updated in place."""
    t = q.shape[1]
    chunk = min(chunk, t)
    intra, r_intra = torch.empty_like(v1), q.new_empty(q.shape[0], t, 1)  # (BH, T, d_v + 1), (BH, T, 1)
    for t0, t1 in chunk_groups(t, chunk, q.shape[0], q.device):
        logits = _pair_sums(split_chunks(q[:, t0:t1], chunk), split_chunks(k[:, t0:t1], chunk)).logits
        r = logits.amax(-1, keepdim=True)  # (BH, chunks, C, 1)
        intra[:, t0:t1] = merge_chunks(torch.exp(logits - r) @ split_chunks(v1[:, t0:t1], chunk), t1 - t0)
        r_intra[:, t0:t1] = merge_chunks(r, t1 - t0)

    out = torch.empty_like(intra)
    shift = torch.empty_like(r_intra)
    state_max = m.clone()
    for t0, t1 in chunk_bounds(t, chunk):
        g = q[:, t0:t1] + state_max[:, None]  # (BH, C, d); -inf while the state is empty
        r = torch.maximum(r_intra[:, t0:t1], g.amax(-1, keepdim=True))
        out[:, t0:t1] = torch.baddbmm(intra[:, t0:t1] * torch.exp(r_intra[:, t0:t1] - r), torch.exp(g - r), kv)
        shift[:, t0:t1] = r
        state_max = _fold_chunk(kv, state_max, k[:, t0:t1], v1[:, t0:t1])
    m.copy_(state_max)
    den = out[..., -1]
    return out[..., :-1] / den[..., None], shift.squeeze(-1) + den.log()


def _intra_chunk_backward(q, k, v1, dout, lse, chunk: int):
    """Gradients (dq, dk, d[v|1]) of the intra-chunk terms of a group of whole chunks (the last may be partial)."""
    # dL_ij = p_ij (dout_i · [v_j | 1]), and L_ij = logsumexp_l(q_il + k_jl) spreads it over the features by
    # softmax_l(q_il + k_jl) = exp(q_il - a_i) exp(k_jl - b_j) / sums_ij.
    t = q.shape[1]
    qc, kc, v1c, doutc = (split_chunks(x, chunk) for x in (q, k, v1, dout))
    pairs = _pair_sums(qc, kc)
    lse_c = F.pad(lse, (0, -t % chunk), value=float("inf")).unflatten(1, (-1, chunk))  # padded rows: p = 0
    p = torch.exp(pairs.logits - lse_c[..., None])  # 0 above the diagonal
    dv1c = p.transpose(-1, -2) @ doutc
    d_logits = p.mul_(doutc @ v1c.transpose(-1, -2))
    ratio = (d_logits / pairs.sums).tril_()
    if pairs.exact is not None:
        ratio[pairs.exact] = 0.0
    dqc = pairs.eq * (ratio @ pairs.ek)
    dkc = pairs.ek * (ratio.transpose(-1, -2) @ pairs.eq)
    if pairs.exact is not None:
        bh, c, i, j = pairs.exact
        spread = torch.softmax(qc[bh, c, i] + kc[bh, c, j], dim=-1) * d_logits[pairs.exact][:, None]
        dqc.index_put_((bh, c, i), spread, accumulate=True)
        dkc.index_put_((bh, c, j), spread, accumulate=True)
    return merge_chunks(dqc, t), merge_chunks(dkc, t), merge_chunks(dv1c, t)


class _ChunkedLogExpAttention(torch.autograd.Function):
    @staticmethod
    @without_autocast  # the caller chose the dtypes; autocast would round the fp32 sums' GEMMs
    def forward(ctx, q, k, v, chunk: int):
        kv = q.new_zeros(q.shape[0], q.shape[-1], v.shape[-1] + 1)
        m = q.new_full((q.shape[0], q.shape[-1]), float("-inf"))
        y, lse = _attend_and_fold(q, k, with_ones_column(v), chunk, kv, m)
        ctx.save_for_backward(q, k, v, y, lse)
        ctx.chunk = min(chunk, q.shape[1])
        return y

    @staticmethod
    @without_autocast
    def backward(ctx, dy):
        q, k, v, y, lse = ctx.saved_tensors
        chunk, t = ctx.chunk, q.shape[1]
        v1 = with_ones_column(v)
        # Every term p = exp(logit - lse) of row i adds p [v | 1]; d/dlogit = p (dout_i · [v | 1]).
        dout = torch.cat([dy, -(dy * y).sum(-1, keepdim=True)], dim=-1)  # (BH, T, d_v + 1)

        # Intra-chunk pairs, a group of chunks at a time.
        dq, dk, dv1 = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v1)
        for t0, t1 in chunk_groups(t, chunk, q.shape[0], q.device):
            dq[:, t0:t1], dk[:, t0:t1], dv1[:, t0:t1] = _intra_chunk_backward(
                q[:, t0:t1], k[:, t0:t1], v1[:, t0:t1], dout[:, t0:t1], lse[:, t0:t1], chunk
            )

        # Inter-chunk terms exp(q_il + m_l - lse_i) [S|z]_l: a forward sweep rebuilds the states for dq ...
        bounds = chunk_bounds(t, chunk)
        kv = q.new_zeros(q.shape[0], q.shape[-1], v1.shape[-1])
        state_max = q.new_full((q.shape[0], q.shape[-1]), float("-inf"))
        maxima = []
        for t0, t1 in bounds:
            a = torch.exp(q[:, t0:t1] + state_max[:, None] - lse[:, t0:t1, None])  # (BH, C, d)
            dq[:, t0:t1] += a * torch.bmm(dout[:, t0:t1], kv.transpose(1, 2))
            new_max = _fold_chunk(kv, state_max, k[:, t0:t1], v1[:, t0:t1])
            maxima.append((state_max, new_max))
            state_max = new_max
        # ... and a reverse sweep carries d_kv, the gradient w.r.t. the state after chunk c, for dk and dv.
        d_kv = torch.zeros_like(kv)
        for (t0, t1), (before, after) in zip(reversed(bounds), reversed(maxima)):
            e = torch.exp(k[:, t0:t1] - after[:, None])  # (BH, C, d)
            dv1[:, t0:t1] += torch.bmm(e, d_kv)
            dk[:, t0:t1] += e * torch.bmm(v1[:, t0:t1], d_kv.transpose(1, 2))
            a = torch.exp(q[:, t0:t1] + before[:, None] - lse[:, t0:t1, None])
            d_kv.mul_(torch.exp(before - after)[..., None]).baddbmm_(a.transpose(1, 2), dout[:, t0:t1])
        return dq, dk, dv1[..., :-1], None


@dataclass(frozen=True)
class LogExpAttention(AttentionBackend):
    """w_ij = sum_l exp(q_il + k_jl) with signed values: chunked linear-domain form, constant-size state (S, z, m)."""

    name = "logexp"
    constant_memory = True

    chunk_size: int = 64  # tokens per chunk

    def __post_init__(self):
        check_count(self.name, "chunk_size", self.chunk_size)

    def reference(self, q, k, v, mask=None):
        check_inputs(self.name, q, k, v, mask)
        logits = torch.logsumexp(q[..., :, None, :] + k[..., None, :, :], dim=-1)  # (B, H, T, T)
        return naive_causal_softmax(logits, v, mask)

    def forward(self, q, k, v, mask=None):
        check_inputs(self.name, q, k, v, mask)
        y = _ChunkedLogExpAttention.apply(fold_heads(q), _keys(k, mask), fold_heads(v), self.chunk_size)
        return zero_masked_queries(unfold_heads(y, q), mask)

    def init_state(self, batch, heads, d, d_v, *, dtype, device, capacity=None) -> LogExpState:
        acc = accumulation_dtype(dtype)
        return LogExpState(
            kv=torch.zeros(batch, heads, d, d_v + 1, dtype=acc, device=device),
            m=torch.full((batch, heads, d), float("-inf"), dtype=acc, device=device),
        )

    @torch.no_grad()  # decoding only: the state is updated in place, which autograd cannot follow
    def step(self, q, k, v, state: LogExpState, mask=None):
        check_inputs(self.name, q, k, v, mask)
        b, h, _, d = q.shape
        check_state(self.name, "sums [S | z]", state.kv.shape, (b, h, d, v.shape[-1] + 1))
        check_state(self.name, "key maxima m", state.m.shape, (b, h, d))
        kv = state.kv.view(b * h, *state.kv.shape[2:])  # views: updated in place
        m = state.m.view(b * h, -1)
        with autocast_off(q.device):
            y, _ = _attend_and_fold(
                fold_heads(q), _keys(k, mask), with_ones_column(fold_heads(v)), self.chunk_size, kv, m
            )
        return zero_masked_queries(unfold_heads(y, q), mask), state

    def state_nbytes(self, state: LogExpState) -> int:
        return sum(x.numel() * x.element_size() for x in (state.kv, state.m))
