"""What `corral up` prints once everything answers: where each piece is."""

from __future__ import annotations

from corral.client.local.state_file import SupervisorRecord


def describe(record: SupervisorRecord, *, detached: bool) -> str:
    lines = [
        f"corral is up (supervisor pid {record.pid}, data in {record.data_dir})",
        f"  {'nats':<11} {record.nats_url}",
    ]
    for child in record.children:
        if child.metrics_url is not None:
            lines.append(f"  {child.name:<11} {child.metrics_url}  (pid {child.pid})")
    logs = {child.name: child.log for child in record.children}
    if logs:
        folder = next(iter(logs.values())).rsplit("/", 1)[0]
        lines.append(f"  logs        {folder}/<service>.log")
    lines.append(f"  use it:     export CORRAL_NATS_URL={record.nats_url}")
    if detached:
        lines.append("stop it with `corral down`")
    else:
        lines.append("stop it with Ctrl-C (or `corral down` from another terminal)")
    return "\n".join(lines)
