"""Table layout and kubectl-style ages."""

from __future__ import annotations

import pytest

from corral.client.cli.tables import age_since, format_age, object_table, render_table


def test_columns_align_and_lines_have_no_trailing_blanks() -> None:
    text = render_table(("NAME", "READY"), [["web", "3/3"], ["a-longer-name", "0/1"]])
    assert text.splitlines() == [
        "NAME            READY",
        "web             3/3",
        "a-longer-name   0/1",
    ]


def test_headers_alone() -> None:
    assert render_table(("NAME", "AGE"), []) == "NAME   AGE"


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (-3, "0s"),
        (0, "0s"),
        (59.9, "59s"),
        (119, "119s"),
        (120, "2m"),
        (150, "2m30s"),
        (599, "9m59s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 20 * 60, "3h20m"),
        (8 * 3600, "8h"),
        (47 * 3600, "47h"),
        (2 * 86400 + 5 * 3600, "2d5h"),
        (30 * 86400, "30d"),
        (800 * 86400, "2y70d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_format_age_like_kubectl(seconds: float, expected: str) -> None:
    assert format_age(seconds) == expected


def test_age_since_unset_is_unknown() -> None:
    assert age_since(0.0, 100.0) == "<unknown>"
    assert age_since(None, 100.0) == "<unknown>"
    assert age_since(40.0, 100.0) == "60s"


def test_an_object_table_sorts_its_rows_takes_wide_headers_and_says_when_empty() -> None:
    def row(name: str) -> list[str]:
        return [name, name.upper()]

    assert object_table("things", [], row, ("NAME",), ("NAME", "UP"), wide=False) == ("No things.")
    text = object_table("things", {"b", "a"}, row, ("NAME", "X"), ("NAME", "UP"), wide=True)
    assert text.splitlines() == ["NAME   UP", "a      A", "b      B"]
