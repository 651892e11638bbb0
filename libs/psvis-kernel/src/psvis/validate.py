"""Checks of field formats shared by every service; failures are INVALID_ARGUMENT."""

from __future__ import annotations

import re
from datetime import date

from psvis.errors import InvalidArgument

IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
ADDRESS_CODE = re.compile(r"[0-9A-Za-z]{1,32}")
CALENDAR_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def identifier(value: str, field: str) -> str:
    if not IDENTIFIER.fullmatch(value):
        raise InvalidArgument(
            f"{field} {value!r} must be 1-64 letters, digits, '.', '_', ':' or '-', "
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
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"{field} {value!r} is not a date like 2024-03-01") from None


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
        raise InvalidArgument(f"{field} {value!r} must be 1-32 letters or digits")
    return value


def coordinates(longitude: float, latitude: float, field: str) -> None:
    if not (-180.0 <= longitude <= 180.0) or not (-90.0 <= latitude <= 90.0):
        raise InvalidArgument(
            f"{field} ({longitude}, {latitude}) is out of range: longitude -180..180, latitude -90..90"
        )
    if longitude != longitude or latitude != latitude:  # NaN
        raise InvalidArgument(f"{field} is not a number")


def one_of(value: str, allowed: set[str] | frozenset[str], field: str) -> str:
    if value not in allowed:
        raise InvalidArgument(f"{field} {value!r} must be one of: {', '.join(sorted(allowed))}")
    return value
