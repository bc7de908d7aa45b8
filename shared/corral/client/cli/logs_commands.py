"""`corral logs deployment/NAME|REPLICA`: containers' logs from whichever node runs them.

The replicas are found in the placements (which node) and their statuses (which
container); each replica's log is asked of its node's agent over NATS
(corral.contract.logs: the protocol; docs/api.md, "Logs"), all at once. With several
replicas (or --prefix) each line is led by `[REPLICA] `, as kubectl's --prefix. A
replica whose node does not answer is named on stderr, the others still shown; the
exit code is then 1.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

import anyio
import click
import msgspec
from nats.aio.client import Client as NATS

from corral.client.api import NO_RESPONDER_RETRY, CorralClient, CorralError
from corral.client.cli.runner import run_with_client, settings_of
from corral.contract import names
from corral.contract.codec import decode, encode
from corral.contract.logs import LOG_IDLE_SECONDS, LogAck, LogChunk, LogPiece, LogRequest

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATIONS = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|h|m|s))+")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
DEPLOYMENT_WORDS = ("deployment", "deployments", "deploy")
REPLICA_WORDS = ("replica", "replicas", "pod", "pods")


def parse_since(text: str, now: float) -> float:
    """--since: a duration before now (Go's form, as kubectl's: 10s, 5m, 1h30m, 250ms)
    or a time (RFC 3339, e.g. 2026-11-29T07:00:00Z) -> epoch seconds. ValueError names
    the flag."""
    text = text.strip()
    if _DURATIONS.fullmatch(text):
        seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION.findall(text))
        return max(0.0, now - seconds)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(
            f"--since {text!r} is neither a duration (10s, 5m, 1h30m) nor a time with its "
            "zone (2026-11-29T07:00:00Z)"
        )
    return max(0.0, moment.timestamp())


@dataclass(frozen=True, slots=True)
class ReplicaRef:
    """A replica whose log to read: where it runs and its container (if known)."""

    replica: str
    node: str
    namespace: str
    container_id: str = ""


def split_target(target: str) -> tuple[str, str]:
    """'deployment/web' -> ('deployment', 'web'); 'web-abc12' -> ('replica', 'web-abc12')."""
    kind, slash, name = target.partition("/")
    if not slash:
        return "replica", target
    if kind.lower() in DEPLOYMENT_WORDS:
        return "deployment", name
    if kind.lower() in REPLICA_WORDS:
        return "replica", name
    raise CorralError(
        f"logs of {target!r}: unknown kind {kind!r} (give deployment/NAME or a replica's name)"
    )


async def find_replicas(client: CorralClient, target: str) -> list[ReplicaRef]:
    """The replicas `target` names, in the client's namespace, by name; CorralError
    naming what is not there."""
    kind, name = split_target(target)
    if not name:
        raise CorralError(f"logs of {target!r}: no name")
    namespace = client.namespace
    placements = await client.placements()
    statuses = await client.replica_statuses()
    if kind == "deployment":
        if await client.deployment(name, namespace) is None:
            raise CorralError(f'deployment "{name}" not found in namespace "{namespace}"')
        chosen = {
            key: p
            for key, p in placements.items()
            if p.deployment == name and p.namespace == namespace
        }
        if not chosen:
            raise CorralError(f"deployment/{name} has no replica placed on a node yet")
    else:
        chosen = {
            key: p
            for key, p in placements.items()
            if p.replica == name and p.namespace == namespace
        }
        if not chosen:
            raise CorralError(
                f'replica "{name}" not found in namespace "{namespace}" (on no node); '
                "for a Deployment's replicas give deployment/NAME"
            )
    refs = []
    for key, placement in chosen.items():
        status = statuses.get(key)
        refs.append(
            ReplicaRef(
                replica=placement.replica,
                node=placement.node,
                namespace=placement.namespace,
                container_id=status.container_id if status is not None else "",
            )
        )
    return sorted(refs, key=lambda ref: ref.replica)


class Printer:
    """Writes pieces to stdout or stderr, each line led by its replica's prefix."""

    def __init__(self, out: TextIO, err: TextIO, prefixed: bool, style: str = "kubectl") -> None:
        self.out, self.err = out, err
        self.prefixed = prefixed
        self.style = style
        self._at_line_start: dict[tuple[str, str], bool] = {}
        self.lines = 0

    def prefix(self, ref: ReplicaRef) -> str:
        if not self.prefixed:
            return ""
        if self.style == "docker":
            return f"{ref.replica}@{ref.node}    | "
        return f"[{ref.replica}] "

    def write(self, ref: ReplicaRef, piece: LogPiece) -> None:
        target = self.err if piece.stream == "stderr" else self.out
        key = (ref.replica, piece.stream)
        head = self.prefix(ref)
        text = piece.text
        self.lines += text.count("\n")
        if head:
            starts = self._at_line_start.get(key, True)
            body = text[:-1] if text.endswith("\n") else text
            text = body.replace("\n", "\n" + head) + text[len(body) :]
            if starts:
                text = head + text
            self._at_line_start[key] = piece.text.endswith("\n")
        target.write(text)

    def flush(self) -> None:
        self.out.flush()
        self.err.flush()


