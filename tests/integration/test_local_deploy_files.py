"""deploy/ is checked like code: configs parse with their own tools, ports agree
with `corral up`'s, and the dashboard queries only metrics corral exports."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from corral.client.local.nats_server import NATS_SERVER_GOGC, nats_server_binary
from corral.client.local.plan import DEFAULT_METRICS_BASE_PORT, NODE_PARTS, SERVICES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXPORTED_METRICS = {
    "corral_replicas_desired",
    "corral_replicas_ready",
    "corral_replicas_pending",
    "corral_scheduling_latency_seconds_bucket",
    "corral_plans_total",
    "corral_container_starts_total",
    "corral_container_restarts_total",
    "corral_replicas_running",
    "corral_image_pulls_total",
    "corral_placement_watches_total",
    "corral_agent_mode_entries_total",
    "corral_agent_reconcile_seconds_bucket",
    "corral_api_request_seconds_bucket",
    "up",
}


def test_the_exported_names_the_dashboard_may_use_are_the_metrics_themselves() -> None:
    """The list above is written by hand: its entries for the shared layer's metrics are
    checked against the metric objects, so a name misspelt in both places is caught."""
    from corral.natsio.api_metrics import API_REQUEST_SECONDS

    (family,) = API_REQUEST_SECONDS.describe()
    assert f"{family.name}_bucket" in EXPORTED_METRICS


def _default_port(service: str) -> int:
    return DEFAULT_METRICS_BASE_PORT + SERVICES[service]


def test_prometheus_scrapes_every_service_on_its_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for group in job["static_configs"] for t in group["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {
        f"corral-{service}": [f"127.0.0.1:{_default_port(service)}"] for service in SERVICES
    }


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_prometheus_config() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "corral-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_queries_name_only_exported_metrics() -> None:
    queries = _dashboard_queries()
    assert len(queries) >= 10
    for query in queries:
        named = set(re.findall(r"\b(corral_[a-z_]+|up)\b(?=\s*[{\[)])", query))
        assert named, query
        assert named <= EXPORTED_METRICS, query


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {
                        "record": f"corral:dashboard_query_{index}",
                        "expr": query.replace("$__rate_interval", "5m").replace(
                            "$deployment", ".*"
                        ),
                    }
                    for index, query in enumerate(_dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_accepts_the_cluster_config() -> None:
    passwords = {
        name: "example"
        for name in (
            "NATS_ROUTE_PASSWORD",
            "CORRAL_SCHEDULER_PASSWORD",
            "CORRAL_NODE_AGENT_PASSWORD",
            "CORRAL_NETMGR_PASSWORD",
            "CORRAL_VOLMGR_PASSWORD",
            "CORRAL_CLI_PASSWORD",
        )
    }
    result = subprocess.run(
        [nats_server_binary(), "-c", str(DEPLOY / "nats" / "cluster.conf"), "-t"],
        capture_output=True,
        text=True,
        env={**os.environ, **passwords},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_service_has_a_systemd_unit_on_its_port(service: str) -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / f"corral-{service}.service")
    start = unit["Service"]["ExecStart"]
    program = NODE_PARTS.get(service, service)  # a node part: corral-netmgr --node NAME
    assert start.split()[0].endswith(f"/corral-{program}")
    assert f"--metrics-port {_default_port(service)}" in start
    if service in NODE_PARTS:
        assert "--node %l" in start
    assert unit["Service"]["Restart"] == "always"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_nats_unit_runs_the_server_with_corrals_gogc_that_its_env_file_may_override() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / "nats.service")
    service = unit["Service"]
    assert service["Environment"] == f"GOGC={NATS_SERVER_GOGC}"
    # systemd applies EnvironmentFile= after Environment=: the operator's file wins.
    keys = list(service)
    assert keys.index("Environment") < keys.index("EnvironmentFile")
