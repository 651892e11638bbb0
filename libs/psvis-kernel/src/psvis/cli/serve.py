"""`psvis serve` and `psvis certs issue`: run the whole platform, and issue client certificates
from the development CA it makes in its data folder."""

from __future__ import annotations

import argparse
import asyncio
import logging

from psvis.cli.client import CliError, default_pki, default_server
from psvis.cli.local import console, out, settings_from
from psvis.rulepack import RulePackError
from psvis.settings import Settings


def cmd_serve(args: argparse.Namespace) -> int:
    from psvis.server import RunningPlatform, serve

    settings = settings_from(args)

    def ready(p: RunningPlatform) -> None:
        host = settings.listen.rsplit(":", 1)[0]
        pki = settings.pki_dir
        console.print(
            f"[bold green]psvis is serving[/] on {host}:{p.port} (mutual TLS, city pack: {settings.city}, backend: {settings.backend})"
        )
        console.print(f"  data:         {settings.data_dir.resolve()}")
        console.print(
            f"  certificates: {pki.resolve()} (dev CA; clients dev-unit, dev-unit-2, dev-police, dev-auditor)"
        )
        console.print(
            f"  try:          .venv/bin/psvis registry list {_client_flags(settings, p.port)}"
        )
        if settings.metrics_listen:
            console.print(f"  metrics:      http://{settings.metrics_listen}/metrics (Prometheus)")
        console.print("  stop with Ctrl-C")

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(settings, ready))
    except (RulePackError, RuntimeError, ValueError) as e:  # TlsFileError among them
        raise CliError(str(e)) from None
    return 0


def _client_flags(settings: Settings, port: int) -> str:
    """The flags a client on this machine needs for this server, beyond its defaults."""
    flags = ["--as dev-police"]
    host = settings.listen.rsplit(":", 1)[0].strip("[]")
    if host in ("0.0.0.0", "::", ""):  # every interface: this machine's clients use loopback
        host = "localhost"
    elif ":" in host:  # an IPv6 address
        host = f"[{host}]"
    server = default_server()
    if f"{host}:{port}" != server and not (host == "127.0.0.1" and server == f"localhost:{port}"):
        flags.append(f"--server {host}:{port}")
    if settings.pki_dir.resolve() != default_pki().resolve():
        flags.append(f"--pki {settings.pki_dir}")
    return " ".join(flags)


def cmd_certs_issue(args: argparse.Namespace) -> int:
    from psvis.pki import TlsFileError, issue_client
    from psvis.validate import IDENTIFIER

    settings = settings_from(args)
    if not IDENTIFIER.fullmatch(args.agency) or args.agency in RESERVED_NAMES:
        raise CliError(
            f"agency {args.agency!r} must be 1-64 letters, digits, '.', '_', ':' or '-', and not"
            f" {' or '.join(sorted(RESERVED_NAMES))} (the CA's and the server's own files)"
        )
    if not (settings.pki_dir / "ca.key").is_file():
        raise CliError(
            f"no development CA in {settings.pki_dir}"
            " (the platform makes one when it first starts on that data folder)"
        )
    try:
        identity = issue_client(settings.pki_dir, args.agency, args.role)
    except TlsFileError as e:  # the user's TLS configuration, as for the clients and serve
        raise CliError(str(e)) from None
    out.print(f"issued {identity.cert} for {args.agency} as {args.role}")
    return 0


RESERVED_NAMES = frozenset({"ca", "server"})  # files of the folder's CA and server identity
