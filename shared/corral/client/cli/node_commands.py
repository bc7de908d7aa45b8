"""`corral node`: an operator's decisions about one node.

    corral node release NODE [--force]        the node is gone for good: the scheduler
                                              replaces its replicas at once ("AfterStop"
                                              ones included) and forgets the node;
                                              refused while the node is alive, and while
                                              AfterStop replicas may still run there
                                              (silent less than R'), unless --force
    corral node adopt NODE [--cluster-id ID]  its agent accepts the cluster the state
                                              store now holds, and keeps the containers
                                              of the earlier cluster ID as orphans
    corral node reset NODE [--cluster-id ID]  the same, but it removes those containers

release is a request to the scheduler on corral.api.node.release; adopt and reset
are requests to the node's own agent on corral.node.<node>.<verb>. Each prints the
owner's answer; a refusal, or no answer, is an error (exit 1).
"""

from __future__ import annotations

from typing import Any

import click
import msgspec

from corral.client.api import ApiKind, CorralClient, CorralError, Unanswered, ask
from corral.client.cli.runner import run_with_client, settings_of
from corral.contract import names
from corral.contract.codec import InvalidPayload, decode_payload
from corral.contract.events import Reply
from corral.contract.specs import NodeDecision, NodeReleaseRequest
from corral.contract.time_budget import NODE_LOST_AFTER_STOP_SECONDS

# Not an API kind of manifests (nothing to apply): only the subject corral.api.node.*.
NODE_API = ApiKind("Node", NodeReleaseRequest, "scheduler", "nodes")


def _payload(data: dict[str, Any], kind: type[msgspec.Struct]) -> bytes:
    """The JSON the owner will get, after decoding it exactly as the owner will."""
    raw = msgspec.json.encode(data)
    try:
        decode_payload(raw, kind)
    except InvalidPayload as error:
        raise click.BadParameter(error.message, param_hint=error.field or None) from None
    return raw


def _refused(reply: Reply) -> CorralError:
    return CorralError(reply.error or "refused")


def _done(name: str, what: str, reply: Reply, fallback: str) -> str:
    """`node/NAME <what>: <the owner's words>`."""
    return f"node/{name} {what}: {reply.message or fallback}"


@click.group()
def node() -> None:
    """Release a node that is gone, or decide about the containers on one."""


@node.command(
    "release",
    help="Tell the scheduler that node NAME is gone for good (refused while it is "
    "alive).\n\nA node with replicas of AfterStop Deployments is released only once "
    "it has been silent long enough that they cannot run any more (R', "
    f"{NODE_LOST_AFTER_STOP_SECONDS:g} s), unless --force.",
)
@click.argument("name")
@click.option(
    "--force",
    is_flag=True,
    help="You know the node's containers are gone: release it even while replicas of "
    "AfterStop Deployments could still run there (before R' of silence).",
)
@click.pass_context
def release(ctx: click.Context, name: str, force: bool) -> None:
    data: dict[str, Any] = {"name": name}
    if force:
        data["force"] = True
    payload = _payload(data, NodeReleaseRequest)

    async def send(client: CorralClient) -> str:
        reply = await client.request(NODE_API, "release", payload)
        if not reply.ok:
            raise _refused(reply)
        return _done(name, "released", reply, "its replicas are placed elsewhere")

    click.echo(run_with_client(settings_of(ctx), send))


async def ask_node_agent(client: CorralClient, node_name: str, verb: str, payload: bytes) -> Reply:
    """Send a request to the agent of `node_name` on corral.node.<node>.<verb>; an agent
    not subscribed yet (starting, reconnecting) is asked again until the timeout."""
    subject = names.node_subject(node_name, verb)
    timeout = client.request_timeout
    try:
        return await ask(client.nc, subject, payload, timeout, "node agent")
    except Unanswered as silent:
        if silent.no_responders:
            raise CorralError(
                f"no node agent answers for node {node_name!r} on {subject} within "
                f"{timeout:g} s: is its agent running and connected to this NATS?"
            ) from None
        raise CorralError(
            f"the node agent of {node_name!r} did not answer on {subject} within {timeout:g} s"
        ) from None


def _decision(verb: str, what: str, fallback: str) -> click.Command:
    @click.command(verb)
    @click.argument("name")
    @click.option(
        "--cluster-id",
        default="",
        metavar="ID",
        help="The earlier cluster's id (16 hex digits); default: the one the agent recorded.",
    )
    @click.pass_context
    def command(ctx: click.Context, name: str, cluster_id: str) -> None:
        data: dict[str, Any] = {"node": name}
        if cluster_id:
            data["clusterId"] = cluster_id
        payload = _payload(data, NodeDecision)

        async def send(client: CorralClient) -> str:
            reply = await ask_node_agent(client, name, verb, payload)
            if not reply.ok:
                raise _refused(reply)
            return _done(name, what, reply, fallback)

        click.echo(run_with_client(settings_of(ctx), send))

    return command


adopt = _decision("adopt", "adopted", "the earlier cluster's containers are kept as orphans")
adopt.help = (
    "Make node NAME keep the earlier cluster's containers (adopt them).\n\n"
    "Its agent accepts the cluster the state store holds now; the containers of the "
    "earlier cluster (--cluster-id) become orphans that Deployments of their name and "
    "template claim."
)
reset = _decision("reset", "reset", "the earlier cluster's containers are removed")
reset.help = (
    "Make node NAME remove the earlier cluster's containers.\n\n"
    "Its agent accepts the cluster the state store holds now, and removes the containers "
    "of the earlier cluster (--cluster-id) on its engine."
)
node.add_command(adopt)
node.add_command(reset)

__all__ = ["ask_node_agent", "node"]
