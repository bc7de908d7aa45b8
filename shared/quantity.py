"""Kubernetes-style resource quantities: CPU ("500m", "0.5", 2) and memory
("64Mi", "1G", 1048576). Parsed into integers: millicores and bytes."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_CPU = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>m?)$")
_MEMORY = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>|k|K|M|G|T|Ki|Mi|Gi|Ti)$")
_MEMORY_FACTOR = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def cpu_millis(value: str | int | float) -> int:
    """'250m' -> 250, '0.5' -> 500, 2 -> 2000. Raises ValueError when not a CPU quantity."""
    text = str(value).strip()
    match = _CPU.match(text)
    if match is None:
        raise ValueError(f"{value!r} is not a CPU quantity (examples: 250m, 0.5, 2)")
    number = Decimal(match["num"])
    millis = number if match["unit"] == "m" else number * 1000
    return int(millis)


def memory_bytes(value: str | int | float) -> int:
    """'64Mi' -> 67108864, '1G' -> 10**9, 1024 -> 1024. Raises ValueError otherwise."""
    text = str(value).strip()
    match = _MEMORY.match(text)
    if match is None:
        raise ValueError(f"{value!r} is not a memory quantity (examples: 64Mi, 1Gi, 500M)")
    try:
        number = Decimal(match["num"])
    except InvalidOperation as error:  # pragma: no cover - the regex admits only numbers
        raise ValueError(f"{value!r} is not a memory quantity") from error
    return int(number * _MEMORY_FACTOR[match["unit"]])


def format_cpu(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def format_memory(size: int) -> str:
    """For people: exact where a unit divides it, else rounded (24684084Ki -> 23.5Gi)."""
    for unit, factor in (("Gi", 2**30), ("Mi", 2**20)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    if size >= 2**30:
        return f"{size / 2**30:.1f}Gi"
    if size >= 2**20:
        return f"{size / 2**20:.0f}Mi"
    if size >= 2**10 and size % 2**10 == 0:
        return f"{size // 2**10}Ki"
    return str(size)
