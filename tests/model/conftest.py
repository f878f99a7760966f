"""Fixtures of the model tests."""

from __future__ import annotations

import pytest

from model.attention import linear


@pytest.fixture
def forms_run(monkeypatch) -> list[str]:
    """The forms the quadratic-kernel backends run, in call order: 'direct' (tiled) or 'linear' (chunked)."""
    ran = []
    for function, form in (("tiled_direct_attention", "direct"), ("chunked_linear_attention", "linear")):
        original = getattr(linear, function)

        def spy(*args, _original=original, _form=form, **kwargs):
            ran.append(_form)
            return _original(*args, **kwargs)

        monkeypatch.setattr(linear, function, spy)
    return ran
