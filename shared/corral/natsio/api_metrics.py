"""What a service's answers to API requests (corral.api.<kind>.<verb>) cost, as
Kubernetes' apiserver_request_duration_seconds: the time from a request read off the
service's subscription, its wait for a place among the requests answered at once
included, to the reply sent, by kind, verb and result, on the service's own /metrics.

The labels are bounded: the kind and verbs a service serves are constants in its code
(a verb it does not serve counts as "unknown"), and the result is "ok" or the Reply's
reason (corral.contract.events.REASON_CODES: Invalid, NotFound, Conflict, Busy, ...).

What a client sees adds the hops through nats-server on both ways, and the time a
request waits in the client library's queue before the service reads it; the bench
(bench/bench_scale.py) shows both. An observation never fails an answer: it is made
after the reply is sent, and a failure to make it is logged.
"""

from __future__ import annotations

import logging
from typing import Final

from prometheus_client import Histogram

from corral.contract.events import REASON_CODES, Reply

log = logging.getLogger(__name__)

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
    0.04,
    0.05,
    0.06,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

API_REQUEST_SECONDS = Histogram(
    "corral_api_request_seconds",
    "From an API request read by the service to its reply sent, by kind, verb and result",
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
    try:
        API_REQUEST_SECONDS.labels(kind.lower(), verb, result_of(reply)).observe(seconds)
    except Exception:  # a handler's odd answer: never the end of the service
        log.debug("observing the answer to %s %s failed", kind, verb, exc_info=True)
