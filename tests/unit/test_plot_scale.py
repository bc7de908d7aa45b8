"""bench/plot_scale.py draws bench_scale.py's timelines: a panel per run, titled by its
file; a file without samples is refused, naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PLOT = Path(__file__).parents[2] / "bench" / "plot_scale.py"
HEADER = "seconds,placements_made,replicas_ready,nodes_ready"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # matplotlib's own settings from a folder of the test's: no user matplotlibrc
    environment = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}
    return subprocess.run(
        [sys.executable, str(PLOT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )


def test_each_timeline_is_a_panel_titled_by_its_file(tmp_path: Path) -> None:
    one = tmp_path / "one-process.csv"
    two = tmp_path / "two-processes.csv"
    one.write_text(f"{HEADER}\n0.5,0,0,1001\n1.0,200,0,1001\n1.5,400,150,600\n")
    two.write_text(f"{HEADER}\n0.5,0,0,1001\n1.0,300,100,1001\n")
    out = tmp_path / "timeline.svg"
    done = _run(tmp_path, str(one), str(two), "--out", str(out))
    assert done.returncode == 0, done.stderr
    svg = out.read_text()
    assert svg.startswith("<?xml") and "<svg" in svg
    # matplotlib writes text as glyph paths, with the string itself in a comment
    for text in ("one-process", "two-processes", "nodes ready", "placements made"):
        assert f"<!-- {text} -->" in svg, text


def test_a_file_without_samples_is_refused_by_name(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text(f"{HEADER}\n")
    done = _run(tmp_path, str(empty), "--out", str(tmp_path / "x.svg"))
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("plot_scale: ") and "empty.csv: no samples" in last
    assert not (tmp_path / "x.svg").exists()


@pytest.mark.parametrize(
    ("rows", "says"),
    [
        ("0.5,0,0\n", "short.csv:2: nodes_ready is not a number"),
        ("0.5,0,x,1\n", "short.csv:2: replicas_ready is not a number"),
    ],
)
def test_a_bad_row_is_refused_by_file_and_line(tmp_path: Path, rows: str, says: str) -> None:
    short = tmp_path / "short.csv"
    short.write_text(f"{HEADER}\n{rows}")
    done = _run(tmp_path, str(short), "--out", str(tmp_path / "x.svg"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"plot_scale: {short.parent}/{says}"


def test_the_same_data_draws_the_same_file(tmp_path: Path) -> None:
    data = tmp_path / "run.csv"
    data.write_text(f"{HEADER}\n0.5,0,0,3\n1.0,10,5,3\n")
    first, second = tmp_path / "a.svg", tmp_path / "b.svg"
    assert _run(tmp_path, str(data), "--out", str(first)).returncode == 0
    assert _run(tmp_path, str(data), "--out", str(second)).returncode == 0
    assert first.read_bytes() == second.read_bytes()


def test_a_timeline_with_the_view_and_the_store_draws_an_empty_store_cell_too(
    tmp_path: Path,
) -> None:
    # bench_scale.py leaves store_write_ms empty when no store write ran in a sample.
    data = tmp_path / "run.csv"
    data.write_text(f"{HEADER},view_fresh,store_write_ms\n0.5,0,0,3,1,2.5\n1.0,10,5,3,0,\n")
    done = _run(tmp_path, str(data), "--out", str(tmp_path / "x.svg"))
    assert done.returncode == 0, done.stderr
    emptied = tmp_path / "bad.csv"
    emptied.write_text(f"{HEADER},view_fresh,store_write_ms\n0.5,0,,3,1,2.5\n")
    done = _run(tmp_path, str(emptied), "--out", str(tmp_path / "y.svg"))
    assert done.stderr.strip().splitlines()[-1].endswith("replicas_ready is not a number")
