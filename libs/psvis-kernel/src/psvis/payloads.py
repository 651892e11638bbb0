"""Decode an envelope's payload into its protobuf message class; messages as proto3 JSON values."""

from __future__ import annotations

import functools
import keyword
import math
from collections.abc import Callable
from typing import Any, cast

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from psvis.common.v1 import envelope_pb2 as pb


@functools.cache
def message_class(type_name: str) -> type[Message]:
    pool = descriptor_pool.Default()  # type: ignore[no-untyped-call]
    descriptor = pool.FindMessageTypeByName(type_name)
    return message_factory.GetMessageClass(descriptor)


def decode_payload(env: pb.EventEnvelope) -> Message:
    return message_class(env.type).FromString(env.payload)


ToJson = Callable[[Any], dict[str, Any]]


def json_dict(message: Message) -> dict[str, Any]:
    """What MessageToDict(message, preserving_proto_field_name=True) gives, several times faster.

    Messages with maps, enums, bytes, 32-bit floats or extensions, and the well-known types, are
    left to MessageToDict itself.
    """
    return converter(type(message))(message)


def converter(cls: type[Message]) -> ToJson:
    """json_dict for messages of class `cls`, generated on first use."""
    convert = _CONVERTERS.get(cls)
    if convert is None:
        convert = _CONVERTERS[cls] = _converter(cast(Descriptor, cls.DESCRIPTOR))
    return convert


_CONVERTERS: dict[type[Message], ToJson] = {}
_SAME = {
    FieldDescriptor.CPPTYPE_STRING,
    FieldDescriptor.CPPTYPE_BOOL,
    FieldDescriptor.CPPTYPE_INT32,
    FieldDescriptor.CPPTYPE_UINT32,
}
_INT64 = {FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64}


def _converter(descriptor: Descriptor) -> ToJson:
    """Straight-line code for one message type: a few times faster than walking ListFields.

    Sub-messages call their own converter directly (it is made here first), not json_dict.
    """
    special = descriptor.full_name.startswith("google.protobuf.") or descriptor.extension_ranges
    fields = sorted(descriptor.fields, key=lambda f: f.number)
    parts = [None if special else _field_source(f) for f in fields]
    if any(p is None for p in parts):
        return _message_to_dict
    namespace: dict[str, Any] = {"_double": _double, "_signed": _signed, "isfinite": math.isfinite}
    for field in fields:
        if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            sub = message_factory.GetMessageClass(field.message_type)
            # a type that contains itself is still being made: it goes through json_dict
            namespace[_sub_name(field)] = json_dict if sub in _MAKING else _made(sub)
    source = "def convert(m):\n    out = {}\n" + "".join(map(str, parts)) + "    return out\n"
    exec(compile(source, f"<json_dict {descriptor.full_name}>", "exec"), namespace)
    convert: ToJson = namespace["convert"]
    return convert


_MAKING: set[type[Message]] = set()


def _made(cls: type[Message]) -> ToJson:
    _MAKING.add(cls)
    try:
        return converter(cls)
    finally:
        _MAKING.discard(cls)


def _sub_name(field: FieldDescriptor) -> str:
    return f"_to_json_{field.number}"


def _field_source(field: FieldDescriptor) -> str | None:
    """Code that copies `field` of message m into out as proto3 JSON; None: not handled here."""
    name = repr(field.name)
    value = f"getattr(m, {name})" if keyword.iskeyword(field.name) else f"m.{field.name}"
    one = _value_source(field)
    if one is None:
        return None
    if field.is_repeated:
        each = "list(v)" if one == "x" else f"[{one} for x in v]"
        return f"    v = {value}\n    if v:\n        out[{name}] = {each}\n"
    if field.has_presence:
        return f"    if m.HasField({name}):\n        x = {value}\n        out[{name}] = {one}\n"
    # implicit presence: set when not the default value; -0.0 counts as set, as in ListFields
    test = "x or _signed(x)" if field.cpp_type == FieldDescriptor.CPPTYPE_DOUBLE else "x"
    return f"    x = {value}\n    if {test}:\n        out[{name}] = {one}\n"


def _value_source(field: FieldDescriptor) -> str | None:
    """An expression of one value `x` of the field as JSON."""
    if field.type == FieldDescriptor.TYPE_BYTES:
        return None
    if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        return None if field.message_type.GetOptions().map_entry else f"{_sub_name(field)}(x)"
    if field.cpp_type in _SAME:
        return "x"
    if field.cpp_type in _INT64:
        return "str(x)"
    if field.cpp_type == FieldDescriptor.CPPTYPE_DOUBLE:
        return "x if isfinite(x) else _double(x)"
    return None  # enums and 32-bit floats


def _message_to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def _signed(value: float) -> bool:
    return math.copysign(1.0, value) < 0


def _double(value: float) -> str:
    """NaN and the infinities, which JSON has no numbers for."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"
