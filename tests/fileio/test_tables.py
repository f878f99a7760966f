"""One writer for every markdown and CSV table: the forms below are what results pages and reports show."""

from __future__ import annotations

import csv
import io
import math

import pytest

from fileio.tables import cell, csv_text, markdown_table, mean_std_cell


def test_a_markdown_table_has_a_header_a_rule_and_a_line_per_row():
    table = markdown_table(["backend", "runs", "loss"], [["softmax", 3, "5.5"], ["taylor", 1, "5.4"]],
                           right=["runs", "loss"])
    assert table == ("| backend | runs | loss |\n"
                     "|---|---:|---:|\n"
                     "| softmax | 3 | 5.5 |\n"
                     "| taylor | 1 | 5.4 |")
    assert markdown_table(["n"], []) == "| n |\n|---|"


def test_a_bar_in_a_cell_is_escaped_so_the_cell_keeps_its_column():
    table = markdown_table(["key", "max |a - b|"], [["`mode`", "`Literal['a'] | None`"]])
    assert table == ("| key | max \\|a - b\\| |\n"
                     "|---|---|\n"
                     "| `mode` | `Literal['a'] \\| None` |")


@pytest.mark.parametrize("value, style, expected", [
    (0.012345, "g", "0.0123"), (1234.5, "g", "1.23e+03"), (3.2e-7, "e", "3.2e-07"), (41.6, "int", "42"),
    (0.425, "pct", "42%"), (1.5, "x", "1.50×"), (7, "auto", "7"), (0.5, "auto", "0.5"), (0.0, "auto", "0"),
    (2.5e5, "auto", "2.5e+05"), (4e-4, "auto", "4.0e-04"), (None, "g", "–"), (math.nan, "e", "–"),
    (True, "g", "True"), ("qr", "g", "qr"),
])
def test_a_cell_formats_a_number_by_its_style(value, style, expected):
    assert cell(value, style) == expected


def test_mean_and_std_share_their_decimals_and_a_zero_std_is_left_out():
    assert mean_std_cell(1234.56, 7.891, 1) == "1,234.6 ± 7.9"
    assert mean_std_cell(5.5, 0.0, 4) == "5.5000"
    assert mean_std_cell(5.5, math.nan, 4) == "5.5000"  # a single run: its spread is unknown
    assert mean_std_cell(math.nan, 0.0, 2) == "–"


def test_csv_has_a_column_per_key_in_order_of_first_appearance():
    text = csv_text([{"n": 1, "time": 0.5}, {"n": 2, "skipped": True}, {"n": 3, "options": {"crossover": 1}}])
    assert text.splitlines()[0] == "n,time,skipped,options"
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[1] == {"n": "2", "time": "", "skipped": "True", "options": ""}
    assert rows[2]["options"] == '{"crossover": 1}'
    assert text.endswith("\r\n")  # RFC 4180 line ends, as every committed CSV has
