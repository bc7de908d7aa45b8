from __future__ import annotations

from pathlib import Path

import pytest

from corral.natsio.bus import kv_replicas
from corral.natsio.config import DEFAULT_NATS_URL, resolve_nats_url


def test_flag_then_env_then_file_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/corral/config.toml there
    monkeypatch.delenv("CORRAL_CONFIG", raising=False)
    monkeypatch.delenv("CORRAL_NATS_URL", raising=False)
    assert resolve_nats_url() == DEFAULT_NATS_URL
    config.write_text('nats_url = "nats://10.0.0.1:4222"\n')
    monkeypatch.setenv("CORRAL_CONFIG", str(config))
    assert resolve_nats_url() == "nats://10.0.0.1:4222"
    monkeypatch.setenv("CORRAL_NATS_URL", "nats://env:4222")
    assert resolve_nats_url() == "nats://env:4222"
    assert resolve_nats_url("nats://flag:4222") == "nats://flag:4222"


def test_a_broken_config_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text("nats_url = [\n")
    monkeypatch.setenv("CORRAL_CONFIG", str(config))
    monkeypatch.delenv("CORRAL_NATS_URL", raising=False)
    with pytest.raises(ValueError, match=r"config\.toml: not valid TOML"):
        resolve_nats_url()


def test_kv_replicas_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_KV_REPLICAS", raising=False)
    assert kv_replicas() == 1
    monkeypatch.setenv("CORRAL_KV_REPLICAS", "3")
    assert kv_replicas() == 3
    monkeypatch.setenv("CORRAL_KV_REPLICAS", "three")
    with pytest.raises(ValueError, match="CORRAL_KV_REPLICAS must be a whole number"):
        kv_replicas()


def test_urls_that_are_not_nats_and_a_missing_named_config_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CORRAL_NATS_URL", raising=False)
    monkeypatch.setenv("CORRAL_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ValueError, match=r"missing\.toml, which is not a file"):
        resolve_nats_url()
    with pytest.raises(ValueError, match=r"--nats: 'http://x' is not a NATS URL"):
        resolve_nats_url("http://x")
    assert resolve_nats_url("nats://a:4222,nats://b:4222") == "nats://a:4222,nats://b:4222"
