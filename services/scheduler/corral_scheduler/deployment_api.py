"""The scheduler's answers to apply, scale and delete of a Deployment.

Each validates the payload whole, then writes the desired state with
compare-and-set, retrying on a conflict. Nothing is written for bad input.

Two more rules keep writes from going backwards (docs/api.md, "Durable specs"):

- a precondition: `resourceVersion` (metadata.resourceVersion of an apply, or of a
  scale or delete request), when not 0, must be the stored KV revision;
- a durable spec (from the CORRAL_SPECS stream, `sequence` > 0) older than what is
  stored is skipped: every stored Deployment records the stream sequence it came
  from (metadata.specSequence; a request records the stream's newest sequence at
  the time), and a request's delete is remembered in corral.natsio.spec_progress before
  the object is deleted (when it cannot be, nothing is deleted: a retryable error).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import msgspec

from corral.contract import names
from corral.contract.codec import InvalidPayload, decode, decode_payload, encode
from corral.contract.events import (
    REASON_BUSY,
    REASON_CONFLICT,
    REASON_INTERNAL,
    REASON_INVALID,
    REASON_NOT_FOUND,
    REASON_SUPERSEDED,
    Reply,
)
from corral.contract.specs import DeleteRequest, Deployment, ScaleRequest
from corral.natsio.bus import DurableSpecHandler, is_store_full, store_full_reply
from corral.natsio.kv import Bucket, Conflict, Entry
from corral.natsio.spec_progress import progress_key, read_progress, remember_delete

KIND = "Deployment"
CAS_ATTEMPTS = 10
log = logging.getLogger(__name__)

# The newest CORRAL_SPECS sequence of this kind (corral.natsio.bus.spec_stream_position).
SpecPosition = Callable[[], Awaitable[int]]


async def _no_stream() -> int:
    return 0


class DeploymentAPI:
    def __init__(
        self,
        deployments: Bucket,
        progress: Bucket | None = None,
        spec_position: SpecPosition = _no_stream,
    ) -> None:
        """`progress`: the bucket of corral.natsio.spec_progress (corral_leases); without it,
        only the stored objects' own sequences guard against older durable specs."""
        self.deployments = deployments
        self.progress = progress
        self.spec_position = spec_position

    def handlers(self) -> dict[str, DurableSpecHandler]:
        return {"apply": self.apply, "scale": self.scale, "delete": self.delete}

    async def _position(self, sequence: int) -> int:
        """The sequence to record with a write: the durable spec's own, or for a
        request the stream's newest (every durable spec up to it is older)."""
        return sequence if sequence else await self.spec_position()

    async def _superseded(self, key: str, name: str, sequence: int) -> Reply | None:
        """A durable spec already covered by the progress record: handled before, or
        older than a request's delete of the same object (`key`)."""
        if not sequence or self.progress is None:
            return None
        progress, _ = await read_progress(self.progress, KIND)
        newer = progress.superseded_by(key, sequence)
        if not newer:
            return None
        what = "handled before" if sequence <= progress.applied else "deleted since"
        return _superseded(name, f"{what} (stream sequence {newer})")

    async def apply(self, raw: bytes, sequence: int = 0) -> Reply:
        try:
            wanted = decode_payload(raw, Deployment)
        except InvalidPayload as error:
            return _invalid(error)
        name = wanted.metadata.name
        key = wanted.key
        skipped = await self._superseded(key, name, sequence)
        if skipped is not None:
            return skipped
        position = await self._position(sequence)
        precondition = wanted.metadata.resource_version
        for _ in range(CAS_ATTEMPTS):
            entry = await self.deployments.get(key)
            current = None if entry is None or entry.value is None else _readable(entry.value)
            older = None if current is None else _older_than_stored(name, sequence, current)
            if older is not None:
                return older
            stale = _stale(name, precondition, entry, "metadata.resourceVersion")
            if stale is not None:
                return stale
            try:
                if entry is None or entry.value is None:
                    stored = self._new(wanted, position)
                    revision = await self.deployments.create(key, encode(stored))
                    return _accepted(name, revision, 1)
                if current is None:
                    # What is stored cannot be read (corrupt, or from a newer corral):
                    # a whole new spec replaces it, at the next generation.
                    replaced = self._new(
                        wanted, position, generation=_stored_generation(entry.value) + 1
                    )
                    revision = await self.deployments.update(key, encode(replaced), entry.revision)
                    return _accepted(name, revision, replaced.metadata.generation)
                if (current.spec, current.metadata.labels) == (wanted.spec, wanted.metadata.labels):
                    return _accepted(
                        name, entry.revision, current.metadata.generation, unchanged=True
                    )
                stored = msgspec.structs.replace(
                    wanted,
                    metadata=msgspec.structs.replace(
                        current.metadata,
                        labels=wanted.metadata.labels,
                        generation=current.metadata.generation + 1,
                        resource_version=0,
                        spec_sequence=max(position, current.metadata.spec_sequence),
                    ),
                )
                revision = await self.deployments.update(key, encode(stored), entry.revision)
                return _accepted(name, revision, stored.metadata.generation)
            except Conflict:
                continue
        return _busy(name)

    async def scale(self, raw: bytes, sequence: int = 0) -> Reply:
        try:
            request = decode_payload(raw, ScaleRequest)
        except InvalidPayload as error:
            return _invalid(error)
        skipped = await self._superseded(request.key, request.name, sequence)
        if skipped is not None:
            return skipped
        position = await self._position(sequence)
        for _ in range(CAS_ATTEMPTS):
            entry = await self.deployments.get(request.key)
            stale = _stale(request.name, request.resource_version, entry, "resourceVersion")
            if stale is not None:
                return stale
            if entry is None or entry.value is None:
                return _not_found(request.name)
            current = _readable(entry.value)
            if current is None:
                return Reply(
                    ok=False,
                    kind=KIND,
                    name=request.name,
                    reason=REASON_INVALID,
                    error=f"the stored deployment {request.name!r} cannot be read; "
                    "apply a whole spec to replace it",
                )
            older = _older_than_stored(request.name, sequence, current)
            if older is not None:
                return older
            if current.spec.replicas == request.replicas:
                return _accepted(
                    request.name, entry.revision, current.metadata.generation, unchanged=True
                )
            scaled = msgspec.structs.replace(
                current,
                spec=msgspec.structs.replace(current.spec, replicas=request.replicas),
                metadata=msgspec.structs.replace(
                    current.metadata,
                    generation=current.metadata.generation + 1,
                    spec_sequence=max(position, current.metadata.spec_sequence),
                ),
            )
            try:
                revision = await self.deployments.update(
                    request.key, encode(scaled), entry.revision
                )
            except Conflict:
                continue
            return _accepted(request.name, revision, scaled.metadata.generation)
        return _busy(request.name)

    async def delete(self, raw: bytes, sequence: int = 0) -> Reply:
        try:
            request = decode_payload(raw, DeleteRequest)
        except InvalidPayload as error:
            return _invalid(error)
        skipped = await self._superseded(request.key, request.name, sequence)
        if skipped is not None:
            return skipped
        position = await self._position(sequence)
        remembered = False
        for _ in range(CAS_ATTEMPTS):
            entry = await self.deployments.get(request.key)
            stale = _stale(request.name, request.resource_version, entry, "resourceVersion")
            if stale is not None:
                return stale
            if entry is None or entry.value is None:
                return _not_found(request.name)
            current = _readable(entry.value)
            if current is not None:
                older = _older_than_stored(request.name, sequence, current)
                if older is not None:
                    return older
            if not remembered and not sequence and self.progress is not None and position:
                # A durable spec of this name still waiting in the stream is older than
                # this delete: it must not bring the Deployment back. Remembered before
                # the delete, and no delete without it.
                failed = await self._remember_delete(request.key, request.name, position)
                if failed is not None:
                    return failed
                remembered = True
            try:
                await self.deployments.delete(request.key, revision=entry.revision)
            except Conflict:
                continue
            return Reply(ok=True, kind=KIND, name=request.name, revision=entry.revision)
        return _busy(request.name)

    async def _remember_delete(self, key: str, name: str, position: int) -> Reply | None:
        """Remember a request's delete in the progress record; the retryable refusal
        (nothing deleted) when that fails."""
        assert self.progress is not None
        try:
            await remember_delete(self.progress, KIND, key, position)
        except Exception as error:
            log.warning("could not remember the delete of %s", name, exc_info=True)
            if is_store_full(error):
                return store_full_reply(error)
            return Reply(
                ok=False,
                kind=KIND,
                name=name,
                reason=REASON_BUSY if isinstance(error, Conflict) else REASON_INTERNAL,
                error=(
                    f"deployment {name!r} was not deleted: the delete could not be recorded "
                    f"in {self.progress.name}/{progress_key(KIND)} ({type(error).__name__}: "
                    f"{error}), and without it an older spec still waiting in "
                    f"{names.SPEC_STREAM} could bring the deployment back; try again"
                ),
            )
        return None

    @staticmethod
    def _new(wanted: Deployment, position: int, generation: int = 1) -> Deployment:
        return msgspec.structs.replace(
            wanted,
            metadata=msgspec.structs.replace(
                wanted.metadata,
                generation=generation,
                uid=str(uuid.uuid4()),
                creation_timestamp=time.time(),
                resource_version=0,
                spec_sequence=position,
            ),
        )


