"""corral-node-agent: the entry point and flags of the node agent."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, TextIO

import anyio
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS

from corral.contract import names, time_budget
from corral.contract.codec import encode
from corral.contract.events import REASON_INTERNAL, Reply
from corral.natsio.bus import flush_subscriptions, unsubscribe_quietly
from corral.natsio.service import RefusedToStart, ServiceContext, base_parser, service_main
from corral.natsio.sharded import node_placements_bucket
from corral_node_agent.agent import (
    DEFAULT_DRAIN_TIMEOUT_SECONDS,
    PLACEMENTS_WATCHES,
    AgentSettings,
    NodeAgent,
)
from corral_node_agent.cut_off_clock import LastAckFile, cut_off_since
from corral_node_agent.heartbeat_link import NatsHeartbeats
from corral_node_agent.local_record import LocalRecordFile, UnreadableLocalRecord
from corral_node_agent.logs import LogService
from corral_node_agent.networks_mode import NetworksMode
from corral_node_agent.offline import remove_own, stop_if_never_started
from corral_node_agent.runtime import Runtime
from corral_node_agent.settings import (
    ENV_AGENT_ID,
    ENV_STATE_DIR,
    default_node_name,
    dns_label,
    settings_from_args,
    state_dir_from_args,
)

log = logging.getLogger(__name__)

SERVICE = "node-agent"
# The agent's cut-off clock starts with the process, not once NATS answers.
PROCESS_STARTED = time.monotonic()
DEFAULT_METRICS_PORT = 9102
# `--remove-all` gives each replica its own stop grace period, but at most this long
# (a template may ask for up to an hour): `corral down` waits for it.
REMOVE_ALL_MOST_GRACE = 60.0


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(SERVICE, DEFAULT_METRICS_PORT)
    parser.add_argument("--node-name", help="this node's name (default: the hostname)")
    parser.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="a node label (repeatable)",
    )
    parser.add_argument(
        "--agent-id",
        help=f"this agent's id in the Node record; keep it across restarts so a restarted "
        f"agent recognises its own record (default: ${ENV_AGENT_ID}, else random)",
    )
    parser.add_argument("--runtime", choices=("docker", "hollow"), default="docker")
    parser.add_argument(
        "--docker-host", help="the engine's address (default: $DOCKER_HOST, the local socket)"
    )
    parser.add_argument("--cpu", help="CPU capacity, e.g. 2 or 1500m (default: the engine's)")
    parser.add_argument("--memory", help="memory capacity, e.g. 4Gi (default: the engine's)")
    parser.add_argument("--pods", type=int, default=110, help="most replicas on this node")
    parser.add_argument(
        "--state-dir",
        help="where the agent records the cluster this node belongs to "
        f"(default: ${ENV_STATE_DIR}, else ~/.local/state/corral/node-agent/<node>)",
    )
    parser.add_argument("--heartbeat-seconds", type=float, default=time_budget.HEARTBEAT_SECONDS)
    parser.add_argument("--resync-seconds", type=float, default=10.0)
    parser.add_argument("--max-parallel", type=int, default=8, help="container operations at once")
    parser.add_argument(
        "--networks",
        choices=[mode.value for mode in NetworksMode],
        default=NetworksMode.AUTO.value,
        help="replicas join corral networks (made by netmgr): on; off (the engine's default "
        "bridge); auto: on once the cluster has networks (docs/networking.md)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT_SECONDS,
        help="seconds a replica going away waits for netmgr's drain record before its stop "
        "signal anyway (docs/rollouts.md, 'Graceful stops')",
    )
    parser.add_argument(
        "--placements-watch",
        choices=PLACEMENTS_WATCHES,
        default=PLACEMENTS_WATCHES[0],
        help="how the node's placements are followed once read: consumer (a JetStream "
        "consumer kept for the watch's life, about 50 KiB of nats-server's memory per node) "
        "or reads (experimental: the bucket read in order when a write of them is told, "
        "nothing kept on the NATS server; needs nats-server 2.11; docs/safety.md says what "
        "it misses)",
    )
    parser.add_argument(
        "--remove-all",
        action="store_true",
        help="stop and remove this node's replica containers on its engine (those of the "
        "cluster its state dir records; each with its own stop grace period, at most "
        f"{REMOVE_ALL_MOST_GRACE:g} s), then exit "
        "(`corral down --remove-replicas`). Nothing stored changes: the agent's next start "
        "runs them again. Needs no NATS",
    )
    return parser


async def serve_node_decisions(
    nc: NATS,
    node: str,
    decide: Callable[[str, bytes], Awaitable[Reply]],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Answer an operator's decisions on corral.node.<node>.<verb> (adopt, reset)."""
    subscription = await nc.subscribe(names.node_subject(node, "*"))
    await flush_subscriptions(nc)  # started: an operator's decision right after is heard
    task_status.started()
    try:
        async for msg in subscription.messages:
            verb = msg.subject.rsplit(".", 1)[-1]
            try:
                reply = await decide(verb, msg.data)
            except Exception as error:  # a service never dies of a message
                log.exception("decision %s failed", msg.subject)
                reply = Reply(
                    ok=False,
                    kind="Node",
                    name=node,
                    reason=REASON_INTERNAL,
                    error=f"internal error: {error}",
                )
            if msg.reply:
                try:
                    await msg.respond(encode(reply))
                except Exception:
                    log.debug("reply to %s failed", msg.subject, exc_info=True)
    finally:
        await unsubscribe_quietly(subscription)