class AgentSilent(CorralError):
    """The node's agent did not answer (or stopped answering)."""


async def stream_replica(
    nc: NATS,
    ref: ReplicaRef,
    request: LogRequest,
    on_piece: Callable[[ReplicaRef, LogPiece], None],
    *,
    answer_seconds: float,
    idle_seconds: float = LOG_IDLE_SECONDS,
) -> None:
    """One replica's log, each piece given to on_piece in order; returns at its end.
    CorralError (naming the replica and its node) when the agent refuses or is silent.
    Cancelled, it tells the agent to stop at once."""
    inbox = nc.new_inbox()
    subscription = await nc.subscribe(inbox)
    control = ""
    done = False
    where = f"replica {ref.replica} on node {ref.node}"
    try:
        subject, raw = names.logs_subject(ref.node), encode(request)
        await nc.publish(subject, raw, reply=inbox)
        answer_by = time.monotonic() + answer_seconds
        expected = 0
        messages = subscription.messages.__aiter__()
        while True:
            wait = max(0.0, answer_by - time.monotonic()) if expected == 0 else idle_seconds
            try:
                with anyio.fail_after(wait):
                    msg = await messages.__anext__()
            except TimeoutError:
                if expected == 0:
                    said = f"the node's agent did not answer within {answer_seconds:g}s"
                else:
                    said = f"the node's agent stopped answering within {idle_seconds:g}s"
                raise AgentSilent(f"{where}: {said}") from None
            if msg.headers and msg.headers.get("Status") == "503":
                # Nobody received it: an agent starting or reconnecting, or one whose
                # subscription this cluster's server has not learnt of yet, gets until
                # the answer's deadline (as requests do: corral.client.api.ask).
                if answer_by - time.monotonic() <= NO_RESPONDER_RETRY:  # no time to ask again
                    raise AgentSilent(
                        f"{where}: no agent answers for node {ref.node} within {answer_seconds:g}s"
                    )
                await anyio.sleep(NO_RESPONDER_RETRY)
                await nc.publish(subject, raw, reply=inbox)
                continue
            try:  # larger than a spec may be (64 KiB of text, escaped): not decode_payload
                chunk = decode(msg.data, LogChunk)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                raise CorralError(f"{where}: a log chunk the client cannot read: {error}") from None
            if chunk.seq != expected:
                raise CorralError(f"{where}: log chunk {expected} went missing")
            expected += 1
            if chunk.control:
                control = chunk.control
            for piece in chunk.pieces:
                on_piece(ref, piece)
            if chunk.error:
                done = True
                raise CorralError(f"{where}: {chunk.error}")
            if chunk.end:
                done = True
                return
            if control:
                await nc.publish(control, encode(LogAck(seq=chunk.seq)))
    finally:
        with anyio.CancelScope(shield=True):
            if control and not done:
                try:
                    await nc.publish(control, encode(LogAck(stop=True)))
                    await nc.flush(timeout=1)
                except Exception:
                    pass  # the agent stops by itself once the acknowledgements stop
            try:
                await subscription.unsubscribe()
            except Exception:
                pass


