"""`corral logs` on the local Docker engine (only it: no second engine): a busybox
replica echoing numbered lines on stdout and stderr; `corral logs deployment/x --tail 2`
(a subprocess) gives the last lines with stdout and stderr kept apart, and `-f` sees
new lines as they are written and stops on Ctrl-C."""

from __future__ import annotations

import re
import signal

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.e2e.conftest import AgentFactory
from tests.e2e.test_deployment_lifecycle import CORRAL, corral, running_containers
from tests.integration.scheduler_harness import running_scheduler
from tests.waiting import eventually

pytestmark = pytest.mark.docker

SCRIPT = "i=0; while true; do i=$((i+1)); echo line $i; echo err $i >&2; sleep 0.2; done"


def numbers(text: str, word: str) -> list[int]:
    return [int(n) for n in re.findall(rf"^{word} (\d+)$", text, re.MULTILINE)]


async def test_logs_tail_and_follow_read_a_busybox_replica_on_docker(
    nats_url: str, node_name: str, test_image: str, agent_running: AgentFactory
) -> None:
    async with running_scheduler(nats_url), agent_running():
        await corral(
            nats_url, "create", "deployment", "x", f"--image={test_image}", "--",
            "sh", "-c", SCRIPT,
        )  # fmt: skip
        await eventually(
            lambda: running_containers(node_name, "x"), lambda ids: len(ids) == 1, within=60
        )
        # the status names the container once the agent wrote it, and a few lines exist
        shown = await eventually(
            lambda: corral(nats_url, "logs", "deployment/x", "--tail", "2", check=False),
            lambda done: done.returncode == 0 and len(numbers(done.stdout, "line")) >= 1,
            within=30,
        )
        out, err = numbers(shown.stdout, "line"), numbers(shown.stderr, "err")
        assert len(out) + len(err) == 2 and shown.stdout.count("\n") == len(out), shown
        everything = await corral(nats_url, "logs", "deployment/x")
        assert numbers(everything.stdout, "line")[:3] == [1, 2, 3]

        follower = await anyio.open_process(
            [CORRAL, "--nats", nats_url, "logs", "-f", "deployment/x", "--tail", "0"]
        )
        try:
            assert follower.stdout is not None
            stdout = BufferedByteReceiveStream(follower.stdout)
            seen: list[int] = []
            with anyio.fail_after(20):
                while len(seen) < 5:
                    line = await stdout.receive_until(b"\n", 65536)
                    seen += numbers(line.decode(), "line")
            # new lines, in order, none of the history (--tail 0)
            assert seen == list(range(seen[0], seen[0] + 5))
            assert not out or seen[0] > out[-1]
            follower.send_signal(signal.SIGINT)  # Ctrl-C
            with anyio.fail_after(10):
                assert await follower.wait() == 130
        finally:
            if follower.returncode is None:
                follower.kill()
            await follower.aclose()
