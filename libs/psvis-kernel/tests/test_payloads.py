"""json_dict gives what MessageToDict gives, for every message type the platform has."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from psvis.common.v1 import envelope_pb2
from psvis.payloads import json_dict
from psvis.registry.v1 import registry_pb2

MESSAGES = [
    cls
    for module in (envelope_pb2, registry_pb2)
    for name in sorted(module.DESCRIPTOR.message_types_by_name)
    if isinstance(cls := getattr(module, name), type) and issubclass(cls, Message)
]
EDGES: dict[int, list[Any]] = {
    FieldDescriptor.CPPTYPE_STRING: ["", "a", "武汉 😀", 'q"\\'],
    FieldDescriptor.CPPTYPE_BOOL: [False, True],
    FieldDescriptor.CPPTYPE_INT32: [0, 1, -(2**31)],
    FieldDescriptor.CPPTYPE_UINT32: [0, 7, 2**32 - 1],
    FieldDescriptor.CPPTYPE_INT64: [0, -1, 2**63 - 1],
    FieldDescriptor.CPPTYPE_UINT64: [0, 3, 2**64 - 1],
    FieldDescriptor.CPPTYPE_DOUBLE: [0.0, -0.0, 0.1, 1e300, math.inf, -math.inf, math.nan],
}


def fill(message: Message, rng: random.Random, depth: int = 0) -> Message:
    """Sets a random choice of fields to edge values; sub-messages set but maybe empty."""
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            if field.message_type.full_name == "google.protobuf.Timestamp":
                getattr(message, field.name).FromSeconds(rng.choice([0, 1_700_000_000]))
                continue
            if depth > 2:
                continue
            if field.is_repeated:
                for _ in range(rng.randint(0, 2)):
                    fill(getattr(message, field.name).add(), rng, depth + 1)
            else:
                getattr(message, field.name).SetInParent()
                fill(getattr(message, field.name), rng, depth + 1)
        elif field.type == FieldDescriptor.TYPE_BYTES:
            value = rng.choice([b"", b"\x00\xff"])
            _set(message, field, [value, value] if field.is_repeated else value)
        else:
            edges = EDGES[field.cpp_type]
            values = [rng.choice(edges) for _ in range(rng.randint(0, 3))]
            _set(message, field, values if field.is_repeated else rng.choice(edges))
    return message


def _set(message: Message, field: FieldDescriptor, value: Any) -> None:
    if field.is_repeated:
        getattr(message, field.name).extend(value)
    else:
        setattr(message, field.name, value)


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to itself and -0.0 told from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and str(a) == str(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.DESCRIPTOR.full_name)
def test_json_dict_is_message_to_dict(cls: type[Message]) -> None:
    rng = random.Random(cls.DESCRIPTOR.full_name)
    for _ in range(60):
        message = fill(cls(), rng)
        expected = MessageToDict(message, preserving_proto_field_name=True)
        assert same(json_dict(message), expected), message


def test_well_known_types_are_left_to_message_to_dict() -> None:
    stamp = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5000)
    assert json_dict(stamp) == MessageToDict(stamp)
    value = struct_pb2.Struct()
    value.update({"a": [1, "x", None]})
    assert json_dict(value) == {"a": [1.0, "x", None]}


def test_results_are_fresh_objects() -> None:
    message = registry_pb2.ArchiveAttached(kind="design", units=["u"])
    first = json_dict(message)
    first["units"].append("changed")
    assert json_dict(message) == {"kind": "design", "units": ["u"]}
