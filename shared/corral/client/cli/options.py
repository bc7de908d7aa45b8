"""Parsing the flags of `corral create`: resource lists and environment variables; the
namespace options every namespaced command shares (-n/--namespace, -A/--all-namespaces)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from corral.contract.names import DEFAULT_NAMESPACE
from corral.contract.specs import check_dns_label

RESOURCE_NAMES = ("cpu", "memory")


def parse_resource_list(text: str | None, option: str) -> dict[str, str]:
    """'cpu=100m,memory=64Mi' -> {'cpu': '100m', 'memory': '64Mi'}. Values are checked later."""
    if not text:
        return {}
    resources: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise click.BadParameter(
                f"{item!r} is not NAME=QUANTITY (e.g. cpu=100m)", param_hint=option
            )
        if key not in RESOURCE_NAMES:
            raise click.BadParameter(
                f"unknown resource {key!r}: expected one of {', '.join(RESOURCE_NAMES)}",
                param_hint=option,
            )
        if key in resources:
            raise click.BadParameter(f"{key!r} given twice", param_hint=option)
        resources[key] = value
    return resources


def parse_pairs(items: Iterable[str], option: str) -> dict[str, str]:
    """['A=1', 'B=x=y'] -> {'A': '1', 'B': 'x=y'}; an item without '=' or a name is refused."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=option)
        pairs[key] = value
    return pairs


def parse_env(items: Iterable[str]) -> dict[str, str]:
    return parse_pairs(items, "--env")


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    return parse_pairs(items, "--label")


def _port_number(text: str, option: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise click.BadParameter(
            f"{what} {text!r} is not a port number (1-65535)", param_hint=option
        )
    return int(text)


def parse_container_port(text: str) -> dict[str, object]:
    """kubectl's `create deployment --port`: '8080' or '53/udp' -> a template port."""
    number, _, protocol = text.partition("/")
    port: dict[str, object] = {"containerPort": _port_number(number, "--port", "port")}
    if protocol:
        if protocol.upper() not in ("TCP", "UDP"):
            raise click.BadParameter(
                f"protocol {protocol!r} in {text!r}: expected tcp or udp", param_hint="--port"
            )
        port["protocol"] = protocol.upper()
    return port


def parse_service_port(text: str) -> dict[str, object]:
    """`create service --port [NAME=]PORT[:TARGET]`: '80:8080', 'web=80:http', '53'.
    TARGET is the replicas' port, a number or the name of a template port."""
    name, sep, rest = text.rpartition("=")
    port_text, colon, target = rest.partition(":")
    port: dict[str, object] = {"port": _port_number(port_text, "--port", "port")}
    if sep:
        if not name:
            raise click.BadParameter(f"{text!r} has '=' but no NAME before it", param_hint="--port")
        port["name"] = name
    if colon:
        if not target:
            raise click.BadParameter(
                f"{text!r} has ':' but no target port after it", param_hint="--port"
            )
        port["targetPort"] = (
            _port_number(target, "--port", "target port") if target.isdigit() else target
        )
    return port


# --- namespaces: -n/--namespace on every namespaced command, -A on reads -------------

NAMESPACE_ENV = "CORRAL_NAMESPACE"
# Where the options keep what was given (click's ctx.meta, shared by a command and its
# groups): the command reads them with given_namespace / all_namespaces.
_NAMESPACE_META = "corral.namespace"
_ALL_NAMESPACES_META = "corral.all_namespaces"


def _keep_namespace(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    try:
        check_dns_label("namespace", value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None
    ctx.meta[_NAMESPACE_META] = value


def _keep_all_namespaces(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_ALL_NAMESPACES_META] = True


def default_namespace() -> str:
    """$CORRAL_NAMESPACE, else `default`."""
    value = os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE
    try:
        check_dns_label(f"${NAMESPACE_ENV}", value)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    return value


def namespace_of(given: str | None) -> str:
    """The namespace a command works in: -n, else $CORRAL_NAMESPACE, else `default`."""
    return given if given is not None else default_namespace()


def given_namespace(ctx: click.Context) -> str | None:
    """The -n/--namespace given to this command (None: not given)."""
    value = ctx.meta.get(_NAMESPACE_META)
    return value if isinstance(value, str) else None


def all_namespaces(ctx: click.Context) -> bool:
    """Whether -A/--all-namespaces was given."""
    return bool(ctx.meta.get(_ALL_NAMESPACES_META))


F = TypeVar("F", bound=Callable[..., Any] | click.Command)


def _add_option(target: F, declarations: list[str], **attributes: Any) -> F:
    """A decorator's work on a function (before @click.command) or on a command."""
    if isinstance(target, click.Command):
        taken = {flag for param in target.params for flag in getattr(param, "opts", ())}
        free = [flag for flag in declarations if flag not in taken]  # "-n" may mean more
        if any(flag.startswith("--") for flag in free):
            target.params.append(click.Option(free, **attributes))
        return target
    return click.option(*declarations, **attributes)(target)


def namespace_option(target: F) -> F:
    """-n/--namespace NS on a namespaced command (a decorator, or applied to a command).
    The command's client works in it (corral.client.cli.runner: reads, and requests
    naming no namespace); given_namespace tells whether it was given (a manifest's own
    namespace wins over none)."""
    return _add_option(
        target,
        ["-n", "--namespace"],
        metavar="NS",
        default=None,
        expose_value=False,
        is_eager=True,
        callback=_keep_namespace,
        help=f"The namespace (default: ${NAMESPACE_ENV}, else {DEFAULT_NAMESPACE}).",
    )


def all_namespaces_option(target: F) -> F:
    """-A/--all-namespaces on a read of namespaced kinds (all_namespaces tells)."""
    return _add_option(
        target,
        ["-A", "--all-namespaces"],
        is_flag=True,
        expose_value=False,
        callback=_keep_all_namespaces,
        help="Every namespace, a NAMESPACE column first (-n is then ignored).",
    )


def manifest_namespace(declared: str | None, given: str | None, where: str) -> str:
    """The namespace of a manifest's object, as kubectl decides it: its own
    metadata.namespace (`declared`) wins; -n (`given`), else $CORRAL_NAMESPACE, fills it
    in when absent; -n different from the declared one is an error naming both."""
    if declared is None:
        return namespace_of(given)
    if given is not None and given != declared:
        raise click.UsageError(
            f"{where}: the namespace from the provided object ({declared!r}) does not match "
            f"the namespace {given!r} of --namespace: give --namespace={declared}, or leave "
            "it out"
        )
    return declared


def add_namespace_options(
    root: click.Group, namespaced: Iterable[str], all_namespaces_on: Iterable[str] = ()
) -> None:
    """-n/--namespace on the commands named in `namespaced` ("apply", "create service";
    a group: each of its commands), -A/--all-namespaces on those in `all_namespaces_on`.
    A name not there (yet) is skipped; a command that has the option keeps one."""

    def commands(path: str) -> list[click.Command]:
        found: click.Command | None = root
        for word in path.split():
            found = found.commands.get(word) if isinstance(found, click.Group) else None
        if isinstance(found, click.Group):
            return list(found.commands.values())
        return [] if found is None else [found]

    def has(command: click.Command, flag: str) -> bool:
        return any(flag in getattr(param, "opts", ()) for param in command.params)

    for path in namespaced:
        for command in commands(path):
            if not has(command, "--namespace"):
                namespace_option(command)
    for path in all_namespaces_on:
        for command in commands(path):
            if not has(command, "--all-namespaces"):
                all_namespaces_option(command)
