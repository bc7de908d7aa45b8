"""Replicas with volumes on the node agent (docs/volumes.md, "Replicas with volumes"): the
pure translation of a template's volumes into Docker mounts, and the whole agent on the
hollow runtime waiting for this node's volume attachments."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.specs import (
    ClaimSource,
    ContainerTemplate,
    EmptyDirSource,
    Volume,
    VolumeMount,
)
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral.contract.volume_state import ClaimStatus, VolumeAttachment
from corral.natsio.kv import MemoryBucket
from corral_node_agent.agent import NodeAgent
from corral_node_agent.diff import RemoveContainers, plan_actions, remove_all
from corral_node_agent.docker_runtime import (
    container_config,
    observed_from_inspect,
    resolve_sub_path,
)
from corral_node_agent.executor import container_name, container_spec
from corral_node_agent.hollow_runtime import HollowRuntime
from corral_node_agent.mounts import (
    docker_mounts,
    empty_dir_replica,
    is_volume_wait,
    plan_mounts,
)
from corral_node_agent.runtime import (
    ContainerSpec,
    Mount,
    VolumeNotReady,
    VolumeRefused,
    VolumeUser,
)
from tests.unit.agent_helpers import CLUSTER_ID, NODE, cluster_bucket, container, fast_settings
from tests.unit.test_agent_loop import RecordedEvents, eventually

IMAGE = "corral-test/busybox:1"
PV = "pv-data"
DOCKER_VOLUME = names.docker_volume_name(PV, CLUSTER_ID)


def template(
    volumes: list[Volume] | None = None, mounts: list[VolumeMount] | None = None
) -> ContainerTemplate:
    return ContainerTemplate(image=IMAGE, volumes=volumes or [], volume_mounts=mounts or [])


def placed(replica: str, tpl: ContainerTemplate) -> Placement:
    return Placement(
        replica=replica,
        deployment="web",
        node=NODE,
        template=tpl,
        template_hash=tpl.template_hash(),
        generation=1,
    )


def claim(name: str = "data", claim_name: str = "data", read_only: bool = False) -> Volume:
    return Volume(name=name, persistent_volume_claim=ClaimSource(claim_name, read_only))


def empty(name: str = "scratch", medium: str = "", size: str | None = None) -> Volume:
    return Volume(name=name, empty_dir=EmptyDirSource(medium=medium, size_limit=size))  # type: ignore[arg-type]


def attachment(
    *, ready: bool = True, host_path: str = "", docker_volume: str = DOCKER_VOLUME, **more: Any
) -> VolumeAttachment:
    return VolumeAttachment(
        volume=PV,
        node=NODE,
        claim="default.data",
        ready=ready,
        docker_volume=docker_volume,
        host_path=host_path,
        **more,
    )


def bound(volume: str = PV, modes: tuple[str, ...] = ("ReadWriteOnce",)) -> ClaimStatus:
    return ClaimStatus(name="data", phase="Bound", volume=volume, access_modes=list(modes))


def served(
    *found: VolumeAttachment, status: ClaimStatus | None = None, unbound: bool = False
) -> tuple[Callable[[str], ClaimStatus | None], Callable[[str], VolumeAttachment | None]]:
    """What plan_mounts reads: the claim default.data's status (Bound to PV unless told)
    and this node's attachments by key."""
    statuses = {} if unbound else {"default.data": status or bound()}
    by_key = {names.attachment_key(a.node, a.volume): a for a in found}
    return statuses.get, by_key.get


# --- the translation ---------------------------------------------------------------------


def test_a_claim_is_mounted_as_its_attachments_docker_volume() -> None:
    tpl = template([claim()], [VolumeMount(name="data", mount_path="/data/")])
    plan = plan_mounts(placed("web-a1", tpl), CLUSTER_ID, *served(attachment()))
    assert docker_mounts(plan.mounts) == [
        {"Type": "volume", "Source": DOCKER_VOLUME, "Target": "/data", "ReadOnly": False}
    ]
    assert plan.sub_paths == ()
    (use,) = plan.claims
    assert (use.claim, use.volume, use.docker_volume) == ("default.data", PV, DOCKER_VOLUME)


