"""The node's Docker networks: one per NetworkSlice of this node (docs/networking.md,
"Networks"), on the node's engine through aiodocker.

    corral_<network>_<clusterid>   driver bridge, the slice's subnet and gateway,
                                   bridge names.bridge_name(...), labels io.corral.*

Only networks carrying this cluster's and this node's labels are ever removed, and only
a bridge of this cluster's, network's and node's own name that no Docker network uses
(a leftover of a create dockerd failed half-way). A network whose bridge, seen on the
host before, is gone is remade (`DockerNetworks._bridge_lost`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

import aiodocker

from corral.contract import names
from corral.contract.network_state import NetworkSlice
from corral_netmgr.node import host

log = logging.getLogger(__name__)

BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
# A network remade for a lost bridge is not remade for that again this soon.
REMAKE_AGAIN_AFTER_SECONDS: Final = 300.0


class NetworkInUse(Exception):
    """A Docker network to remove still has containers: removed later."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """What the Docker network of one slice must be."""

    name: str
    subnet: str
    gateway: str
    bridge: str
    labels: dict[str, str]

    def config(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Driver": "bridge",
            "CheckDuplicate": True,
            "IPAM": {
                "Driver": "default",
                "Config": [{"Subnet": self.subnet, "Gateway": self.gateway}],
            },
            "Options": {BRIDGE_NAME_OPTION: self.bridge},
            "Labels": self.labels,
        }


def wanted(piece: NetworkSlice, cluster_id: str) -> Wanted:
    return Wanted(
        name=names.docker_network_name(piece.network, cluster_id),
        subnet=piece.subnet,
        gateway=piece.gateway,
        bridge=names.bridge_name(piece.network, piece.node, cluster_id),
        labels={
            names.LABEL_MANAGED: "true",
            names.LABEL_CLUSTER: cluster_id,
            names.LABEL_NETWORK: piece.network,
            names.LABEL_NODE: piece.node,
        },
    )


def matches(shown: dict[str, Any], want: Wanted) -> bool:
    """Whether an inspected Docker network is what `want` says (subnet, gateway,
    bridge, labels). IPAM configs of another family (an IPv6 one an engine default
    adds) do not count: only the IPv4 ones must be exactly the slice's."""
    configs = (shown.get("IPAM") or {}).get("Config") or []
    ipam = [(c.get("Subnet"), c.get("Gateway")) for c in configs if not _ipv6(c.get("Subnet"))]
    labels = shown.get("Labels") or {}
    options = shown.get("Options") or {}
    return (
        shown.get("Driver") == "bridge"
        and ipam == [(want.subnet, want.gateway)]
        and options.get(BRIDGE_NAME_OPTION) == want.bridge
        and all(labels.get(k) == v for k, v in want.labels.items())
    )


def _ipv6(subnet: object) -> bool:
    try:
        return ipaddress.ip_network(str(subnet), strict=False).version == 6
    except ValueError:
        return False


def subnets(shown: dict[str, Any]) -> list[str]:
    configs = (shown.get("IPAM") or {}).get("Config") or []
    return [str(c["Subnet"]) for c in configs if c.get("Subnet")]


