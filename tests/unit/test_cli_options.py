"""Flag parsing of `corral create deployment`, checked on the payload it would send."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import click
import pytest
from click.testing import CliRunner

from corral.client.api import ApiKind
from corral.client.cli import write_commands
from corral.client.cli.main import cli
from corral.client.cli.options import parse_env, parse_resource_list
from corral.client.cli.runner import Settings
from corral.contract.codec import decode
from corral.contract.events import Reply
from corral.contract.specs import Deployment


def test_resource_list() -> None:
    assert parse_resource_list("cpu=100m,memory=64Mi", "--requests") == {
        "cpu": "100m",
        "memory": "64Mi",
    }
    assert parse_resource_list(" cpu = 1 , ", "--limits") == {"cpu": "1"}
    assert parse_resource_list(None, "--limits") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cpu", "not NAME=QUANTITY"),
        ("cpu=", "not NAME=QUANTITY"),
        ("gpu=1", "unknown resource 'gpu'"),
        ("cpu=1,cpu=2", "given twice"),
    ],
)
def test_resource_list_errors(text: str, message: str) -> None:
    with pytest.raises(click.BadParameter, match=message):
        parse_resource_list(text, "--requests")


def test_env() -> None:
    assert parse_env(["A=1", "B=x=y", "EMPTY="]) == {"A": "1", "B": "x=y", "EMPTY": ""}
    with pytest.raises(click.BadParameter, match="not NAME=VALUE"):
        parse_env(["novalue"])


class FakeClient:
    """Stands in for CorralClient: records requests, answers like a scheduler."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []

    async def deployment(self, name: str) -> None:
        return None

    async def request(self, kind: ApiKind, verb: str, payload: bytes) -> Reply:
        self.sent.append((kind.kind, verb, payload))
        return Reply(ok=True, kind=kind.kind, name="my-app", revision=1, generation=1)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()

    def run_with_client(_: Settings, command: Callable[[Any], Awaitable[Any]]) -> Any:
        import anyio

        return anyio.run(command, client)

    monkeypatch.setattr(write_commands, "run_with_client", run_with_client)
    return client


def test_create_deployment_builds_the_spec(fake: FakeClient) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "create", "deployment", "my-app", "--image=corral-test/busybox:1", "--replicas=3",
            "--requests", "cpu=100m,memory=64Mi", "--limits", "cpu=1",
            "--env", "A=1", "-e", "B=2", "-l", "tier=web",
            "--", "sh", "-c", "echo --replicas=9",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "deployment/my-app created\n"
    [(kind, verb, payload)] = fake.sent
    assert (kind, verb) == ("Deployment", "apply")
    spec = decode(payload, Deployment)
    assert spec.metadata.name == "my-app" and spec.metadata.labels == {"tier": "web"}
    assert spec.spec.replicas == 3
    template = spec.spec.template
    assert template.command == ["sh", "-c", "echo --replicas=9"]
    assert template.env == {"A": "1", "B": "2"}
    assert template.resources.requests.cpu_millis == 100
    assert template.resources.requests.memory_bytes == 64 * 2**20
    assert template.resources.limits.cpu_millis == 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image=UPPER::x"], "not a valid image reference"),
        (["--image=busybox", "--replicas=-1"], "`spec.replicas`"),
        (["--image=busybox", "--requests", "cpu=lots"], "not a CPU quantity"),
        (["--image=busybox", "--requests", "cpu=2", "--limits", "cpu=1"], "larger than"),
        (["--image=busybox", "--env", "1BAD=x"], "not a valid environment variable name"),
        (["--image=busybox", "--label", "noequals"], "'noequals' is not NAME=VALUE"),
        ([], "Missing option '--image'"),
    ],
)
def test_create_refuses_bad_flags_locally(fake: FakeClient, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["create", "deployment", "my-app", *args])
    assert result.exit_code != 0
    assert message in result.stderr, result.stderr
    assert fake.sent == []


def test_scale_and_delete_payloads(fake: FakeClient) -> None:
    assert CliRunner().invoke(cli, ["scale", "deploy/my-app", "--replicas", "4"]).exit_code == 0
    assert CliRunner().invoke(cli, ["delete", "deployments", "a", "b"]).exit_code == 0
    assert [(verb, payload) for _, verb, payload in fake.sent] == [
        ("scale", b'{"name":"my-app","replicas":4}'),
        ("delete", b'{"name":"a"}'),
        ("delete", b'{"name":"b"}'),
    ]


def test_usage_errors(fake: FakeClient) -> None:
    assert CliRunner().invoke(cli, ["scale", "deployment", "--replicas", "2"]).exit_code == 2
    assert CliRunner().invoke(cli, ["delete"]).exit_code == 2
    assert CliRunner().invoke(cli, ["apply"]).exit_code == 2
    both = CliRunner().invoke(cli, ["delete", "deployment", "x", "-f", "-"], input="")
    assert both.exit_code == 2 and "not both" in both.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["events", "--for", "gadget"], "unknown kind 'gadget'"),
        (["events", "--for", "deployment/a b"], "not a DNS label"),
        (["events", "--for", ">"], "unknown kind '>'"),
        (["events", "--limit", "-5"], "-5 is not in the range"),
        (["--timeout", "0", "get", "nodes"], "0.0 is not in the range"),
        (["--nats", "foo://bar", "get", "nodes"], "'foo://bar' is not a NATS URL"),
    ],
)
def test_bad_options_are_refused_before_connecting(
    fake: FakeClient, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert message in result.stderr, result.stderr


def test_an_oversized_manifest_is_refused_without_reading_it_all(fake: FakeClient) -> None:
    endless = "a: b\n" * (300 * 1024)  # 1.5 MiB
    result = CliRunner().invoke(cli, ["apply", "-f", "-"], input=endless)
    assert result.exit_code != 0
    assert "<stdin>: larger than the limit of 1048576 bytes" in result.stderr
    assert fake.sent == []