def test_a_mount_is_read_only_when_the_mount_or_the_claim_source_says_so() -> None:
    by_mount = template([claim()], [VolumeMount(name="data", mount_path="/d", read_only=True)])
    by_claim = template([claim(read_only=True)], [VolumeMount(name="data", mount_path="/d")])
    neither = template([claim()], [VolumeMount(name="data", mount_path="/d")])
    found = served(attachment())
    assert plan_mounts(placed("a", by_mount), CLUSTER_ID, *found).mounts[0].read_only
    assert plan_mounts(placed("a", by_claim), CLUSTER_ID, *found).mounts[0].read_only
    assert not plan_mounts(placed("a", neither), CLUSTER_ID, *found).mounts[0].read_only


def test_a_subpath_binds_the_directory_inside_the_volumes_host_path_and_asks_for_it() -> None:
    tpl = template(
        [claim()],
        [
            VolumeMount(name="data", mount_path="/logs", sub_path="app/logs"),
            VolumeMount(name="data", mount_path="/whole"),
        ],
    )
    found = served(attachment(host_path="/srv/volumes/c1/pv-data"))
    plan = plan_mounts(placed("web-a1", tpl), CLUSTER_ID, *found)
    assert docker_mounts(plan.mounts) == [
        {
            "Type": "bind",
            "Source": "/srv/volumes/c1/pv-data/app/logs",
            "Target": "/logs",
            "ReadOnly": False,
        },
        {"Type": "volume", "Source": DOCKER_VOLUME, "Target": "/whole", "ReadOnly": False},
    ]
    (bind,) = plan.sub_paths  # resolved on the host before the create
    assert (bind.index, bind.host_path, bind.sub_path, bind.field) == (
        0,
        "/srv/volumes/c1/pv-data",
        "app/logs",
        "volumeMounts[0].subPath",
    )


def test_a_subpath_of_a_volume_without_a_host_directory_is_refused_naming_the_field() -> None:
    tpl = template(
        [claim(), empty()],
        [
            VolumeMount(name="scratch", mount_path="/tmp/x"),
            VolumeMount(name="data", mount_path="/data", sub_path="sub"),
        ],
    )
    with pytest.raises(VolumeRefused) as refused:
        plan_mounts(placed("web-a1", tpl), CLUSTER_ID, *served(attachment(host_path="")))
    assert "`volumeMounts[1].subPath` 'sub'" in str(refused.value)
    assert "volume pv-data (claim data)" in str(refused.value)
    assert "subpath" in str(refused.value)
    on_empty_dir = template([empty()], [VolumeMount(name="scratch", mount_path="/s", sub_path="x")])
    with pytest.raises(VolumeRefused, match=r"`volumeMounts\[0\].subPath`.*emptyDir scratch"):
        plan_mounts(placed("web-a1", on_empty_dir), CLUSTER_ID, *served())


def test_an_empty_dir_is_a_labelled_docker_volume_of_the_replica() -> None:
    tpl = template([empty()], [VolumeMount(name="scratch", mount_path="/scratch")])
    plan = plan_mounts(placed("web-a1", tpl), CLUSTER_ID, *served())
    assert docker_mounts(plan.mounts) == [
        {
            "Type": "volume",
            "Source": names.empty_dir_volume_name("web-a1", "scratch", CLUSTER_ID),
            "Target": "/scratch",
            "ReadOnly": False,
            "VolumeOptions": {
                "Labels": {
                    names.LABEL_MANAGED: "true",
                    names.LABEL_CLUSTER: CLUSTER_ID,
                    names.LABEL_NODE: NODE,
                    names.LABEL_REPLICA: "web-a1",
                },
                "DriverConfig": {"Name": "local", "Options": {}},
            },
        }
    ]
    assert plan.claims == ()


def test_a_memory_empty_dir_is_a_tmpfs_of_its_size_limit() -> None:
    sized = template([empty(medium="Memory", size="64Mi")], [VolumeMount("scratch", "/m")])
    (mount,) = docker_mounts(plan_mounts(placed("web-a1", sized), CLUSTER_ID, *served()).mounts)
    assert mount["VolumeOptions"]["DriverConfig"] == {  # type: ignore[index]
        "Name": "local",
        "Options": {"type": "tmpfs", "device": "tmpfs", "o": "size=67108864"},
    }
    unsized = template([empty(medium="Memory")], [VolumeMount("scratch", "/m")])
    (mount,) = docker_mounts(plan_mounts(placed("web-a1", unsized), CLUSTER_ID, *served()).mounts)
    assert mount["VolumeOptions"]["DriverConfig"]["Options"] == {  # type: ignore[index]
        "type": "tmpfs",
        "device": "tmpfs",
    }


