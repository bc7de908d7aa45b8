"""Encoding and decoding, with encoders and decoders built once and reused.

Public payloads are JSON. decode_payload() turns every way a payload can be wrong
(too large, not JSON, wrong kind, missing or mistyped field, invalid value) into
one InvalidPayload error whose message names the field.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, TypeVar

import msgspec

from corral.names import MAX_SPEC_BYTES

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_AT_PATH = re.compile(r"\s*- at `\$(?P<path>[^`]*)`$")
_UNKNOWN_FIELD = re.compile(r"unknown field `(?P<field>[^`]+)`")
_MISSING_FIELD = re.compile(r"missing required field `(?P<field>[^`]+)`")
_CHECK_FIELD = re.compile(r"^`(?P<field>[^`]+)`")


class InvalidPayload(ValueError):
    """A payload that is rejected whole. `field` is a dotted path, or '' when none applies."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


@cache
def _decoder(kind: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(kind)


def decode(raw: bytes, kind: type[T]) -> T:
    """Decode a trusted record (from KV or a stream we write). Raises msgspec errors."""
    result: T = _decoder(kind).decode(raw)  # type: ignore[arg-type]
    return result


def _dotted(path: str) -> str:
    # "$.spec.template[0].image" arrives as ".spec.template[0].image"
    return path.lstrip(".")


def decode_payload(raw: bytes, kind: type[T], *, max_bytes: int = MAX_SPEC_BYTES) -> T:
    """Decode an untrusted public payload, or raise InvalidPayload naming what is wrong."""
    if len(raw) > max_bytes:
        raise InvalidPayload(f"payload is {len(raw)} bytes, larger than the limit of {max_bytes}")
    if not raw.strip():
        raise InvalidPayload("payload is empty: expected a JSON object")
    try:
        return decode(raw, kind)
    except msgspec.ValidationError as error:
        text = str(error)
        where = _AT_PATH.search(text)
        parent = _dotted(where["path"]) if where else ""
        message = _AT_PATH.sub("", text)
        field = parent
        for pattern in (_UNKNOWN_FIELD, _MISSING_FIELD, _CHECK_FIELD):
            named = pattern.search(message)
            if named:
                field = f"{parent}.{named['field']}" if parent else named["field"]
        if field == "kind" and message.startswith("Invalid value"):
            config = getattr(kind, "__struct_config__", None)
            expected = getattr(config, "tag", kind.__name__)
            message = f"{message}: expected kind {expected!r}"
        location = f" at `{field}`" if field else ""
        raise InvalidPayload(f"invalid {kind.__name__}{location}: {message}", field) from None
    except msgspec.DecodeError as error:
        raise InvalidPayload(f"malformed JSON: {error}") from None
