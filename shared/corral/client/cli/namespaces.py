"""Namespaces in the CLI: a manifest's namespace (kubectl's rule), `get -A` (a NAMESPACE
column first) and `get namespaces` (each namespace with what is in it).

Namespaces are implicit in corral: one exists while an object is in it (docs/api.md,
"Namespaces"); the namespaced kinds are names.NAMESPACED_KINDS.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import msgspec

from corral.client.api import CorralClient, NotFound
from corral.client.cli.kinds import (
    CLAIMS,
    CONTAINERS,
    DEPLOYMENTS,
    ENDPOINTS,
    REPLICAS,
    SERVICES,
)
from corral.client.cli.options import manifest_namespace
from corral.client.cli.output import as_list, dump
from corral.client.cli.tables import render_table
from corral.client.cli.views import ClusterView
from corral.contract import names
from corral.contract.network_specs import Service
from corral.contract.specs import Deployment
from corral.contract.volume_specs import PersistentVolumeClaim

if TYPE_CHECKING:
    from corral.client.cli.manifests import Manifest  # PyYAML only for the manifest commands


def resolve_namespaces(manifests: list[Manifest], given: str | None) -> list[Manifest]:
    """Each manifest of a namespaced kind in its namespace: its own metadata.namespace,
    else -n (`given`), else $CORRAL_NAMESPACE, else default; its own and a different -n
    is an error naming both (kubectl's rule). Cluster-wide kinds are left as they are."""
    resolved = []
    for manifest in manifests:
        if manifest.kind.subject_kind not in names.NAMESPACED_KINDS:
            resolved.append(manifest)
            continue
        namespace = manifest_namespace(manifest.declared_namespace, given, manifest.label)
        metadata = getattr(manifest.spec, "metadata")  # noqa: B009 (every kind has one)
        spec = msgspec.structs.replace(
            manifest.spec, metadata=msgspec.structs.replace(metadata, namespace=namespace)
        )
        resolved.append(replace(manifest, spec=spec))
    return resolved


def in_namespace(view: ClusterView, namespace: str) -> ClusterView:
    """The view's placements and replica statuses of one namespace only (the Deployments
    and their statuses are read of one namespace already): a replica list, or a
    Deployment's replicas, never mixes in a namesake's of another namespace."""
    return replace(
        view,
        placements={k: p for k, p in view.placements.items() if p.namespace == namespace},
        replica_statuses={
            k: s for k, s in view.replica_statuses.items() if s.namespace == namespace
        },
    )


async def namespaces_in_use(client: CorralClient) -> dict[str, Counter[str]]:
    """Every namespace something is in, with how many of each namespaced kind."""
    found: dict[str, Counter[str]] = {}

    def count(plural: str, namespaces: list[str]) -> None:
        for namespace in namespaces:
            found.setdefault(namespace, Counter())[plural] += 1

    deployments = await client.read_bucket(names.DEPLOYMENTS_BUCKET, Deployment)
    count("deployments", [d.metadata.namespace for d, _ in deployments.values()])
    services = await client.read_bucket(names.SERVICES_BUCKET, Service)
    count("services", [s.metadata.namespace for s, _ in services.values()])
    claims = await client.read_bucket(names.CLAIMS_BUCKET, PersistentVolumeClaim)
    count("pvc", [c.metadata.namespace for c, _ in claims.values()])
    return dict(sorted(found.items()))


NAMESPACE_HEADERS = ("NAME", "DEPLOYMENTS", "SERVICES", "PVC")


def namespaces_table(found: dict[str, Counter[str]]) -> str:
    """`corral get namespaces`: each namespace in use and what is in it."""
    if not found:
        return "No namespaces."
    rows = [
        [name, str(counts["deployments"]), str(counts["services"]), str(counts["pvc"])]
        for name, counts in found.items()
    ]
    return render_table(NAMESPACE_HEADERS, rows)


_COLUMN_GAP = re.compile(r"\S+(?: \S+)*")


def split_table(text: str) -> tuple[list[str], list[list[str]]] | None:
    """(headers, rows) of a table corral.client.cli.tables.render_table made (columns
    start where their headers do); None for a one-line message ("No deployments.")."""
    lines = text.splitlines()
    if len(lines) < 2:
        return None
    starts = [match.start() for match in _COLUMN_GAP.finditer(lines[0])]
    headers = [match.group() for match in _COLUMN_GAP.finditer(lines[0])]
    bounds = [*starts[1:], None]
    rows = [
        [line[start:end].strip() for start, end in zip(starts, bounds, strict=True)]
        for line in lines[1:]
    ]
    return headers, rows


def join_tables(
    tables: Sequence[tuple[Sequence[str], tuple[list[str], list[list[str]]]]],
    lead: Sequence[str] = (),
) -> str | None:
    """Tables render_table made, as one, each row after the cells its table brings for
    the `lead` columns; None when they have no row. One table may have columns another
    has not (REASON and MESSAGE while something is pending): every column any of them
    has, in order, empty where a table has none."""
    headers: list[str] = []
    for _, (own, _) in tables:
        headers += [header for header in own if header not in headers]
    rows = [
        [*cells, *(dict(zip(own, row, strict=False)).get(header, "") for header in headers)]
        for cells, (own, table_rows) in tables
        for row in table_rows
    ]
    if not rows:
        return None
    return render_table([*lead, *headers], rows)


async def all_namespaces_table(
    client: CorralClient,
    namespaces: Sequence[str],
    render: Callable[[CorralClient], Awaitable[str]],
    nothing: str,
) -> str:
    """`get KIND -A`: `render` (a table of the client's namespace) run in each namespace,
    the rows joined under a NAMESPACE column first, as kubectl prints them."""
    tables: list[tuple[Sequence[str], tuple[list[str], list[list[str]]]]] = []
    for namespace in namespaces:
        client.namespace = namespace
        table = split_table(await render(client))
        if table is not None:
            tables.append(([namespace], table))
    return join_tables(tables, ["NAMESPACE"]) or nothing


# `get` of these lists a namespace's (-A: every namespace's); the others are cluster-wide.
NAMESPACED_READS = frozenset({DEPLOYMENTS, REPLICAS, SERVICES, ENDPOINTS, CLAIMS, CONTAINERS})
NAMESPACE_KINDS = frozenset({"namespaces", "namespace", "ns"})


def render_namespaces(found: dict[str, Counter[str]], name: str | None, output: str) -> str:
    """The namespaces in use (`namespaces_in_use`), or the one named, as `get` prints them."""
    if name is not None:
        if name not in found:
            raise NotFound(f"namespace {name!r} not found: nothing is in it")
        found = {name: found[name]}
    if output in ("json", "yaml"):
        items = [
            {"kind": "Namespace", "metadata": {"name": space}, "objects": dict(counts)}
            for space, counts in found.items()
        ]
        return dump(items[0] if name is not None else as_list(items), output)
    return namespaces_table(found)
