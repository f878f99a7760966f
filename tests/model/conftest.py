"""Fixtures of the model tests."""

from __future__ import annotations

import pytest

from model.attention import linear


@pytest.fixture
def record_calls(monkeypatch):
    """record_calls(module, {function name: label}): spies on those functions of the module for the test, and
    returns the list to which each call appends its label, in call order."""

    def record(module, labels: dict[str, str]) -> list[str]:
        ran = []
        for function, label in labels.items():
            original = getattr(module, function)

            def spy(*args, _original=original, _label=label, **kwargs):
                ran.append(_label)
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, function, spy)
        return ran

    return record


@pytest.fixture
def forms_run(record_calls) -> list[str]:
    """The forms the quadratic-kernel backends run, in call order: 'direct' (tiled or flex) or 'linear' (chunked)."""
    return record_calls(linear, {"direct_form": "direct", "chunked_linear_attention": "linear"})
