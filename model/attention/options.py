"""Validation of backend hyperparameters: a bad value is a ValueError that names the option and its allowed range."""

from __future__ import annotations

import math
import numbers


def check_option(backend: str, option: str, value: object, valid: bool, allowed: str) -> None:
    if not valid:
        raise ValueError(f"attention backend {backend!r}: {option}={value!r} is invalid (allowed: {allowed})")


def is_real(value: object) -> bool:
    """A finite real number of any kind (numpy's too), bools excluded."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: object) -> bool:
    """An int >= 1 (bools excluded)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_positive_real(backend: str, option: str, value: object) -> None:
    check_option(backend, option, value, is_real(value) and value > 0, "a finite number > 0")


def check_count(backend: str, option: str, value: object) -> None:
    check_option(backend, option, value, is_count(value), "an integer >= 1")
