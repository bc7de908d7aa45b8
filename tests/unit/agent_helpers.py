"""Builders shared by the agent's unit tests."""

from __future__ import annotations

from typing import Any

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.specs import ContainerTemplate
from corral.contract.state import Cluster, Placement
from corral.natsio.kv import MemoryBucket
from corral_node_agent.agent import AgentSettings
from corral_node_agent.runtime import ContainerState, ObservedContainer
from corral_node_agent.safety import Budget

NODE = "node-a"
CLUSTER_ID = "c1c1c1c1c1c1c1c1"


def fast_settings(**settings: Any) -> AgentSettings:
    """Agent settings on a time budget scaled down for unit tests."""
    values: dict[str, Any] = {
        "node_name": NODE,
        "heartbeat_seconds": 0.05,
        "alive_window": 0.3,
        "takeover_window": 0.5,
        "leftovers_after": 0.5,
        "stale_watch_after": 1.0,
        "identity_check_seconds": 0.2,
        "budget": Budget(isolated_after=0.3, stop_after=2.0),
    }
    values.update(settings)
    return AgentSettings(**values)


def cluster_bucket(cluster_id: str = CLUSTER_ID) -> MemoryBucket:
    """A cluster bucket holding the identity of cluster `cluster_id`."""
    bucket = MemoryBucket("cluster")
    bucket._write(names.CLUSTER_KEY, encode(Cluster(id=cluster_id)))
    return bucket


def placement(
    replica: str,
    image: str = "corral-test/busybox:1",
    *,
    node: str = NODE,
    deployment: str = "web",
    args: list[str] | None = None,
) -> Placement:
    template = ContainerTemplate(image=image, args=args)
    return Placement(
        replica=replica,
        deployment=deployment,
        node=node,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


def container(
    replica: str,
    *,
    state: ContainerState = ContainerState.RUNNING,
    template_hash: str | None = None,
    container_id: str | None = None,
    exit_code: int | None = None,
    started_at: float | None = 100.0,
    finished_at: float | None = None,
    cluster: str = CLUSTER_ID,
    node: str = NODE,
) -> ObservedContainer:
    return ObservedContainer(
        id=container_id or f"id-{replica}",
        name=f"corral-{replica}",
        replica=replica,
        deployment="web",
        template_hash=template_hash
        if template_hash is not None
        else placement(replica).template_hash,
        state=state,
        exit_code=exit_code,
        started_at=started_at,
        finished_at=finished_at,
        cluster=cluster,
        node=node,
    )
