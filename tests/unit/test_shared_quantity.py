from __future__ import annotations

import pytest

from corral.contract.quantity import (
    MAX_CPU_MILLIS,
    MAX_MEMORY_BYTES,
    MAX_QUANTITY_CHARS,
    MIN_MEMORY_LIMIT_BYTES,
    check_cpu_limit,
    check_memory_limit,
    cpu_millis,
    format_cpu,
    format_memory,
    memory_bytes,
)


@pytest.mark.parametrize(
    ("text", "millis"), [("250m", 250), ("0.5", 500), (2, 2000), ("1.25", 1250), (0.1, 100)]
)
def test_cpu(text: str | int | float, millis: int) -> None:
    assert cpu_millis(text) == millis


@pytest.mark.parametrize(
    ("text", "size"),
    [("64Mi", 64 * 2**20), ("1Gi", 2**30), ("500M", 500 * 10**6), (1024, 1024), ("1.5Ki", 1536)],
)
def test_memory(text: str | int, size: int) -> None:
    assert memory_bytes(text) == size


@pytest.mark.parametrize("text", ["fast", "-1", "1x", "", "m"])
def test_bad_quantities_name_the_problem(text: str) -> None:
    with pytest.raises(ValueError, match="not a CPU quantity"):
        cpu_millis(text)
    with pytest.raises(ValueError, match="not a memory quantity"):
        memory_bytes(text)


def test_formatting() -> None:
    assert format_cpu(2000) == "2" and format_cpu(250) == "250m"
    assert format_memory(64 * 2**20) == "64Mi" and format_memory(2**30) == "1Gi"
    assert format_memory(24684084 * 1024) == "23.5Gi" and format_memory(1536) == "1536"


@pytest.mark.parametrize(
    ("text", "size"), [("1Pi", 2**50), ("1P", 10**15), (2**50, 2**50), ("0", 0)]
)
def test_memory_up_to_one_pebibyte(text: str | int, size: int) -> None:
    assert memory_bytes(text) == size


@pytest.mark.parametrize("text", ["1025", "1024001m", 1025, 1e9])
def test_more_than_1024_cores_is_refused_with_the_bounds(text: str | int | float) -> None:
    with pytest.raises(ValueError, match=r"0 to 1024 cores|not a CPU quantity"):
        cpu_millis(text)
    assert cpu_millis("1024") == MAX_CPU_MILLIS


@pytest.mark.parametrize("text", ["2Pi", "1Ei", 2**50 + 1, "1126T"])
def test_more_than_one_pebibyte_is_refused_with_the_bounds(text: str | int) -> None:
    with pytest.raises(ValueError, match=r"0 to 1Pi"):
        memory_bytes(text)


@pytest.mark.parametrize(
    "value",
    ["9" * 5000, 10**5000, "9" * 5000 + "Mi", "1" + "0" * 40],
    ids=["digits", "int", "with-unit", "40-digits"],
)
def test_a_5000_digit_number_is_refused_before_it_is_parsed(value: str | int) -> None:
    for parse in (cpu_millis, memory_bytes):
        with pytest.raises(ValueError, match=f"at most {MAX_QUANTITY_CHARS}|more than 32 digits"):
            parse(value)


@pytest.mark.parametrize("value", [True, None, [1]])
def test_what_is_no_number_or_text_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="not a CPU quantity"):
        cpu_millis(value)  # type: ignore[arg-type]


def test_limits_have_a_floor() -> None:
    check_memory_limit(MIN_MEMORY_LIMIT_BYTES)
    with pytest.raises(ValueError, match=r"at least 6Mi \(6291456 bytes\)"):
        check_memory_limit(MIN_MEMORY_LIMIT_BYTES - 1)
    check_cpu_limit(1)
    with pytest.raises(ValueError, match="at least 1m"):
        check_cpu_limit(0)


def test_the_largest_quantities_still_format() -> None:
    assert format_memory(MAX_MEMORY_BYTES) == "1048576Gi"
    assert format_memory(MAX_MEMORY_BYTES - 1) == "1048576.0Gi"
    assert format_cpu(MAX_CPU_MILLIS) == "1024"
