"""bench/go_memory.py reads nats-server's heap and goroutine profiles (text form):
the runtime's statistics, the file store's block buffers scaled as pprof scales its
samples, and the goroutine count; anything else is refused by name."""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).parents[2] / "bench"

# Two records sampled at 512 KiB (the header names twice the rate): one block buffer
# of 4 MiB (inside the store's write path) and 10 small objects elsewhere.
HEAP = """heap profile: 11: 4195304 [20: 9000000] @ heap/1048576
1: 4194304 [2: 8388608] @ 0x1 0x2 0x3
#\t0x1\tgithub.com/nats-io/nats-server/v2/server.init.func9+0x2c\tfilestore.go:1061
#\t0x2\tgithub.com/nats-io/nats-server/v2/server.getMsgBlockBuf+0x5a\tfilestore.go:1079
#\t0x3\tgithub.com/nats-io/nats-server/v2/server.(*msgBlock).writeMsgRecordLocked+0x1\tfilestore.go:1

10: 1000 [18: 1800] @ 0x4
#\t0x4\tgithub.com/nats-io/nats-server/v2/server.(*Server).createInternalClient+0x1\tserver.go:1


# runtime.MemStats
# Alloc = 163107632
# HeapAlloc = 163107632
# HeapSys = 327647232
# HeapIdle = 138149888
# HeapInuse = 189497344
# HeapReleased = 45449216
# Stack = 24674304 / 24674304
# NumGC = 80
"""

GOROUTINES = """goroutine profile: total 4446
2121 @ 0x48bb2a 0x464077
# labels: {"account":"$G", "consumer":"018ROKhw", "type":"consumer"}
#\t0x8e56e5\tgithub.com/nats-io/nats-server/v2/server.(*consumer).processInboundAcks+0x1\tc.go:1

2121 @ 0x48bb2a 0x464078
#\t0x8e56e6\tgithub.com/nats-io/nats-server/v2/server.(*consumer).loopAndGatherMsgs+0x1\tc.go:2

6 @ 0x48bb2a 0x464079
#\t0x8e56e7\tgithub.com/nats-io/nats-server/v2/server.(*client).readLoop+0x1\tclient.go:3
"""


@pytest.fixture
def go_memory(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("go_memory")


def test_statistics_and_block_buffers_are_read(go_memory: ModuleType) -> None:
    stats, blocks = go_memory.parse_heap(HEAP)
    assert stats["HeapAlloc"] == 163107632
    assert stats["HeapIdle"] - stats["HeapReleased"] == 92700672
    assert stats["Stack"] == 24674304
    assert stats["NumGC"] == 80
    # Only the block buffer's record counts, scaled by 1 / (1 - exp(-4 MiB / 512 KiB)).
    assert blocks == pytest.approx(4194304 / (1 - math.exp(-8)))
    assert go_memory.parse_goroutines(GOROUTINES) == (4446, 2121)  # all, consumers


def test_samples_are_scaled_as_pprof_scales_them(go_memory: ModuleType) -> None:
    # A small allocation is rarely sampled, so one sample stands for many bytes.
    assert go_memory.scaled(1, 100, 524288) == pytest.approx(100 / (1 - math.exp(-100 / 524288)))
    assert go_memory.scaled(0, 0, 524288) == 0.0
    assert go_memory.scaled(3, 300, 1) == 300.0  # every allocation recorded


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("goroutine profile: total 3\n", "no '@ heap/RATE' header"),
        (HEAP.replace("# NumGC = 80\n", ""), "NumGC"),
        (HEAP.replace("# HeapIdle = 138149888\n", ""), "HeapIdle"),
    ],
)
def test_what_is_not_a_heap_profile_is_refused_by_name(
    go_memory: ModuleType, text: str, names: str
) -> None:
    with pytest.raises(ValueError, match=names):
        go_memory.parse_heap(text)


def test_what_is_not_a_goroutine_profile_is_refused(go_memory: ModuleType) -> None:
    with pytest.raises(ValueError, match="total N"):
        go_memory.parse_goroutines(HEAP)


def test_describe_names_each_part(go_memory: ModuleType) -> None:
    memory = go_memory.GoMemory(
        heap_alloc=163 * 2**20,
        heap_kept=88 * 2**20,
        stacks=24 * 2**20,
        block_buffers=64 * 2**20,
        goroutines=4446,
        consumers=2121,
        collections=80,
    )
    assert go_memory.describe(memory) == (
        "heap 163 MiB (block buffers 64 MiB), free heap kept 88 MiB,"
        " stacks 24 MiB for 4,446 goroutines (2,121 consumers)"
    )


@pytest.mark.parametrize("collect", [False, True])
def test_a_reading_asks_for_the_collections_it_needs_and_no_more(
    go_memory: ModuleType, monkeypatch: pytest.MonkeyPatch, collect: bool
) -> None:
    pages: list[tuple[int, str]] = []

    def get(port: int, page: str) -> str:
        pages.append((port, page))
        return GOROUTINES if page.startswith("goroutine") else HEAP

    monkeypatch.setattr(go_memory, "_get", get)
    memory = go_memory.read_go_memory(6061, collect=collect)
    heap = "heap?debug=1&gc=1" if collect else "heap?debug=1"
    forced = go_memory.FREEING_COLLECTIONS if collect else 1
    assert pages == [(6061, heap)] * forced + [(6061, "goroutine?debug=1")]
    assert memory == go_memory.GoMemory(
        heap_alloc=163107632,
        heap_kept=138149888 - 45449216,  # idle and not released
        stacks=24674304,
        block_buffers=round(4194304 / (1 - math.exp(-8))),
        goroutines=4446,
        consumers=2121,
        collections=80,
    )
