"""The scheduler's answers to apply, scale and delete of a Deployment.

Apply and delete follow the rules every spec API follows (corral.natsio.spec_api;
docs/api.md, "Durable specs"): the payload validated whole, compare-and-set writes
retried on a conflict, the `resourceVersion` precondition, and durable specs older
than what is stored skipped. Scale, the Deployment's own verb, follows them too.

A Deployment whose template names a ReadWriteOncePod claim (as the claim asks, or as
its bound volume says) may have at most one replica: an apply or a scale asking for more
is refused naming `spec.replicas` (docs/volumes.md, "Replicas with volumes"). A
container (the label CONTAINER_LABEL: `corral create container`) is never scaled.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from corral.contract.codec import InvalidPayload, decode_payload, encode
from corral.contract.events import REASON_INVALID, Reply
from corral.contract.specs import (
    CHANGE_CAUSE_ANNOTATION,
    CONTAINER_LABEL,
    Deployment,
    ScaleRequest,
    new_template_problem,
)
from corral.natsio.bus import DurableSpecHandler
from corral.natsio.kv import Bucket, Conflict
from corral.natsio.spec_api import SpecAPI, SpecPosition, no_stream
from corral.natsio.spec_replies import CAS_ATTEMPTS
from corral_scheduler.auto_rollback import ROLLBACK_CAUSE

KIND = "Deployment"


class DeploymentAPI(SpecAPI[Deployment]):
    kind = KIND
    type = Deployment
    brought_back = "the deployment"

    def __init__(
        self,
        bucket: Bucket,
        progress: Bucket | None = None,
        spec_position: SpecPosition = no_stream,
        *,
        exclusive_claim: Callable[[Deployment], str | None] | None = None,
    ) -> None:
        """`exclusive_claim`: the ReadWriteOncePod claim a Deployment's template names, or
        None (the scheduler's view of the claims: ControlLoop.exclusive_claim)."""
        super().__init__(bucket, progress, spec_position)
        self.exclusive_claim = exclusive_claim

    def one_replica_only(self, deployment: Deployment) -> Reply | None:
        """The refusal of more than one replica using a ReadWriteOncePod claim, or None."""
        replicas = deployment.spec.replicas
        if replicas <= 1 or self.exclusive_claim is None:
            return None
        claim = self.exclusive_claim(deployment)
        if claim is None:
            return None
        return self.invalid(
            deployment.metadata.name,
            f"`spec.replicas` {replicas}: the template uses persistentvolumeclaim "
            f"{claim!r}, which is ReadWriteOncePod: only one replica may use it",
            "spec.replicas",
        )

    def settle(self, wanted: Deployment, current: Deployment | None) -> Deployment | Reply:
        refused = self.one_replica_only(wanted)
        if refused is not None:
            return refused
        problem = new_template_problem(wanted.spec.template)
        if problem is not None:
            field, why = problem
            return self.invalid(wanted.metadata.name, why, f"spec.template.{field}")
        return without_copied_rollback_cause(wanted, current)

    def handlers(self) -> dict[str, DurableSpecHandler]:
        return {"apply": self.apply, "scale": self.scale, "delete": self.delete}

    async def scale(self, raw: bytes, sequence: int = 0) -> Reply:
        try:
            request = decode_payload(raw, ScaleRequest)
        except InvalidPayload as error:
            return self.invalid_payload(error)
        name = request.name
        skipped = await self.handled_before(request.key, name, sequence)
        if skipped is not None:
            return skipped
        position = await self.position(sequence)
        for _ in range(CAS_ATTEMPTS):
            entry = await self.bucket.get(request.key)
            stale = self.stale(name, request.resource_version, entry, "resourceVersion")
            if stale is not None:
                return stale
            if entry is None or entry.value is None:
                return self.not_found(name)
            current = self.readable(entry.value)
            if current is None:
                return self.reply(
                    ok=False,
                    name=name,
                    reason=REASON_INVALID,
                    error=f"the stored deployment {name!r} cannot be read; "
                    "apply a whole spec to replace it",
                )
            older = self.older_than_stored(name, sequence, current)
            if older is not None:
                return older
            if CONTAINER_LABEL in current.metadata.labels:
                return self.invalid(
                    name,
                    f"`replicas`: {name!r} is a container (corral create container): it "
                    "runs one replica, placed once, and is not scaled (docs/containers.md)",
                    "replicas",
                )
            if current.spec.replicas == request.replicas:
                return self.accepted(
                    name, entry.revision, current.metadata.generation, unchanged=True
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
            refused = self.one_replica_only(scaled)
            if refused is not None:
                return refused
            try:
                revision = await self.update(request.key, encode(scaled), entry.revision)
            except Conflict:
                continue
            return self.accepted(name, revision, scaled.metadata.generation)
        return self.busy(name)


def without_copied_rollback_cause(wanted: Deployment, current: Deployment | None) -> Deployment:
    """`wanted` without an automatic rollback's change cause when it brings a template of
    its own: the cause came with a spec read back (`get -o yaml`, edited, applied), and
    kept it would make the user's template pass for a rollback's, which is never rolled
    back (auto_rollback: no ping-pong). Only the scheduler's own rollback write, which
    does not come through here, puts that cause on a new template."""
    annotations = wanted.metadata.annotations
    if not annotations.get(CHANGE_CAUSE_ANNOTATION, "").startswith(ROLLBACK_CAUSE):
        return wanted
    if current is not None and (
        current.spec.template.template_hash() == wanted.spec.template.template_hash()
    ):
        return wanted  # the same template: the cause still says how it came
    kept = {key: value for key, value in annotations.items() if key != CHANGE_CAUSE_ANNOTATION}
    return msgspec.structs.replace(
        wanted, metadata=msgspec.structs.replace(wanted.metadata, annotations=kept)
    )
