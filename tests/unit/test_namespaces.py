"""Namespaces (issue 11): the contract's DNS-label namespace, keys and container names
per namespace, the agent's status in its placement's namespace, and the CLI's options
(-n/--namespace, -A/--all-namespaces, a manifest's own namespace) without a server."""

from __future__ import annotations

import json
from typing import Any

import click
import msgspec
import pytest
from click.testing import CliRunner

from corral.client.api import CorralClient, _events_filter, find_kind
from corral.client.cli.main import cli
from corral.client.cli.namespaces import all_namespaces_table, split_table
from corral.client.cli.options import (
    NAMESPACE_ENV,
    manifest_namespace,
    namespace_of,
)
from corral.client.cli.tables import render_table
from corral.contract import names
from corral.contract.codec import InvalidPayload, decode_payload, encode
from corral.contract.network_specs import Network
from corral.contract.specs import DeleteRequest, Deployment, ScaleRequest
from corral.contract.volume_specs import PersistentVolume, StorageClass
from corral_node_agent.backoff import ReplicaTrack
from corral_node_agent.docker_runtime import container_config
from corral_node_agent.executor import container_name, container_spec
from corral_node_agent.replica_status import replica_status
from tests.unit.agent_helpers import CLUSTER_ID, NODE, placement


def deployment(namespace: Any) -> bytes:
    return json.dumps(
        {
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {"template": {"image": "nginx"}},
        }
    ).encode()


# --- the contract ----------------------------------------------------------------------


def test_a_deployment_in_any_dns_label_namespace_is_keyed_by_it() -> None:
    found = decode_payload(deployment("team-a"), Deployment)
    assert found.metadata.namespace == "team-a"
    assert found.key == "team-a.web" == names.object_key("team-a", "web")
    assert names.split_object_key(found.key) == ("team-a", "web")
    longest = "a" * 63
    assert decode_payload(deployment(longest), Deployment).key == f"{longest}.web"


@pytest.mark.parametrize("bad", ["Team-A", "team_a", "team.a", "-team", "", "a" * 64])
def test_a_namespace_that_is_no_dns_label_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(InvalidPayload) as refused:
        decode_payload(deployment(bad), Deployment)
    assert "metadata.namespace" in str(refused.value)


def test_requests_carry_their_namespace_into_the_key() -> None:
    assert ScaleRequest(name="web", replicas=2, namespace="team-a").key == "team-a.web"
    assert decode_payload(b'{"name":"web","namespace":"team-a"}', DeleteRequest).key == (
        "team-a.web"
    )


@pytest.mark.parametrize("kind", [Network, PersistentVolume, StorageClass])
def test_a_cluster_wide_kind_in_a_namespace_is_refused_naming_the_field(kind: type[Any]) -> None:
    document: dict[str, Any] = {
        "Network": {"kind": "Network", "metadata": {"name": "x"}},
        "PersistentVolume": {
            "kind": "PersistentVolume",
            "metadata": {"name": "x"},
            "spec": {"capacity": {"storage": "1Gi"}, "hostPath": {"path": "/srv/x"}},
        },
        "StorageClass": {
            "kind": "StorageClass",
            "metadata": {"name": "x"},
            "provisioner": "corral.io/local-volume",
        },
    }[kind.__name__]
    decode_payload(json.dumps(document).encode(), kind)  # in no namespace: fine
    document["metadata"]["namespace"] = "team-a"
    with pytest.raises(InvalidPayload) as refused:
        decode_payload(json.dumps(document).encode(), kind)
    assert "`metadata.namespace`" in str(refused.value)
    assert "cluster-wide" in str(refused.value)


def test_events_of_one_object_are_filtered_in_its_namespace() -> None:
    assert _events_filter("deployment", "web", "team-a") == "corral.events.deployment.team-a.web"
    assert _events_filter("node", "n1", "team-a") == "corral.events.node.n1"


# --- the node agent --------------------------------------------------------------------


def in_namespace(namespace: str) -> Any:
    return msgspec.structs.replace(placement("web-x1"), namespace=namespace)


