"""What a benchmark ran on and left on the host: the first lines of its report (the
command, the time, the cores, the Docker engine, the load), and the lines of
`host_state()` snapshots (one list per command) that name this run (`marks`) with other
changes meanwhile (other tests may run on the machine)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable


def report_header(script: str) -> list[str]:
    """The report's first lines: `script` as run, when, on what, under what load."""
    engine = subprocess.run(
        ["docker", "version", "-f", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return [
        f"{script} {' '.join(sys.argv[1:])}".rstrip()
        + f"   ({when}; {os.cpu_count()} cores, Docker {engine}; load average "
        + f"{os.getloadavg()[0]:.1f} at the start)",
        "",
    ]


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