async def show_logs(
    client: CorralClient,
    refs: list[ReplicaRef],
    *,
    follow: bool,
    tail: int | None,
    since: float | None,
    timestamps: bool,
    printer: Printer,
    answer_seconds: float,
) -> list[str]:
    """Every replica's log through `printer`, at once; the errors, one per replica."""
    errors: list[str] = []

    def on_piece(ref: ReplicaRef, piece: LogPiece) -> None:
        printer.write(ref, piece)
        if follow:
            printer.flush()

    async def one(ref: ReplicaRef) -> None:
        request = LogRequest(
            replica=ref.replica,
            namespace=ref.namespace,
            container_id=ref.container_id,
            follow=follow,
            tail=tail,
            since=since,
            timestamps=timestamps,
        )
        try:
            await stream_replica(client.nc, ref, request, on_piece, answer_seconds=answer_seconds)
        except CorralError as error:
            errors.append(str(error))
            printer.flush()
            print(f"error: {error}", file=printer.err, flush=True)

    async with anyio.create_task_group() as tg:
        for ref in refs:
            tg.start_soon(one, ref)
    printer.flush()
    return errors


def check_tail(tail: int | None) -> int | None:
    if tail is not None and tail < 0:
        raise click.ClickException(f"--tail {tail}: give 0 or more lines (no --tail: all)")
    return tail


def run_logs(
    ctx: click.Context,
    target: str,
    *,
    follow: bool,
    tail: int | None,
    since_text: str | None,
    timestamps: bool,
    prefix: bool | None,
    style: str = "kubectl",
    find: Callable[[CorralClient], Awaitable[list[ReplicaRef]]] | None = None,
) -> None:
    """The work of `corral logs`, `service logs` and `stack logs`: the replicas of
    `target` (or those `find` gives); exit 1 if a replica failed, 130 on Ctrl-C."""
    check_tail(tail)
    since = None
    if since_text is not None:
        try:
            since = parse_since(since_text, time.time())
        except ValueError as error:
            raise click.ClickException(str(error)) from None
    settings = settings_of(ctx)

    async def command(client: CorralClient) -> list[str]:
        refs = await (find(client) if find is not None else find_replicas(client, target))
        shown = prefix if prefix is not None else len(refs) > 1
        printer = Printer(sys.stdout, sys.stderr, shown, style)
        return await show_logs(
            client,
            refs,
            follow=follow,
            tail=tail,
            since=since,
            timestamps=timestamps,
            printer=printer,
            answer_seconds=settings.timeout,
        )

    interrupted = False
    errors: list[str] = []
    try:
        errors = run_with_client(settings, command)
    except* KeyboardInterrupt:  # Ctrl-C while following: the agents were told to stop
        interrupted = True
    if interrupted:
        ctx.exit(130)
    if errors:
        ctx.exit(1)


def log_options(function: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            click.option("-f", "--follow", is_flag=True, help="Keep streaming new output."),
            click.option("--tail", type=int, default=None, help="The last N lines of each."),
            click.option(
                "--since",
                "since_text",
                metavar="DURATION|TIME",
                help="Only output since a duration ago (10s, 5m, 1h) or a time (RFC 3339).",
            ),
            click.option("-t", "--timestamps", is_flag=True, help="Lead each line with its time."),
        ]
    ):
        function = option(function)
    return function


@click.command("logs")
@click.argument("target", metavar="deployment/NAME|REPLICA")
@log_options
@click.option(
    "--prefix/--no-prefix",
    default=None,
    help="Lead each line with [REPLICA] (default: with several replicas).",
)
@click.pass_context
def logs(
    ctx: click.Context,
    target: str,
    follow: bool,
    tail: int | None,
    since_text: str | None,
    timestamps: bool,
    prefix: bool | None,
) -> None:
    """Print the logs of a Deployment's replicas, or of one replica, from whichever
    nodes run them (stdout to stdout, stderr to stderr)."""
    run_logs(
        ctx,
        target,
        follow=follow,
        tail=tail,
        since_text=since_text,
        timestamps=timestamps,
        prefix=prefix,
    )
