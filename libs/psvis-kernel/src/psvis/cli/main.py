"""psvis: run the platform, talk to it, check rule packs and audit the log."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from psvis.cli.client import CliError, default_pki, default_server, whole
from psvis.cli.documents import describe
from psvis.cli.written import written_whole
from psvis.errors import PsvisError
from psvis.platform import discover_services
from psvis.rulepack import RulePackError, check_requirements, load_pack
from psvis.settings import Settings
from psvis.stores import open_for_audit

out = Console(soft_wrap=True)  # what a command reports: its results, on stdout
console = Console(stderr=True, soft_wrap=True)  # errors, the server's banner and progress bars


def _settings(args: argparse.Namespace) -> Settings:
    s = Settings()
    for name in (
        "data_dir",
        "city",
        "listen",
        "backend",
        "kafka_bootstrap",
        "mongo_url",
        "namespace",
    ):
        value = getattr(args, name, None)
        if value:
            setattr(s, name, value)
    return s


def _store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, help="embedded data folder (env PSVIS_DATA_DIR; default .psvis)"
    )
    parser.add_argument(
        "--backend", choices=["embedded", "distributed"], help="env PSVIS_BACKEND; default embedded"
    )
    parser.add_argument(
        "--kafka-bootstrap", help="distributed: Kafka bootstrap servers (env PSVIS_KAFKA_BOOTSTRAP)"
    )
    parser.add_argument("--mongo-url", help="distributed: MongoDB URL (env PSVIS_MONGO_URL)")
    parser.add_argument(
        "--namespace", help="distributed: topic and collection prefix (default psvis)"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from psvis.server import RunningPlatform, serve

    settings = _settings(args)

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


def cmd_rules_check(args: argparse.Namespace) -> int:
    """RULES-1: every pack parses, cites its own city, and gives every service what it needs."""
    folders = Settings().rules_dirs
    paths = args.packs or _packs_in(folders)
    if not paths:
        where = ", ".join(str(d) for d in folders)
        raise CliError(f"no rule packs given and none in {where} (PSVIS_RULES_DIR adds folders)")
    needs = [n for s in discover_services() for n in s.needs]
    report: list[dict[str, Any]] = []
    failed = False
    for path in paths:
        try:
            pack = load_pack(Path(path))
            problems = check_requirements(pack, needs)
        except RulePackError as e:
            problems, pack = [str(e)], None
        failed |= bool(problems)
        silent = sorted(r.id for r in pack.rules.values() if r.silent) if pack else []
        report.append({"pack": str(path), "ok": not problems, "problems": problems,
                       "rules": len(pack.rules) if pack else 0, "silent": silent})  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        for r in report:
            mark = "[green]ok[/]" if r["ok"] else "[red]FAILED[/]"
            out.print(
                f"{mark} {escape(r['pack'])}: {r['rules']} rules, silent: {', '.join(r['silent']) or 'none'}"
            )
            for p in r["problems"]:
                out.print(f"    - {escape(p)}")
    return 1 if failed else 0


def _packs_in(folders: list[Path]) -> list[Path]:
    """The packs (*.toml) the platform would load: of two with one name, the first folder's
    (find_pack's order)."""
    found: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.name, path)
    return list(found.values())


def _progress(label: str) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)  # fmt: skip


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from psvis.audit import verify_store
    from psvis.signing import key_id, load_public_key, public_path

    settings = _settings(args)
    _need_log(settings)
    key_files = args.key or [public_path(settings.notary_key)]
    try:
        keys = [load_public_key(Path(k).read_bytes()) for k in key_files]
    except (OSError, ValueError) as e:
        raise CliError(f"notary public key: {e}") from None

    async def run() -> dict[str, Any]:
        log = await open_for_audit(settings)
        try:
            with _progress("verifying") as bar:
                tasks: list[TaskID] = []  # the bar's one task, once verify knows its total
                report = await verify_store(
                    log.events, log.checkpoints, keys,
                    progress=lambda n: bar.advance(tasks[0], n),
                    total=lambda n: tasks.append(bar.add_task("verify", total=n)),
                    max_unsigned=args.max_unsigned)  # fmt: skip
            return report.as_dict()
        finally:
            await log.close()

    report = asyncio.run(run())
    if args.json:
        print(json.dumps(report, indent=2))
    elif report["ok"]:
        out.print(f"[green]OK[/] {report['log_id']}: {report['events_checked']} events in {report['streams']} streams, "
                      f"{report['checkpoints_checked']} signed checkpoints covering {report['notarised_size']}")  # fmt: skip
        for w in report["warnings"]:
            out.print(f"  note: {escape(w)}")
        trusted = ", ".join(
            f"{key_id(k)} ({escape(str(f))})" for k, f in zip(keys, key_files, strict=True)
        )
        out.print(f"  trusted notary key: {trusted}")
        if not args.key:
            out.print(
                "  note: that key is the data folder's own; pass --key with the key you were given"
            )
    else:
        f = report["failure"]
        out.print(
            f"[red]FAILED[/] {report['log_id']} at offset {f['offset']}: {f['check']}: "
            + escape(f["detail"])
        )
    return 0 if report["ok"] else 1


