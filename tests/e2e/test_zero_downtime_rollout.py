"""Issue 10's promise through every real piece: a rolling update loses no request.

A Deployment of four replicas over two nodes (the local engine and a second dockerd),
with a readiness probe and a ClusterIP Service in front, is updated to a new template
while a client container on node one sends requests through the Service's name without
pause, each on a new connection (busybox `wget`: a DNS lookup, a connection, a GET).
Every request must succeed: new replicas join the endpoints only once ready, and an old
one is signalled only after netmgr reports it gone from every node's rules
(docs/rollouts.md, "Graceful stops").

Traffic goes only to the test's own containers.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from corral.contract import names
from corral.contract.network_state import Endpoints
from corral.contract.state import DeploymentStatus
from corral.natsio.kv import NatsBucket
from tests.e2e.conftest import AgentFactory
from tests.e2e.test_netmgr_node import (
    Guard,
    second_host,
    unchanged_host,
)
from tests.e2e.test_services_two_nodes import (
    clients,
    endpoints_in_force,
    in_client,
    ok,
    record,
    run,
    running_names,
    start_client,
    two_node_cluster,
)
from tests.waiting import eventually

pytestmark = pytest.mark.docker

__all__ = ["clients", "second_host", "unchanged_host"]  # fixtures, used by name

# busybox httpd on 8080 with a slow page (each request takes 0.3 s, so one is nearly
# always in flight on every replica), behind a shell that, on SIGTERM, lets requests in
# flight finish (2 s) before it stops the server: what a well-behaved server does.
SERVER = """\
mkdir -p /www/cgi-bin
hostname > /www/index.html
printf '#!/bin/sh\\nsleep 0.3\\necho Content-Type: text/plain\\necho\\nhostname\\n' \\
  > /www/cgi-bin/slow
chmod +x /www/cgi-bin/slow
httpd -f -p 8080 -h /www &
server=$!
trap 'sleep 2; kill $server; exit 0' TERM
wait
"""
LOG = "/requests.log"  # the test image is FROM scratch: no /tmp
STOP = "/stop"
LOOPS = 4
# LOOPS loops, each a request at a time, one line per request in LOG, "ok" or "fail";
# each request a new wget (a DNS lookup, a new connection; busybox's wget has no timeout
# of its own: `timeout` gives it 3 s).
CLIENT_LOOP = (
    f"for i in $(seq {LOOPS}); do "
    f"(while [ ! -f {STOP} ]; do "
    "if timeout 3 wget -q -O /dev/null http://web/cgi-bin/slow; "
    f"then echo ok; else echo fail; fi >> {LOG}; done) & "
    "done; wait"
)


def manifest(
    image: str, version: str, replicas: int = 4, spec: str = "", command: str = SERVER
) -> str:
    """The Deployment `web` (corral/v1): busybox httpd on 8080 with a readiness probe;
    `version` goes into its env (a new version is a new template); `spec`: more lines
    of spec, indented by two."""
    return f"""\
apiVersion: corral/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
{spec}  template:
    image: {image}
    command: ["sh", "-c", {json.dumps(command)}]
    env:
      VERSION: "{version}"
    ports:
      - containerPort: 8080
        name: http
    readinessProbe:
      httpGet:
        port: http
        path: /index.html
      periodSeconds: 1
    terminationGracePeriodSeconds: 5
    stopSignal: SIGTERM
"""


async def counts(client: str) -> tuple[int, int]:
    """(succeeded, failed) requests the client has logged so far."""
    lines = (await in_client(client, f"cat {LOG} 2>/dev/null")).split()
    return lines.count("ok"), lines.count("fail")


async def rolled_out(
    buckets: dict[str, NatsBucket], engines: list[str | None], replicas: int = 4
) -> bool:
    """The status says every replica is updated and available, and exactly `replicas`
    containers run over both engines."""
    status = await record(
        buckets[names.DEPLOYMENT_STATUS_BUCKET], names.object_key("default", "web"),
        DeploymentStatus,
    )  # fmt: skip
    if not isinstance(status, DeploymentStatus):
        return False
    if not (status.replicas == status.updated == status.available == status.ready == replicas):
        return False
    running = 0
    for engine in engines:
        running += len(await anyio.to_thread.run_sync(running_names, "web", engine))
    return running == replicas


async def test_a_rolling_update_behind_a_service_loses_no_request(
    nats_url: str,
    buckets: dict[str, NatsBucket],
    node_name: str,
    test_image: str,
    second_host: str,
    agent_running: AgentFactory,
    unchanged_host: Guard,
    clients: list[str],
    tmp_path: Path,
) -> None:
    engines: list[str | None] = [None, second_host]
    async with two_node_cluster(
        nats_url, buckets, node_name, second_host, agent_running, unchanged_host, clients
    ) as (one, two, cluster, slice_one):
        first = tmp_path / "v1.yaml"
        first.write_text(manifest(test_image, "1"))
        await ok(nats_url, "apply", "-f", str(first))
        await ok(nats_url, "expose", "deployment", "web", "--port=80", "--target-port=8080")
        await eventually(lambda: rolled_out(buckets, engines), bool, within=90)
        on_two = await anyio.to_thread.run_sync(running_names, "web", second_host)
        assert on_two, "the replicas are spread over both nodes"
        await eventually(
            lambda: endpoints_in_force(
                buckets,
                names.object_key("default", "web"),
                (one, two),
                lambda found: len([a for a in found.addresses if a.ready]) == 4,
            ),
            lambda found: isinstance(found, Endpoints),
            within=60,
        )

        client = await start_client(one, cluster, slice_one, test_image, clients)
        await run("docker", "exec", "-d", client, "sh", "-c", CLIENT_LOOP)
        before = await eventually(lambda: counts(client), lambda seen: seen[0] >= 20, within=30)
        assert before[1] == 0, f"requests failed before the update: {before}"

        second = tmp_path / "v2.yaml"
        second.write_text(manifest(test_image, "2"))
        await ok(nats_url, "apply", "-f", str(second))
        await eventually(lambda: rolled_out(buckets, engines), bool, within=120)
        during = await counts(client)
        # a little more traffic after the last old replica went, then stop
        await eventually(lambda: counts(client), lambda seen: seen[0] >= during[0] + 20, within=30)
        await run("docker", "exec", client, "touch", STOP)
        final = await counts(client)
        sent_during_update = during[0] + during[1] - before[0] - before[1]
        assert final[1] == 0, (
            f"{final[1]} of {sum(final)} requests failed "
            f"({sent_during_update} sent during the update)"
        )
        assert sent_during_update >= 30, f"too little traffic: {sent_during_update}"
        await ok(nats_url, "delete", "service", "web")
        await ok(nats_url, "delete", "deployment", "web")
