"""Running a node agent in-process, for the tests of every folder."""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio

from corral.natsio.service import ServiceContext, run_service
from corral_node_agent import main as agent_main
from corral_node_agent.main import buckets_used, build_parser, run


@asynccontextmanager
async def running_agent(nats_url: str, node: str, *flags: str) -> AsyncIterator[ServiceContext]:
    """The node agent of `node` (flags as on its command line); leaving stops it and
    leaves its containers running, as a stopped agent does. Without --state-dir it
    records its cluster in a temporary folder (each test's NATS is a new cluster)."""
    with tempfile.TemporaryDirectory(prefix="corral-agent-") as state_dir:
        if "--state-dir" not in flags:
            flags = (*flags, "--state-dir", state_dir)
        args = build_parser().parse_args(
            ["--nats", nats_url, "--metrics-port", "0", "--node-name", node, *flags]
        )
        # A new agent process: its cut-off clock counts from its own start when it has
        # no acknowledged write noted (main.counting_from), not from when the test
        # process imported the agent. Else an agent started more than F into a test
        # session goes Stopping at once, until its first write is acknowledged.
        agent_main.PROCESS_STARTED = time.monotonic()  # undone after the test (conftest.py)
        async with anyio.create_task_group() as tg:
            # The buckets it reads only, as `corral-node-agent` opens them.
            ctx: ServiceContext = await tg.start(
                partial(run_service, "node-agent", run, args, uses=buckets_used)
            )
            try:
                yield ctx
            finally:
                tg.cancel_scope.cancel()
