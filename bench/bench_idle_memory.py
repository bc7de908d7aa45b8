"""Idle resident memory of the control plane as `corral up` runs it.

Starts `corral up -d` on free ports with a temporary data dir (it returns once every
service answered /healthz), waits a few seconds more, reads the resident memory of
the supervisor and of each child (VmRSS from /proc/<pid>/status, as bench_deploy.py
and the standing goal count it; and PSS, which shares libraries fairly), then runs
`corral down` and removes the data dir. It uses only the CLI and the supervisor's
corral.json, so it measures any version of corral alike. Needs Docker for the
default runtime (the node agent then loads aiodocker, as in production). With
--runs N it does all that N times and prints each process's mean (and range):
single runs differ by a few tenths of a MiB.

    .venv/bin/python bench/bench_idle_memory.py [--settle 5] [--runtime docker|hollow] [--runs 1]

What each service leaves out, and why: docs/architecture.md, "Idle memory".
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_deploy import free_port_block  # the same free-port search as the deploy bench


def _field_mib(path: str, field: str) -> float | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def vm_rss_mib(pid: int) -> float | None:
    """Resident memory, shared pages (libpython, libcrypto ...) counted whole."""
    return _field_mib(f"/proc/{pid}/status", "VmRSS:")


def pss_mib(pid: int) -> float | None:
    """Proportional set size: shared pages divided among the processes that map them."""
    return _field_mib(f"/proc/{pid}/smaps_rollup", "Pss:")


def measure(runtime: str, settle: float) -> dict[str, dict[str, float]]:
    """One `corral up -d` on free ports: {"VmRSS": {process: MiB}, "PSS": {...}}."""
    corral = str(Path(sys.executable).parent / "corral")
    data_dir = Path(tempfile.mkdtemp(prefix="corral-mem-"))
    base = free_port_block(5)
    try:
        subprocess.run(
            [
                corral,
                "up",
                "-d",
                "--data-dir",
                str(data_dir),
                "--nats-port",
                str(base),
                "--metrics-base-port",
                str(base + 1),
                "--runtime",
                runtime,
                "--node-name",
                "memory-bench",
                "--log-level",
                "WARNING",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        state = json.loads((data_dir / "corral.json").read_text())
        time.sleep(settle)
        pids = {"supervisor": state["pid"]} | {c["name"]: c["pid"] for c in state["children"]}
        measured: dict[str, dict[str, float]] = {}
        for label, read in (("VmRSS", vm_rss_mib), ("PSS", pss_mib)):
            values = {name: read(pid) for name, pid in pids.items()}
            measured[label] = {name: value for name, value in values.items() if value is not None}
        return measured
    finally:
        subprocess.run(
            [corral, "down", "--data-dir", str(data_dir)], check=False, capture_output=True
        )
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before measuring")
    parser.add_argument("--runtime", default="docker", choices=["docker", "hollow"])
    parser.add_argument("--runs", type=int, default=1, help="measure this many times; the mean")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs: at least 1")

    runs = [measure(args.runtime, args.settle) for _ in range(args.runs)]
    for label in ("VmRSS", "PSS"):
        names = [name for name in runs[0][label] if all(name in run[label] for run in runs)]
        samples = {name: [run[label][name] for run in runs] for name in names}
        means = {name: sum(values) / len(values) for name, values in samples.items()}
        shown = []
        for name, values in samples.items():
            spread = f" ({min(values):.1f}-{max(values):.1f})" if args.runs > 1 else ""
            shown.append(f"{name} {means[name]:.1f}{spread}")
        mean_of = "" if args.runs == 1 else f", mean of {args.runs} runs"
        print(f"idle resident memory ({label}, MiB{mean_of}): " + ", ".join(shown))
        plane = sum(value for name, value in means.items() if name != "supervisor")
        print(
            f"  control plane (services + nats): {plane:.1f} MiB; "
            f"with the supervisor: {plane + means.get('supervisor', 0):.1f} MiB"
        )


if __name__ == "__main__":
    main()
