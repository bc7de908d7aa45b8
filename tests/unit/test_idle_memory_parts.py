"""The parts that keep a service's idle memory down (docs/architecture.md, "Idle
memory"), each against the thing it stands in for: the metadata stand-in against
importlib.metadata, the endpoint's text format against prometheus_client's, the
heap release against the process's resident memory. What each whole process loads
is pinned in test_service_imports.py."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import prometheus_client
import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    Summary,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    StateSetMetricFamily,
    UnknownMetricFamily,
)

from corral.natsio import lean, service
from corral.natsio.http_endpoint import CONTENT_TYPE_LATEST, listen, text_format
from tests.waiting import eventually


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# --- importlib.metadata's stand-in ----------------------------------------------------


@pytest.mark.parametrize("distribution", ["nats-py", "aiodocker", "msgspec", "prometheus_client"])
def test_installed_version_reads_what_importlib_metadata_reads(distribution: str) -> None:
    assert lean.installed_version(distribution) == importlib.metadata.version(distribution)


def test_installed_version_is_none_for_a_distribution_that_is_not_installed() -> None:
    assert lean.installed_version("no-such-distribution-corral") is None


def test_installed_version_takes_the_first_folder_on_the_path_and_reads_egg_info(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "Some_Lib.egg-info").mkdir(parents=True)
    (first / "Some_Lib.egg-info" / "PKG-INFO").write_text(
        "Metadata-Version: 2.1\nName: Some-Lib\nVersion: 1.2.3\n\nVersion: 9.9.9\n"
    )
    (second / "some_lib-4.5.6.dist-info").mkdir(parents=True)
    (second / "some_lib-4.5.6.dist-info" / "METADATA").write_text(
        "Name: some-lib\nVersion: 4.5.6\n"
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), str(first), str(second)])
    assert lean.installed_version("some.lib") == "1.2.3"
    monkeypatch.setattr(sys, "path", [str(second), str(first)])
    assert lean.installed_version("Some_Lib") == "4.5.6"


def test_the_metadata_stand_in_answers_anything_else_from_the_real_module() -> None:
    stand_in = lean.MetadataStandIn()
    assert stand_in.version("nats-py") == importlib.metadata.version("nats-py")
    assert stand_in.metadata is importlib.metadata.metadata
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        stand_in.version("no-such-distribution-corral")
    # What a library catches through the stand-in catches the real module's error.
    with pytest.raises(stand_in.PackageNotFoundError):
        raise importlib.metadata.PackageNotFoundError("x")


def test_a_module_imported_without_metadata_leaves_the_real_module_to_later_imports() -> None:
    out = run_python(
        """
        import sys
        from corral.natsio.lean import import_without_metadata
        import_without_metadata("nats")
        before = "importlib.metadata" in sys.modules
        import importlib.metadata, nats.aio.client
        print(before, nats.aio.client.__version__ == importlib.metadata.version("nats-py"),
              type(importlib.metadata).__name__)
        """
    )
    assert out == "False True module"


# --- prometheus_client without its exposition ----------------------------------------


def test_the_core_of_prometheus_client_is_left_alone_once_the_package_is_loaded() -> None:
    assert "prometheus_client" in sys.modules  # this process imported it whole
    assert lean.import_prometheus_client_core() is False


def test_the_core_names_are_those_the_package_itself_exports() -> None:
    exported = set(prometheus_client.__all__)
    for part, names in lean.PROMETHEUS_PARTS.items():
        module = importlib.import_module(f"prometheus_client.{part}")
        for name in names:
            assert name in exported, name
            assert getattr(prometheus_client, name) is getattr(module, name), name


def every_kind_of_metric() -> CollectorRegistry:
    registry = CollectorRegistry()
    things = Counter(
        "corral_things", 'things\nwith a \\ "help"', ["kind", "odd"], registry=registry
    )
    things.labels("a", 'q"uo\nte\\').inc(3)
    things.labels("b", "ünïcode").inc(0.000001)
    Gauge("corral_level", "a gauge", registry=registry).set(1e21)
    seconds = Histogram("corral_seconds", "a histogram", registry=registry)
    seconds.observe(0.3)
    seconds.observe(7)
    Summary("corral_sum", "a summary", registry=registry).observe(2)
    Info("corral_build", "info", registry=registry).info({"version": "1"})
    Enum("corral_state", "an enum", states=["a", "b"], registry=registry)
    PlatformCollector(registry=registry)

    class Custom:
        def collect(self) -> object:
            yield GaugeHistogramMetricFamily(
                "corral_gh", "gauge histogram", buckets=[("1", 4), ("+Inf", 5)], gsum_value=3
            )
            yield StateSetMetricFamily("corral_ss", "state set", {"x": True, "y": False})
            yield UnknownMetricFamily("corral_unknown", "unknown", value=2)
            stamped = CounterMetricFamily("corral_stamped", "with a timestamp", labels=["l"])
            stamped.add_metric(["v"], 1, timestamp=123.456)
            yield stamped

    registry.register(Custom())  # type: ignore[arg-type]
    return registry


def test_the_text_format_is_byte_for_byte_prometheus_clients() -> None:
    registry = every_kind_of_metric()
    assert text_format(registry) == prometheus_client.generate_latest(registry)
    assert text_format(CollectorRegistry()) == prometheus_client.generate_latest(
        CollectorRegistry()
    )


def test_the_content_type_is_prometheus_clients_latest() -> None:
    assert CONTENT_TYPE_LATEST == prometheus_client.CONTENT_TYPE_LATEST


# --- the endpoint's listener --------------------------------------------------------------


def test_the_endpoint_listens_on_an_ip_address_without_a_worker_thread() -> None:
    out = run_python(
        """
        import functools, threading, anyio
        from corral.natsio.http_endpoint import serve_http

        async def main():
            async with anyio.create_task_group() as tg:
                serve = functools.partial(serve_http, "127.0.0.1", 0, lambda: (True, ""))
                port = await tg.start(serve)
                stream = await anyio.connect_tcp("127.0.0.1", port)
                await stream.send(b"GET /healthz HTTP/1.1\\r\\n\\r\\n")
                answer = await stream.receive()
                print(answer.split(b"\\r\\n")[0].decode(), threading.active_count())
                tg.cancel_scope.cancel()

        anyio.run(main)
        """
    )
    assert out == "HTTP/1.1 200 OK 1"


async def test_the_endpoint_still_listens_on_a_host_name() -> None:
    listener = await listen("localhost", 0)
    async with listener:
        assert listener.listeners


# --- the aiohttp stack's switches -----------------------------------------------------


def test_the_http_stack_goes_pure_python_except_a_websocket_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.endswith("_NO_EXTENSIONS")}
    monkeypatch.setattr(os, "environ", environment)  # this test's own, thrown away after
    lean.use_pure_python_http_stack(websocket=True)
    assert os.environ["FROZENLIST_NO_EXTENSIONS"] == "1"
    assert "AIOHTTP_NO_EXTENSIONS" not in os.environ  # NATS frames go through its parser
    environment["FROZENLIST_NO_EXTENSIONS"] = ""  # the user's choice: kept
    lean.use_pure_python_http_stack(websocket=False)
    assert os.environ["FROZENLIST_NO_EXTENSIONS"] == ""
    assert os.environ["AIOHTTP_NO_EXTENSIONS"] == "1"


# --- handing the free heap back -------------------------------------------------------


def test_releasing_free_memory_hands_the_freed_heap_back_to_the_system() -> None:
    out = run_python(
        """
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
        from corral.natsio.service import release_free_memory
        blocks = [bytes(3000) for _ in range(20000)]  # about 60 MiB in the C heap
        kept = blocks[::64]  # a few stay: the rest are holes under them
        del blocks
        held = rss()
        released = release_free_memory()
        print(released, held - rss())
        """
    )
    released, freed_mib = out.split()
    assert released == "True"
    assert int(freed_mib) > 30


async def test_a_running_service_releases_its_free_heap_now_and_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float] = []
    monkeypatch.setattr(service, "release_free_memory", lambda: calls.append(anyio.current_time()))
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.release_memory_now_and_then, 0.01)

        async def count() -> int:
            return len(calls)

        await eventually(count, lambda n: n >= 3)
        tg.cancel_scope.cancel()
