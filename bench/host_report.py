"""What a benchmark left on the host: the lines of `host_state()` snapshots (one list
per command) that name this run (`marks`), and other changes meanwhile (other tests may
run on the machine), as lines for the benchmark's report."""

from __future__ import annotations

from collections.abc import Callable


def host_report(
    before: dict[str, list[str]],
    after: dict[str, list[str]],
    marks: list[str],
    *,
    looked_at: str,
    counts: Callable[[str], bool] = lambda line: True,
    others: str = "other changes meanwhile (not this run's)",
) -> list[str]:
    """`looked_at` names the commands; `counts` says which changed lines of no mark are
    worth reporting."""
    ours = {kind: [line for line in after[kind] if any(m in line for m in marks)] for kind in after}
    changed = {
        kind: [
            ("+ " if line in after[kind] else "- ") + line
            for line in set(before[kind]) ^ set(after[kind])
            if counts(line)
        ]
        for kind in after
    }
    verdict = "CHANGED" if any(ours.values()) else "nothing of this run left"
    lines = ["", f"host afterwards ({looked_at}): {verdict}"]
    if any(ours.values()):
        lines.append(f"    left of this run: {ours}")
    if any(changed.values()):
        lines.append(f"    {others}: {changed}")
    return lines