class DockerNetworks:
    """The Docker side of one node part: its engine, its cluster and node."""

    def __init__(self, docker: aiodocker.Docker, cluster_id: str, node: str) -> None:
        self.docker = docker
        self.cluster_id = cluster_id
        self.node = node
        self.sys_net = host.SYS_NET  # the host's links (tests point it elsewhere)
        self._remade: dict[str, float] = {}  # network name -> when remade for a lost bridge
        self._seen: set[str] = set()  # bridges of our networks seen on the host

    def ours_filter(self) -> dict[str, list[str]]:
        return {
            "label": [
                f"{names.LABEL_MANAGED}=true",
                f"{names.LABEL_CLUSTER}={self.cluster_id}",
                f"{names.LABEL_NODE}={self.node}",
            ]
        }

    async def list_ours(self) -> dict[str, dict[str, Any]]:
        """name -> summary of this cluster's and node's Docker networks on the engine."""
        found = await self.docker.networks.list(filters=self.ours_filter())
        return {str(n["Name"]): n for n in found}

    async def list_all(self) -> list[dict[str, Any]]:
        return list(await self.docker.networks.list())

    def not_ours(self, shown: dict[str, Any]) -> bool:
        """A Docker network that is not corral's (any cluster's corral networks are)."""
        labels = shown.get("Labels") or {}
        return labels.get(names.LABEL_MANAGED) != "true"

    async def inspect(self, name: str) -> dict[str, Any] | None:
        try:
            network = await self.docker.networks.get(name)
            shown: dict[str, Any] = await network.show()
        except aiodocker.DockerError as error:
            if error.status == 404:
                return None
            raise
        return shown

    async def ensure(self, want: Wanted) -> bool:
        """Make the Docker network `want` says; True when it was made (or remade)."""
        shown = await self.inspect(want.name)
        if shown is not None:
            if matches(shown, want):
                if not await self._bridge_lost(want):
                    return False
                log.warning(
                    "Docker network %s lost its bridge %s (deleted behind dockerd's back): "
                    "remaking it",
                    want.name,
                    want.bridge,
                )
                try:
                    await self.remove(want.name)
                except NetworkInUse as error:
                    raise RuntimeError(
                        f"Docker network {want.name} lost its bridge {want.bridge} (deleted "
                        f"behind dockerd's back), so its containers have no network; it is "
                        f"remade once they are gone ({error})"
                    ) from None
                self._remade[want.name] = time.monotonic()
            else:
                labels = shown.get("Labels") or {}
                if (
                    labels.get(names.LABEL_CLUSTER) != self.cluster_id
                    or labels.get(names.LABEL_NODE) != self.node
                ):
                    raise RuntimeError(
                        f"Docker network {want.name} exists and is not this node's "
                        f"(labels {labels}); remove it by hand"
                    )
                log.info(
                    "Docker network %s differs from its slice (%s): remaking it",
                    want.name,
                    want.subnet,
                )
                await self.remove(want.name)
        await self._remove_leftover_bridge(want)
        try:
            await self.docker.networks.create(want.config())
        except aiodocker.DockerError as error:
            if error.status == 409 and await self.inspect(want.name) is not None:
                return False  # made meanwhile (another start of this node part)
            raise RuntimeError(
                f"creating Docker network {want.name} ({want.subnet}): {error.message}"
            ) from None
        log.info("Docker network %s made (%s, bridge %s)", want.name, want.subnet, want.bridge)
        if want.bridge in self._seen and not (self.sys_net / want.bridge).exists():
            # Made, and its bridge is not seen: what was seen (a link of that name left
            # on the host) was not the engine's, whose links are elsewhere. No proof.
            self._seen.discard(want.bridge)
            log.warning(
                "Docker network %s was made and its bridge %s is not on this host: this "
                "node part does not see the engine's links",
                want.name,
                want.bridge,
            )
        return True

    async def _bridge_lost(self, want: Wanted) -> bool:
        """`want`'s network (there, and as its slice says) lost its bridge and is to be
        remade: its link, which this node part saw on the host before, is gone (deleted
        behind dockerd's back, by hand or by a leftover sweep racing the create of
        another start of this node part; dockerd does not notice). Having seen it is the
        proof that this process sees the engine's links: one that never does (an
        engine in a VM, a rootless one) never remakes anything. At most once in
        REMAKE_AGAIN_AFTER_SECONDS: a bridge deleted again at once is an error to look
        into, not a loop of remakes."""
        if (self.sys_net / want.bridge).exists():
            self._seen.add(want.bridge)
            return False
        if want.bridge not in self._seen:
            return False
        remade = self._remade.get(want.name)
        if remade is not None and time.monotonic() - remade < REMAKE_AGAIN_AFTER_SECONDS:
            raise RuntimeError(
                f"Docker network {want.name} lost its bridge {want.bridge} again within "
                f"{REMAKE_AGAIN_AFTER_SECONDS:.0f} s of being remade for that: left as it "
                "is (what deletes it?)"
            )
        return True

    async def _remove_leftover_bridge(self, want: Wanted) -> None:
        """dockerd can fail a create after it made the network's bridge (two creates at
        once on Docker 20.10 with nftables: "unable to remove jump to
        DOCKER-ISOLATION-STAGE-1 rule in FORWARD chain"), leaving the link, and its
        route, without a network. Made again, the network would take that bridge as one
        dockerd did not make, and leave it behind when removed. The name is this
        cluster's, network's and node's own (names.bridge_name): the link is deleted
        when no Docker network of this engine names it and nothing is attached to it
        (an engine of the same host sharing its links, wrongly configured with this
        node's name, keeps a bridge its containers use)."""
        link = self.sys_net / want.bridge
        if not link.exists():
            return
        # Seen: this process sees the engine's links. Should this sweep race the create
        # of another start of this node part (its bridge made, its network not yet
        # listed), the network that create makes lacks its bridge: remade next time.
        self._seen.add(want.bridge)
        try:
            attached = any((link / "brif").iterdir())
        except OSError:
            return  # not a bridge, or gone meanwhile: not ours to judge
        if attached:
            return
        for shown in await self.list_all():
            if (shown.get("Options") or {}).get(BRIDGE_NAME_OPTION) == want.bridge:
                return  # a network uses it (under another name): never touched
        log.warning(
            "bridge %s is left from a create that failed: deleted before %s is made",
            want.bridge,
            want.name,
        )
        deleted = await host.run(["ip", "link", "del", want.bridge], check=False)
        if deleted.code != 0 and link.exists():
            raise RuntimeError(
                f"bridge {want.bridge} is left from a create that failed and could not be "
                f"deleted: {deleted.stderr.strip()}"
            )

    async def users(self, name: str, shown: dict[str, Any]) -> list[str]:
        """The containers attached to the network `name`, stopped ones too (Docker's
        `Containers` lists only running ones; a stopped container whose network was
        removed never starts again: "network not found")."""
        found = {str(c.get("Name", cid)): "" for cid, c in (shown.get("Containers") or {}).items()}
        keys = [name, *([str(shown["Id"])] if shown.get("Id") else [])]  # by name or by id
        listed = await self.docker.containers.list(all="1", filters=json.dumps({"network": keys}))
        for container in listed:  # containers/json rows: Names and State are always there
            found[str(container["Names"][0]).lstrip("/")] = str(container["State"])
        return [f"{n} ({state})" if state else n for n, state in sorted(found.items())]

    async def remove(self, name: str) -> None:
        """Remove one of this node's Docker networks; NetworkInUse while containers,
        running or stopped, are attached to it. The network inspected is the one
        deleted (by its id): one made again under that name meanwhile (another start
        of this node part) is not."""
        shown = await self.inspect(name)
        if shown is None:
            return
        labels = shown.get("Labels") or {}
        if (
            labels.get(names.LABEL_CLUSTER) != self.cluster_id
            or labels.get(names.LABEL_NODE) != self.node
        ):
            return  # never another's
        users = await self.users(name, shown)
        if users:
            raise NetworkInUse(
                f"Docker network {name} still has containers ({', '.join(users)}): "
                "it is removed once they are gone"
            )
        try:
            network = await self.docker.networks.get(str(shown.get("Id") or name))
            await network.delete()
        except aiodocker.DockerError as error:
            if error.status == 404:
                return  # gone meanwhile
            if error.status in (403, 409) or "active endpoints" in error.message:
                raise NetworkInUse(f"Docker network {name}: {error.message}") from None
            raise
        log.info("Docker network %s removed", name)
