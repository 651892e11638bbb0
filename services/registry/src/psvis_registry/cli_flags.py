"""How the registry's commands are declared and read from the command line: a Flag names a
payload field, a Command an RPC with its flags; their flags are added to a parser, read back into
a payload, and the stub that carries the request is made from the connection flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from google.protobuf.message import Message
from psvis.cli.client import channel
from psvis.registry.v1 import registry_pb2 as reg
from psvis.registry.v1 import registry_pb2_grpc as reg_grpc


@dataclass(frozen=True)
class Flag:
    flag: str
    field: str
    kind: str = "str"  # str, bool, list, float, int, placement (a list of CameraPlacement)
    help: str = ""
    required: bool = False


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    rpc: str
    request: type[Message]
    payload_field: str
    flags: tuple[Flag, ...]


def on(field: str) -> Flag:
    return Flag("--on", field, "str", "date, e.g. 2024-03-01", True)


def fill(message: Message, flags: tuple[Flag, ...], args: argparse.Namespace) -> None:
    for f in flags:
        value = getattr(args, _dest(f))
        if value in (None, [], False):
            continue
        if f.kind in ("list", "placement"):
            getattr(message, f.field).extend(value)
        else:
            setattr(message, f.field, value)


def _dest(f: Flag) -> str:
    return f.flag.lstrip("-").replace("-", "_")


def add_flags(parser: argparse.ArgumentParser, flags: tuple[Flag, ...]) -> None:
    for f in flags:
        if f.kind == "bool":
            parser.add_argument(f.flag, action="store_true", help=f.help)
        elif f.kind in ("list", "placement"):
            parser.add_argument(
                f.flag,
                action="append",
                default=[],
                type=_placement if f.kind == "placement" else str,
                metavar="CAMERA_ID=LON,LAT,CODE" if f.kind == "placement" else None,
                help=f.help + " (repeatable)",
                required=f.required,
            )
        else:
            parser.add_argument(
                f.flag, type=float if f.kind == "float" else str, help=f.help, required=f.required
            )


def _placement(text: str) -> reg.CameraPlacement:
    """CAMERA_ID=LONGITUDE,LATITUDE,ADDRESS_CODE: where a camera stands after a move (REG-2)."""
    camera_id, _, place = text.partition("=")
    parts = place.split(",")
    try:
        if not camera_id or len(parts) != 3:
            raise ValueError
        longitude, latitude = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not CAMERA_ID=LONGITUDE,LATITUDE,ADDRESS_CODE (e.g. c1=114.31,30.61,420102001)"
        ) from None
    location = reg.GeoPoint(longitude=longitude, latitude=latitude)
    return reg.CameraPlacement(camera_id=camera_id, location=location, address_code=parts[2])


def payload_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="payload as JSON (protobuf field names); flags override it")
    parser.add_argument("--file", help="payload JSON from a file, or - for stdin")


def registry_stub(args: argparse.Namespace) -> reg_grpc.RegistryServiceStub:
    return reg_grpc.RegistryServiceStub(channel(args))