def build_runtime(args: argparse.Namespace) -> Runtime:
    if args.runtime == "hollow":
        # Imported here, as aiodocker below: each runtime only in the agent that runs it.
        from corral_node_agent.hollow_runtime import (
            HOLLOW_DEFAULT_CPU_MILLIS,
            HOLLOW_DEFAULT_MEMORY_BYTES,
            HollowRuntime,
        )

        # A hollow engine lives and dies with its node: its id names the node, so a
        # restarted agent of that node is recognised as running on the same engine.
        node = settings_from_args(args).node_name
        return HollowRuntime(
            cpu_millis=HOLLOW_DEFAULT_CPU_MILLIS,
            memory_bytes=HOLLOW_DEFAULT_MEMORY_BYTES,
            engine_id=f"hollow-{node}",
        )
    # Imported here: aiodocker (and aiohttp under it) only in an agent that drives Docker.
    from corral_node_agent.docker_runtime import DockerRuntime

    return DockerRuntime(args.docker_host)


class StateDirUnwritable(RefusedToStart):
    """The agent cannot keep its node's records: it refuses to run rather than guess."""


def check_state_dir(state_dir: Path | None) -> None:
    if state_dir is None:
        return
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe = state_dir / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise StateDirUnwritable(
            f"cannot write the state dir {state_dir} ({error}): give --state-dir a folder "
            "this user may write (with systemd: StateDirectory=corral/node-agent and "
            "--state-dir /var/lib/corral/node-agent)"
        ) from None


