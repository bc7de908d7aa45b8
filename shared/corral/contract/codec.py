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

from corral.contract.names import MAX_SPEC_BYTES

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
# "... - at `$.spec.replicas`"; in a mapping: "... - at `key` in `$.metadata.labels`"
# for a key, "... - at `$.metadata.labels[...]`" for a value (msgspec names neither)
_AT_PATH = re.compile(r"\s*- at (?P<key>`key` in )?`\$(?P<path>[^`]*)`$")
_PATTERN = re.compile(r"^Expected `str` matching regex (?P<pattern>.+)$")
_UNKNOWN_FIELD = re.compile(r"unknown field `(?P<field>.*)`\Z", re.DOTALL)  # the client's
_MISSING_FIELD = re.compile(r"missing required field `(?P<field>[^`]+)`")
_CHECK_FIELD = re.compile(r"^`(?P<field>[^`]+)`(?:: )?")

# An error's field and whole message are at most this long (they may quote the input).
MAX_FIELD_CHARS = 256
MAX_MESSAGE_CHARS = 1024
_MAX_QUOTED_CHARS = 80

# repr(pattern) as msgspec quotes it -> (pattern, what it means, for people)
_PATTERN_MEANINGS: dict[str, tuple[str, str]] = {}


def described_pattern(pattern: str, meaning: str) -> str:
    """Register what a msgspec.Meta pattern means; returns the pattern.

    decode_payload() then says `meaning` where msgspec would print the regex."""
    _PATTERN_MEANINGS[repr(pattern)] = (pattern, meaning)
    return pattern


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
    try:
        result: T = _decoder(kind).decode(raw)  # type: ignore[arg-type]
    # msgspec lets these two through: invalid UTF-8 in a string, and a deeply nested
    # value it skips (as the value of a tag field)
    except UnicodeDecodeError as error:
        raise msgspec.DecodeError(f"JSON is malformed: not UTF-8: {error}") from None
    except RecursionError:
        raise msgspec.DecodeError("JSON is malformed: nested too deeply") from None
    return result


def _dotted(path: str) -> str:
    # "$.spec.template[0].image" arrives as ".spec.template[0].image"
    return path.removesuffix("[...]").lstrip(".")


def _printable(text: str, limit: int) -> str:
    """An error may quote what the client sent (an unknown field's name): escape what a
    terminal would act on, and keep it short."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _offender(raw: bytes, path: str, pattern: str, in_key: bool) -> str | None:
    """The first key (or value) of the mapping at `path` that `pattern` refuses:
    msgspec does not say which one it was."""
    try:
        mapping: Any = msgspec.json.decode(raw)
        for part in path.lstrip(".").split("."):
            mapping = mapping[part]
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, KeyError, TypeError):
        return None
    if not isinstance(mapping, dict):
        return None
    for key, value in mapping.items():
        text = key if in_key else value
        if isinstance(text, str) and re.search(pattern, text) is None:
            return (
                repr(text)
                if len(text) <= _MAX_QUOTED_CHARS
                else repr(text[:_MAX_QUOTED_CHARS]) + "..."
            )
    return None


def _explained(raw: bytes, message: str, path: str, in_key: bool, in_value: bool) -> str:
    """msgspec's message, with a registered pattern's meaning in place of the regex, and
    for a mapping's key or value the one refused."""
    described = _PATTERN.match(message)
    known = _PATTERN_MEANINGS.get(described["pattern"]) if described else None
    if known is not None:
        pattern, message = known
        if in_key or in_value:
            offender = _offender(raw, path.removesuffix("[...]"), pattern, in_key)
            if offender is not None:
                return f"{'key' if in_key else 'value'} {offender}: {message}"
    if in_key:
        return f"{message} (in a key)"
    if in_value:
        return f"{message} (in a value)"
    return message


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
        path = where["path"] if where else ""
        parent = _dotted(path)
        message = _explained(
            raw,
            _AT_PATH.sub("", text),
            path,
            in_key=bool(where and where["key"]),
            in_value=path.endswith("[...]"),
        )
        field = parent
        for pattern in (_UNKNOWN_FIELD, _MISSING_FIELD, _CHECK_FIELD):
            named = pattern.search(message)
            if named:
                name = named["field"] or '""'
                field = f"{parent}.{name}" if parent else name
                if pattern is _CHECK_FIELD and named.group(0).endswith(": "):
                    message = message[named.end() :]  # "`cpu`: ..." names the field once
        if field == "kind" and message.startswith("Invalid value"):
            config = getattr(kind, "__struct_config__", None)
            expected = getattr(config, "tag", kind.__name__)
            message = f"{message}: expected kind {expected!r}"
        field = _printable(field, MAX_FIELD_CHARS)
        location = f" at `{field}`" if field else ""
        full = f"invalid {kind.__name__}{location}: {message}"
        raise InvalidPayload(_printable(full, MAX_MESSAGE_CHARS), field) from None
    except msgspec.DecodeError as error:
        raise InvalidPayload(f"malformed JSON: {error}") from None
