"""What nats-server's memory is made of, read from its profiling port (`--profile
PORT`, on loopback: Go's net/http/pprof): the heap as Go's runtime counts it, the
JetStream file store's message-block buffers among it, and the goroutines with
their stacks. Optionally after forced collections, to tell what is live from what
Go has not collected yet.

The heap profile's text form (`?debug=1`) lists sampled allocations unscaled; they
are scaled here as `go tool pprof` scales them (runtime/pprof's scaleHeapSample), so
a sum over some call sites estimates the bytes they hold.
"""

from __future__ import annotations

import math
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

# The file store's block buffers (server/filestore.go): a cache holds one per block
# loaded or written lately, 256 KiB to 8 MiB each, from pools.
BLOCK_BUFFER_SITE: Final = "server.getMsgBlockBuf"
# A forced collection frees an expired cache; the buffer it held goes back to its pool
# (a cleanup run by that collection); a pool drops what it holds over two collections.
FREEING_COLLECTIONS: Final = 3

_RECORD = re.compile(r"^(\d+): (\d+) \[(\d+): (\d+)\] @", re.MULTILINE)
_RATE = re.compile(r"@ heap/(\d+)")
_FRAME = re.compile(r"^#\t0x[0-9a-f]+\t(\S+)\+0x", re.MULTILINE)
_STAT = re.compile(r"^# (\w+) = (\d+)", re.MULTILINE)
_STACK = re.compile(r"^# Stack = (\d+) / (\d+)", re.MULTILINE)
_GOROUTINES = re.compile(r"^goroutine profile: total (\d+)", re.MULTILINE)
_GOROUTINE_RECORD = re.compile(r"^(\d+) @", re.MULTILINE)
# Every JetStream consumer runs one goroutine here (server/consumer.go), and one more.
CONSUMER_SITE: Final = "server.(*consumer).processInboundAcks"


@dataclass(frozen=True)
class GoMemory:
    heap_alloc: int  # bytes of heap objects not yet freed (live, or garbage not collected)
    heap_kept: int  # bytes of heap spans resident but not in use (idle, not released)
    stacks: int  # bytes of goroutine stacks
    # estimated bytes of the file store's block buffers among the heap, as of the last
    # collection (the heap profile's time); a lower bound up to sampling error (a buffer
    # grown by append is counted where it grew)
    block_buffers: int
    goroutines: int
    consumers: int  # JetStream consumers (their goroutines in CONSUMER_SITE)
    collections: int  # Go's collections so far (NumGC)


def scaled(count: int, size: int, rate: int) -> float:
    """The bytes that `count` sampled allocations of `size` bytes in all stand for
    (runtime/pprof scaleHeapSample: each was sampled with probability
    1 - exp(-average size / rate))."""
    if count == 0 or size == 0:
        return 0.0
    if rate <= 1:
        return float(size)
    average = size / count
    return size / (1 - math.exp(-average / rate))


def _records_at(text: str, header: re.Pattern[str], site: str) -> Iterator[re.Match[str]]:
    """The profile's records (their header lines, matched by `header`) whose stack has a
    frame in the function `site`."""
    records = list(header.finditer(text))
    for index, record in enumerate(records):
        end = records[index + 1].start() if index + 1 < len(records) else len(text)
        if any(frame.endswith(site) for frame in _FRAME.findall(text, record.end(), end)):
            yield record


def parse_heap(text: str) -> tuple[dict[str, int], float]:
    """The runtime's memory statistics (name -> bytes or count, `Stack` as in use) and
    the estimated bytes in use allocated by the block buffers' call site."""
    found = _RATE.search(text)
    if found is None:
        raise ValueError("not a heap profile in text form (no '@ heap/RATE' header)")
    # The legacy header names twice the sampling rate (runtime/pprof writeHeapInternal).
    rate = int(found.group(1)) // 2
    stats = {name: int(value) for name, value in _STAT.findall(text)}
    stack = _STACK.search(text)
    if stack is not None:
        stats["Stack"] = int(stack.group(1))
    blocks = sum(
        scaled(int(record.group(1)), int(record.group(2)), rate)
        for record in _records_at(text, _RECORD, BLOCK_BUFFER_SITE)
    )
    for needed in ("HeapAlloc", "HeapIdle", "HeapReleased", "NumGC"):
        if needed not in stats:
            raise ValueError(f"the heap profile has no runtime.MemStats {needed}")
    return stats, blocks


def parse_goroutines(text: str) -> tuple[int, int]:
    """The goroutines in all, and those of JetStream consumers (one each)."""
    found = _GOROUTINES.search(text)
    if found is None:
        raise ValueError("not a goroutine profile in text form (no 'total N' header)")
    consumers = sum(
        int(record.group(1)) for record in _records_at(text, _GOROUTINE_RECORD, CONSUMER_SITE)
    )
    return int(found.group(1)), consumers


def _get(port: int, page: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/pprof/{page}", timeout=30) as r:
        return str(r.read().decode())


def read_go_memory(port: int, *, collect: bool = False) -> GoMemory:
    """The process's memory now; with `collect`, after FREEING_COLLECTIONS forced
    collections (pprof's gc=1), so what is left is live."""
    page = "heap?debug=1&gc=1" if collect else "heap?debug=1"
    for _ in range(FREEING_COLLECTIONS - 1 if collect else 0):
        _get(port, page)
    stats, blocks = parse_heap(_get(port, page))
    goroutines, consumers = parse_goroutines(_get(port, "goroutine?debug=1"))
    return GoMemory(
        heap_alloc=stats["HeapAlloc"],
        heap_kept=stats["HeapIdle"] - stats["HeapReleased"],
        stacks=stats.get("Stack", 0),
        block_buffers=round(blocks),
        goroutines=goroutines,
        consumers=consumers,
        collections=stats["NumGC"],
    )


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def describe(memory: GoMemory) -> str:
    """One table cell: the heap, its block buffers, the stacks."""
    return (
        f"heap {mib(memory.heap_alloc)} (block buffers {mib(memory.block_buffers)}),"
        f" free heap kept {mib(memory.heap_kept)},"
        f" stacks {mib(memory.stacks)} for {memory.goroutines:,} goroutines"
        f" ({memory.consumers:,} consumers)"
    )


__all__ = [
    "BLOCK_BUFFER_SITE",
    "CONSUMER_SITE",
    "FREEING_COLLECTIONS",
    "GoMemory",
    "describe",
    "parse_goroutines",
    "parse_heap",
    "read_go_memory",
    "scaled",
]
