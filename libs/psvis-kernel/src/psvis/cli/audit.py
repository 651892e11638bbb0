"""`psvis audit verify` and `psvis audit replay`: check the log and rebuild the read models from
it (AUD), with their progress bars, --until and --workers."""

from __future__ import annotations

import argparse
import asyncio
import json
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from psvis.cli.client import CliError, whole
from psvis.cli.documents import describe
from psvis.cli.local import console, out, settings_from
from psvis.cli.written import written_whole
from psvis.platform import discover_services
from psvis.settings import Settings
from psvis.stores import open_for_audit


def _progress(label: str) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)  # fmt: skip


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from psvis.audit import verify_store
    from psvis.signing import key_id, load_public_key, public_path

    settings = settings_from(args)
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


def workers(text: str) -> int:
    from psvis.replaying import MAX_WORKERS  # imported when used: it brings the projection code

    return whole(1, MAX_WORKERS)(text)


SHOWN = 20  # documents listed per collection by `audit replay` without --all


def cmd_audit_replay(args: argparse.Namespace) -> int:
    from psvis.audit import replay
    from psvis.eventstore.port import LogUnreadable
    from psvis.replaying import ReplayWorkerError

    settings = settings_from(args)
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
