"""bench/js_api_requests.py names each JetStream API request by its verbs and the stream
(a bucket's name without KV_, the placements shards as one) and prints rates, most first."""

from __future__ import annotations

import collections
import importlib
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).parents[2] / "bench"


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("js_api_requests")


@pytest.mark.parametrize(
    ("subject", "kind"),
    [
        (
            "$JS.API.DIRECT.GET.KV_corral_cluster.$KV.corral_cluster.cluster",
            "direct get corral_cluster",
        ),
        ("$JS.API.STREAM.MSG.GET.KV_corral_nodes", "stream msg get corral_nodes"),
        (
            "$JS.API.CONSUMER.CREATE.KV_corral_placements_3.c1.$KV.corral_placements_3.n1.>",
            "consumer create corral_placements_*",
        ),
        ("$JS.API.STREAM.INFO.KV_corral_placements", "stream info corral_placements"),
        (
            "$JS.API.CONSUMER.DURABLE.CREATE.CORRAL_SPECS.scheduler",
            "consumer durable create CORRAL_SPECS",
        ),
        ("$JS.API.CONSUMER.MSG.NEXT.CORRAL_SPECS.scheduler", "consumer msg next CORRAL_SPECS"),
        ("$JS.API.INFO", "info"),
    ],
)
def test_a_request_is_named_by_its_verbs_and_stream(
    requests: ModuleType, subject: str, kind: str
) -> None:
    assert requests.request_kind(subject) == kind


def test_rates_are_per_second_most_first_and_the_rest_counted(requests: ModuleType) -> None:
    counts = collections.Counter({"a": 10, "b": 30, "c": 20})
    assert requests.per_second(counts, 10, top=2) == "6/s: b 3/s, c 2/s, 1 more kind"
    assert requests.per_second(collections.Counter(), 5) == "0/s"
    assert requests.per_second(counts, 0) == "not measured"
    assert (
        requests.per_second(counts, 20, top=1, unit=" per node")
        == "3.0 per node: b 1.5 per node, 2 more kinds"
    )
