"""Idle resident memory of the control plane as `corral up` runs it.

Starts `corral up -d` on free ports with a temporary data dir (it returns once every
service answered /healthz), waits a few seconds more, reads the resident memory of
the supervisor and of each child (VmRSS from /proc/<pid>/status, as bench_deploy.py
and the standing goal count it; and PSS, which shares libraries fairly), then runs
`corral down` and removes the data dir. It uses only the CLI and the supervisor's
corral.json, so it measures any version of corral alike. Needs Docker for the
default runtime (the node agent then loads aiodocker, as in production).

    .venv/bin/python bench/bench_idle_memory.py [--settle 5] [--runtime docker|hollow]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before measuring")
    parser.add_argument("--runtime", default="docker", choices=["docker", "hollow"])
    args = parser.parse_args()

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
                args.runtime,
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
        time.sleep(args.settle)
        pids = {"supervisor": state["pid"]} | {c["name"]: c["pid"] for c in state["children"]}
        for label, measure in (("VmRSS", vm_rss_mib), ("PSS", pss_mib)):
            values = {name: measure(pid) for name, pid in pids.items()}
            seen = {name: value for name, value in values.items() if value is not None}
            print(
                f"idle resident memory ({label}, MiB): "
                + ", ".join(f"{name} {value:.1f}" for name, value in seen.items())
            )
            plane = sum(value for name, value in seen.items() if name != "supervisor")
            print(
                f"  control plane (services + nats): {plane:.1f} MiB; "
                f"with the supervisor: {plane + seen.get('supervisor', 0):.1f} MiB"
            )
    finally:
        subprocess.run(
            [corral, "down", "--data-dir", str(data_dir)], check=False, capture_output=True
        )
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