def test_a_claim_not_bound_waits_to_be_bound_and_a_bound_one_for_its_volume() -> None:
    tpl = template([claim()], [VolumeMount(name="data", mount_path="/data")])
    with pytest.raises(VolumeNotReady) as waiting:
        plan_mounts(placed("web-a1", tpl), CLUSTER_ID, *served(attachment(), unbound=True))
    assert str(waiting.value) == "waiting for claim data to be bound"
    pending = ClaimStatus(name="data", phase="Pending", volume=PV)
    with pytest.raises(VolumeNotReady, match="waiting for claim data to be bound"):
        plan_mounts(placed("web-a1", tpl), CLUSTER_ID, *served(attachment(), status=pending))
    with pytest.raises(VolumeNotReady) as waiting:
        plan_mounts(placed("web-a1", tpl), CLUSTER_ID, *served())
    assert str(waiting.value) == "waiting for volume pv-data on this node"
    with pytest.raises(VolumeNotReady) as waiting:
        plan_mounts(placed("web-a1", tpl), CLUSTER_ID, *served(attachment(ready=False)))
    assert str(waiting.value) == "waiting for volume pv-data on this node"
    assert is_volume_wait(str(waiting.value))
    # The same claim name in another namespace is another claim.
    other = msgspec.structs.replace(attachment(), claim="team.data")
    with pytest.raises(VolumeNotReady, match="waiting for volume pv-data on this node"):
        plan_mounts(placed("web-a1", tpl), CLUSTER_ID, *served(other))


def test_a_released_volumes_attachment_naming_the_claim_never_serves_a_new_claim() -> None:
    # my-pvc deleted (Retain: pv-data Released, its attachment still names the claim and
    # is ready), then made again: the new claim is Bound to pv-new.
    tpl = template([claim()], [VolumeMount(name="data", mount_path="/data")])
    old = attachment()
    with pytest.raises(VolumeNotReady) as waiting:
        plan_mounts(placed("web-a1", tpl), CLUSTER_ID, *served(old, status=bound("pv-new")))
    assert str(waiting.value) == "waiting for volume pv-new on this node"
    # pv-new's own attachment, once it names the claim, is the one mounted.
    new = msgspec.structs.replace(
        attachment(), volume="pv-new", docker_volume=names.docker_volume_name("pv-new", "c")
    )
    plan = plan_mounts(placed("web-a1", tpl), CLUSTER_ID, *served(old, new, status=bound("pv-new")))
    assert [m.source for m in plan.mounts] == [new.docker_volume]
    assert plan.volumes == ("pv-new",)
    # An attachment at the volume's key naming no claim (Released) or another claim, or
    # naming another volume, serves nothing.
    for wrong in (
        msgspec.structs.replace(new, claim=""),
        msgspec.structs.replace(new, claim="default.other"),
    ):
        with pytest.raises(VolumeNotReady, match="waiting for volume pv-new on this node"):
            plan_mounts(placed("web-a1", tpl), CLUSTER_ID, *served(wrong, status=bound("pv-new")))
    misfiled = {names.attachment_key(NODE, "pv-new"): old}.get
    with pytest.raises(VolumeNotReady, match="waiting for volume pv-new on this node"):
        plan_mounts(
            placed("web-a1", tpl), CLUSTER_ID, {"default.data": bound("pv-new")}.get, misfiled
        )


def test_a_template_without_volumes_keeps_its_hash_and_its_create_body() -> None:
    tpl = ContainerTemplate(image=IMAGE)
    assert b"volume" not in msgspec.json.encode(tpl)
    assert tpl.template_hash() == template().template_hash()
    body = container_config(container_spec(placed("web-a1", tpl), CLUSTER_ID))
    assert body["HostConfig"] == {"RestartPolicy": {"Name": "no"}}
    assert not any(label.startswith(names.LABEL_USES_VOLUME_PREFIX) for label in body["Labels"])


def test_a_container_carries_one_label_per_volume_it_uses_and_keeps_its_template_hash() -> None:
    p = placed("web-a1", with_claim())
    plain = container_spec(p, CLUSTER_ID)
    spec = container_spec(p, CLUSTER_ID, uses_volumes=("pv-data", "pv-logs"))
    assert spec.labels == {
        **plain.labels,
        names.uses_volume_label("pv-data"): "1",
        names.uses_volume_label("pv-logs"): "1",
    }
    assert spec.labels[names.LABEL_TEMPLATE_HASH] == p.template_hash == with_claim().template_hash()


