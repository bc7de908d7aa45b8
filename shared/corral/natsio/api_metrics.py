"""What a service's answers to API requests (corral.api.<kind>.<verb>) cost, as
Kubernetes' apiserver_request_duration_seconds: the time from a request taken by its
handler to the reply sent, by kind, verb and result, on the service's own /metrics.

The labels are bounded: the kind and verbs a service serves are constants in its code
(a verb it does not serve counts as "unknown"), and the result is "ok" or the Reply's
reason (corral.contract.events.REASON_CODES: Invalid, NotFound, Conflict, Busy, ...).

What a client sees adds the hops through nats-server on both ways and the request's
wait for a place among the requests answered at once (corral.natsio.bus); the bench
(bench/bench_scale.py) shows both.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Histogram

from corral.contract.events import REASON_CODES, Reply

# From half a millisecond to the Kubernetes SLO of 1 s for a mutating call, and beyond.
BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

API_REQUEST_SECONDS = Histogram(
    "corral_api_request_seconds",
    "From an API request taken by its handler to its reply sent, by kind, verb and result",
    ["kind", "verb", "result"],
    buckets=BUCKETS,
)

UNKNOWN_VERB: Final = "unknown"
UNKNOWN_REASON: Final = "Unknown"


def result_of(reply: Reply) -> str:
    """The result label: "ok", or the reason of a refusal (one of REASON_CODES; any
    other, or none, is "Unknown": a label never takes a value from a message)."""
    if reply.ok:
        return "ok"
    return reply.reason if reply.reason in REASON_CODES else UNKNOWN_REASON


def observe(kind: str, verb: str, reply: Reply, seconds: float) -> None:
    API_REQUEST_SECONDS.labels(kind.lower(), verb, result_of(reply)).observe(seconds)
