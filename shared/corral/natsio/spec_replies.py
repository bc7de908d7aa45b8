"""The replies of a spec API (corral.natsio.spec_api), in its kind's words: every
refusal with its reason, and the texts and fields the tests of each kind pin."""

from __future__ import annotations

from typing import Any

from corral.contract.codec import InvalidPayload
from corral.contract.events import (
    REASON_BUSY,
    REASON_CONFLICT,
    REASON_INVALID,
    REASON_NOT_FOUND,
    REASON_SUPERSEDED,
    Reply,
)
from corral.natsio.kv import Entry

CAS_ATTEMPTS = 10


class SpecReplies:
    """The replies about one `kind` (its noun in messages: the kind in lower case)."""

    kind: str

    @property
    def noun(self) -> str:
        return self.kind.lower()

    def reply(self, *, ok: bool, reason: str = "", **fields: Any) -> Reply:
        """A Reply about this kind (a refusal always with its `reason`)."""
        return Reply(kind=self.kind, ok=ok, reason=reason, **fields)

    def invalid(self, name: str, error: str, field: str) -> Reply:
        return self.reply(ok=False, name=name, reason=REASON_INVALID, error=error, field=field)

    def invalid_payload(self, error: InvalidPayload) -> Reply:
        return self.reply(ok=False, reason=REASON_INVALID, error=error.message, field=error.field)

    def accepted(
        self, name: str, revision: int, generation: int, *, unchanged: bool = False
    ) -> Reply:
        return self.reply(
            ok=True, name=name, revision=revision, generation=generation, unchanged=unchanged
        )

    def not_found(self, name: str) -> Reply:
        return self.reply(
            ok=False,
            name=name,
            reason=REASON_NOT_FOUND,
            error=f"{self.noun} {name!r} not found",
            field="name",
        )

    def busy(self, name: str) -> Reply:
        return self.reply(
            ok=False,
            name=name,
            reason=REASON_BUSY,
            error=f"{self.noun} {name!r} kept changing under {CAS_ATTEMPTS} attempts; try again",
        )

    def superseded(self, name: str, why: str) -> Reply:
        return self.reply(
            ok=True,
            name=name,
            unchanged=True,
            reason=REASON_SUPERSEDED,
            message=f"older than what is stored: {why}",
        )

    def stale(self, name: str, precondition: int, entry: Entry | None, field: str) -> Reply | None:
        """The conflict when a precondition (a revision the writer last saw) does not hold."""
        if not precondition:
            return None
        if entry is None or entry.value is None:
            error = f"resourceVersion {precondition} is stale: {self.noun} {name!r} does not exist"
        elif entry.revision != precondition:
            error = (
                f"resourceVersion {precondition} is stale: the stored {self.noun} is at "
                f"revision {entry.revision}"
            )
        else:
            return None
        return self.reply(
            ok=False,
            name=name,
            revision=0 if entry is None else entry.revision,
            reason=REASON_CONFLICT,
            error=error,
            field=field,
        )
