"""What many decoded records hold alike is held once in a process
(corral.contract.sharing): placements of one Deployment revision hold one template, a
replica's records one copy of each name; and the scheduler holds the placements it
wrote as the objects it wrote, not decoded again."""

from __future__ import annotations

from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.sharing import (
    ENDPOINTS_TEMPLATES,
    TEMPLATES,
    TemplatePool,
    intern_replica_names,
)
from corral.contract.specs import (
    ContainerPort,
    ContainerTemplate,
    Deployment,
    DeploymentSpec,
    HTTPGetAction,
    ObjectMeta,
    Probe,
    ResourceList,
    Resources,
)
from corral.contract.state import Placement, ReplicaState, ReplicaStatus
from corral.contract.views import ClaimsPlacement, EndpointsPlacement, EndpointsStatus
from corral.natsio.cluster import cluster_buckets
from corral.natsio.kv import Entry, MemoryBucket, Mirror
from corral.natsio.sharded import ShardedMirror
from tests.unit.test_scheduler_control_loop import placed_and_running, running

TEMPLATE = ContainerTemplate(
    image="registry.local:5000/web:1.4",
    args=["--listen", ":8080"],
    env={"LOG_LEVEL": "info"},
    resources=Resources(requests=ResourceList(cpu="100m", memory="64Mi")),
    labels={"app": "web", "tier": "front"},
    ports=[ContainerPort(container_port=8080, name="http")],
    readiness_probe=Probe(http_get=HTTPGetAction(port="http", path="/healthz")),
)


def stored(replica: str, deployment: str = "web", template: ContainerTemplate = TEMPLATE) -> bytes:
    """A placement as the store holds it."""
    return encode(
        Placement(
            replica=replica,
            deployment=deployment,
            node=f"node-{replica}",
            template=template,
            template_hash=template.template_hash(),
            generation=1,
        )
    )


def test_placements_of_one_revision_decoded_apart_hold_one_template() -> None:
    pool = TemplatePool()
    held = [pool.share(decode(stored(f"web-{i}"), Placement)) for i in range(5)]
    assert all(p.template is held[0].template for p in held)
    assert held[0].template == TEMPLATE and pool.shared == 4 and len(pool) == 1
    other = pool.share(decode(stored("db-1", deployment="db"), Placement))
    assert other.template is not held[0].template  # another Deployment: its own entry
    assert len(pool) == 2


def test_decoded_records_hold_one_copy_of_each_name() -> None:
    pool = TemplatePool()
    first, second = (pool.share(decode(stored(f"web-{i}"), Placement)) for i in (1, 2))
    assert first.deployment is second.deployment and first.namespace is second.namespace
    assert first.template_hash is second.template_hash
    statuses = [
        intern_replica_names(
            decode(
                encode(
                    ReplicaStatus(
                        replica=f"web-{i}",
                        deployment="web",
                        node="node-1",
                        state=ReplicaState.RUNNING,
                        template_hash=TEMPLATE.template_hash(),
                    )
                ),
                ReplicaStatus,
            )
        )
        for i in (1, 2)
    ]
    for name in ("deployment", "node", "namespace", "template_hash"):
        assert getattr(statuses[0], name) is getattr(statuses[1], name)
        assert getattr(statuses[0], name) is getattr(first, name) or name == "node"
    assert statuses[0].replica == "web-1" and statuses[1].replica == "web-2"  # their own


def test_views_hold_one_template_a_revision_and_one_copy_of_the_names_they_have() -> None:
    pool: TemplatePool[EndpointsPlacement] = TemplatePool()
    first, second = (pool.share(decode(stored(f"web-{i}"), EndpointsPlacement)) for i in (1, 2))
    assert first.template is second.template and first.template.labels == TEMPLATE.labels
    assert first.deployment is second.deployment and first.template_hash is second.template_hash
    claims = [intern_replica_names(decode(stored(f"web-{i}"), ClaimsPlacement)) for i in (1, 2)]
    assert claims[0].namespace is claims[1].namespace  # no deployment field: not asked for
    status = ReplicaStatus(
        replica="web-1", deployment="web", node="n-1", state=ReplicaState.RUNNING
    )
    views = [intern_replica_names(decode(encode(status), EndpointsStatus)) for _ in (1, 2)]
    assert views[0].node is views[1].node and views[0].namespace is views[1].namespace


def test_netmgr_and_volmgr_hold_their_views_shared() -> None:
    from corral_netmgr.cluster_loop import Mirrors as NetMirrors
    from corral_volmgr.cluster_loop import Mirrors as VolMirrors

    buckets = {name: MemoryBucket(name) for name in cluster_buckets(2)}
    net = NetMirrors.of(buckets, placement_shards=2)
    assert all(shard.share == ENDPOINTS_TEMPLATES.share for shard in net.placements.shards)
    assert net.replica_statuses.share is intern_replica_names
    vol = VolMirrors.of(buckets, placement_shards=2)
    assert all(shard.share is intern_replica_names for shard in vol.placements.shards)


