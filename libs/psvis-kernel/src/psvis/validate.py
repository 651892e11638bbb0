"""Checks of field formats shared by every service; failures are INVALID_ARGUMENT."""

from __future__ import annotations

import re
from datetime import date

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from psvis.errors import InvalidArgument

IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
ADDRESS_CODE = re.compile(r"[0-9A-Za-z]{1,32}")
CALENDAR_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# Business dates of a video system: far enough back for any system still filed, far enough
# ahead for any plan, and never near date.max, where a deadline's arithmetic would overflow.
EARLIEST, LATEST = date(1900, 1, 1), date(2199, 12, 31)

# Limits every request is held to before any service sees it (bounded()); a service's own
# checks are tighter where a field has a meaning (a name, an identifier).
MAX_TEXT = 4000  # characters in any one string field
MAX_ITEMS = 10_000  # entries in any one repeated field (a large system's cameras)
MAX_BYTES = 1 << 20  # any one bytes field
# C0 controls but tab, line feed and carriage return; DEL; C1 controls
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
SHOWN = 40  # characters of a bad value quoted back in a message


def shown(value: str) -> str:
    """A bad value as quoted in an error message: its repr, cut short if it is long."""
    if len(value) <= SHOWN:
        return repr(value)
    return f"{value[:SHOWN]!r}... ({len(value)} characters)"


def identifier(value: str, field: str) -> str:
    if not IDENTIFIER.fullmatch(value):
        raise InvalidArgument(
            f"{field} {shown(value)} must be 1-64 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return value


def required(value: str, field: str, max_len: int = 200) -> str:
    if not value.strip():
        raise InvalidArgument(f"{field} is required")
    if len(value) > max_len:
        raise InvalidArgument(f"{field} is longer than {max_len} characters")
    return value


def iso_date(value: str, field: str, *, optional: bool = False) -> date | None:
    if not value and optional:
        return None
    try:
        if not CALENDAR_DATE.fullmatch(value):
            raise ValueError(value)
        day = date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"{field} {shown(value)} is not a date like 2024-03-01") from None
    if not EARLIEST <= day <= LATEST:
        raise InvalidArgument(f"{field} {value} is out of range: {EARLIEST} to {LATEST}")
    return day


def need_date(value: str, field: str) -> date:
    parsed = iso_date(value, field)
    assert parsed is not None
    return parsed


def sha256_hex(value: str, field: str) -> str:
    if not SHA256_HEX.fullmatch(value):
        raise InvalidArgument(f"{field} must be 64 lowercase hex digits (a SHA-256)")
    return value


def address_code(value: str, field: str) -> str:
    if not ADDRESS_CODE.fullmatch(value):
        raise InvalidArgument(f"{field} {shown(value)} must be 1-32 letters or digits")
    return value


def address_code_prefix(value: str, field: str = "address_code_prefix") -> str:
    """A query's address-code filter: the beginning of an address code, or empty (any)."""
    return value and address_code(value, field)


def coordinates(longitude: float, latitude: float, field: str) -> None:
    if not (-180.0 <= longitude <= 180.0) or not (-90.0 <= latitude <= 90.0):
        raise InvalidArgument(
            f"{field} ({longitude}, {latitude}) is out of range: longitude -180..180, latitude -90..90"
        )
    if longitude != longitude or latitude != latitude:  # NaN
        raise InvalidArgument(f"{field} is not a number")


def one_of(value: str, allowed: set[str] | frozenset[str], field: str) -> str:
    if value not in allowed:
        raise InvalidArgument(
            f"{field} {shown(value)} must be one of: {', '.join(sorted(allowed))}"
        )
    return value


def bounded(message: Message, path: str = "") -> None:
    """Every field of a request within the limits above, and no blank entry in a list of strings.

    Strings hold no control characters but tab and line breaks; the error names the field by
    its path in the request (`system.cameras[2].position`).
    """
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        if field.is_repeated:
            if len(value) > MAX_ITEMS:
                raise InvalidArgument(f"{name} has {len(value)} entries; at most {MAX_ITEMS}")
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                continue  # no request has maps; their keys would need checks of their own
            for i, item in enumerate(value):
                _bounded_value(field, item, f"{name}[{i}]", in_list=True)
        else:
            _bounded_value(field, value, name, in_list=False)


def _bounded_value(field: FieldDescriptor, value: object, name: str, *, in_list: bool) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        bounded(value, name)  # type: ignore[arg-type]
    elif field.type == FieldDescriptor.TYPE_STRING:
        text = str(value)
        if len(text) > MAX_TEXT:
            raise InvalidArgument(f"{name} is longer than {MAX_TEXT} characters")
        if CONTROL.search(text):
            raise InvalidArgument(f"{name} holds a control character: {shown(text)}")
        if in_list and not text.strip():
            raise InvalidArgument(f"{name} is blank")
    elif field.type == FieldDescriptor.TYPE_BYTES and len(value) > MAX_BYTES:  # type: ignore[arg-type]
        raise InvalidArgument(f"{name} is longer than {MAX_BYTES} bytes")
