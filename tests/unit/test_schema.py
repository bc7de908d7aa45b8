"""The committed JSON Schemas are the ones the Structs generate; `corral schema` prints them."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from corral.client.cli.main import cli
from corral.contract.schema import PUBLIC_PAYLOADS, generated_files, schema_of

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schema"


def test_committed_schemas_are_current() -> None:
    committed = {path.name: path.read_text(encoding="utf-8") for path in SCHEMA_DIR.glob("*.json")}
    generated = generated_files()
    assert sorted(committed) == sorted(generated), (
        "run: python -m corral.contract.schema docs/schema"
    )
    for name, text in generated.items():
        assert committed[name] == text, (
            f"{name} is stale: run python -m corral.contract.schema docs/schema"
        )


def test_deployment_schema_describes_the_wire_format() -> None:
    schema = schema_of("Deployment")
    deployment = schema["$defs"]["Deployment"]
    assert {"metadata", "spec", "kind", "apiVersion"} <= set(deployment["properties"])
    spec = schema["$defs"]["DeploymentSpec"]["properties"]["replicas"]
    assert spec["minimum"] == 0


def test_corral_schema_command() -> None:
    one = CliRunner().invoke(cli, ["schema", "deployment"])
    assert one.exit_code == 0
    assert json.loads(one.stdout) == schema_of("Deployment")

    everything = CliRunner().invoke(cli, ["schema"])
    assert sorted(json.loads(everything.stdout)) == sorted(PUBLIC_PAYLOADS)

    unknown = CliRunner().invoke(cli, ["schema", "widget"])
    assert unknown.exit_code == 1 and "unknown kind 'widget'" in unknown.stderr
    assert "Deployment" in unknown.stderr
