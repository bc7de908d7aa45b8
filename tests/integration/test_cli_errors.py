"""Failures the user can cause or meet, without any service running: clear, fast, exit 1."""

from __future__ import annotations

import socket
import time

import anyio
import pytest
from click.testing import CliRunner, Result

from corral.client.api import CorralClient, CorralError
from corral.client.cli.main import cli
from corral.contract.specs import DeleteRequest


async def corral(*args: str) -> Result:
    def invoke() -> Result:
        return CliRunner().invoke(cli, list(args))

    return await anyio.to_thread.run_sync(invoke)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"nats://127.0.0.1:{port}"


@pytest.mark.parametrize(
    "args",
    [
        ("get", "deployments"),
        ("get", "nodes"),
        ("events",),
        ("scale", "deploy", "x", "--replicas", "1"),
    ],
)
async def test_unreachable_nats_fails_fast_and_says_so(args: tuple[str, ...]) -> None:
    url = closed_port_url()
    started = time.monotonic()
    result = await corral("--nats", url, *args)
    assert time.monotonic() - started < 5
    assert result.exit_code == 1
    assert f"cannot reach NATS at {url}: is corral running? (corral up)" in result.stderr
    assert "Traceback" not in result.output


async def test_a_silent_listener_is_not_a_hang() -> None:
    """A port that accepts but never speaks NATS is bounded by the connect timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"nats://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        result = await corral("--nats", url, "--timeout", "2", "get", "nodes")
    assert time.monotonic() - started < 6
    assert result.exit_code == 1 and "cannot reach NATS" in result.stderr


async def test_env_variable_names_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    url = closed_port_url()
    monkeypatch.setenv("CORRAL_NATS_URL", url)
    result = await corral("get", "nodes")
    assert result.exit_code == 1 and url in result.stderr


async def test_request_without_owner_times_out_clearly(nats_url: str) -> None:
    started = time.monotonic()
    result = await corral("--nats", nats_url, "--timeout", "1", "delete", "deployment", "web")
    assert time.monotonic() - started < 5
    assert result.exit_code == 1
    assert (
        "no scheduler answered on corral.api.deployment.delete within 1 s: is it running?"
        in result.stderr
    )


async def test_client_request_timeout(nats_url: str) -> None:
    async with await CorralClient.connect(nats_url, request_timeout=0.5) as client:
        with pytest.raises(CorralError, match="no scheduler answered"):
            await client.delete("deployment", DeleteRequest(name="web").name)


async def test_bad_input_never_leaves_the_machine(nats_url: str) -> None:
    """Local validation answers before any connection (the URL here leads nowhere)."""
    url = closed_port_url()
    bad_name = await corral("--nats", url, "create", "deployment", "Bad_Name", "--image", "x")
    assert bad_name.exit_code == 1
    assert "`metadata.name`" in bad_name.stderr and "DNS label" in bad_name.stderr

    negative = await corral("--nats", url, "scale", "deployment", "web", "--replicas", "-1")
    assert negative.exit_code == 1 and "`replicas`" in negative.stderr
    assert "cannot reach" not in negative.stderr