def _need_log(settings: Settings) -> None:
    """The embedded log must be there to audit; the error says where it looked."""
    if settings.backend == "embedded" and not settings.sqlite_path.is_file():
        raise CliError(
            f"no event log at {settings.sqlite_path}"
            " (give the platform's data folder with --data-dir or PSVIS_DATA_DIR)"
        )


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"--until {text!r} is not a time like 2024-03-01 or 2024-03-01T12:00:00+08:00"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _workers(text: str) -> int:
    from psvis.replaying import MAX_WORKERS  # imported when used: it brings the projection code

    return whole(1, MAX_WORKERS)(text)


SHOWN = 20  # documents listed per collection by `audit replay` without --all


def cmd_audit_replay(args: argparse.Namespace) -> int:
    from psvis.audit import replay
    from psvis.eventstore.port import LogUnreadable
    from psvis.replaying import ReplayWorkerError

    settings = _settings(args)
    until = _parse_time(args.until) if args.until else None
    _need_log(settings)
    if args.into and Path(args.into).exists():
        raise CliError(
            f"{args.into} exists; --into takes a new file (a replay starts from empty read"
            " models, and would empty it)"
        )
    if args.into and not Path(args.into).parent.is_dir():
        raise CliError(f"no folder {Path(args.into).parent} for --into")
    services = discover_services()
    projections = [p for s in services for p in s.projections]
    collections = [c for s in services for c in s.collections]

    async def run(into: str) -> dict[str, object] | str:
        log = await open_for_audit(settings)
        try:
            try:
                total = await log.events.log_size()
            except LogUnreadable as e:
                return str(e)
            with _progress("replaying") as bar:
                task = bar.add_task("replay", total=total)
                result = await replay(log.events, projections, collections, until=until,
                                      into=into, progress=lambda n: bar.advance(task, n),
                                      workers=args.workers)  # fmt: skip
            models: dict[str, object] = {}
            try:
                for c in collections:
                    if args.json:
                        models[c] = dict(await result.reads.list(c))
                    else:  # a count, and the first documents: a city's registry is long
                        stored = await result.reads.list_json(c)
                        shown = args.all or len(stored) <= SHOWN
                        models[c] = (
                            len(stored),
                            [(k, json.loads(d)) for k, d in stored[: None if shown else SHOWN]],
                        )
            finally:
                await result.db.close()
            return {
                "until": args.until or "",
                "position": result.position,
                "digest": result.digest,
                "read_models": models,
            }
        except (LogUnreadable, ReplayWorkerError) as e:
            return f"{e} (psvis audit verify names the damage)"
        finally:
            await log.close()

    with written_whole(Path(args.into)) if args.into else nullcontext(":memory:") as into:
        outcome = asyncio.run(run(into))
        if isinstance(outcome, str):
            raise CliError(outcome, status=1, code="LOG_UNREADABLE")
    if args.json:
        print(json.dumps(outcome, indent=2, ensure_ascii=False, sort_keys=True))
        return 0
    applied = f", applying the events recorded up to {args.until}" if args.until else ""
    out.print(f"replayed to offset {outcome['position']}{applied}; digest {outcome['digest']}")
    for coll, (count, docs) in outcome["read_models"].items():  # type: ignore[attr-defined]
        out.print(f"[bold]{coll}[/]: {count}")
        for key, doc in docs:
            out.print(f"  {key}: {describe(key, doc)}", markup=False, highlight=False)
        if count > len(docs):
            out.print(
                f"  … and {count - len(docs):,} more (--all lists them; --json prints the documents;"
                " --into FILE keeps them)"
            )
    return 0


def cmd_certs_issue(args: argparse.Namespace) -> int:
    from psvis.pki import TlsFileError, issue_client
    from psvis.validate import IDENTIFIER

    settings = _settings(args)
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


def cmd_asyncapi(args: argparse.Namespace) -> int:
    """The event contract (AsyncAPI 3.0, generated by FastStream) for partner agencies."""
    from psvis.asyncapi import DOC_SERVER, asyncapi_document, render

    namespace = args.namespace or Settings().namespace
    document = asyncapi_document(namespace, args.server or DOC_SERVER)
    sys.stdout.write(render(document, as_json=args.json))
    return 0


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
    _store_flags(serve)
    serve.add_argument("--city", help="rule pack to apply (env PSVIS_CITY; default wuhan)")
    serve.add_argument(
        "--listen", help="host:port for gRPC (env PSVIS_LISTEN; default 127.0.0.1:50051)"
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
    _store_flags(verify)
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
    _store_flags(rep)
    rep.add_argument("--until", help="a time (ISO 8601); events recorded later are left out")
    rep.add_argument(
        "--into", help="SQLite file to keep the rebuilt read models in (default: memory)"
    )
    rep.add_argument(
        "--workers",
        type=_workers,
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
