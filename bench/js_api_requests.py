"""What asks nats-server's JetStream API, by kind and bucket: a subscriber on
`$JS.API.>` in the account counts every request it sees (direct gets included, which
the server's own `api.total` in /jsz and /varz does not count).

    .venv/bin/python bench/js_api_requests.py --nats nats://127.0.0.1:4222 [--every 5] [--top 8]

prints, every `--every` seconds, the requests per second of each kind, most first:

    t=5s 2,003/s: direct get corral_cluster 1,002/s, stream msg get corral_nodes 610/s, ...

`bench_scale.py` counts the same way while placing and while steady (its rows "JetStream
API requests by kind"). A request the server drops (its API queue full: "JetStream API
queue limit reached") was sent, and is counted here.
"""

from __future__ import annotations

import argparse
import collections
import time

import anyio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from corral.contract import names
from corral.natsio.bus import connect

API_SUBJECTS = "$JS.API.>"
_VERBS = frozenset(
    "STREAM CONSUMER DIRECT MSG GET INFO CREATE DELETE UPDATE NAMES LIST DURABLE NEXT "
    "PURGE LEADER STEPDOWN SNAPSHOT RESTORE PEER REMOVE PAUSE RESET UNPIN".split()
)


def request_kind(subject: str) -> str:
    """'consumer create corral_placements_*' for $JS.API.CONSUMER.CREATE.KV_corral_placements_3...:
    the verbs in lower case, then the stream (a bucket's without KV_; the placements
    shards as one)."""
    tokens = subject.split(".")[2:]  # past $JS.API
    verbs: list[str] = []
    while tokens and tokens[0] in _VERBS:
        verbs.append(tokens.pop(0).lower())
    if not tokens:
        return " ".join(verbs) or "account info"
    stream = tokens[0].removeprefix("KV_")
    if names.is_placements_bucket(stream) and stream != names.PLACEMENTS_BUCKET:
        stream = names.PLACEMENTS_BUCKET + "_*"  # the shards as one
    return " ".join([*verbs, stream])


class ApiRequestCounter:
    """Counts the JetStream API requests seen on a connection's subscription."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    async def start(self, nc: NATS) -> None:
        async def seen(msg: Msg) -> None:
            self.counts[request_kind(msg.subject)] += 1

        await nc.subscribe(API_SUBJECTS, cb=seen, pending_msgs_limit=1_000_000)

    def take(self) -> collections.Counter[str]:
        """The counts since the last take, and start again."""
        taken, self.counts = self.counts, collections.Counter()
        return taken


def per_second(
    counts: collections.Counter[str], seconds: float, top: int = 8, unit: str = "/s"
) -> str:
    """'2,003/s: direct get corral_cluster 1,002/s, ...' (the `top` kinds, most first);
    divided by anything else than seconds (nodes, say), with the `unit` that says so."""
    if seconds <= 0:
        return "not measured"
    total = sum(counts.values()) / seconds
    kinds = ", ".join(
        f"{kind} {count / seconds:,.{1 if unit != '/s' else 0}f}{unit}"
        for kind, count in counts.most_common(top)
    )
    rest = len(counts) - top
    return (
        f"{total:,.{1 if unit != '/s' else 0}f}{unit}"
        + (f": {kinds}" if kinds else "")
        + (f", {rest} more kind{'s' if rest > 1 else ''}" if rest > 0 else "")
    )


async def monitor(url: str, every: float, top: int) -> None:
    nc = await connect(url, name="corral-js-api-requests")
    counter = ApiRequestCounter()
    await counter.start(nc)
    began = last = time.monotonic()
    try:
        while True:
            await anyio.sleep(every)
            now = time.monotonic()
            print(f"t={now - began:.0f}s {per_second(counter.take(), now - last, top)}", flush=True)
            last = now
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nats", required=True, help="the server's client URL")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between lines")
    parser.add_argument("--top", type=int, default=8, help="kinds shown per line")
    args = parser.parse_args()
    try:
        anyio.run(monitor, args.nats, args.every, args.top)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