async def run(
    ctx: ServiceContext,
    args: argparse.Namespace,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    settings = settings_from_args(args)
    agent = NodeAgent(
        settings,
        build_runtime(args),
        placements=node_placements_bucket(
            ctx.buckets, ctx.cluster.placement_shards, settings.node_name
        ),
        placement_shards=ctx.cluster.placement_shards,
        nodes=ctx.buckets[names.NODES_BUCKET],
        statuses=ctx.buckets[names.REPLICA_STATUS_BUCKET],
        cluster=ctx.buckets[names.CLUSTER_BUCKET],
        events=ctx.events,
        health=ctx.health,
        started_at=counting_from(settings),
        heartbeats=NatsHeartbeats(ctx.nc),
        networks=ctx.buckets[names.NETWORKS_BUCKET],
        attachments=ctx.buckets[names.VOLUME_ATTACHMENTS_BUCKET],
        claim_statuses=ctx.buckets[names.CLAIM_STATUS_BUCKET],
        drains=ctx.buckets[names.REPLICA_DRAINS_BUCKET],
        leases=ctx.buckets[names.LEASES_BUCKET],
    )
    ctx.health["engine"] = False
    # A NodeNameTaken (another live agent runs this node) ends the process with one line
    # and exit code 1 (it is a RefusedToStart).
    async with anyio.create_task_group() as tg:
        await tg.start(serve_node_decisions, ctx.nc, settings.node_name, agent.decide)
        # Its containers' logs, on request (corral_node_agent.logs; docs/api.md, "Logs").
        # Only this cluster's containers, once the agent knows its cluster id.
        await tg.start(LogService(ctx.nc, settings.node_name, agent.runtime, agent).serve)
        await tg.start(agent.run)
        task_status.started()


# What an agent reads of the store (`run`), besides its own shard of the placements: on a
# store that has every bucket it opens only these (corral.natsio.bus.open_buckets),
# a dozen stream reads fewer at each start than every bucket's.
AGENT_BUCKETS: Final = frozenset(
    {
        names.NODES_BUCKET,
        names.REPLICA_STATUS_BUCKET,
        names.CLUSTER_BUCKET,
        names.NETWORKS_BUCKET,
        names.VOLUME_ATTACHMENTS_BUCKET,
        names.CLAIM_STATUS_BUCKET,
        names.REPLICA_DRAINS_BUCKET,
        names.LEASES_BUCKET,
    }
)


def buckets_used(args: argparse.Namespace, placement_shards: int) -> frozenset[str]:
    """The buckets `run` reads: AGENT_BUCKETS and this node's shard of the placements."""
    # Not settings_from_args: it would make the state dir's agent id when there is none.
    node = dns_label(args.node_name) if args.node_name else default_node_name()
    return AGENT_BUCKETS | {names.placements_bucket_of(node, placement_shards)}


def counting_from(settings: AgentSettings) -> float:
    """Where this process's cut-off clock starts: the last acknowledged write of an
    earlier agent process of this boot, or this process's start (cut_off_clock)."""
    last = LastAckFile(settings.state_dir).load()
    return cut_off_since(last, PROCESS_STARTED, settings.budget.stop_after)


async def stop_if_cut_off_at_start(args: argparse.Namespace, started: anyio.Event) -> None:
    """From the process's first moment, beside NATS setup: the state dir must be
    writable (else refuse at once); past F without the agent started, stop this
    node's replicas."""
    settings = settings_from_args(args)
    check_state_dir(settings.state_dir)
    runtime = build_runtime(args)
    try:
        await stop_if_never_started(
            runtime,
            LocalRecordFile(settings.state_dir),
            settings.node_name,
            started,
            stop_after=settings.budget.stop_after,
            counting_from=counting_from(settings),
        )
    finally:
        await runtime.close()


async def remove_all(args: argparse.Namespace, out: TextIO) -> int:
    """`--remove-all`: stop and remove this node's own containers (offline.remove_own),
    one line each on `out`; returns the exit code: 1 when one could not be removed or
    the state dir's record cannot be read (then nothing is removed)."""
    # Not settings_from_args: it would make the state dir's agent id when there is none.
    node = dns_label(args.node_name) if args.node_name else default_node_name()
    try:
        record = LocalRecordFile(state_dir_from_args(args, node)).load()
    except UnreadableLocalRecord as error:
        print(f"removing nothing: {error}", file=sys.stderr)
        return 1
    if record is None:
        print(f"node {node} never belonged to a cluster: no container is its own", file=out)
        return 0
    runtime = build_runtime(args)
    try:
        removed, failed = await remove_own(runtime, record, node, most_grace=REMOVE_ALL_MOST_GRACE)
    finally:
        await runtime.close()
    for container in sorted(removed, key=lambda c: c.name):
        print(f"removed {container.name} ({container.id[:12]})", file=out)
    for failure in failed:
        print(f"not removed: {failure}", file=sys.stderr)
    return 1 if failed else 0


def main() -> None:
    parser = build_parser()
    args, _ = parser.parse_known_args()
    if args.remove_all:
        logging.basicConfig(
            level=args.log_level.upper(),
            format=f"%(asctime)s {SERVICE} %(levelname)s %(name)s: %(message)s",
        )
        args = parser.parse_args()  # every flag checked, as a service's are
        sys.exit(anyio.run(remove_all, args, sys.stdout))
    service_main(SERVICE, parser, run, alongside=stop_if_cut_off_at_start, uses=buckets_used)


if __name__ == "__main__":
    main()
