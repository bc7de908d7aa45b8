"""`corral describe deployment` for health-gated rollouts (issue 10): the Conditions
table as kubectl's, the automatic rollback record, the progress deadline, the automatic
rollback settings, and how a replica stops (grace period, stop signal) and where it may
run (node selector)."""

from __future__ import annotations

from corral.client.cli.describe import describe_deployment
from corral.client.cli.manifests import load_manifests
from corral.client.cli.views import ClusterView
from corral.contract.specs import Deployment
from corral.contract.state import (
    CONDITION_AVAILABLE,
    CONDITION_PROGRESSING,
    REASON_MINIMUM_UNAVAILABLE,
    REASON_ROLLED_BACK,
    AutoRollbackRecord,
    DeploymentCondition,
    DeploymentStatus,
)

NOW = 1_800_000_060.0

MANIFEST = """
apiVersion: corral/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  progressDeadlineSeconds: 90
  autoRollback: {onProgressDeadline: false, crashLoopRestarts: 4, crashLoopWindowSeconds: 120}
  template:
    image: corral-test/busybox:1
    terminationGracePeriodSeconds: 45
    stopSignal: SIGQUIT
    nodeSelector: {disk: ssd, zone: a}
"""

PLAIN = """
apiVersion: corral/v1
kind: Deployment
metadata: {name: web}
spec:
  template: {image: corral-test/busybox:1}
"""


def deployment(text: str) -> Deployment:
    found = load_manifests(text, "web.yaml")[0].spec
    assert isinstance(found, Deployment)
    return found


def test_describe_shows_the_deadline_rollback_settings_and_how_replicas_stop() -> None:
    text = describe_deployment(
        ClusterView(deployments={"web": deployment(MANIFEST)}), "web", [], NOW
    )
    assert "Progress deadline: 90s" in text
    assert "Auto rollback:     on crash loop (4 restarts within 120s)" in text
    assert "  Termination grace period: 45s" in text
    assert "  Stop signal:              SIGQUIT" in text
    assert "  Node selector:            disk=ssd, zone=a" in text


def test_describe_shows_the_defaults_when_nothing_is_set() -> None:
    text = describe_deployment(ClusterView(deployments={"web": deployment(PLAIN)}), "web", [], NOW)
    assert "Progress deadline: 600s" in text and "Auto rollback:     off" in text
    assert "Termination grace period: 30s" in text
    assert "Stop signal:              <the image's STOPSIGNAL, else SIGTERM>" in text
    assert "Node selector:            <none>" in text


def test_describe_shows_the_conditions_and_the_rollback_record() -> None:
    status = DeploymentStatus(
        name="web",
        observed_generation=1,
        replicas=3,
        available=2,
        revision=6,
        conditions=[
            DeploymentCondition(
                type=CONDITION_PROGRESSING,
                status="False",
                reason=REASON_ROLLED_BACK,
                message="rolled back from revision 5",
            ),
            DeploymentCondition(
                type=CONDITION_AVAILABLE, status="False", reason=REASON_MINIMUM_UNAVAILABLE
            ),
        ],
        auto_rollback=AutoRollbackRecord(
            from_revision=5,
            to_revision=6,
            reason="CrashLoop",
            message="replica web-2 restarted 4 times within 120s",
            at=NOW - 60,
        ),
    )
    view = ClusterView(deployments={"web": deployment(MANIFEST)}, statuses={"web": status})
    lines = describe_deployment(view, "web", [], NOW).splitlines()
    at = lines.index("Conditions:")
    assert lines[at + 1 : at + 4] == [
        "  Type          Status   Reason                       Message",
        "  Progressing   False    RolledBack                   rolled back from revision 5",
        "  Available     False    MinimumReplicasUnavailable",
    ]
    at = lines.index("Last auto rollback:")
    assert lines[at + 1 : at + 6] == [
        "  From revision: 5",
        "  To revision:   6",
        "  Reason:        CrashLoop",
        "  Message:       replica web-2 restarted 4 times within 120s",
        "  At:            2027-01-15 08:00:00 UTC (60s ago)",
    ]
    assert "Revision:     6" in lines
    assert (
        "Replicas:     3 desired | 0 placed | 0 up-to-date | 0 ready | 0 pending | 2 available"
        in lines
    )


def test_a_status_without_conditions_says_none() -> None:
    status = DeploymentStatus(name="web", observed_generation=1, replicas=1)
    view = ClusterView(deployments={"web": deployment(PLAIN)}, statuses={"web": status})
    text = describe_deployment(view, "web", [], NOW)
    assert "Conditions:   <none>" in text and "Last auto rollback:" not in text
