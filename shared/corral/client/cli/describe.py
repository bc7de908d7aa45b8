"""`corral describe`: one object in full, in the style of kubectl describe."""

from __future__ import annotations

import datetime
import shlex
from typing import Any

from corral.client.api import to_builtins
from corral.client.cli.tables import NONE, age_since, render_table
from corral.client.cli.views import (
    REPLICA_HEADERS,
    REPLICA_WIDE_HEADERS,
    Allocation,
    ClusterView,
    ReplicaLine,
    allocations,
    deployment_object,
    format_resources,
    node_object,
    node_status,
    ready_column,
    replica_lines,
    replica_object,
    replica_row,
)
from corral.contract.events import Event
from corral.contract.quantity import format_cpu, format_memory
from corral.contract.specs import (
    DEFAULT_ROLLING_UPDATE,
    AutoRollback,
    ContainerTemplate,
    DeploymentSpec,
    Probe,
)
from corral.contract.state import DeploymentStatus


def _when(timestamp: float, now: float) -> str:
    if not timestamp:
        return "<unknown>"
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return f"{moment.strftime('%Y-%m-%d %H:%M:%S UTC')} ({age_since(timestamp, now)} ago)"


LABEL_WIDTH = 14  # "Replicas:" and the rest line up, as in kubectl describe


def _fields(pairs: list[tuple[str, str]], indent: str = "") -> list[str]:
    width = max(LABEL_WIDTH - len(indent), *(len(label) + 2 for label, _ in pairs))
    return [f"{indent}{(label + ':').ljust(width)}{value}" for label, value in pairs]


def _mapping(values: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(values.items())) or NONE


def with_events(item: dict[str, Any], events: list[Event]) -> dict[str, Any]:
    """An object's data (-o json|yaml of describe) with its recent events."""
    item["events"] = [to_builtins(event) for event in events]
    return item


def events_table(events: list[Event], now: float) -> list[str]:
    if not events:
        return ["Events:  <none>"]
    rows = [
        [event.type, event.reason, age_since(event.time, now), event.source, event.message]
        for event in events
    ]
    table = render_table(("TYPE", "REASON", "AGE", "FROM", "MESSAGE"), rows)
    return ["Events:", *("  " + line for line in table.splitlines())]


def describe_deployment(view: ClusterView, name: str, events: list[Event], now: float) -> str:
    deployment = view.deployments[name]
    status = view.statuses.get(name)
    meta = deployment.metadata
    template = deployment.spec.template
    lines = _fields(
        [
            ("Name", meta.name),
            ("Namespace", meta.namespace),
            ("Created", _when(meta.creation_timestamp, now)),
            ("Labels", _mapping(meta.labels)),
            ("Generation", str(meta.generation)),
            ("UID", meta.uid or NONE),
        ]
    )
    if status is None:
        lines.append(f"Replicas:     {deployment.spec.replicas} desired | no status yet")
    else:
        lines.append(
            f"Replicas:     {deployment.spec.replicas} desired | {status.placed} placed | "
            f"{status.updated} up-to-date | {status.ready} ready | {status.pending} pending | "
            f"{status.available} available"
        )
        if status.pending:
            lines.append(f"Pending:      {status.pending_reason or 'not placed yet'}")
        lines.append(f"Observed:     generation {status.observed_generation}")
        if status.revision:
            lines.append(f"Revision:     {status.revision}")
    lines += _fields(rollout_settings(deployment.spec))
    lines += _fields(failure_settings(deployment.spec))
    lines.append("Template:")
    lines += _fields(
        [
            ("Image", template.image),
            ("Command", shlex.join(template.command) if template.command else NONE),
            ("Args", shlex.join(template.args) if template.args else NONE),
            ("Env", _mapping(template.env)),
            ("Requests", format_resources(template.resources.requests)),
            ("Limits", format_resources(template.resources.limits)),
            ("Volumes", template_volumes(template)),
            ("Mounts", template_mounts(template)),
            *template_probes(template),
            ("Hash", template.template_hash()),
        ],
        indent="  ",
    )
    lines += _fields(stop_settings(template), indent="  ")
    if status is not None:
        lines += conditions_table(status)
        lines += auto_rollback_record(status, now)
    replicas = replica_lines(view, name)
    if replicas:
        rows = [replica_row(line, now, wide=True) for line in replicas]
        table = render_table(REPLICA_WIDE_HEADERS, rows)
        lines += ["Replicas:", *("  " + line for line in table.splitlines())]
        lines += probe_results(replicas)
    else:
        lines.append("Replicas:     <none>")
    lines += events_table(events, now)
    return "\n".join(lines)


