"""The pure parts of the Docker adapter: time stamps, create bodies, inspect data."""

from __future__ import annotations

import msgspec
import pytest

from corral.contract import names
from corral.contract.specs import ContainerTemplate, ResourceList, Resources
from corral_node_agent.docker_runtime import (
    container_config,
    observed_from_inspect,
    parse_docker_time,
)
from corral_node_agent.executor import container_spec
from corral_node_agent.runtime import ContainerState
from tests.unit.agent_helpers import CLUSTER_ID, placement


def test_docker_times() -> None:
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time("") is None
    assert parse_docker_time("1970-01-01T00:01:00.123456789Z") == 60.123456
    assert parse_docker_time("1970-01-01T01:00:00+01:00") == 0.0


def test_create_body_has_labels_limits_and_no_restart_policy() -> None:
    p = placement("web-a1", args=["sleep", "60"])
    spec = container_spec(p, CLUSTER_ID)
    assert spec.name == f"corral_node-a_web-a1_{CLUSTER_ID}"
    body = container_config(spec)
    assert body["Image"] == "corral-test/busybox:1"
    assert body["Cmd"] == ["sleep", "60"]
    assert "Entrypoint" not in body  # the image's own
    assert body["HostConfig"] == {"RestartPolicy": {"Name": "no"}}
    assert body["Labels"] == {
        names.LABEL_MANAGED: "true",
        names.LABEL_CLUSTER: CLUSTER_ID,
        names.LABEL_NODE: "node-a",
        names.LABEL_DEPLOYMENT: "web",
        names.LABEL_NAMESPACE: "default",
        names.LABEL_REPLICA: "web-a1",
        names.LABEL_TEMPLATE_HASH: p.template_hash,
    }


def test_limits_become_a_cfs_quota_and_memory() -> None:
    template = ContainerTemplate(
        image="app:1",
        command=["run"],
        env={"A": "1"},
        resources=Resources(limits=ResourceList(cpu="1500m", memory="128Mi")),
    )
    p = placement("web-a1")
    p = msgspec.structs.replace(p, template=template)
    body = container_config(container_spec(p, CLUSTER_ID))
    # 1.5 CPUs: 150 ms of every 100 ms period (the kubelet's CFS quota; NanoCpus above
    # the host's CPUs would be refused by the engine)
    assert body["HostConfig"]["CpuPeriod"] == 100_000
    assert body["HostConfig"]["CpuQuota"] == 150_000
    assert "NanoCpus" not in body["HostConfig"]
    assert body["HostConfig"]["Memory"] == 128 * 2**20
    assert body["Entrypoint"] == ["run"]
    assert body["Env"] == ["A=1"]


def test_inspect_data_becomes_an_observed_container() -> None:
    observed = observed_from_inspect(
        {
            "Id": "abc",
            "Name": "/corral-web-a1",
            "Config": {
                "Labels": {
                    names.LABEL_REPLICA: "web-a1",
                    names.LABEL_DEPLOYMENT: "web",
                    names.LABEL_TEMPLATE_HASH: "h1",
                }
            },
            "State": {
                "Status": "exited",
                "ExitCode": 137,
                "StartedAt": "1970-01-01T00:00:10Z",
                "FinishedAt": "1970-01-01T00:00:20Z",
                "Error": "",
            },
        }
    )
    assert observed.name == "corral-web-a1"
    assert observed.state == ContainerState.EXITED
    assert (observed.exit_code, observed.started_at, observed.finished_at) == (137, 10.0, 20.0)
    paused = observed_from_inspect({"Id": "x", "State": {"Status": "paused"}})
    assert paused.state == ContainerState.OTHER and paused.exit_code is None


@pytest.mark.parametrize(("cpu", "quota"), [("1m", 1_000), ("10m", 1_000), ("1024", 102_400_000)])
def test_a_cpu_limit_is_a_quota_of_at_least_1_ms_and_may_exceed_the_hosts_cpus(
    cpu: str, quota: int
) -> None:
    template = ContainerTemplate(image="app:1", resources=Resources(limits=ResourceList(cpu=cpu)))
    p = msgspec.structs.replace(placement("web-a1"), template=template)
    body = container_config(container_spec(p, CLUSTER_ID))
    assert body["HostConfig"]["CpuQuota"] == quota
