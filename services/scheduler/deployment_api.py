"""The scheduler's answers to apply, scale and delete of a Deployment.

Each validates the payload whole, then writes the desired state with
compare-and-set, retrying on a conflict. Nothing is written for bad input.
"""

from __future__ import annotations

import time
import uuid

import msgspec

from corral.bus import SpecHandler
from corral.codec import InvalidPayload, decode, decode_payload, encode
from corral.events import Reply
from corral.kv import Bucket, Conflict
from corral.specs import DeleteRequest, Deployment, ScaleRequest

KIND = "Deployment"
CAS_ATTEMPTS = 10


class DeploymentAPI:
    def __init__(self, deployments: Bucket) -> None:
        self.deployments = deployments

    def handlers(self) -> dict[str, SpecHandler]:
        return {"apply": self.apply, "scale": self.scale, "delete": self.delete}

    async def apply(self, raw: bytes) -> Reply:
        try:
            wanted = decode_payload(raw, Deployment)
        except InvalidPayload as error:
            return _invalid(error)
        name = wanted.metadata.name
        for _ in range(CAS_ATTEMPTS):
            entry = await self.deployments.get(name)
            try:
                if entry is None or entry.value is None:
                    stored = self._new(wanted)
                    revision = await self.deployments.create(name, encode(stored))
                    return _accepted(name, revision, 1)
                current = _readable(entry.value)
                if current is None:
                    # What is stored cannot be read (corrupt, or from a newer corral):
                    # a whole new spec replaces it, at the next generation.
                    replaced = self._new(wanted, generation=_stored_generation(entry.value) + 1)
                    revision = await self.deployments.update(name, encode(replaced), entry.revision)
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
                    ),
                )
                revision = await self.deployments.update(name, encode(stored), entry.revision)
                return _accepted(name, revision, stored.metadata.generation)
            except Conflict:
                continue
        return _busy(name)

    async def scale(self, raw: bytes) -> Reply:
        try:
            request = decode_payload(raw, ScaleRequest)
        except InvalidPayload as error:
            return _invalid(error)
        for _ in range(CAS_ATTEMPTS):
            entry = await self.deployments.get(request.name)
            if entry is None or entry.value is None:
                return _not_found(request.name)
            current = _readable(entry.value)
            if current is None:
                return Reply(
                    ok=False,
                    kind=KIND,
                    name=request.name,
                    error=f"the stored deployment {request.name!r} cannot be read; "
                    "apply a whole spec to replace it",
                )
            if current.spec.replicas == request.replicas:
                return _accepted(
                    request.name, entry.revision, current.metadata.generation, unchanged=True
                )
            scaled = msgspec.structs.replace(
                current,
                spec=msgspec.structs.replace(current.spec, replicas=request.replicas),
                metadata=msgspec.structs.replace(
                    current.metadata, generation=current.metadata.generation + 1
                ),
            )
            try:
                revision = await self.deployments.update(
                    request.name, encode(scaled), entry.revision
                )
            except Conflict:
                continue
            return _accepted(request.name, revision, scaled.metadata.generation)
        return _busy(request.name)

    async def delete(self, raw: bytes) -> Reply:
        try:
            request = decode_payload(raw, DeleteRequest)
        except InvalidPayload as error:
            return _invalid(error)
        for _ in range(CAS_ATTEMPTS):
            entry = await self.deployments.get(request.name)
            if entry is None or entry.value is None:
                return _not_found(request.name)
            try:
                await self.deployments.delete(request.name, revision=entry.revision)
            except Conflict:
                continue
            return Reply(ok=True, kind=KIND, name=request.name, revision=entry.revision)
        return _busy(request.name)

    @staticmethod
    def _new(wanted: Deployment, generation: int = 1) -> Deployment:
        return msgspec.structs.replace(
            wanted,
            metadata=msgspec.structs.replace(
                wanted.metadata,
                generation=generation,
                uid=str(uuid.uuid4()),
                creation_timestamp=time.time(),
            ),
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
    return Reply(ok=False, kind=KIND, error=error.message, field=error.field)


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
        ok=False, kind=KIND, name=name, error=f"deployment {name!r} not found", field="name"
    )


def _busy(name: str) -> Reply:
    return Reply(
        ok=False,
        kind=KIND,
        name=name,
        error=f"deployment {name!r} kept changing under {CAS_ATTEMPTS} attempts; try again",
    )
