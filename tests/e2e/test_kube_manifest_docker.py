"""A plain Kubernetes apps/v1 manifest, unchanged, through the `corral` CLI (a
subprocess) on a real nats-server: the scheduler places it and the node agent runs its
container on the local Docker engine with the manifest's command, args, env, labels and
stop signal (docs/manifests.md). Docker itself is asked."""

from __future__ import annotations

import json
import subprocess

import anyio
import pytest

from tests.e2e.conftest import AgentFactory
from tests.e2e.test_deployment_lifecycle import CORRAL, running_containers
from tests.integration.scheduler_harness import running_scheduler
from tests.waiting import eventually

pytestmark = pytest.mark.docker

MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: kube-web
  labels: {app: kube-web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: kube-web}
  template:
    metadata:
      labels: {app: kube-web, tier: front}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: web
          image: IMAGE
          imagePullPolicy: IfNotPresent
          command: [sh, -c]
          args: ["echo $GREETING; sleep 3600"]
          env:
            - {name: GREETING, value: hello-from-kubernetes}
          resources:
            limits: {memory: 64Mi}
          lifecycle:
            stopSignal: SIGINT
"""


async def run_corral(
    nats_url: str, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [CORRAL, "--nats", nats_url, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
    )


async def test_a_plain_apps_v1_manifest_runs_its_container_on_docker(
    nats_url: str, node_name: str, test_image: str, agent_running: AgentFactory
) -> None:
    manifest = MANIFEST.replace("IMAGE", test_image)
    async with running_scheduler(nats_url), agent_running():
        applied = await run_corral(nats_url, "apply", "-f", "-", stdin=manifest)
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.strip() == "deployment/kube-web created"
        assert "imagePullPolicy" in applied.stderr  # the one warning, naming the field
        ids = await eventually(
            lambda: running_containers(node_name, "kube-web"),
            lambda found: len(found) == 2,
            within=60,
        )
        inspected = await anyio.run_process(["docker", "inspect", *ids])
        for container in json.loads(inspected.stdout):
            config = container["Config"]
            assert "GREETING=hello-from-kubernetes" in config["Env"]
            assert config["Entrypoint"] == ["sh", "-c"]
            assert config["Cmd"] == ["echo $GREETING; sleep 3600"]
            assert config["StopSignal"] == "SIGINT"
            assert container["HostConfig"]["Memory"] == 64 * 1024 * 1024
            logs = await anyio.run_process(["docker", "logs", container["Id"]])
            assert b"hello-from-kubernetes" in logs.stdout

        printed = await run_corral(nats_url, "get", "deployment", "kube-web", "-o", "yaml")
        again = await run_corral(nats_url, "apply", "-f", "-", stdin=printed.stdout)
        assert again.returncode == 0 and again.stdout.strip() == "deployment/kube-web unchanged"

        deleted = await run_corral(nats_url, "delete", "-f", "-", stdin=manifest)
        assert deleted.returncode == 0, deleted.stderr
        await eventually(
            lambda: running_containers(node_name, "kube-web"), lambda found: not found, within=60
        )
