"""netmgr's lease (corral.natsio.lease): one holder; a standby takes over only after the
record stood still for the lease's length on its own clock; a holder whose record was
taken stops."""

from __future__ import annotations

import anyio

from corral.contract.codec import decode
from corral.natsio.kv import MemoryBucket
from corral.natsio.lease import Lease, LeaseRecord


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_standby_takes_over_only_once_the_record_stood_still_for_the_lease() -> None:
    bucket = MemoryBucket("leases")
    clock = Clock()
    holder = Lease(bucket, "a", service="netmgr", lease_seconds=10, clock=clock)
    standby = Lease(bucket, "b", service="netmgr", lease_seconds=10, clock=clock)
    assert await holder.try_acquire()
    assert not await standby.try_acquire()
    clock.now += 9
    assert not await standby.try_acquire()
    # the holder renews: the standby's wait starts again
    assert await holder.try_acquire()
    clock.now += 2
    assert not await standby.try_acquire()
    clock.now += 9
    assert not await standby.try_acquire()
    clock.now += 1.5
    assert await standby.try_acquire() and standby.held


async def test_a_holder_whose_record_was_taken_cancels_what_it_runs() -> None:
    bucket = MemoryBucket("leases")
    holder = Lease(bucket, "a", service="netmgr", renew_seconds=0.01)
    assert await holder.try_acquire()
    entry = await bucket.get(holder.key)
    assert entry is not None
    await bucket.update(holder.key, b'{"holder":"b"}', entry.revision)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder.keep, tg.cancel_scope)
            await anyio.sleep_forever()
    assert not holder.held


async def test_a_released_lease_is_taken_at_the_next_try() -> None:
    bucket = MemoryBucket("leases")
    holder = Lease(bucket, "a", service="netmgr")
    standby = Lease(bucket, "b", service="netmgr")
    assert await holder.try_acquire()
    assert not await standby.try_acquire()
    await holder.release()
    assert await standby.try_acquire()


async def test_each_service_has_its_own_lease_key() -> None:
    """The lease lives in the shared layer (corral.natsio.lease): netmgr's and volmgr's
    cluster parts each hold their own at once."""
    bucket = MemoryBucket("leases")
    netmgr = Lease(bucket, "a", service="netmgr")
    volmgr = Lease(bucket, "b", service="volmgr")
    assert (netmgr.key, volmgr.key) == ("lease.netmgr", "lease.volmgr")
    assert await netmgr.try_acquire() and await volmgr.try_acquire()


async def test_a_released_lease_leaves_its_record_with_no_holder_and_is_taken_at_once() -> None:
    """A clean stop hands the lease back without deleting it: the service still shows
    as part of the cluster while it restarts or fails over (the node agents go on
    waiting for netmgr's drain records), and a standby takes it at its next try."""
    bucket = MemoryBucket("leases")
    holder = Lease(bucket, "a", service="netmgr")
    assert await holder.try_acquire()
    await holder.release()
    entry = await bucket.get(holder.key)
    assert entry is not None and entry.value is not None
    assert decode(entry.value, LeaseRecord).holder == ""
    assert await Lease(bucket, "b", service="netmgr").try_acquire()
