"""Decode an envelope's payload into its protobuf message class by type name."""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from psvis.common.v1 import envelope_pb2 as pb


@functools.cache
def message_class(type_name: str) -> type[Message]:
    pool = descriptor_pool.Default()  # type: ignore[no-untyped-call]
    descriptor = pool.FindMessageTypeByName(type_name)
    return message_factory.GetMessageClass(descriptor)


def decode_payload(env: pb.EventEnvelope) -> Message:
    return message_class(env.type).FromString(env.payload)