def test_a_template_that_differs_under_the_same_hash_keeps_its_own() -> None:
    pool = TemplatePool()
    first = pool.share(decode(stored("web-1"), Placement))
    forged = Placement(  # its hash names TEMPLATE, its template is another
        replica="web-2",
        deployment="web",
        node="n",
        template=ContainerTemplate(image="other:2"),
        template_hash=TEMPLATE.template_hash(),
        generation=1,
    )
    held = pool.share(decode(encode(forged), Placement))
    assert held.template == ContainerTemplate(image="other:2")
    assert first.template == TEMPLATE and pool.shared == 0


def test_a_sweep_drops_only_the_templates_nothing_else_holds() -> None:
    pool = TemplatePool(first_sweep=1000)
    kept = pool.share(decode(stored("web-1"), Placement))
    pool.share(decode(stored("gone-1", deployment="gone"), Placement))  # held by nothing
    pool.sweep()
    assert len(pool) == 1
    again = pool.share(decode(stored("web-2"), Placement))
    assert again.template is kept.template  # the one still held is still shared


def test_the_pool_sweeps_by_itself_once_it_has_doubled() -> None:
    pool = TemplatePool(first_sweep=4)
    for index in range(40):  # 40 revisions of as many Deployments, none held after
        pool.share(decode(stored(f"d{index}-1", deployment=f"d{index}"), Placement))
    assert len(pool) < 4


def test_a_mirror_given_the_pool_shares_what_it_decodes() -> None:
    bucket = MemoryBucket(names.PLACEMENTS_BUCKET)
    mirror = Mirror(bucket, Placement, share=TemplatePool().share)
    for revision, replica in enumerate(("web-1", "web-2", "web-3"), start=1):
        mirror.apply(Entry(f"node-{replica}.default.{replica}", stored(replica), revision))
    templates = {id(p.template) for p in mirror.values()}
    assert len(templates) == 1 and mirror.values()[0].template == TEMPLATE
    plain = Mirror(bucket, Placement)  # without one, each holds its copy
    for revision, replica in enumerate(("web-1", "web-2"), start=1):
        plain.apply(Entry(f"node-{replica}.default.{replica}", stored(replica), revision))
    assert len({id(p.template) for p in plain.values()}) == 2


def test_a_sharded_mirror_shares_in_every_shard() -> None:
    buckets = [MemoryBucket(name) for name in names.placements_buckets(2)]
    mirror = ShardedMirror(buckets, Placement, share=TemplatePool().share)
    for revision, index in enumerate(range(8), start=1):
        replica = f"web-{index}"
        mirror.apply(Entry(f"node-{replica}.default.{replica}", stored(replica), revision))
    assert len({mirror.shard(key) for key in mirror.items}) == 2  # both shards hold some
    assert len({id(value.template) for value, _ in mirror.items.values()}) == 1


def test_a_value_given_with_its_own_write_is_held_as_it_is() -> None:
    mirror = Mirror(MemoryBucket(names.PLACEMENTS_BUCKET), Placement)
    written = decode(stored("web-1"), Placement)
    # Bytes that would not decode: held as given, so not decoded.
    mirror.apply(Entry("node-web-1.default.web-1", b"not json", 1), value=written)
    assert mirror.get("node-web-1.default.web-1") is written
    assert not mirror.unreadable


def test_a_value_given_with_its_own_write_is_shared_too() -> None:
    mirror = Mirror(MemoryBucket(names.PLACEMENTS_BUCKET), Placement, share=TemplatePool().share)
    mirror.apply(Entry("node-web-1.default.web-1", stored("web-1"), 1))
    written = decode(stored("web-2"), Placement)
    mirror.apply(Entry("node-web-2.default.web-2", b"not json", 2), value=written)
    first, second = mirror.values()
    assert second is written and second.template is first.template


def test_sharing_that_fails_holds_the_value_as_decoded() -> None:
    def broken(placement: Placement) -> Placement:
        raise RuntimeError("a bug in sharing")

    mirror = Mirror(MemoryBucket(names.PLACEMENTS_BUCKET), Placement, share=broken)
    for revision, replica in enumerate(("web-1", "web-2"), start=1):
        key = f"node-{replica}.default.{replica}"
        mirror.apply(Entry(key, stored(replica), revision), from_watch=True)
        held = mirror.get(key)
        assert held is not None and held.template == TEMPLATE and not mirror.unreadable
    assert mirror.share_failures == 2  # counted; logged once


async def test_the_scheduler_holds_its_placements_as_stored_and_one_template_a_revision() -> None:
    async with running() as cluster:
        web = Deployment(
            metadata=ObjectMeta(name="web", generation=1),
            spec=DeploymentSpec(replicas=6, template=TEMPLATE),
        )
        await cluster.buckets[names.DEPLOYMENTS_BUCKET].put(web.key, encode(web))
        await placed_and_running(cluster, "a", "b")
        placements = cluster.loop.placements
        assert len(placements.items) == 6
        for key, (held, _) in placements.items.items():
            entry = await placements.shard(key).bucket.get(key)
            assert entry is not None and entry.value is not None
            assert decode(entry.value, Placement) == held  # what a decode would give
        assert len({id(p.template) for p in placements.values()}) == 1
        assert placements.shards[0].share == TEMPLATES.share
        assert cluster.loop.replica_statuses.share is intern_replica_names
