"""Container logs over NATS (docs/api.md, "Logs").

A client asks the node agent that runs a replica for its container's log: a
LogRequest on corral.logs.<node> (names.logs_subject) with a reply inbox. The agent
answers on that inbox with LogChunks, numbered from 0, each at most
MAX_LOG_CHUNK_BYTES of text, the last with `end` (or `error`). Flow control: the
first chunk names a `control` subject where the client acknowledges what it got
(LogAck); the agent never has more than LOG_WINDOW_CHUNKS unacknowledged chunks out,
so a slow client slows the agent's reading of the engine and nothing piles up.
While following, the agent sends an empty chunk every LOG_KEEPALIVE_SECONDS when the
log is quiet; the client acknowledges every chunk. Whichever side hears nothing from
the other for LOG_IDLE_SECONDS ends the stream (a client killed mid-follow costs the
agent one idle period at most); a client that stops on purpose says so at once
(LogAck.stop).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from corral.contract.codec import described_pattern
from corral.contract.names import DEFAULT_NAMESPACE
from corral.contract.specs import MAX_COUNTER, Counter, DnsLabel, EpochSeconds

MAX_LOG_CHUNK_BYTES: Final = 64 * 1024  # the text of one chunk, in UTF-8 bytes
LOG_WINDOW_CHUNKS: Final = 8  # chunks out without an acknowledgement, at most
LOG_KEEPALIVE_SECONDS: Final = 2.0
LOG_IDLE_SECONDS: Final = 10.0

# `(?!\n)`: Python's `$` also matches before a final newline (specs._whole says more).
_CONTAINER_ID_PATTERN: Final = described_pattern(
    r"^[0-9A-Za-z]*$(?!\n)", "not a container id (letters and digits)"
)
_ContainerId = Annotated[str, msgspec.Meta(pattern=_CONTAINER_ID_PATTERN, max_length=64)]


class _Message(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    rename="camel",
):
    """Base of the log messages: immutable, camelCase on the wire, strict."""


class LogRequest(_Message, frozen=True):
    """The log of one replica's container, asked of its node's agent on
    corral.logs.<node> with a reply inbox (`corral logs`)."""

    replica: DnsLabel
    namespace: DnsLabel = DEFAULT_NAMESPACE
    # The container the client saw in the replica's status ("": the replica's current
    # one on this node); a prefix of the id is enough.
    container_id: _ContainerId = ""
    follow: bool = False  # keep streaming new output until the client stops
    tail: Counter | None = None  # the last N lines; None: all (at most what an int64 holds)
    # Epoch seconds; None: all.
    since: EpochSeconds | None = None
    timestamps: bool = False  # each line starts with its RFC 3339 time, as Docker's


class LogPiece(_Message, frozen=True):
    """Output of the container, in the order it was written: a line, several, or part
    of one (a line ends with its newline)."""

    text: str
    stream: Literal["stdout", "stderr"] = "stdout"


class LogChunk(_Message, frozen=True):
    """One answer of a log stream, on the request's reply inbox."""

    seq: Counter  # 0, 1, 2 ... with no gap
    node: str = ""  # the node whose agent answers
    pieces: list[LogPiece] = []  # empty: a keepalive
    control: str = ""  # on chunk 0: where the client sends its LogAcks
    end: bool = False  # the last chunk: the log ended (or, without follow, was all sent)
    error: str = ""  # the last chunk: why the log could not be (fully) given
    field: str = ""  # the request's offending field, with `error`


class LogAck(_Message, frozen=True):
    """The client's acknowledgement, on the stream's `control` subject: every chunk up to
    `seq` arrived. `stop`: the client is done, the agent ends the stream now."""

    seq: Annotated[int, msgspec.Meta(ge=-1, le=MAX_COUNTER)] = -1
    stop: bool = False
