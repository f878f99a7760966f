"""The interface every attention backend implements.

A backend is a small frozen dataclass (its fields are the mechanism's hyperparameters) whose methods are pure
functions of tensors: no parameters and no hidden state live on it. Shapes, per head:
`q, k: [B, H, T, d]`, `v: [B, H, T, d_v]`, `y: [B, H, T, d_v]`. Every backend computes

    y_i = sum_{j <= i} w(q_i, k_j) v_j / sum_{j <= i} w(q_i, k_j)

for its own weight function `w`, in three forms that must agree: `reference` (naive O(n^2), the definition and
the test oracle), `forward` (the causal training form) and `step` (decoding t >= 1 new tokens after the tokens
already folded into a state).

Padding: each form takes `mask` (B, T), True for the real tokens of the T new ones and False for padding (left,
right or anywhere). A padding key takes no part in any query's sum: not in a numerator, not in a normaliser, not in
a recurrent state (a KV cache keeps it, marked invalid); a padding query's output is 0. `mask=None` means no padding
and runs the unmasked code unchanged.

Every form starts with `check_inputs` (and `step` with `check_state`), so a caller's mismatched shapes are named
in one line rather than cut short or broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


# (B, T) bool, False for padding; None when there is none.
Mask = torch.Tensor | None


def check_inputs(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask) -> None:
    """Refuse q, k, v and mask that do not fit together, naming every shape: the tiled and chunked forms would
    otherwise cut longer keys short silently, and the others fail deep inside torch."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"{name} attention takes q and k of one shape (B, H, T, d) and v of shape (B, H, T, d_v) with the same "
            f"B, H and T; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[2] == 0:
        raise ValueError(f"{name} attention needs at least one token, got q {tuple(q.shape)}")
    if not q.device == k.device == v.device:
        raise ValueError(f"{name} attention: q, k and v must be on one device; got {q.device}, {k.device}, {v.device}")
    if mask is not None and (
        not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (q.shape[0], q.shape[2])
        or mask.device != q.device
    ):
        shown = (f"{mask.dtype} of shape {tuple(mask.shape)} on {mask.device}" if isinstance(mask, torch.Tensor)
                 else type(mask).__name__)
        raise ValueError(
            f"{name} attention: mask must be a bool tensor of shape (B, T) = {(q.shape[0], q.shape[2])} on "
            f"{q.device} (False for padding); got {shown}"
        )


def check_state(name: str, what: str, shape: torch.Size, expected: tuple[int | None, ...]) -> None:
    """Refuse a decode state made for other rows, heads or head sizes (`expected`: None matches any size)."""
    if len(shape) != len(expected) or any(e is not None and s != e for s, e in zip(shape, expected)):
        shown = tuple("*" if e is None else e for e in expected)
        raise ValueError(
            f"{name} attention: the decode state's {what} have shape {tuple(shape)}, but these q, k, v need "
            f"{shown} (* any): pass a state from init_state with this batch, heads and head sizes"
        )


def zero_masked_queries(y: torch.Tensor, mask: Mask) -> torch.Tensor:
    """y (B, H, T, d_v) with the outputs of the padding queries set to 0 (finite whatever they were)."""
    return y if mask is None else y.masked_fill(~mask[:, None, :, None], 0.0)


class QKIdentity(nn.Module):
    """The per-token transform of (q, k) before the kernel, for mechanisms that define none."""

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k


@dataclass(frozen=True)
class AttentionBackend:
    """Base class: subclasses set `name` and implement the five kernel methods."""

    name = "abstract"
    # True when the decode state has a fixed size (a recurrent state); False for a KV cache.
    constant_memory = False

    def make_qk_transform(self, n_head: int, head_dim: int) -> nn.Module:
        """The module applied to (q, k) after the projections and before the kernel (learnable parts included)."""
        return QKIdentity()

    def reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask = None) -> torch.Tensor:
        """Naive O(n^2) causal attention: the definition of the mechanism."""
        raise NotImplementedError

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask = None) -> torch.Tensor:
        """Causal training form."""
        raise NotImplementedError

    def init_state(
        self, batch: int, heads: int, d: int, d_v: int, *, dtype: torch.dtype, device: torch.device | str,
        capacity: int | None = None,
    ) -> Any:
        """An empty decode state. `capacity` preallocates a KV cache; recurrent states ignore it."""
        raise NotImplementedError

    def step(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: Any, mask: Mask = None
    ) -> tuple[torch.Tensor, Any]:
        """Attend t >= 1 new tokens (a prefill chunk or one token) after the state's tokens; returns (y, new state).
        The state remembers which of its tokens were padding."""
        raise NotImplementedError

    def state_nbytes(self, state: Any) -> int:
        """Bytes the decode state holds."""
        raise NotImplementedError