PROBE_KINDS = (  # (label, template field, ReplicaStatus.probes key)
    ("Startup", "startup_probe", "startup"),
    ("Liveness", "liveness_probe", "liveness"),
    ("Readiness", "readiness_probe", "readiness"),
)


def probe_text(probe: Probe) -> str:
    """kubectl describe's words: `http-get http://:8080/healthz delay=0s timeout=1s
    period=10s #success=1 #failure=3`."""
    if probe.exec is not None:
        handler = f"exec [{shlex.join(probe.exec.command)}]"
    elif probe.http_get is not None:
        get = probe.http_get
        handler = f"http-get {get.scheme.lower()}://:{get.port}{get.path}"
    else:
        handler = f"tcp-socket :{probe.port}"
    return (
        f"{handler} delay={probe.initial_delay_seconds}s timeout={probe.timeout_seconds}s "
        f"period={probe.period_seconds}s #success={probe.success_threshold} "
        f"#failure={probe.failure_threshold}"
    )


def template_probes(template: ContainerTemplate) -> list[tuple[str, str]]:
    """One field per probe the template has (none: nothing shown)."""
    return [
        (label, probe_text(probe))
        for label, field, _ in PROBE_KINDS
        if (probe := getattr(template, field)) is not None
    ]


# What a probe the template has shows before the current container reported on it (just
# started or restarted, or not running): the last container's results are not its own.
PROBE_PENDING = "pending"


def _probe_results(results: dict[str, str], template: ContainerTemplate | None) -> str:
    """Each probe's last result, in the template's order; a probe the template has and
    the current container has not reported on yet is pending."""
    shown = dict(results)
    if template is not None:
        for _, field, key in PROBE_KINDS:
            if getattr(template, field) is not None:
                shown.setdefault(key, PROBE_PENDING)
    known = [key for _, _, key in PROBE_KINDS]
    order = [k for k in known if k in shown] + sorted(k for k in shown if k not in known)
    return ", ".join(f"{key}={shown[key]}" for key in order) or NONE


def probe_results(replicas: list[ReplicaLine]) -> list[str]:
    """Each replica's probe results and last probe failure (ReplicaStatus.probes,
    lastProbeFailure); nothing when no replica reports any."""
    reported = [
        line
        for line in replicas
        if line.status is not None and (line.status.probes or line.status.last_probe_failure)
    ]
    if not reported:
        return []
    rows = [
        [
            line.name,
            ready_column(line.status),
            _probe_results(
                line.status.probes,
                line.placement.template if line.placement is not None else None,
            ),
            line.status.last_probe_failure or NONE,
        ]
        for line in reported
        if line.status is not None
    ]
    table = render_table(("REPLICA", "READY", "PROBES", "LAST FAILURE"), rows)
    return ["Probes:", *("  " + line for line in table.splitlines())]