def _stale(name: str, precondition: int, entry: Entry | None, field: str) -> Reply | None:
    """The conflict when a precondition (a revision the writer last saw) does not hold."""
    if not precondition:
        return None
    if entry is None or entry.value is None:
        error = f"resourceVersion {precondition} is stale: deployment {name!r} does not exist"
    elif entry.revision != precondition:
        error = (
            f"resourceVersion {precondition} is stale: the stored deployment is at "
            f"revision {entry.revision}"
        )
    else:
        return None
    return Reply(
        ok=False,
        kind=KIND,
        name=name,
        revision=0 if entry is None else entry.revision,
        reason=REASON_CONFLICT,
        error=error,
        field=field,
    )


def _older_than_stored(name: str, sequence: int, current: Deployment) -> Reply | None:
    stored = current.metadata.spec_sequence
    if sequence and sequence <= stored:
        return _superseded(name, f"the stored deployment is newer (stream sequence {stored})")
    return None


def _superseded(name: str, why: str) -> Reply:
    return Reply(
        ok=True,
        kind=KIND,
        name=name,
        unchanged=True,
        reason=REASON_SUPERSEDED,
        message=f"older than what is stored: {why}",
    )


def _accepted(name: str, revision: int, generation: int, *, unchanged: bool = False) -> Reply:
    return Reply(
        ok=True,
        kind=KIND,
        name=name,
        revision=revision,
        generation=generation,
        unchanged=unchanged,
    )


def _invalid(error: InvalidPayload) -> Reply:
    return Reply(ok=False, kind=KIND, reason=REASON_INVALID, error=error.message, field=error.field)


def _readable(raw: bytes) -> Deployment | None:
    try:
        return decode(raw, Deployment)
    except msgspec.DecodeError:
        return None


def _stored_generation(raw: bytes) -> int:
    """The generation of a record that does not decode as a Deployment, if it has one."""
    try:
        document = msgspec.json.decode(raw)
        generation = document["metadata"]["generation"]
    except (msgspec.DecodeError, KeyError, TypeError):
        return 0
    return generation if isinstance(generation, int) and generation >= 0 else 0


def _not_found(name: str) -> Reply:
    return Reply(
        ok=False,
        kind=KIND,
        name=name,
        reason=REASON_NOT_FOUND,
        error=f"deployment {name!r} not found",
        field="name",
    )


def _busy(name: str) -> Reply:
    return Reply(
        ok=False,
        kind=KIND,
        name=name,
        reason=REASON_BUSY,
        error=f"deployment {name!r} kept changing under {CAS_ATTEMPTS} attempts; try again",
    )