def test_the_create_body_carries_the_mounts() -> None:
    mount = Mount("volume", DOCKER_VOLUME, "/data", read_only=True)
    spec = ContainerSpec(name="c", image=IMAGE, mounts=(mount,))
    assert container_config(spec)["HostConfig"]["Mounts"] == [
        {"Type": "volume", "Source": DOCKER_VOLUME, "Target": "/data", "ReadOnly": True}
    ]


def test_inspect_tells_the_docker_volumes_a_container_mounts() -> None:
    observed = observed_from_inspect(
        {
            "Id": "abc",
            "State": {"Status": "running"},
            "Mounts": [
                {"Type": "volume", "Name": "corral_empty_web-a1_scratch_c1", "Destination": "/s"},
                {"Type": "bind", "Source": "/srv/x", "Destination": "/x"},
            ],
        }
    )
    assert observed.volumes == ("corral_empty_web-a1_scratch_c1",)


def test_an_empty_dir_volume_name_maps_back_to_its_replica_in_its_cluster_only() -> None:
    name = names.empty_dir_volume_name("web-a1", "scratch", CLUSTER_ID)
    assert empty_dir_replica(name, CLUSTER_ID) == "web-a1"
    assert empty_dir_replica(name, "other") is None
    assert empty_dir_replica(names.docker_volume_name("pv", CLUSTER_ID), CLUSTER_ID) is None


def test_a_replicas_empty_dirs_go_with_its_last_container_never_with_a_duplicate() -> None:
    scratch = names.empty_dir_volume_name("web-a1", "scratch", CLUSTER_ID)
    mine = dataclasses.replace(container("web-a1"), volumes=(scratch, DOCKER_VOLUME))
    plan = plan_actions({}, [mine], {}, set(), 0.0)
    assert plan.actions == [
        RemoveContainers(
            "web-a1",
            "web",
            ("id-web-a1",),
            "not placed on this node",
            volumes=(scratch,),
            graceful=(mine,),
        )
    ]
    stopping = remove_all([mine], {}, set(), "node stopping", 0.0)
    assert stopping.actions[0].volumes == (scratch,)  # type: ignore[union-attr]
    twin = dataclasses.replace(mine, id="id-twin", started_at=50.0)
    placement = placed("web-a1", ContainerTemplate(image=IMAGE))
    assert placement.template_hash == mine.template_hash
    plan = plan_actions({"web-a1": placement}, [mine, twin], {}, set(), 0.0)
    assert plan.actions == [RemoveContainers("web-a1", "web", ("id-twin",), "duplicate container")]


# --- the whole agent on the hollow runtime -----------------------------------------------


class CountingRuntime(HollowRuntime):
    """Counts the volume calls the agent makes."""

    def __init__(self, **given: Any) -> None:
        super().__init__(**given)
        self.volume_calls: list[str] = []

    async def volume_exists(self, name: str) -> bool:
        self.volume_calls.append(f"exists {name}")
        return await super().volume_exists(name)

    async def volume_users(self, name: str) -> list[VolumeUser]:
        self.volume_calls.append(f"users {name}")
        return await super().volume_users(name)

    async def labelled_users(self, label: str) -> list[VolumeUser]:
        self.volume_calls.append(f"labelled {label}")
        return await super().labelled_users(label)

    async def sub_path_source(self, host_path: str, sub_path: str) -> str:
        self.volume_calls.append(f"subpath {host_path} {sub_path}")
        return await super().sub_path_source(host_path, sub_path)


class HostRuntime(CountingRuntime):
    """Resolves subPaths on the real host, as the Docker runtime does."""

    async def sub_path_source(self, host_path: str, sub_path: str) -> str:
        self.volume_calls.append(f"subpath {host_path} {sub_path}")
        return resolve_sub_path(host_path, sub_path)


class WatchedBucket(MemoryBucket):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.watched: list[str] = []

    def watch(self, prefix: str = ">"):  # type: ignore[no-untyped-def]
        self.watched.append(prefix)
        return super().watch(prefix)


