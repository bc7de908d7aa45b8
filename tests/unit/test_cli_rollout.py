"""The CLI's side of the rolling update settings: a corral/v1 manifest with them decodes,
`describe deployment` shows them, and `rollout pause|resume` checks its arguments before
it connects (tests/integration/test_scheduler_rollout_settings.py runs them for real)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from corral.client.cli.describe import describe_deployment
from corral.client.cli.main import cli
from corral.client.cli.manifests import load_manifests
from corral.client.cli.views import ClusterView
from corral.contract.specs import Deployment

NOW = 1_000_000.0

MANIFEST = """
apiVersion: corral/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  minReadySeconds: 5
  paused: true
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 0, maxUnavailable: 25%}
  template: {image: "corral-test/busybox:1"}
"""


def _deployment(text: str) -> Deployment:
    deployment = load_manifests(text, "web.yaml")[0].spec
    assert isinstance(deployment, Deployment)
    return deployment


def test_a_manifest_with_the_settings_decodes_and_describe_shows_them() -> None:
    deployment = _deployment(MANIFEST)
    assert deployment.spec.min_ready_seconds == 5 and deployment.spec.paused
    text = describe_deployment(ClusterView(deployments={"web": deployment}), "web", [], NOW)
    assert "Strategy:     RollingUpdate 0 max surge, 25% max unavailable" in text
    assert "Min ready:    5s" in text
    assert "Paused:       yes" in text


def test_describe_shows_the_defaults_and_recreate() -> None:
    plain = _deployment(
        MANIFEST.replace("  minReadySeconds: 5\n  paused: true\n", "").replace(
            "    rollingUpdate: {maxSurge: 0, maxUnavailable: 25%}\n", ""
        )
    )
    text = describe_deployment(ClusterView(deployments={"web": plain}), "web", [], NOW)
    assert "Strategy:     RollingUpdate 25% max surge, 25% max unavailable" in text
    assert "Min ready:    0s" in text and "Paused:       no" in text
    recreate = _deployment(
        MANIFEST.replace("type: RollingUpdate", "type: Recreate").replace(
            "    rollingUpdate: {maxSurge: 0, maxUnavailable: 25%}\n", ""
        )
    )
    text = describe_deployment(ClusterView(deployments={"web": recreate}), "web", [], NOW)
    assert "Strategy:     Recreate" in text


def test_a_manifest_with_bad_settings_is_refused_naming_the_field(tmp_path: Path) -> None:
    bad = MANIFEST.replace("maxSurge: 0,", "maxSurge: 0%,").replace("25%}", "0}")
    manifest = tmp_path / "web.yaml"
    manifest.write_text(bad, encoding="utf-8")
    result = CliRunner().invoke(cli, ["--nats", "nats://127.0.0.1:1", "apply", "-f", str(manifest)])
    assert result.exit_code == 1
    assert "spec.strategy.rollingUpdate" in result.output


def test_rollout_pause_refuses_other_kinds_and_a_missing_name() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["rollout", "pause", "service/web"])
    assert result.exit_code == 2 and "deployments" in result.output
    result = runner.invoke(cli, ["rollout", "resume", "deployment"])
    assert result.exit_code == 2 and "missing NAME" in result.output


def test_a_directory_gives_its_manifest_files_and_one_without_any_is_named(
    tmp_path: Path,
) -> None:
    bad = MANIFEST.replace("maxSurge: 0,", "maxSurge: 0%,").replace("25%}", "0}")
    (tmp_path / "web.yaml").write_text(bad, encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a manifest", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other.yaml").write_text("kind: [oops", encoding="utf-8")
    args = ["--nats", "nats://127.0.0.1:1", "apply", "-f", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1  # web.yaml read (its bad field), not notes.txt nor sub/
    assert "web.yaml" in result.output and "spec.strategy.rollingUpdate" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, [*args[:-1], str(empty)])
    assert result.exit_code == 1 and "a directory with no .yaml, .yml, .json file" in result.output
