"""Draw bench_scale.py timelines (the CSVs saved beside its tables): one panel per run,
the placements made and the replicas ready (left axis) and the nodes ready (right axis)
from the first apply until every replica runs.

    CORRAL_EXTRAS=dev,bench scripts/ensure-venv   # matplotlib (scripts/test does it too)
    .venv/bin/python bench/plot_scale.py bench/results/simulator/*.csv --out timeline.svg

Panels keep the order given, titled by the file names.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # after the backend is chosen

# Text drawn as paths (the same picture on every machine, whatever its fonts), and the
# same file from the same data: no date, fixed ids.
matplotlib.rcParams["svg.fonttype"] = "path"
matplotlib.rcParams["svg.hashsalt"] = "corral-bench"


COLUMNS = ("seconds", "placements_made", "replicas_ready", "nodes_ready")


def read_timeline(path: Path) -> dict[str, list[float]]:
    columns: dict[str, list[float]] = {}
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            for name, value in row.items():
                if value == "" and name not in COLUMNS:  # no store write in that sample
                    columns.setdefault(name, []).append(math.nan)
                    continue
                try:
                    columns.setdefault(name, []).append(float(value))
                except (TypeError, ValueError):
                    raise ValueError(f"{path}:{number}: {name} is not a number") from None
    if not columns.get("seconds"):
        raise ValueError(f"{path}: no samples (is it a bench_scale.py timeline?)")
    missing = [name for name in COLUMNS if name not in columns]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(missing)}")
    return columns


def plot(paths: list[Path], out: Path) -> None:
    figure, axes = plt.subplots(
        len(paths), 1, figsize=(8, 2.6 * len(paths)), sharex=True, squeeze=False
    )
    for axis, path in zip(axes[:, 0], paths, strict=True):
        data = read_timeline(path)
        seconds = data["seconds"]
        axis.plot(seconds, data["placements_made"], label="placements made")
        axis.plot(seconds, data["replicas_ready"], label="replicas ready")
        axis.set_ylabel("replicas")
        axis.set_title(path.stem, fontsize=10)
        nodes = axis.twinx()
        nodes.plot(seconds, data["nodes_ready"], color="tab:red", label="nodes ready")
        nodes.set_ylabel("nodes ready")
        nodes.set_ylim(bottom=0)
        lines = axis.get_lines() + nodes.get_lines()
        axis.legend(lines, [line.get_label() for line in lines], loc="lower right", fontsize=8)
    axes[-1, 0].set_xlabel("seconds from the first apply")
    figure.tight_layout()
    figure.savefig(out, metadata={"Date": None} if out.suffix == ".svg" else None)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("timelines", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("timeline.svg"))
    args = parser.parse_args()
    try:
        plot(args.timelines, args.out)
    except (OSError, ValueError) as error:  # a missing file, a bad row or column, no samples
        parser.exit(1, f"plot_scale: {error}\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
