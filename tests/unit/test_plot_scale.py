"""bench/plot_scale.py draws bench_scale.py's timelines: a panel per run, titled by its
file; a file without samples is refused, naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PLOT = Path(__file__).parents[2] / "bench" / "plot_scale.py"
HEADER = "seconds,placements_made,replicas_ready,nodes_ready"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PLOT), *args], capture_output=True, text=True, timeout=120
    )


def test_each_timeline_is_a_panel_titled_by_its_file(tmp_path: Path) -> None:
    one = tmp_path / "one-process.csv"
    two = tmp_path / "two-processes.csv"
    one.write_text(f"{HEADER}\n0.5,0,0,1001\n1.0,200,0,1001\n1.5,400,150,600\n")
    two.write_text(f"{HEADER}\n0.5,0,0,1001\n1.0,300,100,1001\n")
    out = tmp_path / "timeline.svg"
    done = _run(str(one), str(two), "--out", str(out))
    assert done.returncode == 0, done.stderr
    svg = out.read_text()
    assert svg.startswith("<?xml") and "<svg" in svg
    # matplotlib writes text as glyph paths, with the string itself in a comment
    for text in ("one-process", "two-processes", "nodes ready", "placements made"):
        assert f"<!-- {text} -->" in svg, text


def test_a_file_without_samples_is_refused_by_name(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text(f"{HEADER}\n")
    done = _run(str(empty), "--out", str(tmp_path / "x.svg"))
    assert done.returncode == 1
    assert done.stderr.startswith("plot_scale: ") and "empty.csv: no samples" in done.stderr
    assert not (tmp_path / "x.svg").exists()
