"""corral-scheduler: owns Deployments; places their replicas on Ready nodes."""

from __future__ import annotations

import argparse
import enum
from functools import partial
from typing import Final

import anyio
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from corral.contract import names
from corral.natsio.bus import (
    bucket_stream,
    consume_spec_stream,
    keep_leaders_elsewhere,
    keep_purging_delete_markers,
    serve_spec_requests,
    spec_stream_position,
)
from corral.natsio.config import resolve_nats_url
from corral.natsio.gc_policy import GcPolicy, log_long_pauses
from corral.natsio.key_migration import SCHEDULER_BUCKETS, move_legacy_keys
from corral.natsio.kv import NatsBucket
from corral.natsio.request_thread import serve_in_thread
from corral.natsio.service import ServiceContext, base_parser, service_main
from corral_scheduler.control_loop import DECIDE_IN, ControlLoop, DecideIn
from corral_scheduler.deployment_api import KIND, DeploymentAPI
from corral_scheduler.node_api import KIND as NODE_KIND
from corral_scheduler.node_api import NodeAPI

DEFAULT_PORT = 9101


class AnswerIn(enum.Enum):
    """Where Deployment requests (apply, scale, delete) and node heartbeats are
    answered: on the event loop that reconciles, or on threads with their own loops and
    NATS connections (corral.natsio.request_thread; services/scheduler/README.md)."""

    LOOP = "loop"
    THREAD = "thread"


ANSWER_IN: Final = AnswerIn.THREAD
DURABLE = "scheduler-deployment"  # the scheduler's durable consumer of Deployment specs
# The buckets whose Raft leaders the scheduler keeps off its own NATS server: those it
# writes or watches (netmgr's other buckets are netmgr's to look after), and every
# shard of the placements (names.placements_buckets).
LED_BUCKETS: Final = (
    names.DEPLOYMENTS_BUCKET,
    names.DEPLOYMENT_STATUS_BUCKET,
    names.NODES_BUCKET,
    names.REPLICA_STATUS_BUCKET,
    names.LEASES_BUCKET,
    names.CLUSTER_BUCKET,
    names.NETWORKS_BUCKET,
)


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("scheduler", DEFAULT_PORT)
    parser.add_argument(
        "--decide-in",
        choices=[mode.value for mode in DecideIn],
        default=DECIDE_IN.value,
        help="where each Deployment's decision runs: in the event loop that answers "
        f"requests, or in a worker thread on copies of its inputs (default {DECIDE_IN.value})",
    )
    parser.add_argument(
        "--answer-in",
        choices=[mode.value for mode in AnswerIn],
        default=ANSWER_IN.value,
        help="where Deployment requests and node heartbeats are answered: on threads with "
        "their own event loops and NATS connections, so they never wait on reconciling, or "
        f"on the loop that reconciles (default {ANSWER_IN.value})",
    )
    parser.add_argument(
        "--python-gc",
        action="store_true",
        help="leave garbage collection to Python's defaults (no freezing of long-lived "
        "objects; corral.natsio.gc_policy): for comparisons",
    )
    return parser


async def run(
    ctx: ServiceContext,
    args: argparse.Namespace,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    # Records stored before keys carried the namespace move first, before any of
    # them is acted on (corral.natsio.key_migration).
    for bucket, form in SCHEDULER_BUCKETS.items():
        if bucket in ctx.buckets:  # corral_placements: not in a cluster of shards
            await move_legacy_keys(ctx.buckets[bucket], form)
    threads = AnswerIn(args.answer_in) is AnswerIn.THREAD
    log_long_pauses()  # the one pause left, or any under --python-gc, shows in the log
    loop = ControlLoop(
        dict(ctx.buckets),
        ctx.events,
        nc=ctx.nc,
        heartbeats_url=resolve_nats_url(args.nats) if threads else None,
        decide_in=DecideIn(args.decide_in),
        gc_policy=None if args.python_gc else GcPolicy(),
        placement_shards=ctx.cluster.placement_shards,
    )
    await ctx.task_group.start(loop.run)
    leases = ctx.buckets[names.LEASES_BUCKET]
    api = DeploymentAPI(
        ctx.buckets[names.DEPLOYMENTS_BUCKET],
        progress=leases,
        spec_position=partial(spec_stream_position, ctx.js, KIND),
        exclusive_claim=loop.exclusive_claim,
    )
    if loop.rollbacks is not None:  # an automatic rollback stores specs as the API does
        loop.rollbacks.store = api.update
    handlers = api.handlers()
    # The durable consumer first: a Deployment written by request before it exists
    # would make a first start look like a consumer lost with its progress record.
    await ctx.task_group.start(
        partial(
            consume_spec_stream,
            ctx.js,
            KIND,
            handlers,
            ctx.events,
            durable=DURABLE,
            progress=leases,
            objects_bucket=names.DEPLOYMENTS_BUCKET,
        )
    )
    if threads:

        async def answer_deployments(
            nc: NATS,
            js: JetStreamContext,
            *,
            task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
        ) -> None:
            # The thread's own connection and buckets; of the loop's state only the
            # claims' lookups (exclusive_claim reads by key, never iterates).
            own = {
                bucket: NatsBucket(await js.key_value(bucket), bucket)
                for bucket in (names.DEPLOYMENTS_BUCKET, names.LEASES_BUCKET)
            }
            thread_api = DeploymentAPI(
                own[names.DEPLOYMENTS_BUCKET],
                progress=own[names.LEASES_BUCKET],
                spec_position=partial(spec_stream_position, js, KIND),
                exclusive_claim=loop.exclusive_claim,
            )
            await serve_spec_requests(
                nc, KIND, thread_api.handlers(), queue="scheduler", task_status=task_status
            )

        await ctx.task_group.start(
            partial(
                serve_in_thread,
                resolve_nats_url(args.nats),
                f"corral-{ctx.name}-requests",
                answer_deployments,
            )
        )
    else:
        await ctx.task_group.start(
            partial(serve_spec_requests, ctx.nc, KIND, handlers, queue="scheduler")
        )
    await ctx.task_group.start(
        partial(
            serve_spec_requests,
            ctx.nc,
            NODE_KIND,
            NodeAPI(loop, ctx.events).handlers(),
            queue="scheduler",
        )
    )
    # Delete markers older than their retention go, so watches replay a bounded history.
    ctx.task_group.start_soon(keep_purging_delete_markers, ctx.js, tuple(ctx.buckets))
    # The Raft leaders of what the scheduler writes stay off the NATS server it is
    # connected to: that server's death then costs a reconnect, not an election.
    ctx.task_group.start_soon(
        partial(
            keep_leaders_elsewhere,
            ctx.nc,
            ctx.js,
            [
                names.SPEC_STREAM,
                *(bucket_stream(bucket) for bucket in LED_BUCKETS),
                *(
                    bucket_stream(bucket)
                    for bucket in names.placements_buckets(ctx.cluster.placement_shards)
                ),
            ],
            [(names.SPEC_STREAM, DURABLE)],
        )
    )
    ctx.health["control_loop"] = True
    task_status.started()


def main() -> None:
    service_main("scheduler", build_parser(), run)


if __name__ == "__main__":
    main()
