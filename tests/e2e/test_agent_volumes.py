"""Replicas with volumes, on a real Docker engine (docs/volumes.md, "Replicas with volumes").
The test plays the scheduler and volmgr: it makes each PersistentVolume's Docker volume
as the node part would (name, labels), writes the claim's ClaimStatus and this node's
VolumeAttachment by hand, and removes every container and volume it made, even when it
fails. The local engine only."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.contract import names
from corral.contract.codec import encode
from corral.contract.specs import (
    ClaimSource,
    ContainerTemplate,
    EmptyDirSource,
    Volume,
    VolumeMount,
)
from corral.contract.state import Placement, ReplicaState
from corral.contract.volume_state import ClaimStatus, VolumeAttachment
from corral.natsio.kv import NatsBucket
from tests.e2e.conftest import AgentFactory, remove_node_containers
from tests.e2e.test_agent_docker import (
    cluster_id,
    containers_of,
    docker,
    eventually,
    place,
    state_is,
    status_of,
    unique,
)

pytestmark = pytest.mark.docker

WRITE_THEN_SLEEP = "echo written-by-corral > /data/hello.txt; trap 'exit 0' TERM; sleep 3600 & wait"


def volumes_of_node(node: str) -> list[str]:
    listed = docker("volume", "ls", "-q", "--filter", f"label={names.LABEL_NODE}={node}")
    return listed.split()


class VolumeMaker:
    """Makes Docker volumes as volmgr's node part does; removes them (and every volume
    labelled with the test's node: the emptyDirs) afterwards."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.made: list[str] = []
        self.containers: list[str] = []  # made by hand (the holder of a volume)

    def make(self, volume: str, cluster: str) -> str:
        name = names.docker_volume_name(volume, cluster)
        docker(
            "volume", "create",
            "--label", f"{names.LABEL_MANAGED}=true",
            "--label", f"{names.LABEL_CLUSTER}={cluster}",
            "--label", f"{names.LABEL_VOLUME}={volume}",
            "--label", f"{names.LABEL_NODE}={self.node}",
            name,
        )  # fmt: skip
        self.made.append(name)
        return name

    def remove_all(self) -> None:
        remove_node_containers(self.node)  # a volume in use cannot go
        for container in self.containers:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)
        for name in [*self.made, *volumes_of_node(self.node)]:
            subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True, timeout=60)


@pytest.fixture
def volumes(node_name: str) -> Iterator[VolumeMaker]:
    maker = VolumeMaker(node_name)
    try:
        yield maker
    finally:
        maker.remove_all()


