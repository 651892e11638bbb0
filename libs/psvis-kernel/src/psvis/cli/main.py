"""psvis: run the platform, talk to it, check rule packs and audit the log."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from rich.markup import escape

from psvis.cli.audit import SHOWN, cmd_audit_replay, cmd_audit_verify, workers
from psvis.cli.client import CliError, whole
from psvis.cli.contracts import cmd_asyncapi, cmd_rules_check
from psvis.cli.local import add_store_flags, console
from psvis.cli.serve import cmd_certs_issue, cmd_serve
from psvis.errors import PsvisError
from psvis.platform import discover_services
from psvis.settings import Settings


class UsageError(CliError):
    """The command line does not parse (argparse's error), said the way other errors are.

    `usage` is that of the command whose line it is (`psvis registry list ...`), or of the
    nearest parser above when no command was named."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message, status=2, code="USAGE")
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors reach main() (which also prints them as JSON under
    --json) instead of exiting; its subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", self.format_usage())

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """argparse hands what a command's parser does not know up to psvis's, which reports it
        with its own usage; a command's parser (one that runs something) reports it itself."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self.get_default("run") is not None:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="psvis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the whole platform (embedded by default)")
    add_store_flags(serve)
    serve.add_argument("--city", help="rule pack to apply (env PSVIS_CITY; default wuhan)")
    serve.add_argument(
        "--listen", help="host:port for gRPC (env PSVIS_LISTEN; default 127.0.0.1:50051)"
    )
    serve.add_argument(
        "--services",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        help="comma-separated services to serve, e.g. registry (env PSVIS_SERVICES; default all)",
    )
    serve.add_argument(
        "--metrics-listen",
        help="host:port of the Prometheus /metrics endpoint, '' for none"
        " (env PSVIS_METRICS_LISTEN; default 127.0.0.1:9464)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    serve.set_defaults(run=cmd_serve)

    rules = sub.add_parser("rules", help="jurisdiction rule packs").add_subparsers(
        dest="sub", required=True, metavar="SUB"
    )
    check = rules.add_parser("check", help="validate rule packs (default: rules/*.toml)")
    check.add_argument("packs", nargs="*", type=Path, help="pack files")
    check.add_argument("--json", action="store_true", help="print a JSON report")
    check.set_defaults(run=cmd_rules_check)

    audit = sub.add_parser("audit", help="verify and replay the event log").add_subparsers(
        dest="sub", required=True, metavar="SUB"
    )
    verify = audit.add_parser(
        "verify", help="check hashes, links, versions and signed checkpoints; exit 1 on failure"
    )
    add_store_flags(verify)
    verify.add_argument(
        "--key", action="append", help="trusted notary public key (PEM); default: the data folder's"
    )
    verify.add_argument(
        "--max-unsigned",
        type=whole(0, 2**63 - 1),
        default=Settings.notary_every,
        help="fail if more of the newest events than this are not covered by a signed"
        " checkpoint (default %(default)s, what the notary leaves unsigned at most; events"
        " appended while the verify runs do not count)",
    )
    verify.add_argument("--json", action="store_true", help="print the JSON report")
    verify.set_defaults(run=cmd_audit_verify)
    rep = audit.add_parser(
        "replay", help="rebuild the read models from the log, as they were at --until"
    )
    add_store_flags(rep)
    rep.add_argument("--until", help="a time (ISO 8601); events recorded later are left out")
    rep.add_argument(
        "--into", help="SQLite file to keep the rebuilt read models in (default: memory)"
    )
    rep.add_argument(
        "--workers",
        type=workers,
        help="processes that fold the embedded log, each a share of the streams, 1 to 8"
        " (default: one per core from 200,000 events, else 1)",
    )
    rep.add_argument("--json", action="store_true", help="print the rebuilt read models as JSON")
    rep.add_argument(
        "--all", action="store_true", help=f"list every document, not the first {SHOWN}"
    )
    rep.set_defaults(run=cmd_audit_replay)

    asyncapi = sub.add_parser(
        "asyncapi",
        help="print the event contract for partner agencies (AsyncAPI 3.0 YAML, from FastStream)",
        description="Print the AsyncAPI 3.0 document of the events topic <namespace>.events: "
        "protobuf EventEnvelope records with their headers. docs/asyncapi.yaml is "
        "`psvis asyncapi --namespace psvis`.",
    )
    asyncapi.add_argument("--namespace", help="topic prefix (env PSVIS_NAMESPACE; default psvis)")
    asyncapi.add_argument(
        "--server", help="Kafka bootstrap to name in the document (default kafka:9092)"
    )
    asyncapi.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    asyncapi.set_defaults(run=cmd_asyncapi)

    certs = sub.add_parser("certs", help="development certificates").add_subparsers(
        dest="sub", required=True, metavar="SUB"
    )
    issue = certs.add_parser(
        "issue", help="issue a client certificate from the data folder's dev CA"
    )
    issue.add_argument("agency")
    issue.add_argument("role", choices=["management_unit", "police", "auditor"])
    issue.add_argument(
        "--data-dir",
        type=Path,
        help="data folder whose CA signs (env PSVIS_DATA_DIR; default .psvis)",
    )
    issue.set_defaults(run=cmd_certs_issue)

    for service in discover_services():
        if service.cli is not None:
            service.cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        sys.stderr.write(e.usage)
        return _failed(e, as_json=_asks_for_json(argv))
    try:
        return int(args.run(args))
    except CliError as e:
        return _failed(e, as_json=getattr(args, "json", False))
    except BrokenPipeError:
        return _reader_gone()
    except (PsvisError, OSError, sqlite3.Error) as e:
        # what the machine, the data folder or the services say (a folder that is a file, a
        # file that is not a database, MongoDB unreachable): said in one line, not a traceback
        failure = CliError(_said(e), status=1, code="UNAVAILABLE")
        return _failed(failure, as_json=getattr(args, "json", False))


def _said(e: Exception) -> str:
    """An operational error in one line: its own message, with what it concerns."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e) or type(e).__name__


def _asks_for_json(argv: list[str]) -> bool:
    """Whether a command line that does not parse has --json among its options (as argparse
    reads them: before any `--`, abbreviated to no less than --j)."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return any(len(a) >= 3 and "--json".startswith(a) for a in options)


def _failed(e: CliError, *, as_json: bool) -> int:
    """Say why on stderr and, under --json, on stdout too; the error's exit status."""
    console.print(f"[red]error:[/] {escape(str(e))}")
    if as_json:  # a script reading stdout learns why, too
        error = {"error": {"code": e.code, "message": str(e)}}
        try:
            print(json.dumps(error, indent=2, ensure_ascii=False))
        except BrokenPipeError:
            return _reader_gone()
    return e.status


def _reader_gone() -> int:
    """The reader went away (`psvis ... | head`): stop quietly, as other command-line tools do."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell reports for such a pipeline


if __name__ == "__main__":
    sys.exit(main())
