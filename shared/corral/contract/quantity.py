"""Kubernetes-style resource quantities: CPU ("500m", "0.5", 2) and memory
("64Mi", "1G", 1048576). Parsed into integers: millicores and bytes.

Every quantity is bounded, so that no value a client sends can become a huge
integer downstream (in the scheduler's sums, Docker's JSON, `corral describe`):

- CPU: 0 .. 1024 cores; a limit is at least 1m.
- memory: 0 .. 1 PiB; a limit is at least 6 MiB, the least Docker accepts.
- as text, at most 32 characters (a 5000-digit number is refused before it is parsed).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

MAX_QUANTITY_CHARS: Final = 32
MAX_CPU_CORES: Final = 1024
MAX_CPU_MILLIS: Final = MAX_CPU_CORES * 1000
MIN_CPU_LIMIT_MILLIS: Final = 1
MAX_MEMORY_BYTES: Final = 2**50  # 1 PiB
MIN_MEMORY_LIMIT_BYTES: Final = 6 * 2**20  # Docker refuses a smaller memory limit

# The same grammars are published as JSON Schema patterns (corral.contract.specs): no \d
# (JSON Schema regexes are ECMA-262), and `$(?!\n)` since Python's `$` alone also
# matches before a final newline.
CPU_PATTERN: Final = r"^[0-9]+(?:\.[0-9]+)?m?$(?!\n)"
MEMORY_PATTERN: Final = r"^[0-9]+(?:\.[0-9]+)?(?:[kKMGTPE]|[KMGTPE]i)?$(?!\n)"
STORAGE_PATTERN: Final = MEMORY_PATTERN  # storage sizes: the same grammar, more than 0
_CPU = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>m?)\Z")
_MEMORY = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>|k|K|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)\Z")
_MEMORY_FACTOR = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
CPU_BOUNDS: Final = f"0 to {MAX_CPU_CORES} cores"
MEMORY_BOUNDS: Final = "0 to 1Pi (1125899906842624 bytes)"


def _text(value: str | int | float, what: str, examples: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is not a {what} quantity (examples: {examples})")
    if isinstance(value, int) and not -(10**MAX_QUANTITY_CHARS) < value < 10**MAX_QUANTITY_CHARS:
        # str() of a huge int is slow, and refused past 4300 digits
        raise ValueError(
            f"a number of more than {MAX_QUANTITY_CHARS} digits is not a {what} quantity"
        )
    text = str(value).strip()
    if len(text) > MAX_QUANTITY_CHARS:
        raise ValueError(
            f"{text[:16]!r}... ({len(text)} characters) is not a {what} quantity: "
            f"at most {MAX_QUANTITY_CHARS} characters"
        )
    return text


def cpu_millis(value: str | int | float) -> int:
    """'250m' -> 250, '0.5' -> 500, 2 -> 2000, at most 1024 cores.

    Raises ValueError naming the problem when not a CPU quantity or out of bounds.
    """
    text = _text(value, "CPU", "250m, 0.5, 2")
    match = _CPU.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a CPU quantity (examples: 250m, 0.5, 2)")
    number = Decimal(match["num"])
    millis = int(number if match["unit"] == "m" else number * 1000)
    if millis > MAX_CPU_MILLIS:
        raise ValueError(f"{text!r} is more CPU than the limit: CPU quantities are {CPU_BOUNDS}")
    return millis


def memory_bytes(value: str | int | float) -> int:
    """'64Mi' -> 67108864, '1G' -> 10**9, 1024 -> 1024, at most 1 PiB.

    Raises ValueError naming the problem when not a memory quantity or out of bounds.
    """
    text = _text(value, "memory", "64Mi, 1Gi, 500M")
    match = _MEMORY.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a memory quantity (examples: 64Mi, 1Gi, 500M)")
    size = int(Decimal(match["num"]) * _MEMORY_FACTOR[match["unit"]])
    if size > MAX_MEMORY_BYTES:
        raise ValueError(
            f"{text!r} is more memory than the limit: memory quantities are {MEMORY_BOUNDS}"
        )
    return size


def storage_bytes(value: str | int | float) -> int:
    """A storage size ('100Mi' -> 104857600): a memory quantity of at least 1 byte."""
    text = _text(value, "storage", "100Mi, 1Gi, 500M")
    match = _MEMORY.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a storage quantity (examples: 100Mi, 1Gi, 500M)")
    size = int(Decimal(match["num"]) * _MEMORY_FACTOR[match["unit"]])
    if size > MAX_MEMORY_BYTES:
        raise ValueError(f"{text!r} is too large: storage sizes are at most 1Pi")
    if size < 1:
        raise ValueError(f"{text!r} is zero: a storage size is at least 1 byte")
    return size


def check_cpu_limit(millis: int) -> None:
    """A CPU limit is at least 1m (omit the limit for none)."""
    if millis < MIN_CPU_LIMIT_MILLIS:
        raise ValueError(
            f"a CPU limit is at least {MIN_CPU_LIMIT_MILLIS}m (omit it for no limit); "
            f"CPU quantities are {CPU_BOUNDS}"
        )


def check_memory_limit(size: int) -> None:
    """A memory limit is at least 6Mi: Docker refuses to create a container with less."""
    if size < MIN_MEMORY_LIMIT_BYTES:
        raise ValueError(
            f"a memory limit of {size} {'byte' if size == 1 else 'bytes'} is less than "
            "the least Docker accepts: "
            f"a memory limit is at least 6Mi ({MIN_MEMORY_LIMIT_BYTES} bytes), at most 1Pi"
        )


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