@dataclass
class World:
    runtime: CountingRuntime = field(default_factory=lambda: CountingRuntime(images={IMAGE}))
    placements: MemoryBucket = field(default_factory=lambda: MemoryBucket("placements"))
    statuses: MemoryBucket = field(default_factory=lambda: MemoryBucket("statuses"))
    attachments: WatchedBucket = field(
        default_factory=lambda: WatchedBucket(names.VOLUME_ATTACHMENTS_BUCKET)
    )
    claims: WatchedBucket = field(default_factory=lambda: WatchedBucket(names.CLAIM_STATUS_BUCKET))
    events: RecordedEvents = field(default_factory=RecordedEvents)

    def status(self, replica: str) -> ReplicaStatus | None:
        entry = self.statuses.items.get(names.placement_key(NODE, "default", replica))
        return None if entry is None or entry.value is None else decode(entry.value, ReplicaStatus)

    def state(self, replica: str) -> ReplicaState | None:
        status = self.status(replica)
        return None if status is None else status.state

    def message(self, replica: str) -> str:
        status = self.status(replica)
        return "" if status is None else status.message

    async def place(self, p: Placement) -> None:
        await self.placements.put(p.key, encode(p))

    async def attach(self, found: VolumeAttachment) -> None:
        await self.attachments.put(names.attachment_key(found.node, found.volume), encode(found))

    async def bind(self, status: ClaimStatus | None = None) -> None:
        """volmgr bound claim default.data (to PV unless told)."""
        await self.claims.put("default.data", encode(status or bound()))