def test_the_default_namespace_keeps_its_container_names_and_another_has_its_own() -> None:
    # The names of before namespaces: those containers are still found and adopted.
    assert container_name(CLUSTER_ID, NODE, "web-x1") == f"corral_{NODE}_web-x1_{CLUSTER_ID}"
    assert container_name(CLUSTER_ID, NODE, "web-x1", "default") == (
        f"corral_{NODE}_web-x1_{CLUSTER_ID}"
    )
    team = container_name(CLUSTER_ID, NODE, "web-x1", "team-a")
    assert team == f"corral_{NODE}_team-a.web-x1_{CLUSTER_ID}"
    assert (
        len(
            {
                container_name(CLUSTER_ID, NODE, "web-x1", "default"),
                team,
                container_name(CLUSTER_ID, NODE, "web-x1", "team-b"),
                container_name(CLUSTER_ID, NODE, "a.web-x1", "team"),
            }
        )
        == 4
    )
    spec = container_spec(in_namespace("team-a"), CLUSTER_ID)
    assert spec.name == team
    assert spec.labels[names.LABEL_NAMESPACE] == "team-a"


def test_the_agents_status_of_a_replica_is_in_its_placements_namespace() -> None:
    placed = in_namespace("team-a")
    status = replica_status(placed, None, ReplicaTrack(), now=1.0)
    assert status.namespace == "team-a"
    assert status.key == placed.key == names.placement_key(NODE, "team-a", "web-x1")


# --- the CLI ---------------------------------------------------------------------------


def test_the_namespace_is_n_else_the_environment_else_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(NAMESPACE_ENV, raising=False)
    assert namespace_of(None) == "default"
    monkeypatch.setenv(NAMESPACE_ENV, "team-a")
    assert namespace_of(None) == "team-a"
    assert namespace_of("team-b") == "team-b"
    monkeypatch.setenv(NAMESPACE_ENV, "Team_A")
    with pytest.raises(click.UsageError, match=NAMESPACE_ENV):
        namespace_of(None)


def test_a_manifests_own_namespace_wins_and_a_different_n_is_an_error_naming_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(NAMESPACE_ENV, "team-env")
    assert manifest_namespace("team-a", None, "f.yaml") == "team-a"
    assert manifest_namespace("team-a", "team-a", "f.yaml") == "team-a"
    assert manifest_namespace(None, "team-b", "f.yaml") == "team-b"
    assert manifest_namespace(None, None, "f.yaml") == "team-env"
    with pytest.raises(click.UsageError) as refused:
        manifest_namespace("team-a", "team-b", "f.yaml: deployment/web")
    assert "'team-a'" in refused.value.message and "'team-b'" in refused.value.message
    assert refused.value.message.startswith("f.yaml: deployment/web")


NAMESPACED = [
    ["create", "deployment"], ["create", "service"], ["create", "pvc"], ["apply"], ["diff"],
    ["delete"], ["scale"], ["get"], ["describe"], ["events"], ["expose"],
    ["rollout", "status"], ["rollout", "undo"], ["rollout", "history"], ["set", "image"],
    ["service", "create"], ["service", "ls"], ["service", "rm"],
]  # fmt: skip
CLUSTER_WIDE = [
    ["create", "network"], ["create", "pv"], ["create", "storageclass"], ["network", "create"],
    ["node", "release"], ["volume", "release"],
]  # fmt: skip


def command(path: list[str]) -> click.Command:
    found: click.Command = cli
    for word in path:
        assert isinstance(found, click.Group)
        found = found.commands[word]
    return found


def flags(path: list[str]) -> set[str]:
    return {flag for param in command(path).params for flag in getattr(param, "opts", ())}


@pytest.mark.parametrize("path", NAMESPACED, ids=" ".join)
def test_every_namespaced_command_takes_n(path: list[str]) -> None:
    assert {"-n", "--namespace"} <= flags(path)


@pytest.mark.parametrize("path", CLUSTER_WIDE, ids=" ".join)
def test_a_cluster_wide_command_takes_no_namespace(path: list[str]) -> None:
    assert "--namespace" not in flags(path)


def test_get_alone_takes_all_namespaces() -> None:
    assert {"-A", "--all-namespaces"} <= flags(["get"])
    assert "--all-namespaces" not in flags(["describe"])


