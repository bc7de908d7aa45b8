"""The node agent's process on a real Docker engine, as `corral up` starts it: aiohttp
is there for aiodocker, without the compiled modules it runs as well without
(docs/architecture.md, "Idle memory"), and the agent still reaches its engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_service_processes import (
    NEVER_MAPPED,
    mapped,
    service_process,
    threads,
)

pytestmark = pytest.mark.docker

# aiohttp's compiled HTTP and WebSocket parsers, frozenlist's C++ module
PURE_PYTHON_INSTEAD = (
    "/aiohttp/_http_parser.",
    "/aiohttp/_websocket/reader_c.",
    "/frozenlist/_frozenlist.",
)


async def test_the_docker_agent_process_maps_aiohttp_without_its_compiled_extras(
    nats_url: str, node_name: str, tmp_path: Path
) -> None:
    flags = ("--runtime", "docker", "--node-name", node_name, "--state-dir", str(tmp_path))
    async with service_process("corral-node-agent", nats_url, *flags) as (pid, _):
        maps = mapped(pid)  # healthy: the engine answered through aiodocker
        assert "/aiohttp/" in maps
        assert [name for name in (*NEVER_MAPPED, *PURE_PYTHON_INSTEAD) if name in maps] == []
        assert threads(pid) == 1