@asynccontextmanager
async def agent_of(world: World) -> AsyncIterator[NodeAgent]:
    agent = NodeAgent(
        fast_settings(),
        world.runtime,
        placements=world.placements,
        nodes=MemoryBucket("nodes"),
        statuses=world.statuses,
        cluster=cluster_bucket(),
        events=world.events,
        attachments=world.attachments,
        claim_statuses=world.claims,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(agent.run)
        yield agent
        tg.cancel_scope.cancel()


def with_claim() -> ContainerTemplate:
    return template(
        [claim(), empty()],
        [VolumeMount(name="data", mount_path="/data"), VolumeMount("scratch", "/scratch")],
    )


async def test_a_replica_waits_for_its_claim_then_its_volume_then_starts_with_its_mounts() -> None:
    world = World()
    async with agent_of(world):
        await world.place(placed("web-a1", with_claim()))
        await eventually(lambda: world.message("web-a1") == "waiting for claim data to be bound")
        assert world.state("web-a1") == ReplicaState.CREATING
        assert "VolumeNotReady" in world.events.reasons()
        await world.bind()
        await world.attach(attachment(ready=False))
        await eventually(
            lambda: world.message("web-a1") == "waiting for volume pv-data on this node"
        )
        assert world.state("web-a1") == ReplicaState.CREATING
        seen: set[ReplicaState] = set()

        def running() -> bool:
            state = world.state("web-a1")
            if state is not None:
                seen.add(state)
            return state == ReplicaState.RUNNING

        await world.attach(attachment())
        await eventually(running, within=5.0)
    assert ReplicaState.FAILED not in seen
    assert world.runtime.creates == 1  # nothing was made while it waited
    (made,) = world.runtime.containers.values()
    scratch = names.empty_dir_volume_name("web-a1", "scratch", CLUSTER_ID)
    assert [(m.kind, m.source, m.target) for m in made.spec.mounts] == [
        ("volume", DOCKER_VOLUME, "/data"),
        ("volume", scratch, "/scratch"),
    ]
    assert made.spec.labels[names.uses_volume_label(PV)] == "1"
    assert world.attachments.watched == [names.placement_prefix(NODE)]  # its own node only


async def test_an_attachment_appearing_cuts_the_waiting_replicas_back_off_short() -> None:
    world = World()
    async with agent_of(world) as agent:
        await world.bind()
        await world.place(placed("web-a1", with_claim()))
        await eventually(lambda: world.state("web-a1") == ReplicaState.CREATING)
        await eventually(lambda: "web-a1" in agent.tracks and agent.tracks["web-a1"].failures > 0)
        # As after many tries: the next one would be a minute away.
        agent.tracks["web-a1"] = dataclasses.replace(
            agent.tracks["web-a1"], not_before=time.time() + 60
        )
        await world.attach(attachment())
        await eventually(lambda: world.state("web-a1") == ReplicaState.RUNNING, within=3.0)


async def test_a_claim_bound_after_its_attachment_was_written_starts_the_replica_at_once() -> None:
    world = World()
    async with agent_of(world) as agent:
        await world.attach(attachment())  # the node part was quicker than the claim's status
        await world.place(placed("web-a1", with_claim()))
        await eventually(lambda: world.message("web-a1") == "waiting for claim data to be bound")
        agent.tracks["web-a1"] = dataclasses.replace(  # as after many tries
            agent.tracks["web-a1"], not_before=time.time() + 60
        )
        await world.bind()
        await eventually(lambda: world.state("web-a1") == ReplicaState.RUNNING, within=3.0)
    assert world.claims.watched == ["default.>"]  # its replicas' namespace only


async def test_an_attachment_of_another_node_serves_nothing_here() -> None:
    world = World()
    async with agent_of(world):
        await world.bind()
        await world.attach(msgspec.structs.replace(attachment(), node="node-b"))
        await world.place(placed("web-a1", with_claim()))
        await eventually(
            lambda: world.message("web-a1") == "waiting for volume pv-data on this node"
        )


async def test_a_released_volumes_attachment_is_not_used_for_a_new_claim_of_the_same_name() -> None:
    world = World()
    old = msgspec.structs.replace(
        attachment(), volume="pv-old", docker_volume=names.docker_volume_name("pv-old", CLUSTER_ID)
    )
    async with agent_of(world):
        await world.attach(old)  # Released, still naming default.data, ready
        await world.bind(bound(PV))  # the new claim data is Bound to another volume
        await world.place(placed("web-a1", with_claim()))
        await eventually(
            lambda: world.message("web-a1") == "waiting for volume pv-data on this node"
        )
        assert world.runtime.creates == 0  # never started on the old volume's data
        await world.attach(attachment())
        await eventually(lambda: world.state("web-a1") == ReplicaState.RUNNING)
    (made,) = world.runtime.containers.values()
    assert made.spec.mounts[0].source == DOCKER_VOLUME
    assert names.uses_volume_label("pv-old") not in made.spec.labels


async def test_a_claims_docker_volume_missing_from_the_engine_is_waited_for() -> None:
    world = World()
    world.runtime.missing_volumes.add(DOCKER_VOLUME)
    async with agent_of(world):
        await world.bind()
        await world.attach(attachment())
        await world.place(placed("web-a1", with_claim()))
        await eventually(lambda: world.message("web-a1").startswith("waiting for volume pv-data"))
        assert DOCKER_VOLUME in world.message("web-a1")
    assert world.runtime.creates == 0


async def test_a_subpath_on_a_docker_volume_fails_the_replica_naming_the_field() -> None:
    world = World()
    tpl = template([claim()], [VolumeMount(name="data", mount_path="/d", sub_path="x")])
    async with agent_of(world):
        await world.bind()
        await world.attach(attachment())
        await world.place(placed("web-a1", tpl))
        await eventually(lambda: world.state("web-a1") == ReplicaState.FAILED)
    assert "`volumeMounts[0].subPath`" in world.message("web-a1")
    assert "FailedMount" in world.events.reasons()


async def test_a_subpath_directory_is_made_before_the_create() -> None:
    world = World()
    tpl = template([claim()], [VolumeMount(name="data", mount_path="/d", sub_path="a/b")])
    async with agent_of(world):
        await world.bind()
        await world.attach(attachment(host_path="/srv/pv-data"))
        await world.place(placed("web-a1", tpl))
        await eventually(lambda: world.state("web-a1") == ReplicaState.RUNNING)
    assert world.runtime.directories == ["/srv/pv-data/a/b"]
    (made,) = world.runtime.containers.values()
    assert [(m.kind, m.source) for m in made.spec.mounts] == [("bind", "/srv/pv-data/a/b")]
    # Held through a bind only, the volume is still labelled on the container.
    assert made.spec.labels[names.uses_volume_label(PV)] == "1"


async def test_a_subpath_through_a_symlink_is_refused_and_no_container_is_made(
    tmp_path: Path,
) -> None:
    volume_dir, outside = tmp_path / "pv-data", tmp_path / "outside"
    volume_dir.mkdir()
    outside.mkdir()
    (volume_dir / "x").symlink_to(outside)  # what a replica's `ln -s` leaves in its volume
    world = World(runtime=HostRuntime(images={IMAGE}))
    tpl = template([claim()], [VolumeMount(name="data", mount_path="/d", sub_path="x/logs")])
    async with agent_of(world):
        await world.bind()
        await world.attach(attachment(host_path=str(volume_dir)))
        await world.place(placed("web-a1", tpl))
        await eventually(lambda: world.state("web-a1") == ReplicaState.FAILED)
        message = world.message("web-a1")
        assert message.startswith("`volumeMounts[0].subPath` 'x/logs': ")
        assert "symbolic link" in message
        assert world.runtime.creates == 0
        assert list(outside.iterdir()) == []  # nothing made through the link
        assert "FailedMount" in world.events.reasons()
        # Bad data, not bad input: tried again on the back-off, and once the link is
        # gone the replica starts, bound to the real directory.
        (volume_dir / "x").unlink()
        await eventually(lambda: world.state("web-a1") == ReplicaState.RUNNING, within=10.0)
    (made,) = world.runtime.containers.values()
    assert made.spec.mounts[0].source == str((volume_dir / "x" / "logs").resolve())
    assert (volume_dir / "x" / "logs").is_dir()


async def rwop(world: World) -> None:
    status = ClaimStatus(name="data", phase="Bound", volume=PV, access_modes=["ReadWriteOncePod"])
    await world.claims.put("default.data", encode(status))


async def test_a_read_write_once_pod_claim_waits_while_another_container_holds_its_volume() -> None:
    world = World()
    await rwop(world)
    holder = await world.runtime.create_container(
        ContainerSpec(
            name=container_name(CLUSTER_ID, NODE, "old-x1"),
            image=IMAGE,
            # Not io.corral.managed: the agent leaves it alone, but hears of it.
            labels={
                names.LABEL_CLUSTER: CLUSTER_ID,
                names.LABEL_NODE: NODE,
                names.LABEL_REPLICA: "old-x1",
            },
            mounts=(Mount("volume", DOCKER_VOLUME, "/data"),),
        )
    )
    async with agent_of(world) as agent:
        await world.attach(attachment())
        await world.place(placed("web-a1", with_claim()))
        holder_name = container_name(CLUSTER_ID, NODE, "old-x1")
        held = f"volume pv-data is still used by container {holder_name}"
        await eventually(lambda: world.message("web-a1") == held)
        assert world.state("web-a1") == ReplicaState.CREATING
        agent.tracks["web-a1"] = dataclasses.replace(  # as after many tries
            agent.tracks["web-a1"], not_before=time.time() + 60
        )
        world.runtime.remove_behind_back(holder)  # the engine tells the agent it went
        await eventually(lambda: world.state("web-a1") == ReplicaState.RUNNING, within=3.0)


async def test_a_read_write_once_pod_claim_waits_while_a_container_binds_a_subpath_of_it() -> None:
    # The holder binds <hostPath>/logs: Docker's volume filter never sees it; the label
    # the agent puts on every container using the volume does.
    world = World()
    await rwop(world)
    holder = await world.runtime.create_container(
        ContainerSpec(
            name=container_name(CLUSTER_ID, NODE, "old-x1"),
            image=IMAGE,
            labels={
                names.LABEL_CLUSTER: CLUSTER_ID,
                names.LABEL_NODE: NODE,
                names.LABEL_REPLICA: "old-x1",
                names.uses_volume_label(PV): "1",
            },
            mounts=(Mount("bind", "/srv/pv-data/logs", "/logs"),),
        )
    )
    assert await world.runtime.volume_users(DOCKER_VOLUME) == []
    async with agent_of(world) as agent:
        await world.attach(attachment(host_path="/srv/pv-data"))
        await world.place(placed("web-a1", with_claim()))
        holder_name = container_name(CLUSTER_ID, NODE, "old-x1")
        held = f"volume pv-data is still used by container {holder_name}"
        await eventually(lambda: world.message("web-a1") == held)
        assert world.state("web-a1") == ReplicaState.CREATING
        assert world.runtime.creates == 1  # the holder only
        agent.tracks["web-a1"] = dataclasses.replace(
            agent.tracks["web-a1"], not_before=time.time() + 60
        )
        world.runtime.remove_behind_back(holder)
        await eventually(lambda: world.state("web-a1") == ReplicaState.RUNNING, within=3.0)


async def test_a_read_write_once_claim_is_not_checked_on_the_engine() -> None:
    world = World()
    async with agent_of(world):
        await world.bind()
        await world.attach(attachment())
        await world.place(placed("web-a1", with_claim()))
        await eventually(lambda: world.state("web-a1") == ReplicaState.RUNNING)
    assert world.runtime.volume_calls == [f"exists {DOCKER_VOLUME}"]


async def test_a_replica_without_volumes_makes_no_volume_call_and_no_attachment_watch() -> None:
    world = World()
    async with agent_of(world) as agent:
        await world.place(placed("web-a1", ContainerTemplate(image=IMAGE)))
        await eventually(lambda: world.state("web-a1") == ReplicaState.RUNNING)
        assert not agent.volumes.watching
    assert world.runtime.volume_calls == []
    assert world.attachments.watched == []
    assert world.claims.watched == []


async def test_an_empty_dir_goes_right_after_its_replicas_container() -> None:
    world = World()
    tpl = template([empty(medium="Memory", size="1Mi")], [VolumeMount("scratch", "/s")])
    scratch = names.empty_dir_volume_name("web-a1", "scratch", CLUSTER_ID)
    async with agent_of(world):
        p = placed("web-a1", tpl)
        await world.place(p)
        await eventually(lambda: world.state("web-a1") == ReplicaState.RUNNING)
        assert scratch in world.runtime.volumes
        assert world.runtime.volumes[scratch][names.LABEL_REPLICA] == "web-a1"
        assert world.attachments.watched == []  # no claim: no attachment to wait for
        await world.placements.delete(p.key)
        await eventually(lambda: not world.runtime.containers)
        await eventually(lambda: scratch not in world.runtime.volumes)


async def test_leftover_empty_dirs_of_this_cluster_and_node_go_at_start() -> None:
    world = World()
    labels = {
        names.LABEL_MANAGED: "true",
        names.LABEL_CLUSTER: CLUSTER_ID,
        names.LABEL_NODE: NODE,
    }
    gone = names.empty_dir_volume_name("old-x1", "scratch", CLUSTER_ID)
    placed_one = names.empty_dir_volume_name("web-a1", "scratch", CLUSTER_ID)
    other_cluster = names.empty_dir_volume_name("old-x1", "scratch", "c2c2c2c2c2c2c2c2")
    world.runtime.volumes = {
        gone: labels,
        placed_one: labels,
        other_cluster: {**labels, names.LABEL_CLUSTER: "c2c2c2c2c2c2c2c2"},
    }
    tpl = template([empty()], [VolumeMount("scratch", "/s")])
    await world.place(placed("web-a1", tpl))
    async with agent_of(world):
        await eventually(lambda: gone not in world.runtime.volumes)
        await eventually(lambda: world.state("web-a1") == ReplicaState.RUNNING)
    assert set(world.runtime.volumes) == {placed_one, other_cluster}


# --- a subPath on the host (the Docker runtime's resolution) ------------------------------


def test_a_subpath_is_made_one_directory_at_a_time_and_its_real_path_returned(
    tmp_path: Path,
) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    through_link = tmp_path / "link"
    through_link.symlink_to(real_dir)  # the volume's own path may be reached via a link
    found = resolve_sub_path(str(through_link), "a/b/")
    assert found == str(real_dir / "a" / "b")
    assert (real_dir / "a" / "b").is_dir()
    assert (os.stat(real_dir / "a").st_mode & 0o777) == 0o755 & ~current_umask()
    assert resolve_sub_path(str(real_dir), "a/./b") == found  # made already: the same


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("sub_path", ["x", "x/logs", "a/x"])
def test_a_subpath_with_a_symlink_component_is_refused_and_nothing_made_through_it(
    tmp_path: Path, sub_path: str
) -> None:
    volume_dir, outside = tmp_path / "pv", tmp_path / "outside"
    (volume_dir / "a").mkdir(parents=True)
    outside.mkdir()
    (volume_dir / "x").symlink_to(outside)
    (volume_dir / "a" / "x").symlink_to("../../outside")
    with pytest.raises(VolumeRefused, match="is a symbolic link"):
        resolve_sub_path(str(volume_dir), sub_path)
    assert list(outside.iterdir()) == []


def test_a_subpath_through_a_file_or_with_dot_dot_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(VolumeRefused, match="is not a directory"):
        resolve_sub_path(str(tmp_path), "f/sub")
    with pytest.raises(VolumeRefused, match=r"without '\.\.'"):
        resolve_sub_path(str(tmp_path), "a/../../etc")