def describe_replica(view: ClusterView, name: str, events: list[Event], now: float) -> str:
    """One replica: where it runs, its state and readiness, its template's probes with
    their last results, the last probe failure; its Deployment's events naming it."""
    line = next(line for line in replica_lines(view) if line.name == name)
    status, placement = line.status, line.placement
    fields = [
        ("Name", line.name),
        ("Deployment", line.deployment),
        ("Node", line.node),
        ("State", line.state),
        ("Ready", "yes" if status is not None and status.is_ready else "no"),
        ("Container", line.container or NONE),
        ("Restarts", str(line.restarts)),
        ("Started", _when(status.started_at or 0.0, now) if status is not None else NONE),
        ("Image", line.image),
        ("Message", line.message or NONE),
    ]
    results = status.probes if status is not None else {}
    if placement is not None:
        fields.append(("Template", placement.template_hash))
        for label, field, key in PROBE_KINDS:
            probe = getattr(placement.template, field)
            if probe is not None:
                last = results.get(key, PROBE_PENDING)
                fields.append((label, f"{probe_text(probe)} (last: {last})"))
    failure = status.last_probe_failure if status is not None else ""
    fields.append(("Last probe failure", failure or NONE))
    lines = _fields(fields)
    lines += events_table([e for e in events if name in e.message], now)
    return "\n".join(lines)


def rollout_settings(spec: DeploymentSpec) -> list[tuple[str, str]]:
    """Strategy, Min ready and Paused, as kubectl describe words them."""
    strategy = spec.strategy
    if strategy.type == "Recreate":
        how = "Recreate"
    else:
        rolling = strategy.rolling_update or DEFAULT_ROLLING_UPDATE
        how = (
            f"RollingUpdate {rolling.max_surge} max surge, "
            f"{rolling.max_unavailable} max unavailable"
        )
    return [
        ("Strategy", how),
        ("Min ready", f"{spec.min_ready_seconds}s"),
        ("Paused", _yes(spec.paused)),
    ]


def failure_settings(spec: DeploymentSpec) -> list[tuple[str, str]]:
    """Progress deadline and Auto rollback (docs/rollouts.md)."""
    return [
        ("Progress deadline", f"{spec.progress_deadline_seconds}s"),
        ("Auto rollback", auto_rollback_settings(spec.auto_rollback)),
    ]


def stop_settings(template: ContainerTemplate) -> list[tuple[str, str]]:
    """How a replica stops (docs/rollouts.md, "Graceful stops") and where it may run."""
    return [
        ("Termination grace period", f"{template.termination_grace_period_seconds}s"),
        ("Stop signal", template.stop_signal or "<the image's STOPSIGNAL, else SIGTERM>"),
        ("Node selector", _mapping(template.node_selector)),
    ]


def auto_rollback_settings(settings: AutoRollback | None) -> str:
    """`on progress deadline, on crash loop (3 restarts within 300s)`; off when absent."""
    if settings is None:
        return "off"
    rules = []
    if settings.on_progress_deadline:
        rules.append("on progress deadline")
    if settings.on_crash_loop:
        rules.append(
            f"on crash loop ({settings.crash_loop_restarts} restarts within "
            f"{settings.crash_loop_window_seconds}s)"
        )
    return ", ".join(rules)


def conditions_table(status: DeploymentStatus) -> list[str]:
    """kubectl describe's Conditions: Type, Status, Reason (and corral's Message)."""
    if not status.conditions:
        return ["Conditions:   <none>"]
    rows = [[c.type, c.status, c.reason or NONE, c.message] for c in status.conditions]
    table = render_table(("Type", "Status", "Reason", "Message"), rows)
    return ["Conditions:", *("  " + line for line in table.splitlines())]


def auto_rollback_record(status: DeploymentStatus, now: float) -> list[str]:
    """What the automatic rollback did (status.autoRollback), when it did something."""
    record = status.auto_rollback
    if record is None:
        return []
    return [
        "Last auto rollback:",
        *_fields(
            [
                ("From revision", str(record.from_revision)),
                ("To revision", str(record.to_revision)),
                ("Reason", record.reason),
                ("Message", record.message or NONE),
                ("At", _when(record.at, now)),
            ],
            indent="  ",
        ),
    ]


