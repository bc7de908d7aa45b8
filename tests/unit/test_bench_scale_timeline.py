"""bench_scale.py's timeline reads the scheduler's /metrics as prometheus_client exposes
them (a counter's _total beside its _created, labelled gauges summed); a sample missing a
count, or unreadable, is no row rather than a wrong one."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BENCH = Path(__file__).parents[2] / "bench"


@pytest.fixture
def bench_scale(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # its sibling modules, as when run as a script
    return importlib.import_module("bench_scale")


def _exposition(*, nodes: bool = True, fresh: bool = True) -> str:
    registry = CollectorRegistry()
    placements = Counter("corral_placements", "placed", registry=registry)
    ready = Gauge("corral_replicas_ready", "ready", ["deployment"], registry=registry)
    placements.inc(7)
    ready.labels("default/app-1").set(3)
    ready.labels("default/app-2").set(2)
    ready.labels("default/probe").set(0)
    if nodes:
        Gauge("corral_nodes_ready", "nodes", registry=registry).set(201)
    Gauge("corral_scheduler_view_fresh", "fresh", registry=registry).set(int(fresh))
    return generate_latest(registry).decode()


def test_a_sample_holds_the_placements_the_ready_replicas_summed_the_nodes_and_the_view(
    bench_scale: ModuleType,
) -> None:
    timeline = bench_scale.Timeline()
    timeline.add(1.234, _exposition(), lambda: 0.0123)
    timeline.add(2.5, _exposition(fresh=False))  # no write meanwhile: None
    assert timeline.rows == [(1.23, 7, 5, 201, 1, 12.3), (2.5, 7, 5, 201, 0, None)]
    asked: list[str] = []
    timeline.add(3.0, "", lambda: asked.append("asked") or 1.0)  # a sample not taken
    assert asked == [] and len(timeline.rows) == 2  # its longest write kept for the next
    assert timeline.fewest_nodes_ready(2.0, 201) == "201 of 201 (1 samples)"
    assert timeline.fewest_nodes_ready(1.0, 201) == "no samples"


@pytest.mark.parametrize(
    "text",
    [
        "",  # a timed-out read
        _exposition(nodes=False),
        "corral_placements_total NaN\ncorral_nodes_ready 3.0\n",
        "corral_placements_total 1.0\ncorral_nodes_ready +Inf\n",
    ],
)
def test_a_sample_missing_a_count_or_unreadable_is_no_row(
    bench_scale: ModuleType, text: str
) -> None:
    timeline = bench_scale.Timeline()
    timeline.add(0.5, text)
    assert timeline.rows == []


def test_the_csv_has_the_header_plot_scale_reads(bench_scale: ModuleType, tmp_path: Path) -> None:
    timeline = bench_scale.Timeline()
    timeline.add(0.5, _exposition())
    timeline.add(1.0, _exposition(), lambda: 0.25)
    timeline.write_csv(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines() == [
        "seconds,placements_made,replicas_ready,nodes_ready,view_fresh,store_write_ms",
        "0.5,7,5,201,1,",  # no store write in that sample: an empty cell
        "1.0,7,5,201,1,250.0",
    ]


def _requests(observed: dict[tuple[str, str], list[float]]) -> str:
    registry = CollectorRegistry()
    seconds = Histogram(
        "corral_api_request_seconds",
        "answered",
        ["kind", "verb", "result"],
        buckets=(0.001, 0.01, 0.1, 1.0),
        registry=registry,
    )
    for (verb, result), values in observed.items():
        for value in values:
            seconds.labels("deployment", verb, result).observe(value)
    return generate_latest(registry).decode()


def test_the_answers_to_apply_are_summed_over_results_and_other_verbs_left_out(
    bench_scale: ModuleType,
) -> None:
    text = _requests(
        {
            ("apply", "ok"): [0.005] * 8,
            ("apply", "Busy"): [0.05, 0.05],
            ("delete", "ok"): [0.5] * 100,
        }
    )
    applies = bench_scale.histogram_buckets(
        text, "corral_api_request_seconds", {"kind": "deployment", "verb": "apply"}
    )
    assert applies == {0.001: 0, 0.01: 8, 0.1: 10, 1.0: 10, float("inf"): 10}
    everything = bench_scale.histogram_buckets(text, "corral_api_request_seconds")
    assert everything[float("inf")] == 110


def test_quantiles_of_the_answers_between_two_readings_interpolate_as_prometheus(
    bench_scale: ModuleType,
) -> None:
    before = {0.001: 0.0, 0.01: 8.0, 0.1: 10.0, 1.0: 10.0, float("inf"): 10.0}
    # Since: 90 more within 1-10 ms, 8 within 10-100 ms (98 in all).
    after = {0.001: 0.0, 0.01: 98.0, 0.1: 108.0, 1.0: 108.0, float("inf"): 108.0}
    quantile = bench_scale.bucket_quantile
    assert quantile(before, after, 0.5) == pytest.approx(0.001 + 0.009 * (49 / 90))
    assert quantile(before, after, 0.99) == pytest.approx(0.01 + 0.09 * ((0.99 * 98 - 90) / 8))
    assert quantile(before, before, 0.99) != quantile(before, before, 0.99)  # none: nan
    beyond = {0.001: 0.0, 0.01: 0.0, 0.1: 0.0, 1.0: 0.0, float("inf"): 5.0}
    assert quantile({}, beyond, 0.99) == 1.0  # past the last bound: that bound
    assert bench_scale.answered(before, after) == "5.9 / 89.0 ms (98 answers)"


def test_the_simulators_pass_waits_are_read_between_two_readings(
    bench_scale: ModuleType,
) -> None:
    before = {0.01: 10.0, 1.0: 10.0, 10.0: 10.0, float("inf"): 10.0}
    # Since: 50 waits within 0.01-1 s, 50 within 1-10 s.
    after = {0.01: 10.0, 1.0: 60.0, 10.0: 110.0, float("inf"): 110.0}
    assert bench_scale.pass_waits(before, after) == "1000.0 / 9820.0 ms (100 passes)"
    assert bench_scale.pass_waits(before, before) == "no passes gated"
    assert bench_scale.pass_waits({}, {}) == "no passes gated"  # a simulator without the gate


def test_answers_read_across_a_restart_or_a_new_series_count_from_zero(
    bench_scale: ModuleType,
) -> None:
    labels = {"kind": "deployment", "verb": "apply"}
    first = bench_scale.histogram_buckets(
        _requests({("apply", "ok"): [0.005] * 50}), "corral_api_request_seconds", labels
    )
    # A series that appears between the readings (the first Busy) counts from zero.
    grown = bench_scale.histogram_buckets(
        _requests({("apply", "ok"): [0.005] * 50, ("apply", "Busy"): [0.5] * 2}),
        "corral_api_request_seconds",
        labels,
    )
    assert bench_scale.answered(first, grown).endswith("(2 answers)")
    # After a restart the counts are lower than before: all of them are since.
    restarted = bench_scale.histogram_buckets(
        _requests({("apply", "ok"): [0.005] * 3}), "corral_api_request_seconds", labels
    )
    assert bench_scale.answered(first, restarted) == bench_scale.answered({}, restarted)
    assert bench_scale.answered(first, restarted).endswith("(3 answers)")
    assert bench_scale.answered(None, restarted).startswith("not read")


def test_stream_writes_per_replica_are_the_growth_of_each_stream_most_first(
    bench_scale: ModuleType,
) -> None:
    before = {
        "KV_corral_placements": 10,
        "KV_corral_replica_status": 4,
        "CORRAL_EVENTS": 0,
        "KV_corral_nodes": 7,
    }
    after = {
        "KV_corral_placements": 410,
        "KV_corral_replica_status": 804,
        "CORRAL_EVENTS": 400,
        "KV_corral_nodes": 7,  # unchanged: not shown
        "KV_corral_new": 2,  # made meanwhile: counted from zero
    }
    assert bench_scale.per_replica_writes(before, after, 400) == (
        "KV_corral_replica_status 2.00, CORRAL_EVENTS 1.00, KV_corral_placements 1.00, "
        "KV_corral_new 0.01"
    )
    assert bench_scale.per_replica_writes(before, before, 400) == "none"


def test_the_placements_shards_are_written_as_one_stream_with_their_number(
    bench_scale: ModuleType,
) -> None:
    before = {"KV_corral_placements_0": 10, "KV_corral_placements_1": 0}
    after = {
        "KV_corral_placements_0": 210,
        "KV_corral_placements_1": 100,
        "KV_corral_placements_2": 100,  # made meanwhile: counted from zero
        "KV_corral_placements_extra": 50,  # another bucket: not a shard
    }
    assert bench_scale.per_replica_writes(before, after, 400) == (
        "KV_corral_placements (3 shards) 1.00, KV_corral_placements_extra 0.12"
    )


async def test_a_probe_with_no_responders_is_a_failed_probe_and_the_run_goes_on(
    bench_scale: ModuleType,
) -> None:
    # The scheduler's requests thread reconnecting under load answers no one for a moment:
    # counted as a failed probe, as a timeout is, not the end of the run.
    from nats.errors import NoRespondersError

    from corral.contract.codec import encode
    from corral.contract.events import Reply
    from corral.natsio.kv import MemoryBucket

    class Answers:
        def __init__(self) -> None:
            self.requests = 0

        async def request(self, subject: str, payload: bytes, **_: float) -> object:
            self.requests += 1
            if self.requests == 1:
                raise NoRespondersError
            if self.requests == 3:
                raise anyio.get_cancelled_exc_class()  # ends the run after two probes

            class Msg:
                data = encode(Reply(ok=True, kind="Deployment", name="probe"))

            return Msg()

    answers = Answers()
    probe = bench_scale.Probe(answers, MemoryBucket("probe"))
    with pytest.raises(anyio.get_cancelled_exc_class()):
        await probe.run(0)
    assert probe.round == 3
    assert probe.failed == ["internal error: no responders (none subscribed)"]


async def test_the_probe_tells_its_longest_store_write_since_it_was_last_asked(
    bench_scale: ModuleType,
) -> None:
    # The timeline's store_write_ms: a stalled store shows while the write still hangs.
    from corral.natsio.kv import MemoryBucket

    class Answers:
        async def request(self, subject: str, payload: bytes, **_: float) -> object:
            from corral.contract.codec import encode
            from corral.contract.events import Reply

            class Msg:
                data = encode(Reply(ok=True, kind="Deployment", name="probe"))

            return Msg()

    release = anyio.Event()
    writing = anyio.Event()

    class Hanging(MemoryBucket):
        async def put(self, key: str, value: bytes) -> int:
            writing.set()
            await release.wait()
            return await super().put(key, value)

    probe = bench_scale.Probe(Answers(), Hanging("probe"))
    assert probe.longest_write() is None  # no write yet: no news of the store
    async with anyio.create_task_group() as tg:
        tg.start_soon(probe.run, 0)
        await writing.wait()
        await anyio.sleep(0.05)
        assert probe.longest_write() >= 0.05  # the write under way, so far
        release.set()
        while probe.round < 3:
            await anyio.lowlevel.checkpoint()
        assert probe.longest_write() >= 0.05  # the hung write, done: its whole length
        while probe.round < 5:
            await anyio.lowlevel.checkpoint()
        assert 0 < probe.longest_write() < 0.05  # since the last look: the quick ones
        tg.cancel_scope.cancel()


def test_a_run_that_did_not_converge_is_told_apart_from_any_other_failure(
    bench_scale: ModuleType,
) -> None:
    # A run that did not converge still saves and prints its table (why it did not);
    # any other failure is raised as it is.
    not_converged = bench_scale.NotConverged("not converged in 120 s")
    assert bench_scale._is_not_converged(not_converged)
    assert bench_scale._is_not_converged(BaseExceptionGroup("run", [not_converged]))
    nested = BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [not_converged])])
    assert bench_scale._is_not_converged(nested)
    assert not bench_scale._is_not_converged(RuntimeError("the hollow nodes did not register"))
    assert not bench_scale._is_not_converged(
        BaseExceptionGroup("run", [not_converged, RuntimeError("a probe crashed")])
    )