def with_volumes(node: str, replica: str, image: str, claim: str) -> Placement:
    template = ContainerTemplate(
        image=image,
        command=["sh", "-c"],
        args=[WRITE_THEN_SLEEP],
        volumes=[
            Volume(name="data", persistent_volume_claim=ClaimSource(claim_name=claim)),
            Volume(name="scratch", empty_dir=EmptyDirSource(medium="Memory", size_limit="16Mi")),
        ],
        volume_mounts=[
            VolumeMount(name="data", mount_path="/data"),
            VolumeMount(name="scratch", mount_path="/scratch"),
        ],
    )
    return Placement(
        replica=replica,
        deployment="web",
        node=node,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


async def bind(
    buckets: dict[str, NatsBucket], claim: str, volume: str, modes: tuple[str, ...] = ()
) -> None:
    """volmgr bound the claim to the volume (its ClaimStatus)."""
    status = ClaimStatus(
        name=claim, phase="Bound", volume=volume, access_modes=list(modes or ["ReadWriteOnce"])
    )
    await buckets[names.CLAIM_STATUS_BUCKET].put(names.object_key("default", claim), encode(status))


async def attach(
    buckets: dict[str, NatsBucket],
    node: str,
    volume: str,
    claim: str,
    docker_volume: str,
    host_path: str = "",
) -> None:
    attachment = VolumeAttachment(
        volume=volume,
        node=node,
        claim=names.object_key("default", claim),
        ready=True,
        docker_volume=docker_volume,
        host_path=host_path,
    )
    await buckets[names.VOLUME_ATTACHMENTS_BUCKET].put(
        names.attachment_key(node, volume), encode(attachment)
    )


def inspect_volume(name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = json.loads(docker("volume", "inspect", name))
    return found[0]


def read_on_volume(image: str, volume: str, path: str) -> str:
    """A file on a Docker volume, read through a second container."""
    done = subprocess.run(
        ["docker", "run", "--rm", "-v", f"{volume}:/v:ro", image, "cat", f"/v/{path}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip()


async def test_a_replica_mounts_its_claim_and_an_empty_dir_once_its_attachment_appears(
    buckets: dict[str, NatsBucket],
    agent_running: AgentFactory,
    node_name: str,
    test_image: str,
    volumes: VolumeMaker,
) -> None:
    pv, claim = f"e2e{uuid.uuid4().hex[:8]}", f"data-{uuid.uuid4().hex[:6]}"
    web = unique("web")
    async with agent_running():
        cluster = await cluster_id(buckets)
        data = volumes.make(pv, cluster)
        scratch = names.empty_dir_volume_name(web, "scratch", cluster)
        placement = with_volumes(node_name, web, test_image, claim)
        await place(buckets, placement)
        await eventually(state_is(buckets, node_name, web, ReplicaState.CREATING))
        status = await status_of(buckets, node_name, web)
        assert status is not None and status.message == f"waiting for claim {claim} to be bound"
        assert containers_of(node_name) == []  # nothing made while it waits
        await bind(buckets, claim, pv)
        await attach(buckets, node_name, pv, claim, data)  # volmgr made it usable here
        await eventually(state_is(buckets, node_name, web, ReplicaState.RUNNING), within=20)
        (container,) = containers_of(node_name)
        assert container["Config"]["Labels"][names.uses_volume_label(pv)] == "1"
        mounted = {m["Destination"]: m for m in container["Mounts"]}
        assert mounted["/data"]["Name"] == data and mounted["/data"]["RW"] is True
        assert mounted["/scratch"]["Name"] == scratch
        # What the replica wrote is on the claim's volume.
        await eventually(
            lambda: read_on_volume(test_image, data, "hello.txt") == "written-by-corral"
        )
        # Its emptyDir is a tmpfs of its size limit, labelled as corral's.
        made = inspect_volume(scratch)
        assert made["Labels"] == {
            names.LABEL_MANAGED: "true",
            names.LABEL_CLUSTER: cluster,
            names.LABEL_NODE: node_name,
            names.LABEL_REPLICA: web,
        }
        assert made["Options"] == {"type": "tmpfs", "device": "tmpfs", "o": "size=16777216"}
        mounts = docker("exec", container["Id"], "cat", "/proc/mounts")
        assert any(line.split()[1:3] == ["/scratch", "tmpfs"] for line in mounts.splitlines())
        # The replica goes: its container, then its emptyDir; the claim's volume stays.
        await buckets[names.PLACEMENTS_BUCKET].delete(placement.key)
        await eventually(lambda: containers_of(node_name) == [], within=20)
        await eventually(lambda: scratch not in volumes_of_node(node_name), within=10)
    assert data in volumes_of_node(node_name)
    assert read_on_volume(test_image, data, "hello.txt") == "written-by-corral"


async def test_a_read_write_once_pod_claim_waits_while_another_container_holds_its_volume(
    buckets: dict[str, NatsBucket],
    agent_running: AgentFactory,
    node_name: str,
    test_image: str,
    volumes: VolumeMaker,
) -> None:
    pv, claim = f"e2e{uuid.uuid4().hex[:8]}", f"data-{uuid.uuid4().hex[:6]}"
    web = unique("web")
    holder = f"e2e-holder-{uuid.uuid4().hex[:8]}"
    async with agent_running():
        cluster = await cluster_id(buckets)
        data = volumes.make(pv, cluster)
        status = ClaimStatus(
            name=claim, phase="Bound", volume=pv, access_modes=["ReadWriteOncePod"]
        )
        await buckets[names.CLAIM_STATUS_BUCKET].put(
            names.object_key("default", claim), encode(status)
        )
        # Another replica's container of this cluster still holds the volume (stopped
        # counts too: `docker ps -a`). Not io.corral.managed: the agent leaves it alone.
        volumes.containers.append(holder)
        docker(
            "create", "--name", holder,
            "--label", f"{names.LABEL_CLUSTER}={cluster}",
            "--label", f"{names.LABEL_NODE}={node_name}",
            "-v", f"{data}:/data", test_image, "sleep", "3600",
        )  # fmt: skip
        await attach(buckets, node_name, pv, claim, data)
        await place(buckets, with_volumes(node_name, web, test_image, claim))
        expected = f"volume {pv} is still used by container {holder}"

        async def held() -> bool:
            found = await status_of(buckets, node_name, web)
            return found is not None and found.message == expected

        await eventually(held, within=20)
        found = await status_of(buckets, node_name, web)
        assert found is not None and found.state == ReplicaState.CREATING
        assert [c["Name"] for c in containers_of(node_name)] == [f"/{holder}"]
        docker("rm", "-f", holder)  # it let the volume go
        await eventually(state_is(buckets, node_name, web, ReplicaState.RUNNING), within=20)


SLEEP = "trap 'exit 0' TERM; sleep 3600 & wait"


def with_sub_path(node: str, replica: str, image: str, claim: str, sub_path: str) -> Placement:
    template = ContainerTemplate(
        image=image,
        command=["sh", "-c"],
        args=[SLEEP],
        volumes=[Volume(name="data", persistent_volume_claim=ClaimSource(claim_name=claim))],
        volume_mounts=[VolumeMount(name="data", mount_path="/logs", sub_path=sub_path)],
    )
    return Placement(
        replica=replica,
        deployment="web",
        node=node,
        template=template,
        template_hash=template.template_hash(),
        generation=1,
    )


async def test_a_subpath_through_a_symlink_in_the_volume_is_refused_then_bound_once_it_is_gone(
    buckets: dict[str, NatsBucket],
    agent_running: AgentFactory,
    node_name: str,
    test_image: str,
    volumes: VolumeMaker,
    tmp_path: Path,
) -> None:
    # A replica left `ln -s <outside> x` in its volume: a later subPath x/logs must never
    # give the next container the outside directory.
    pv, claim = f"e2e{uuid.uuid4().hex[:8]}", f"data-{uuid.uuid4().hex[:6]}"
    volume_dir, outside = tmp_path / "pv", tmp_path / "outside"
    volume_dir.mkdir()
    outside.mkdir()
    (volume_dir / "x").symlink_to(outside)
    web = unique("web")
    async with agent_running():
        await bind(buckets, claim, pv)
        await attach(buckets, node_name, pv, claim, "", host_path=str(volume_dir))
        await place(buckets, with_sub_path(node_name, web, test_image, claim, "x/logs"))
        await eventually(state_is(buckets, node_name, web, ReplicaState.FAILED), within=20)
        status = await status_of(buckets, node_name, web)
        assert status is not None
        assert status.message.startswith("`volumeMounts[0].subPath` 'x/logs': ")
        assert "symbolic link" in status.message
        assert containers_of(node_name) == []  # no container was made
        assert list(outside.iterdir()) == []  # nothing made through the link
        (volume_dir / "x").unlink()  # tried again on the back-off
        await eventually(state_is(buckets, node_name, web, ReplicaState.RUNNING), within=30)
        (container,) = containers_of(node_name)
        (mount,) = container["Mounts"]
        assert mount["Type"] == "bind"
        assert mount["Source"] == str((volume_dir / "x" / "logs").resolve())
        assert container["Config"]["Labels"][names.uses_volume_label(pv)] == "1"


async def test_a_read_write_once_pod_claim_waits_while_a_container_binds_a_subpath_of_it(
    buckets: dict[str, NatsBucket],
    agent_running: AgentFactory,
    node_name: str,
    test_image: str,
    volumes: VolumeMaker,
    tmp_path: Path,
) -> None:
    pv, claim = f"e2e{uuid.uuid4().hex[:8]}", f"data-{uuid.uuid4().hex[:6]}"
    web = unique("web")
    holder = f"e2e-holder-{uuid.uuid4().hex[:8]}"
    (tmp_path / "pv" / "logs").mkdir(parents=True)
    async with agent_running():
        cluster = await cluster_id(buckets)
        data = volumes.make(pv, cluster)
        await bind(buckets, claim, pv, ("ReadWriteOncePod",))
        # Holds the volume through a bind of a subPath only: `--filter volume=` misses it,
        # corral's label does not.
        volumes.containers.append(holder)
        docker(
            "create", "--name", holder,
            "--label", f"{names.LABEL_CLUSTER}={cluster}",
            "--label", f"{names.LABEL_NODE}={node_name}",
            "--label", f"{names.uses_volume_label(pv)}=1",
            "-v", f"{tmp_path / 'pv' / 'logs'}:/logs", test_image, "sleep", "3600",
        )  # fmt: skip
        assert docker("ps", "-aq", "--filter", f"volume={data}").split() == []
        await attach(buckets, node_name, pv, claim, data, host_path=str(tmp_path / "pv"))
        await place(buckets, with_sub_path(node_name, web, test_image, claim, "logs"))
        expected = f"volume {pv} is still used by container {holder}"

        async def held() -> bool:
            found = await status_of(buckets, node_name, web)
            return found is not None and found.message == expected

        await eventually(held, within=20)
        docker("rm", "-f", holder)
        await eventually(state_is(buckets, node_name, web, ReplicaState.RUNNING), within=20)
