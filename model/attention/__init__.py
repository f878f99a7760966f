"""Attention backend registry: the one place where a backend name becomes an implementation.

Adding a backend means one new module and one line in `_REGISTRY`; the model never branches on the name.
"""

from __future__ import annotations

import dataclasses
import typing

from model.attention.base import AttentionBackend
from model.attention.expressive import ExpressiveAttention, ExpressiveSquaredAttention
from model.attention.logexp import LogExpAttention
from model.attention.softmax import SoftmaxAttention
from model.attention.taylor import TaylorAttention

_REGISTRY: dict[str, type[AttentionBackend]] = {
    "softmax": SoftmaxAttention,
    "expressive": ExpressiveAttention,
    "expressive_sq": ExpressiveSquaredAttention,
    "logexp": LogExpAttention,
    "taylor": TaylorAttention,
}

BACKENDS: tuple[str, ...] = tuple(_REGISTRY)


def get_backend(name: str, **options) -> AttentionBackend:
    """The backend called `name`, built with its hyperparameters `options` (see each backend's dataclass fields)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention backend {name!r} (allowed: {', '.join(BACKENDS)})")
    cls = _REGISTRY[name]
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for attention backend {name!r} "
            f"(allowed: {', '.join(allowed) or 'none'})"
        )
    return cls(**options)


def option_types(name: str) -> dict[str, typing.Any]:
    """The declared type of each hyperparameter of backend `name` (its dataclass fields), e.g. {'crossover': int}."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention backend {name!r} (allowed: {', '.join(BACKENDS)})")
    hints = typing.get_type_hints(_REGISTRY[name])
    return {f.name: hints[f.name] for f in dataclasses.fields(_REGISTRY[name])}


__all__ = ["AttentionBackend", "BACKENDS", "get_backend", "option_types"]
