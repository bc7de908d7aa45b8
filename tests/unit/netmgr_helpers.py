"""netmgr's cluster part on in-memory buckets: its mirrors, APIs and controllers, and
records to write as the scheduler and the agents would."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import msgspec

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.specs import ContainerPort, ContainerTemplate
from corral.contract.state import Node, NodeCapacity, Placement, ReplicaState, ReplicaStatus
from corral.natsio.controller import Controller
from corral.natsio.kv import MemoryBucket
from corral_netmgr.cluster_loop import ClusterLoop
from corral_netmgr.main import build_apis
from corral_netmgr.network_api import NetworkAPI
from corral_netmgr.service_api import ServiceAPI
from tests.unit.cluster_part_helpers import ClusterPart, memory_buckets, ok, put
from tests.waiting import eventually


@dataclass
class Netmgr(ClusterPart):
    loop: ClusterLoop
    networks: NetworkAPI
    services: ServiceAPI

    def controllers(self) -> Sequence[Controller]:
        return (
            self.loop.network_controller,
            self.loop.endpoints_controller,
            self.loop.drain_controller,
        )


@asynccontextmanager
async def netmgr(
    buckets: dict[str, MemoryBucket] | None = None, *, controllers: bool = False
) -> AsyncIterator[Netmgr]:
    """The cluster part on memory buckets, its mirrors current and the `default` network
    made; `controllers`: the controllers' workers run too (else call drain())."""
    buckets = buckets or memory_buckets()
    loop = ClusterLoop(dict(buckets))
    network_api, service_api = build_apis(loop, buckets[names.LEASES_BUCKET])
    async with anyio.create_task_group() as tg:
        await tg.start(loop.start_mirrors)
        await network_api.ensure_default()
        if controllers:
            await tg.start(loop.run_controllers, network_api.ensure_default)
        try:
            yield Netmgr(buckets, loop, network_api, service_api)
        finally:
            tg.cancel_scope.cancel()


def payload(**document: Any) -> bytes:
    return encode(document)


def network(name: str, **spec: Any) -> bytes:
    return payload(kind="Network", metadata={"name": name}, spec=spec)


def service(name: str, selector: Mapping[str, str] | None = None, **spec: Any) -> bytes:
    spec.setdefault("ports", [{"port": 80}])
    return payload(
        kind="Service",
        metadata={"name": name},
        spec={"selector": {"app": name} if selector is None else selector, **spec},
    )


def deployment(name: str, *, networks: list[str] | None = None) -> bytes:
    template: dict[str, Any] = {"image": "nginx"}
    if networks:
        template["networks"] = networks
    return payload(kind="Deployment", metadata={"name": name}, spec={"template": template})


def node(name: str, *, ready: bool = True) -> Node:
    return Node(
        name=name,
        capacity=NodeCapacity(cpu_millis=1000, memory_bytes=2**30, pods=10),
        ready=ready,
        heartbeat_at=time.time(),
    )


def template(*ports: tuple[str, int], labels: Mapping[str, str] | None = None) -> ContainerTemplate:
    return ContainerTemplate(
        image="nginx",
        labels=dict(labels or {}),
        ports=[ContainerPort(container_port=number, name=name) for name, number in ports],
    )


def placement(
    replica: str, deployment: str, node: str, tmpl: ContainerTemplate | None = None
) -> Placement:
    tmpl = tmpl or template()
    return Placement(
        replica=replica,
        deployment=deployment,
        node=node,
        template=tmpl,
        template_hash=tmpl.template_hash(),
        generation=1,
    )


def status(
    p: Placement, ips: Mapping[str, str], state: ReplicaState = ReplicaState.RUNNING
) -> ReplicaStatus:
    return ReplicaStatus(
        replica=p.replica,
        deployment=p.deployment,
        node=p.node,
        state=state,
        template_hash=p.template_hash,
        ips=dict(ips),
    )


async def until(probe: Any, accept: Any) -> Any:
    return await eventually(probe, accept, within=5.0, interval=0.01)


__all__ = ["memory_buckets", "msgspec", "ok", "put"]
