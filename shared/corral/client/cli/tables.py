"""Plain-text output: kubectl-style tables and ages."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

NONE = "<none>"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns left-aligned, separated by three spaces, like kubectl; no trailing blanks."""
    widths = [len(header) for header in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(widths[index]) for index, cell in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def object_table(
    plural: str,
    names: Collection[str],
    row: Callable[[str], Sequence[str]],
    headers: Sequence[str],
    wide_headers: Sequence[str],
    *,
    wide: bool,
) -> str:
    """One row per name, sorted (`row` makes it; `wide_headers` with -o wide), or
    "No <plural>." when there are none."""
    if not names:
        return f"No {plural}."
    return render_table(wide_headers if wide else headers, [row(name) for name in sorted(names)])


def format_age(seconds: float) -> str:
    """Kubernetes' HumanDuration: 45s, 2m30s, 15m, 3h20m, 20h, 2d5h, 30d, 2y100d."""
    if seconds < 0:
        return "0s"
    total = int(seconds)
    if total < 120:
        return f"{total}s"
    minutes = total // 60
    if minutes < 10:
        rest = total % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = total // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if years < 8:
        rest = days % 365
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{years}y"


def age_since(timestamp: float | None, now: float) -> str:
    """The age of something that started at `timestamp` (wall clock); <unknown> when unset."""
    if not timestamp:
        return "<unknown>"
    return format_age(now - timestamp)
