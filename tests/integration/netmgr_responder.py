"""A small stand-in for netmgr's cluster part in the CLI tests: it answers
corral.api.network.* and corral.api.service.* as docs/networking.md says (decode,
store in netmgr's buckets, allocate a range, slices, a cluster IP and node ports, refuse
a delete of a network in use) so the client side can be tested on a real nats-server
before, and apart from, the real netmgr."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from corral.contract import names
from corral.contract.codec import InvalidPayload, decode, decode_payload, encode
from corral.contract.events import REASON_CONFLICT, REASON_INVALID, REASON_NOT_FOUND, Reply
from corral.contract.network_specs import Network, Service
from corral.contract.network_state import NetworkSlice, NetworkStatus
from corral.contract.specs import DeleteRequest
from corral.natsio.bus import flush_subscriptions
from corral.natsio.kv import NatsBucket, write_record

NODES = ("n1", "n2")


@dataclass
class Responder:
    buckets: dict[str, NatsBucket]
    requests: list[str] = field(default_factory=list)  # subjects, in order
    next_ip: int = 10
    next_node_port: int = 30000
    next_range: int = 128

    async def stored(
        self, bucket: str, key: str, kind: type[msgspec.Struct]
    ) -> msgspec.Struct | None:
        entry = await self.buckets[bucket].get(key)
        return None if entry is None or not entry.value else decode(entry.value, kind)

    async def apply_network(self, network: Network) -> Reply:
        name = network.metadata.name
        old = await self.stored(names.NETWORKS_BUCKET, name, Network)
        if isinstance(old, Network) and old.spec == network.spec:
            return Reply(
                ok=True,
                kind="Network",
                name=name,
                unchanged=True,
                generation=old.metadata.generation,
            )
        generation = old.metadata.generation + 1 if isinstance(old, Network) else 1
        meta = msgspec.structs.replace(
            network.metadata, generation=generation, creation_timestamp=time.time()
        )
        await self.buckets[names.NETWORKS_BUCKET].put(
            name, encode(msgspec.structs.replace(network, metadata=meta))
        )
        subnet = network.spec.subnet
        if not subnet:
            subnet = f"10.{self.next_range}.0.0/16"
            self.next_range += 1
        status = NetworkStatus(name=name, subnet=subnet, slice_prefix=network.spec.slice_prefix)
        await self.buckets[names.NETWORK_STATUS_BUCKET].put(name, encode(status))
        base = subnet.split("/")[0].rsplit(".", 2)[0]
        for index, node in enumerate(NODES, start=1):
            piece = NetworkSlice(
                network=name, node=node, subnet=f"{base}.{index}.0/24", gateway=f"{base}.{index}.1"
            )
            await self.buckets[names.NETWORK_SLICES_BUCKET].put(piece.key, encode(piece))
        return Reply(ok=True, kind="Network", name=name, generation=generation)

    async def delete_network(self, request: DeleteRequest) -> Reply:
        name = request.name
        if await self.stored(names.NETWORKS_BUCKET, name, Network) is None:
            return Reply(ok=False, error=f"network {name!r} not found", reason=REASON_NOT_FOUND)
        users = []
        async for entry in self.buckets[names.SERVICES_BUCKET].watch():
            if entry is None:
                break
            if entry.value:
                service = decode(entry.value, Service)
                if (service.spec.network or "default") == name:
                    users.append(f"service/{service.metadata.name}")
        if users:
            return Reply(
                ok=False,
                error=f"network {name!r} is in use by {', '.join(users)}",
                reason=REASON_CONFLICT,
            )
        await self.buckets[names.NETWORKS_BUCKET].delete(name)
        await self.buckets[names.NETWORK_STATUS_BUCKET].delete(name)
        for node in NODES:
            await self.buckets[names.NETWORK_SLICES_BUCKET].delete(f"{name}.{node}")
        return Reply(ok=True, kind="Network", name=name)

    async def apply_service(self, service: Service) -> Reply:
        key = service.key
        old = await self.stored(names.SERVICES_BUCKET, key, Service)
        spec = service.spec
        if not spec.cluster_ip:
            spec = msgspec.structs.replace(spec, cluster_ip=f"10.96.0.{self.next_ip}")
            self.next_ip += 1
        if spec.type == "NodePort":
            ports = []
            for port in spec.ports:
                if not port.node_port:
                    port = msgspec.structs.replace(port, node_port=self.next_node_port)
                    self.next_node_port += 1
                ports.append(port)
            spec = msgspec.structs.replace(spec, ports=ports)
        generation = old.metadata.generation + 1 if isinstance(old, Service) else 1
        meta = msgspec.structs.replace(
            service.metadata, generation=generation, creation_timestamp=time.time()
        )
        stored = msgspec.structs.replace(service, metadata=meta, spec=spec)
        await write_record(self.buckets[names.SERVICES_BUCKET], key, stored, None)
        return Reply(ok=True, kind="Service", name=service.metadata.name, generation=generation)

    async def delete_service(self, request: DeleteRequest) -> Reply:
        if await self.stored(names.SERVICES_BUCKET, request.key, Service) is None:
            return Reply(
                ok=False, error=f"service {request.name!r} not found", reason=REASON_NOT_FOUND
            )
        await self.buckets[names.SERVICES_BUCKET].delete(request.key)
        await self.buckets[names.ENDPOINTS_BUCKET].delete(request.key)
        return Reply(ok=True, kind="Service", name=request.name)

    async def handle(self, msg: Msg) -> None:
        self.requests.append(msg.subject)
        verb = msg.subject.rsplit(".", 1)[-1]
        kind = msg.subject.split(".")[-2]
        try:
            if verb == "delete":
                request = decode_payload(msg.data, DeleteRequest)
                reply = await (
                    self.delete_network(request)
                    if kind == "network"
                    else self.delete_service(request)
                )
            elif kind == "network":
                reply = await self.apply_network(decode_payload(msg.data, Network))
            else:
                reply = await self.apply_service(decode_payload(msg.data, Service))
        except InvalidPayload as error:
            reply = Reply(ok=False, error=error.message, field=error.field, reason=REASON_INVALID)
        await msg.respond(encode(reply))


@asynccontextmanager
async def netmgr_responder(nc: NATS, buckets: dict[str, NatsBucket]) -> AsyncIterator[Responder]:
    responder = Responder(buckets)
    subscriptions = [
        await nc.subscribe(names.api_subject(kind, verb), cb=responder.handle)
        for kind in ("network", "service")
        for verb in ("apply", "delete")
    ]
    await flush_subscriptions(nc)
    try:
        yield responder
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()
