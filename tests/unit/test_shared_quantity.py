from __future__ import annotations

import pytest

from corral.quantity import cpu_millis, format_cpu, format_memory, memory_bytes


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