def test_a_namespace_that_is_no_dns_label_is_refused_before_anything_is_sent() -> None:
    result = CliRunner().invoke(cli, ["--nats", "nats://127.0.0.1:1", "get", "deploy", "-n", "A_"])
    assert result.exit_code == 2
    assert "--namespace" in result.output and "DNS label" in result.output


def test_all_namespaces_with_a_name_is_refused() -> None:
    result = CliRunner().invoke(cli, ["--nats", "nats://127.0.0.1:1", "get", "deploy", "web", "-A"])
    assert result.exit_code == 2 and "give no NAME" in result.output


class _NoNats:
    def jetstream(self) -> None:
        return None


def web_with_default_namespace() -> Deployment:
    return msgspec.convert(
        {"metadata": {"name": "web"}, "spec": {"template": {"image": "nginx"}}}, Deployment
    )


def client_in(namespace: str) -> CorralClient:
    client = CorralClient(_NoNats(), "nats://test", request_timeout=1.0)  # type: ignore[arg-type]
    client.namespace = namespace
    return client


def test_a_request_naming_no_namespace_goes_in_the_clients_and_one_naming_it_keeps_it() -> None:
    client = client_in("team-a")
    deploy = find_kind("Deployment")
    bare = encode(web_with_default_namespace())  # the default namespace: left out
    sent = json.loads(client.in_namespace(deploy, "apply", bare))
    assert sent["metadata"]["namespace"] == "team-a"
    own = deployment("team-b")
    assert json.loads(client.in_namespace(deploy, "apply", own))["metadata"]["namespace"] == (
        "team-b"
    )
    for verb in ("scale", "delete"):
        request = json.loads(client.in_namespace(deploy, verb, b'{"name":"web","replicas":1}'))
        assert request["namespace"] == "team-a"
    network = b'{"kind":"Network","metadata":{"name":"x"}}'
    assert client.in_namespace(find_kind("Network"), "apply", network) == network
    assert client_in("default").in_namespace(deploy, "apply", bare) == bare


def test_a_table_splits_back_into_its_cells_even_with_spaces_in_them() -> None:
    headers = ["NAME", "ACCESS MODES", "MESSAGE"]
    rows = [["web", "RWO", "not placed yet"], ["a-much-longer-name", "RWO,RWX", ""]]
    assert split_table(render_table(headers, rows)) == (headers, rows)
    assert split_table("No deployments.") is None


def test_a_replica_on_networks_looks_names_up_in_its_namespace_first() -> None:
    # Docker's resolver asks `web.` as it is under its default ndots:0, and the node DNS
    # answers that with the default namespace's Service: the search path must come first.
    spec = container_spec(in_namespace("team-a"), CLUSTER_ID, networks=True)
    host = container_config(spec, "10.128.3.1")["HostConfig"]
    assert host["DnsSearch"][0] == "team-a.svc.cluster.local"
    assert host["DnsOptions"] == ["ndots:5"]
    assert (
        "DnsOptions"
        not in container_config(container_spec(in_namespace("team-a"), CLUSTER_ID))["HostConfig"]
    )


async def test_every_namespace_table_keeps_the_columns_only_some_namespaces_have() -> None:
    """`get pvc -A`: one namespace's claim is Pending (REASON, MESSAGE), the last one's
    is not; its rows were cut to the last table's columns and the rendering failed."""
    tables = {
        "a": render_table(
            ["NAME", "STATUS", "REASON", "MESSAGE"], [["p1", "Pending", "NoVolume", "waiting"]]
        ),
        "b": render_table(["NAME", "STATUS"], [["p2", "Bound"]]),
    }

    class Client:
        namespace = ""

    async def render(client: Any) -> str:
        return tables[client.namespace]

    text = await all_namespaces_table(Client(), ["a", "b"], render, "none")  # type: ignore[arg-type]
    assert split_table(text) == (
        ["NAMESPACE", "NAME", "STATUS", "REASON", "MESSAGE"],
        [["a", "p1", "Pending", "NoVolume", "waiting"], ["b", "p2", "Bound", "", ""]],
    )
