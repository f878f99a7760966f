"""The one exception type of the data pipeline."""

from __future__ import annotations


class DataError(ValueError):
    """A data source, tokenizer or prepared dataset that cannot be used; the one-line message names the fix."""
