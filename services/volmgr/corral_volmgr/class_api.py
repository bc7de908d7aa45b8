"""volmgr's answers about StorageClasses (corral.api.storageclass.*, and the durable
corral.spec.storageclass.*), by the rules of corral_volmgr.spec_api.

As in Kubernetes, a class's provisioner, parameters, reclaimPolicy and
volumeBindingMode never change once made (its labels and annotations may): volumes
made by it keep what they were made with. volmgr makes the class `local` at start
when it is missing (corral.io/local-volume, WaitForFirstConsumer, Delete, marked
default). The parameters of a corral.io/docker-volume class are checked at apply as
the volume it makes would be (its driver and option names and values), naming
`parameters.<key>`.
"""

from __future__ import annotations

import anyio

from corral.contract.codec import InvalidPayload, decode_payload, encode
from corral.contract.events import Reply
from corral.contract.specs import DeleteRequest, ObjectMeta
from corral.contract.volume_specs import (
    DEFAULT_CLASS_ANNOTATION,
    DEFAULT_STORAGE_CLASS,
    PROVISIONER_DOCKER,
    PROVISIONER_LOCAL,
    PersistentVolume,
    StorageClass,
)
from corral.natsio.kv import Bucket, Mirror
from corral_volmgr.spec_api import Refusal, SpecAPI, SpecPosition, camel, no_stream

KIND = "StorageClass"
IMMUTABLE = ("provisioner", "parameters", "reclaim_policy", "volume_binding_mode")


def _trial_volume_problem(docker_volume: dict[str, object]) -> InvalidPayload | None:
    trial = {
        "kind": "PersistentVolume",
        "metadata": {"name": "trial"},
        "spec": {"capacity": {"storage": 1}, "dockerVolume": docker_volume},
    }
    try:
        decode_payload(encode(trial), PersistentVolume)
    except InvalidPayload as error:
        return error
    return None


def check_parameters(storage_class: StorageClass) -> None:
    """A Refusal naming `parameters.<key>` when a corral.io/docker-volume class's
    parameters would make a volume that is not valid (as corral_volmgr.provisioning
    makes it: `driver`, the others its options)."""
    if storage_class.provisioner != PROVISIONER_DOCKER:
        return
    options = dict(storage_class.parameters)
    driver = options.pop("driver", "local")
    error = _trial_volume_problem({"driver": driver, "options": options})
    if error is None:
        return
    field = "parameters"
    if error.field.endswith(".driver"):
        field = "parameters.driver"
    else:
        for key, value in options.items():
            if _trial_volume_problem({"driver": driver, "options": {key: value}}) is not None:
                field = f"parameters.{key}"
                break
    why = error.message.split(": ", 1)[-1]
    raise Refusal(
        field,
        f"`{field}` of storageclass {storage_class.metadata.name!r}: {why} (the volumes it "
        "makes could not be read)",
    )


def local_class() -> StorageClass:
    """The class volmgr makes at start when it is missing."""
    return StorageClass(
        metadata=ObjectMeta(
            name=DEFAULT_STORAGE_CLASS, annotations={DEFAULT_CLASS_ANNOTATION: "true"}
        ),
        provisioner=PROVISIONER_LOCAL,
        reclaim_policy="Delete",
        volume_binding_mode="WaitForFirstConsumer",
    )


class StorageClassAPI(SpecAPI[StorageClass]):
    kind = KIND
    type = StorageClass

    def __init__(
        self,
        classes: Mirror[StorageClass],
        *,
        lock: anyio.Lock,
        progress: Bucket | None = None,
        spec_position: SpecPosition = no_stream,
    ) -> None:
        super().__init__(
            classes, lock=lock, views=[], progress=progress, spec_position=spec_position
        )

    def decide(self, wanted: StorageClass, current: StorageClass | None) -> StorageClass:
        check_parameters(wanted)
        if current is None:
            return wanted
        for field in IMMUTABLE:
            if getattr(wanted, field) != getattr(current, field):
                name = camel(field)
                raise Refusal(
                    name,
                    f"`{name}` of storageclass {wanted.metadata.name!r} cannot change "
                    f"(it is {getattr(current, field)!r}); delete the class and make it again",
                )
        return wanted

    def delete_key(self, request: DeleteRequest) -> str:
        return request.name  # classes are cluster-wide: the namespace is ignored

    async def ensure_default(self) -> Reply | None:
        """Make the class `local` when it is missing; the reply when one was made or
        refused, None when it exists."""
        if DEFAULT_STORAGE_CLASS in self.mirror.items:
            return None
        if DEFAULT_STORAGE_CLASS in self.mirror.unreadable:
            return None
        return await self.apply(encode(local_class()))


__all__ = ["KIND", "StorageClassAPI", "check_parameters", "local_class"]
