"""The one writer of markdown and CSV tables, for results pages and reports.

    markdown_table(header, rows)    rows of cells under a header (`|` escaped); `right` names the right-aligned columns
    cell(value, style)              a number as a cell: 3 significant digits, 1.2e-05, 42%, 1.50×, ...
    mean_std_cell(mean, std, d)     `mean ± std` with d decimals
    csv_text(records)               dicts as CSV, one column per key
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Collection, Iterable, Sequence
from typing import Any

MISSING = "–"  # the cell of None or NaN
NUMBER_FORMATS = {"g": "{:.3g}", "e": "{:.1e}", "int": "{:.0f}", "pct": "{:.0%}", "x": "{:.2f}×"}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], right: Collection[str] = ()) -> str:
    """A markdown table (no trailing newline): `header`, then one line per row of cells (each shown with str(), a `|`
    in it escaped as `\\|` so that it stays inside its cell). The columns named in `right` are right-aligned, as
    numbers read best."""
    rule = "|" + "|".join("---:" if name in right else "---" for name in header) + "|"
    return "\n".join([_line(header), rule, *(_line(row) for row in rows)])


def cell(value: Any, style: str = "g") -> str:
    """`value` as a table cell. None and NaN read `–`, strings and bools as they are; a number by `style`: one of
    NUMBER_FORMATS (g: 3 significant digits, e: 1.2e-05, int: 42, pct: 42%, x: 1.50×), or "auto": an int as it is,
    a float as g from 1e-3 to 1e5 (and 0), as e outside."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, (str, bool)):
        return str(value)
    if style == "auto":
        if isinstance(value, int):
            return str(value)
        style = "g" if value == 0 or 1e-3 <= abs(value) < 1e5 else "e"
    return NUMBER_FORMATS[style].format(value)


def range_cell(low: Any, high: Any, style: str = "g") -> str:
    """`low–high` as a table cell, each end as `cell` writes it: a spread over rounds, beside its median."""
    return f"{cell(low, style)}–{cell(high, style)}"


def mean_std_cell(mean: float, std: float, digits: int) -> str:
    """`1,234.5 ± 6.7`: thousands separated, `digits` decimals; the ± part only where std is a number other than 0
    (NaN: a single run, whose spread is unknown)."""
    if math.isnan(mean):
        return MISSING
    return f"{mean:,.{digits}f}" + (f" ± {std:,.{digits}f}" if std and not math.isnan(std) else "")


def csv_text(records: Iterable[dict[str, Any]]) -> str:
    """`records` as CSV (RFC 4180 line ends): a column per key in order of first appearance, an empty cell where a
    record lacks the key, dicts and lists as JSON."""
    records = list(records)
    columns = list(dict.fromkeys(key for record in records for key in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    for record in records:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in record.items()})
    return buffer.getvalue()


def _line(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(text).replace("|", "\\|") for text in cells) + " |"
