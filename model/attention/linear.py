"""Causal linear attention for the quadratic kernels `w(s) = a s² + b s + c`, `s = q·k` (expressive_sq, taylor).

A degree-2 polynomial of the dot product is an inner product of features (the kernel trick behind TaylorShift,
Nauen et al., arXiv 2403.02920, and Based, Arora et al., arXiv 2402.18668):

    a (q·k)² + b (q·k) + c = <φ_q(q), φ_k(k)>,   φ_q(q) = [c | b q | a π_q(q)],   φ_k(k) = [1 | k | π(k)],

where π(x) holds every product x_i x_j (i <= j) once and π_q counts the cross products (i < j) twice, so that
<π_q(q), π(k)> = (q·k)² with d(d+1)/2 features. The constant and linear blocks are left out when c = 0 or b = 0:
D = 1 + d + d(d+1)/2 for taylor, d(d+1)/2 for expressive_sq. Causal attention then needs only the running state
`S = sum_j φ_k(k_j) v_jᵀ` (D × d_v) and `z = sum_j φ_k(k_j)` (D):

    y_i = φ_q(q_i)ᵀ S_i / (φ_q(q_i)ᵀ z_i + eps).

Training form (chunked, as in flash-linear-attention's chunk kernels): the sequence is cut into chunks of C tokens;
pairs inside a chunk use the exact weights `w(q kᵀ) ⊙ tril` (a C × C block, batched over all chunks), pairs across
chunks go through the state, which a loop over chunks reads (`φ_q(Q_c) [S|z]`) and then updates
(`[S|z] += φ_k(K_c)ᵀ [V_c|1]`). The state and the C × D features of one chunk are the only large temporaries: the
n × D features and the n × D × d_v states are never formed. The sweeps run over a few heads at a time
(`head_groups`), so that a chunk's features stay in the core's cache between the feature map and its GEMMs. The
backward pass recomputes the states in a forward sweep and runs their adjoint in a reverse sweep, so training
memory is O(n (d + d_v + C)) beyond the fixed D × (d_v + 1). Decoding is the same code from a stored state: one
constant-size `[S|z]` per head.

Padding: a padding key's row of [v | 1] is zeroed, so it adds nothing to a chunk's weighted sums nor to [S | z]
(w_ij · 0 = 0 exactly), and the state keeps its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from model.attention.base import AttentionBackend, check_inputs, check_state, zero_masked_queries
from model.attention.crossover import uses_linear_form
from model.attention.direct import naive_causal_average, safe_denominator
from model.attention.flex import WEIGHT_FLOOR, direct_form
from model.attention.linear_state import LinearAttentionState
from model.attention.numerics import (
    accumulation_dtype,
    autocast_off,
    chunk_groups,
    fold_heads,
    fold_mask,
    head_groups,
    merge_chunks,
    split_chunks,
    unfold_heads,
    with_ones_column,
    without_autocast,
)
from model.attention.options import check_count
from model.position import padding_count


def pair_feature_dim(d: int) -> int:
    return d * (d + 1) // 2


def _pair_rows(d: int) -> tuple[int, int]:
    """The pairs {i, i+s mod d} are laid out as rows s = 0 .. full-1 of d entries plus, for even d, half a row."""
    return (d + 1) // 2, d // 2 if d % 2 == 0 else 0


def _windows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """(..., d) -> (..., rows, d) with [s, i] = x[(i + s) mod d] (a strided view of [x | x])."""
    return torch.cat([x, x], dim=-1).unfold(-1, x.shape[-1], 1)[..., :rows, :]


def pair_products(x: torch.Tensor, out: torch.Tensor, square_scale: float, cross_scale: float) -> torch.Tensor:
    """Every product x_i x_j (i <= j) once, into out (..., d(d+1)/2); squares times square_scale, others cross_scale.

    Row s of the layout holds x_i x_{(i+s) mod d}: row 0 the squares, rows 1 .. d/2 every other unordered pair once
    (for even d the last row has only its first half, the second half would repeat it). Each row is one
    elementwise product of x with a shifted copy of itself, so there is no gather. With
    (square_scale, cross_scale) = (1, 2) on one side and (1, 1) on the other, <φ2(x), φ2(y)> = (x·y)².
    """
    d = x.shape[-1]
    full, half = _pair_rows(d)
    windows = _windows(x, full + (half > 0))
    scaled = x if cross_scale == 1 else x * cross_scale
    torch.mul(windows[..., :full, :], scaled.unsqueeze(-2), out=out[..., : full * d].unflatten(-1, (full, d)))
    if square_scale != cross_scale:  # row 0, the squares
        torch.mul(windows[..., 0, :], x * square_scale, out=out[..., :d])
    if half:
        torch.mul(windows[..., full, :half], scaled[..., :half], out=out[..., full * d :])
    return out


def pair_products_vjp(
    x: torch.Tensor, grad: torch.Tensor, square_scale: float, cross_scale: float, shifted: torch.Tensor | None = None
) -> torch.Tensor:
    """d/dx of <grad, pair_products(x, square_scale, cross_scale)>: (..., T, d(d+1)/2) -> (..., T, d).

    With G[s, i] the gradient of x_i x_{i+s} (unit scales): dx_a = sum_s G[s, a] x_{a+s} + sum_s G[s, a-s] x_{a-s};
    the scales are applied at the end (only the squares, row 0, differ from cross_scale). `shifted` is an optional
    zeroed workspace from `pair_vjp_workspace` (reusable: only the same entries are ever written).
    """
    d = x.shape[-1]
    full, half = _pair_rows(d)
    g = grad[..., : full * d].unflatten(-1, (full, d))  # (..., full, d)
    dx = (g * _windows(x, full)).sum(-2)
    # sum_s Y[s, a-s] with Y[s, i] = G[s, i] x_i: write row s shifted right by s into a zeroed (full, 2d) buffer
    # (row stride 2d + 1), sum the rows, and fold the columns >= d back onto a - d (the pairs that wrap around).
    if shifted is None:
        shifted = pair_vjp_workspace(x)
    shifted = shifted[..., : x.shape[-2], :, :]
    torch.mul(g, x.unsqueeze(-2), out=shifted.as_strided(g.shape, (*shifted.stride()[:-2], 2 * d + 1, 1)))
    wrapped = shifted.sum(-2)
    dx += wrapped[..., :d]
    dx += wrapped[..., d:]
    if half:  # the half row: x_i x_{i+d/2} for i < d/2
        g_half = grad[..., full * d :]
        dx[..., :half] += g_half * x[..., half:]
        dx[..., half:] += g_half * x[..., :half]
    # Row 0 contributed 2 G[0, a] x_a with unit scale.
    if cross_scale != 1:
        dx.mul_(cross_scale)
    if square_scale != cross_scale:
        dx.add_(g[..., 0, :] * x, alpha=2.0 * (square_scale - cross_scale))
    return dx


def pair_vjp_workspace(x: torch.Tensor) -> torch.Tensor:
    """Zeroed workspace of pair_products_vjp for inputs (..., T, d) shaped like x or with fewer tokens T."""
    d = x.shape[-1]
    return x.new_zeros(*x.shape[:-1], _pair_rows(d)[0], 2 * d)


@dataclass(frozen=True)
class QuadraticKernel:
    """w(s) = a s² + b s + c of the raw score s = q·k, as a pointwise weight and as a feature map."""

    a: float
    b: float = 0.0
    c: float = 0.0

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        """w(s); overwrites s (a fresh score tile)."""
        if not self.b and not self.c:
            return s.square_().mul_(self.a)
        return self.with_derivative(s)[0]

    def with_derivative(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w(s), w'(s)); w' overwrites s.

        From the slope, w = w'² / (4a) + (c - b²/(4a)): three passes over the tile instead of six, and both terms
        are >= 0 (c >= b²/(4a)), so nothing cancels.
        """
        # b + 2a·s in one pass over the tile (mul_ then add_ would take two)
        slope = torch.add(self.b, s, alpha=2 * self.a, out=s) if self.b else s.mul_(2 * self.a)
        offset = slope.new_tensor(self.c - self.b**2 / (4 * self.a))
        return torch.addcmul(offset, slope, slope, value=1 / (4 * self.a)), slope

    def log(self, s: torch.Tensor) -> torch.Tensor:
        """log w(s), w floored at WEIGHT_FLOOR (w = 0 at s = 0 for a pure square, and at s = -b/(2a) for any kernel
        with c = b²/(4a))."""
        return ((self.a * s + self.b) * s + self.c).clamp(min=WEIGHT_FLOOR).log()

    def _block_sizes(self, d: int) -> tuple[int, int]:
        """Sizes of the constant and linear feature blocks."""
        return int(self.c != 0), d * int(self.b != 0)

    def feature_dim(self, d: int) -> int:
        return sum(self._block_sizes(d)) + pair_feature_dim(d)

    # The query side carries a and the weight 2 of the cross products x_i x_j (i < j); the key side is plain.
    def query_features(self, q: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self._features(q, out, self.c, self.b, (self.a, 2.0 * self.a))

    def key_features(self, k: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self._features(k, out, 1.0, 1.0, (1.0, 1.0))

    def query_features_vjp(self, q: torch.Tensor, grad: torch.Tensor, workspace=None) -> torch.Tensor:
        return self._features_vjp(q, grad, self.b, (self.a, 2.0 * self.a), workspace)

    def key_features_vjp(self, k: torch.Tensor, grad: torch.Tensor, workspace=None) -> torch.Tensor:
        return self._features_vjp(k, grad, 1.0, (1.0, 1.0), workspace)

    def _features(self, x, out, constant: float, linear: float, pair_scales: tuple[float, float]) -> torch.Tensor:
        """[constant | linear x | pair products] into out: φ_q or φ_k of the module docstring, the blocks that
        `_block_sizes` keeps."""
        n_const, n_lin = self._block_sizes(x.shape[-1])
        if n_const:
            out[..., 0] = constant
        if n_lin:
            torch.mul(x, linear, out=out[..., n_const : n_const + n_lin])
        pair_products(x, out[..., n_const + n_lin :], *pair_scales)
        return out

    def _features_vjp(self, x, grad, linear: float, pair_scales: tuple[float, float], workspace) -> torch.Tensor:
        """d/dx of <grad, _features(x, ...)>: the pair products' VJP plus `linear` times the linear block's grad (the
        constant block has none)."""
        n_const, n_lin = self._block_sizes(x.shape[-1])
        dx = pair_products_vjp(x, grad[..., n_const + n_lin :], *pair_scales, workspace)
        if n_lin:
            dx += linear * grad[..., n_const : n_const + n_lin]
        return dx


def _intra_chunk(q, k, v1, kernel: QuadraticKernel, chunk: int) -> torch.Tensor:
    """sum over the earlier tokens of the same chunk (and the token itself) of w_ij v1_j: (BH, T, width)."""
    out = v1.new_empty(v1.shape)
    for t0, t1 in chunk_groups(q.shape[1], chunk, q.shape[0], q.device):
        qc, kc = split_chunks(q[:, t0:t1], chunk), split_chunks(k[:, t0:t1], chunk)
        w = kernel(qc @ kc.transpose(-1, -2)).tril_()  # (BH, chunks, C, C), masked after the nonlinearity
        out[:, t0:t1] = merge_chunks(w @ split_chunks(v1[:, t0:t1], chunk), t1 - t0)
    return out


def _intra_chunk_backward(q, k, v1, dout, kernel: QuadraticKernel, chunk: int):
    """Gradients of `_intra_chunk` with respect to q, k and v1 for its output's gradient dout: with W = w(S) ⊙ tril,
    S = Q_c K_cᵀ per chunk, dV1 = Wᵀ dOut, dS = (dOut V1ᵀ) ⊙ w'(S) ⊙ tril, dQ = dS K_c, dK = dSᵀ Q_c."""
    dq, dk, dv1 = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v1)
    for t0, t1 in chunk_groups(q.shape[1], chunk, q.shape[0], q.device):
        qc, kc, v1c, doutc = (split_chunks(x[:, t0:t1], chunk) for x in (q, k, v1, dout))
        w, dw_ds = kernel.with_derivative(qc @ kc.transpose(-1, -2))
        w.tril_()
        ds = (doutc @ v1c.transpose(-1, -2)).mul_(dw_ds).tril_()
        dq[:, t0:t1] = merge_chunks(ds @ kc, t1 - t0)
        dk[:, t0:t1] = merge_chunks(ds.transpose(-1, -2) @ qc, t1 - t0)
        dv1[:, t0:t1] = merge_chunks(w.transpose(-1, -2) @ doutc, t1 - t0)
    return dq, dk, dv1


def _attend_and_fold(q, k, v1, kernel: QuadraticKernel, chunk: int, kv: torch.Tensor) -> torch.Tensor:
    """[num | den] of t new tokens after the state kv = [S | z] (BH, D, width), which is then updated in place.

    v1 is (BH, T, width): [v | 1], possibly followed by zero columns.
    """
    chunk = min(chunk, q.shape[1])
    out = _intra_chunk(q, k, v1, kernel, chunk)  # (BH, T, width)
    for h0, h1 in head_groups(q.shape[0], chunk, kv.shape[1]):
        state = kv[h0:h1]
        phi_q = q.new_empty(h1 - h0, chunk, kv.shape[1])
        phi_k = torch.empty_like(phi_q)
        for qc, kc, v1c, outc in zip(*(x[h0:h1].split(chunk, dim=1) for x in (q, k, v1, out))):
            fq = kernel.query_features(qc, out=phi_q[:, : qc.shape[1]])
            outc += torch.bmm(fq, state)  # the tokens of the earlier chunks
            fk = kernel.key_features(kc, out=phi_k[:, : kc.shape[1]])
            state.baddbmm_(fk.transpose(1, 2), v1c)
    return out


def _inter_chunk_backward(q, k, v1, dout, kernel: QuadraticKernel, chunk: int, dq, dk, dv1) -> None:
    """Adds the gradients through the states (the pairs in different chunks) of one group of heads to dq, dk, dv1."""
    chunks = list(zip(*(x.split(chunk, dim=1) for x in (q, k, v1, dout, dq, dk, dv1))))
    kv = q.new_zeros(q.shape[0], kernel.feature_dim(q.shape[-1]), v1.shape[-1])
    phi_q = q.new_empty(q.shape[0], chunk, kv.shape[1])
    phi_k = torch.empty_like(phi_q)
    workspace = pair_vjp_workspace(q[:, :chunk])
    # Forward sweep: the queries read the state of the chunks before theirs.
    for qc, kc, v1c, doutc, dqc, _, _ in chunks:
        dqc += kernel.query_features_vjp(qc, torch.bmm(doutc, kv.transpose(1, 2)), workspace)
        fk = kernel.key_features(kc, out=phi_k[:, : kc.shape[1]])
        kv.baddbmm_(fk.transpose(1, 2), v1c)
    # Reverse sweep: d_kv is the gradient w.r.t. the state after chunk c (read by all later queries).
    d_kv = torch.zeros_like(kv)
    for qc, kc, v1c, doutc, _, dkc, dv1c in reversed(chunks):
        fk = kernel.key_features(kc, out=phi_k[:, : kc.shape[1]])
        dkc += kernel.key_features_vjp(kc, torch.bmm(v1c, d_kv.transpose(1, 2)), workspace)
        dv1c += torch.bmm(fk, d_kv)
        fq = kernel.query_features(qc, out=phi_q[:, : qc.shape[1]])
        d_kv.baddbmm_(fq.transpose(1, 2), doutc)


def _values_for_gemm(v: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[v | 1 | 0 ...] with a width rounded up to a multiple of 16: GEMMs with 65 columns run far slower than 80.
    The rows of the padding tokens (False in valid (BH, T)) are 0: those keys add nothing to any sum."""
    width = -(-(v.shape[-1] + 1) // 16) * 16
    v1 = F.pad(with_ones_column(v), (0, width - v.shape[-1] - 1))
    return v1 if valid is None else v1.masked_fill_(~valid[..., None], 0.0)


class _ChunkedLinearAttention(torch.autograd.Function):
    @staticmethod
    @without_autocast  # the caller chose the dtypes; autocast would round the fp32 sums' GEMMs
    def forward(ctx, q, k, v, kernel: QuadraticKernel, eps: float, chunk: int, valid: torch.Tensor | None):
        v1 = _values_for_gemm(v, valid)
        kv = q.new_zeros(q.shape[0], kernel.feature_dim(q.shape[-1]), v1.shape[-1])
        out = _attend_and_fold(q, k, v1, kernel, chunk, kv)
        d_v = v.shape[-1]
        den = safe_denominator(out[..., d_v], eps, valid)
        y = out[..., :d_v] / den[..., None]
        ctx.save_for_backward(q, k, v, y, den, valid)
        ctx.kernel, ctx.chunk = kernel, min(chunk, q.shape[1])
        return y

    @staticmethod
    @without_autocast
    def backward(ctx, dy):
        q, k, v, y, den, valid = ctx.saved_tensors
        kernel, chunk = ctx.kernel, ctx.chunk
        v1 = _values_for_gemm(v, valid)
        # Gradient w.r.t. [num | den]: y = num / den gives d/dnum = dy / den and d/dden = -(dy · y) / den.
        g = dy / den[..., None]
        dout = torch.cat([g, -(g * y).sum(-1, keepdim=True)], dim=-1)
        dout = F.pad(dout, (0, v1.shape[-1] - dout.shape[-1]))  # (BH, T, width)
        dq, dk, dv1 = _intra_chunk_backward(q, k, v1, dout, kernel, chunk)
        for h0, h1 in head_groups(q.shape[0], chunk, kernel.feature_dim(q.shape[-1])):
            heads = slice(h0, h1)
            _inter_chunk_backward(
                q[heads], k[heads], v1[heads], dout[heads], kernel, chunk, dq[heads], dk[heads], dv1[heads]
            )
        dv = dv1[..., : v.shape[-1]]
        return dq, dk, dv if valid is None else dv.masked_fill(~valid[..., None], 0.0), None, None, None, None


def chunked_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: QuadraticKernel, *, eps: float, chunk: int,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable causal attention with weights kernel(q·k), (BH, T, d) x 3 -> (BH, T, d_v), O(T) memory.
    `valid` (BH, T): False for padding (keys left out; the queries' outputs are finite, for the caller to zero)."""
    return _ChunkedLinearAttention.apply(q, k, v, kernel, eps, chunk, valid)


@dataclass
class QuadraticKernelState(LinearAttentionState):
    """`[S | z]` of the quadratic kernel's features, and how many tokens they hold."""

    length: int = 0  # tokens stepped through, padding included: the absolute position of the next one
    pads: torch.Tensor | None = None  # (B,) padding tokens among them, per row; None while there was none


@dataclass(frozen=True)
class QuadraticKernelAttention(AttentionBackend):
    """A backend whose weight is `kernel(d)(q·k)`: direct tiled form below `crossover` tokens, chunked above.

    Subclasses add their own hyperparameters as fields and implement `kernel`; `eps` is 0 unless a subclass makes
    it a field.
    """

    constant_memory = True
    eps: ClassVar[float] = 0.0

    chunk_size: int = 64  # tokens per chunk of the linear form
    # Linear form from this length on. None: measured once on this machine and cached per machine, device, dtype,
    # head size and heads (the rule: model/attention/crossover.py); ATTNLAB_CROSSOVER=default takes 6144 unmeasured.
    crossover: int | None = None
    block_size: int = 128  # query/key tile of the direct form

    def __post_init__(self):
        check_count(self.name, "chunk_size", self.chunk_size)
        if self.crossover is not None:
            check_count(self.name, "crossover", self.crossover)
        check_count(self.name, "block_size", self.block_size)

    def kernel(self, d: int) -> QuadraticKernel:
        raise NotImplementedError

    def reference(self, q, k, v, mask=None):
        check_inputs(self.name, q, k, v, mask)
        kernel = self.kernel(q.shape[-1])
        s = q @ k.transpose(-2, -1)  # (B, H, T, T)
        return naive_causal_average(kernel.a * s**2 + kernel.b * s + kernel.c, v, self.eps, mask)

    def forward(self, q, k, v, mask=None):
        check_inputs(self.name, q, k, v, mask)
        kernel = self.kernel(q.shape[-1])
        if not uses_linear_form(self, q.shape[2], q.shape[-1], q.shape[1], q.dtype, q.device):
            y = direct_form(q, k, v, kernel, eps=self.eps, block=self.block_size, mask=mask)
            return zero_masked_queries(y, mask)
        valid = None if mask is None else fold_mask(mask, q.shape[1])
        y = chunked_linear_attention(
            fold_heads(q), fold_heads(k), fold_heads(v), kernel, eps=self.eps, chunk=self.chunk_size, valid=valid
        )
        return zero_masked_queries(unfold_heads(y, q), mask)

    def init_state(self, batch, heads, d, d_v, *, dtype, device, capacity=None) -> QuadraticKernelState:
        size = self.kernel(d).feature_dim(d)
        kv = torch.zeros(batch, heads, size, d_v + 1, dtype=accumulation_dtype(dtype), device=device)
        return QuadraticKernelState(kv)

    @torch.no_grad()  # decoding only: the state is updated in place, which autograd cannot follow
    def step(self, q, k, v, state: QuadraticKernelState, mask=None):
        check_inputs(self.name, q, k, v, mask)
        b, h, t, d = q.shape
        check_state(self.name, "sums [S | z]", state.kv.shape, (b, h, self.kernel(d).feature_dim(d), v.shape[-1] + 1))
        kv = state.kv.view(b * h, *state.kv.shape[2:])  # a view: updated in place
        valid = None if mask is None else fold_mask(mask, h)
        v1 = with_ones_column(fold_heads(v))
        if valid is not None:
            v1.masked_fill_(~valid[..., None], 0.0)  # a padding key adds nothing to [S | z]
        with autocast_off(q.device):
            out = _attend_and_fold(fold_heads(q), fold_heads(k), v1, self.kernel(d), self.chunk_size, kv)
        y = out[..., :-1] / safe_denominator(out[..., -1], self.eps, valid)[..., None]
        state.length += t
        state.pads = padding_count(state.pads, mask)
        return zero_masked_queries(unfold_heads(y, q), mask), state

    def state_nbytes(self, state: QuadraticKernelState) -> int:
        return state.kv.numel() * state.kv.element_size()
