"""What every client command shares: connecting with mTLS, printing, and error reporting."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.message import Message

from psvis.grpc_server import channel_credentials
from psvis.pki import TlsFileError

M = TypeVar("M", bound=Message)


class CliError(Exception):
    """Why a command cannot go on: one line for the user and an exit status; for --json
    readers also a code, the gRPC status's name when the platform refused the call."""

    def __init__(self, message: str, *, status: int = 2, code: str = "CLIENT_ERROR") -> None:
        super().__init__(message)
        self.status, self.code = status, code


def default_server() -> str:
    return os.environ.get("PSVIS_SERVER", "localhost:50051")


def default_pki() -> Path:
    return Path(os.environ.get("PSVIS_PKI", ".psvis/pki"))


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--server",
        default=default_server(),
        help="host:port of the platform (env PSVIS_SERVER; default %(default)s)",
    )
    group.add_argument(
        "--as",
        dest="identity",
        default=os.environ.get("PSVIS_IDENTITY", "dev-unit"),
        help="client certificate to act as, a name in the PKI folder (default %(default)s)",
    )
    group.add_argument(
        "--pki",
        type=Path,
        default=default_pki(),
        help="folder with ca.crt and <name>.crt/.key (default %(default)s)",
    )
    group.add_argument("--json", action="store_true", help="print JSON instead of text")  # fmt: skip


def channel(args: argparse.Namespace) -> grpc.aio.Channel:
    pki: Path = args.pki
    cert, key = pki / f"{args.identity}.crt", pki / f"{args.identity}.key"
    try:
        credentials = channel_credentials(pki / "ca.crt", cert, key)
    except TlsFileError as e:  # the user's TLS configuration: found before calling (exit 2)
        where = "; start the platform once (make run) or pass --pki" if e.missing else ""
        raise CliError(f"{e}{where}") from None
    return grpc.aio.secure_channel(args.server, credentials)


def to_json(message: Message) -> str:
    return json.dumps(
        MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        ),
        indent=2,
        ensure_ascii=False,
    )


def whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from low to high (protobuf refuses others with a trace)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {low} to {high}")
        return value

    return parse


def payload_from(args: argparse.Namespace, message: M) -> M:
    """--file/--data JSON (proto field names) merged under the flags already set on message."""
    text = None
    if getattr(args, "file", None):
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"--file {args.file}: {getattr(e, 'strerror', None) or e}") from None
    elif getattr(args, "data", None):
        text = args.data
    if text:
        base = type(message)()
        try:
            parsed = json.loads(text)
            if not isinstance(parsed, dict):
                raise ValueError(f"a JSON object is wanted, not {type(parsed).__name__}")
            ParseDict(parsed, base)
        except (ValueError, json_format.ParseError) as e:
            raise CliError(f"the JSON payload does not fit {base.DESCRIPTOR.name}: {e}") from None
        _overlay(base, message)
        return base
    return message


def _overlay(base: Message, top: Message) -> None:
    """Set on base every field set on top, at any depth: a list given by flags replaces the
    JSON's list (MergeFrom would append to it)."""
    for field, value in top.ListFields():
        if field.is_repeated:  # lists and maps (a map is replaced whole)
            base.ClearField(field.name)
            getattr(base, field.name).MergeFrom(value)
        elif field.message_type is not None:
            getattr(base, field.name).SetInParent()
            _overlay(getattr(base, field.name), value)
        else:
            setattr(base, field.name, value)


def run_rpc(work: Callable[[], Awaitable[Any]]) -> int:
    """Run one client call; a gRPC error becomes a CliError with exit status 1."""

    async def main() -> Any:
        return await work()

    try:
        asyncio.run(main())
    except grpc.aio.AioRpcError as e:
        name = e.code().name
        raise CliError(f"{name}: {e.details()}", status=1, code=name) from None
    return 0
