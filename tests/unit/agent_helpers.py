"""Builders shared by the agent's unit tests."""

from __future__ import annotations

from corral.specs import ContainerTemplate
from corral.state import Placement
from corral_node_agent.runtime import ContainerState, ObservedContainer

NODE = "node-a"


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
    )
