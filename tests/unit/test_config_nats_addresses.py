"""NATS addresses: a cluster is several URLs, comma-separated or a repeated --nats,
in the CLI, the services, `corral up` and the config file (a TOML string or list);
nats-py gets them as a list. Storage settings come from the environment."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from corral.client.cli import write_commands
from corral.client.cli.main import cli
from corral.client.cli.runner import Settings
from corral.client.local.plan import UpOptions, service_children
from corral.contract.events import Reply
from corral.natsio.bus import StoreSettings
from corral.natsio.config import nats_servers, resolve_nats_url
from corral.natsio.service import base_parser

A, B, C = "nats://nats-1:4222", "nats://nats-2:4222", "nats://nats-3:4222"


@pytest.fixture(autouse=True)
def no_outside_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CORRAL_CONFIG", raising=False)
    monkeypatch.delenv("CORRAL_NATS_URL", raising=False)


def test_a_comma_separated_list_becomes_a_list_of_servers_for_nats_py() -> None:
    assert nats_servers(f"{A},{B}, {C}") == [A, B, C]
    assert nats_servers([A, f"{B},{C}", A]) == [A, B, C]  # repeated flags; no duplicates
    assert resolve_nats_url(f"{A}, {B}") == f"{A},{B}"


def test_the_deploy_readme_setting_resolves_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORRAL_NATS_URL", f"{A},{B},{C}")
    assert nats_servers(resolve_nats_url()) == [A, B, C]


def test_the_config_file_takes_a_string_or_a_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    monkeypatch.setenv("CORRAL_CONFIG", str(config))
    config.write_text(f'nats_url = "{A},{B}"\n')
    assert resolve_nats_url() == f"{A},{B}"
    config.write_text(f'nats_url = ["{A}", "{B}", "{C}"]\n')
    assert resolve_nats_url() == f"{A},{B},{C}"
    config.write_text("nats_url = []\n")
    with pytest.raises(ValueError, match="`nats_url` must be a non-empty list"):
        resolve_nats_url()
    config.write_text(f'nats_url = ["{A}", 4222]\n')
    with pytest.raises(ValueError, match="`nats_url` must be a non-empty list"):
        resolve_nats_url()
    config.write_text(f'nats_url = ["{A}", "http://x"]\n')
    with pytest.raises(ValueError, match=r"config\.toml: `nats_url`: 'http://x' is not a NATS URL"):
        resolve_nats_url()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (f"{A},,{B}", "'' is not a NATS URL"),
        ("nats://host:port", "'nats://host:port' is not a NATS URL: Port could not be cast"),
        ("nats://:4222", "'nats://:4222' names no host"),
        (f"{A},127.0.0.1:4222", "'127.0.0.1:4222' is not a NATS URL"),
    ],
)
def test_a_bad_address_in_a_list_is_named(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"--nats: {message}"):
        resolve_nats_url(value)


def test_a_service_takes_the_nats_flag_repeated_or_comma_separated() -> None:
    parser = base_parser("scheduler", 9101)
    repeated = parser.parse_args(["--nats", A, "--nats", f"{B},{C}"])
    assert resolve_nats_url(repeated.nats) == f"{A},{B},{C}"
    assert parser.parse_args([]).nats is None


def test_the_cli_takes_the_nats_flag_repeated_or_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []

    def run_with_client(settings: Settings, _: Callable[[Any], Awaitable[Any]]) -> Any:
        seen.append(settings.nats_url())
        return Reply(ok=True, kind="Deployment", name="web")

    monkeypatch.setattr(write_commands, "run_with_client", run_with_client)
    result = CliRunner().invoke(
        cli, ["--nats", A, "--nats", f"{B},{C}", "scale", "deploy/web", "--replicas", "2"]
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        cli, ["--nats", "nats://x:1,bad", "scale", "deploy/web", "--replicas", "2"]
    )
    assert result.exit_code != 0 and "'bad' is not a NATS URL" in result.stderr
    assert seen == [f"{A},{B},{C}"]


def test_corral_up_passes_its_nats_address_through_to_every_service(tmp_path: Path) -> None:
    options = UpOptions(data_dir=tmp_path, nats_port=4555)
    for child in service_children(options):
        given = child.command[child.command.index("--nats") + 1]
        parsed = base_parser(child.name, 0).parse_known_args(["--nats", given])[0]
        assert nats_servers(resolve_nats_url(parsed.nats)) == ["nats://127.0.0.1:4555"]


def test_store_settings_come_from_the_environment_and_bad_ones_are_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "CORRAL_KV_REPLICAS",
        "CORRAL_KV_MAX_BYTES",
        "CORRAL_SPECS_MAX_BYTES",
        "CORRAL_EVENTS_MAX_BYTES",
        "CORRAL_SPECS_MAX_AGE_SECONDS",
        "CORRAL_KV_MARKER_RETENTION_SECONDS",
    ):
        monkeypatch.delenv(name, raising=False)
    assert StoreSettings.from_env() == StoreSettings()
    assert StoreSettings().bucket_max_bytes == 256 * 2**20
    assert StoreSettings().specs_max_age == 7 * 24 * 3600
    monkeypatch.setenv("CORRAL_KV_MAX_BYTES", "4096")
    monkeypatch.setenv("CORRAL_KV_MARKER_RETENTION_SECONDS", "0.5")
    settings = StoreSettings.from_env()
    assert settings.bucket_max_bytes == 4096 and settings.marker_retention == 0.5
    monkeypatch.setenv("CORRAL_KV_MAX_BYTES", "320Mi")  # a quantity, as the docs write sizes
    assert StoreSettings.from_env().bucket_max_bytes == 320 * 2**20
    monkeypatch.setenv("CORRAL_KV_MAX_BYTES", "1e9")  # a number as read before quantities
    assert StoreSettings.from_env().bucket_max_bytes == 10**9
    monkeypatch.setenv("CORRAL_SPECS_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="CORRAL_SPECS_MAX_BYTES must be a size from 1Ki to 1Pi"):
        StoreSettings.from_env()
    monkeypatch.setenv("CORRAL_SPECS_MAX_BYTES", "1000")  # below 1Ki
    with pytest.raises(ValueError, match="not '1000'"):
        StoreSettings.from_env()