def template_volumes(template: ContainerTemplate) -> str:
    """`data=pvc:data, scratch=emptyDir(Memory)`: each volume and its source."""
    parts = []
    for volume in template.volumes:
        claim = volume.persistent_volume_claim  # else an emptyDir: one source each
        if claim is not None:
            source = f"pvc:{claim.claim_name}" + (" (ro)" if claim.read_only else "")
        else:
            medium = volume.empty_dir.medium if volume.empty_dir is not None else ""
            source = f"emptyDir({medium})" if medium else "emptyDir"
        parts.append(f"{volume.name}={source}")
    return ", ".join(parts) or NONE


def template_mounts(template: ContainerTemplate) -> str:
    """`/data <- data, /logs <- data/logs (ro)`: where each volume appears."""
    parts = []
    for mount in template.volume_mounts:
        what = f"{mount.name}/{mount.sub_path}" if mount.sub_path else mount.name
        parts.append(f"{mount.mount_path} <- {what}" + (" (ro)" if mount.read_only else ""))
    return ", ".join(parts) or NONE


def deployment_description(view: ClusterView, name: str, events: list[Event]) -> dict[str, Any]:
    """The same as data, for -o json / -o yaml."""
    item = deployment_object(view.deployments[name], view.statuses.get(name))
    item["replicas"] = [replica_object(line) for line in replica_lines(view, name)]
    item["events"] = [to_builtins(event) for event in events]
    return item


def describe_node(view: ClusterView, name: str, events: list[Event], now: float) -> str:
    node = view.nodes[name]
    allocated = allocations(view.placements).get(name)
    cpu = allocated.cpu_millis if allocated else 0
    memory = allocated.memory_bytes if allocated else 0
    pods = allocated.pods if allocated else 0
    lines = _fields(
        [
            ("Name", node.name),
            ("Status", node_status(node, now)),
            ("Message", node.message or NONE),
            ("Labels", _mapping(node.labels)),
            ("Runtime", node.runtime),
            ("Version", node.version or NONE),
            ("Started", _when(node.agent_started_at, now)),
            ("Heartbeat", _when(node.heartbeat_at, now)),
            ("CPU", f"{format_cpu(cpu)} allocated of {format_cpu(node.capacity.cpu_millis)}"),
            (
                "Memory",
                f"{format_memory(memory)} allocated of {format_memory(node.capacity.memory_bytes)}",
            ),
            ("Pods", f"{pods} of {node.capacity.pods}"),
            ("Mode", node.mode or NONE),
            ("Engine", node.engine_id or NONE),
            ("Foreign", _foreign(node.foreign_containers)),
            ("Removals", _failing(node.failing_removals)),
        ]
    )
    if node.orphans:
        table = render_table(
            ("DEPLOYMENT", "REPLICA", "TEMPLATE-HASH", "RUNNING"),
            [
                [orphan.deployment, orphan.replica, orphan.template_hash, _yes(orphan.running)]
                for orphan in sorted(node.orphans, key=lambda o: (o.deployment, o.replica))
            ],
        )
        lines += ["Orphans:", *("  " + line for line in table.splitlines())]
    else:
        lines.append("Orphans:      <none>")
    replicas = [line for line in replica_lines(view) if line.node == name]
    if replicas:
        table = render_table(
            REPLICA_HEADERS, [replica_row(line, now, wide=False) for line in replicas]
        )
        lines += ["Replicas:", *("  " + line for line in table.splitlines())]
    else:
        lines.append("Replicas:     <none>")
    lines += events_table(events, now)
    return "\n".join(lines)


def _foreign(count: int) -> str:
    if not count:
        return "0"
    return f"{count} container(s) of another cluster on this engine (left alone)"


def _failing(count: int) -> str:
    if not count:
        return "0 failing"
    return f"{count} container(s) could not be removed (retried with back-off)"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def node_description(
    view: ClusterView, name: str, events: list[Event], now: float
) -> dict[str, Any]:
    allocated = allocations(view.placements)
    item = node_object(view.nodes[name], allocated.get(name, Allocation()), now)
    item["replicas"] = [replica_object(line) for line in replica_lines(view) if line.node == name]
    item["events"] = [to_builtins(event) for event in events]
    return item
