"""A comparison table of bench_scale.py results (the tables it saves), one row per file.

    .venv/bin/python bench/scale_compare.py bench/results/scale-200x5000-*.md [--out FILE]

Rows keep the order given; each is labelled by its file name (what follows
`scale-<nodes>x<replicas>-`, or the whole stem).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

COLUMNS = (
    ("placements/s", "placements committed per second", r"^([\d,]+)/s"),
    ("apply p50 / p99 placing (ms)", "apply p50 / p99 while placing", r"^([\d.]+ / [\d.]+) ms"),
    ("requests placing", "apply p50 / p99 while placing", r"\((\d+ requests[^)]*)\)"),
    ("apply p50 / p99 steady (ms)", "apply p50 / p99 while steady", r"^([\d.]+ / [\d.]+) ms"),
    ("reconcile (ms)", "reconcile cost per change", r"^([\d.]+) ms"),
    ("all Running (s)", "time to all", r"^([\d.]+) s"),
    ("scheduler CPU placing / steady", "scheduler: resident memory", r"(\d+% / \d+%)"),
    ("nats-server RSS (MiB)", "nats-server: resident memory", r"^(\d+) MiB"),
    ("fewest nodes ready placing", "nodes ready, fewest while placing", r"^([\d,]+) of"),
    ("node lost (s)", "one node lost", r"^([\d.]+) s"),
    ("outage: all back (s)", "nats-server paused", r"^([\d.]+) s"),
    ("outage: JetStream API requests", "that recovery", r"^([\d,]+) /"),
    ("outage: consumers after", "that recovery", r", ([\d,]+) \(were"),
    ("control plane + nats RSS (MiB)", "control plane + nats-server resident", r"^(\d+) MiB"),
)


def row(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2:
            continue
        for title, measure, pattern in COLUMNS:
            if cells[0].startswith(measure):
                match = re.search(pattern, cells[1])
                found[title] = match.group(1) if match else cells[1]
    return found


def label(path: Path) -> str:
    match = re.match(r"scale-(\d+x\d+)-?(.*)", path.stem)
    return f"{match.group(1)} {match.group(2)}".strip() if match else path.stem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    titles = [title for title, _, _ in COLUMNS]
    lines = ["| run | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]
    for path in args.files:
        found = row(path)
        lines.append(f"| {label(path)} | " + " | ".join(found.get(t, "") for t in titles) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
