"""What a node agent remembers on its own disk: the cluster this node belongs to.

The record is written the first time the agent reads a cluster identity from its
state store, and changed only by an operator's decision (`corral node adopt` /
`corral node reset`). A store that carries another id (it was lost and made anew,
or the agent points at another cluster) is not this node's: the agent touches
nothing until an operator decides (docs/safety.md).

`adopted` lists earlier clusters whose containers on this node the operator
adopted: they are kept (orphans) until a Deployment claims them. `claimed` lists
the ids of those a placement claimed: from then on they are this node's own for
good (removed when unplaced, stopped when cut off), whatever their label says.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import msgspec

FILE_NAME = "cluster.json"


class UnreadableLocalRecord(Exception):
    """The local record exists but cannot be read: never guess which cluster this is."""


class LocalRecord(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    node: str
    cluster_id: str
    adopted: list[str] = []
    claimed: list[str] = []  # container ids of adopted clusters that placements claimed


class LocalRecordFile:
    """The record in `<state dir>/cluster.json`, written atomically; in memory when
    the state dir is None (unit tests)."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = None if state_dir is None else state_dir / FILE_NAME
        self._memory: LocalRecord | None = None

    def load(self) -> LocalRecord | None:
        if self.path is None:
            return self._memory
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise UnreadableLocalRecord(f"{self.path}: {error}") from None
        try:
            return msgspec.json.decode(raw, type=LocalRecord)
        except msgspec.DecodeError as error:
            raise UnreadableLocalRecord(f"{self.path}: {error}") from None

    def save(self, record: LocalRecord) -> None:
        if self.path is None:
            self._memory = record
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".cluster-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(msgspec.json.encode(record))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
