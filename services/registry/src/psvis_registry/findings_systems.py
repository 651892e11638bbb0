"""Compliance findings of one system as of a date (AUD-4): filing (REG-1), relocation and
removal reports (REG-6), archives (REG-7), signage (REG-8), monitoring personnel (REG-9) and
inspections (REG-12)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

from psvis.readstore.port import Document
from psvis.registry.v1 import registry_pb2 as reg
from psvis.rulepack import RulePack

from psvis_registry.findings_common import day_or_none, finding, in_use_on, plus_days, removed_by

_TRIGGERS = {"accepted": "acceptance", "in_use": "going into use"}


def filing_findings(
    doc: Document, view: reg.SystemView, pack: RulePack, as_of: date
) -> Iterator[reg.Finding]:
    """REG-1: a system not filed within the city's deadline.

    A new system's filing is due within the days after its trigger (e.g. Wuhan 9: acceptance)
    and holds what was accepted (the main device types and point layout), so only a filing
    dated on or after the trigger meets it; one dated before (filed while being built) does not.
    """
    subject = f"system-{view.system_id}"
    filings = [d for d in map(day_or_none, doc.get("filings") or [view.filed_on]) if d is not None]
    rule = pack.rule("filing.new_system")
    trigger = rule.param("trigger", "")
    start = day_or_none({"accepted": view.accepted_on, "in_use": view.in_use_on}.get(trigger, ""))
    if not rule.silent and start is not None and (pack.in_force is None or start >= pack.in_force):
        due = plus_days(start, int(rule.param("within_days", 0)))
        filed = min((d for d in filings if d >= start), default=None)
        for found in _deadline("filing.new_system", pack, subject, due, filed, as_of):
            if filings and filings[0] < start:
                found.detail += (
                    f"; the filing of {filings[0]} came before the {_TRIGGERS[trigger]}"
                    f" on {start} and does not count"
                )
            yield found
    filed = filings[0] if filings else None
    pre = pack.rule("filing.pre_existing")
    built = day_or_none(doc.get("built_on", ""))
    if not pre.silent and doc.get("pre_existing") and built and built < pre.param("built_before"):
        yield from _deadline(
            "filing.pre_existing", pack, subject, pre.param("due_by"), filed, as_of
        )


def _deadline(
    rule_id: str, pack: RulePack, subject: str, due: date, done: date | None, as_of: date
) -> Iterator[reg.Finding]:
    late_since = plus_days(due, 1)
    if (done is not None and done <= due) or as_of <= due:
        return
    if done is not None and done <= as_of:
        yield finding(
            rule_id, pack, subject, late_since, "resolved", f"filed late on {done}, due {due}"
        )
    else:
        yield finding(rule_id, pack, subject, late_since, "open", f"not filed; due {due}")


def relocation_findings(doc: Document, pack: RulePack, as_of: date) -> Iterator[reg.Finding]:
    """REG-6, e.g. Xi'an 19: a move reported later than the days after it that the city allows."""
    subject = f"system-{doc['view']['system_id']}"
    for move in doc.get("relocations", []):
        yield from _reported_after(
            "relocation", pack, subject, date.fromisoformat(move["relocated_on"]),
            move.get("reported_on", ""), as_of,
        )  # fmt: skip


def _reported_after(
    rule_id: str, pack: RulePack, subject: str, moved: date, reported_on: str, as_of: date
) -> Iterator[reg.Finding]:
    """A move or removal to be reported within the city's days after it (report_after)."""
    rule = pack.rule(rule_id)
    if rule.silent or rule.param("timing") != "report_after" or not rule.param("days", 0):
        return
    due = plus_days(moved, int(rule.param("days")))
    yield from _deadline(rule_id, pack, subject, due, day_or_none(reported_on), as_of)


def removal_findings(
    doc: Document, view: reg.SystemView, pack: RulePack, removed: date, as_of: date
) -> Iterator[reg.Finding]:
    """A removed system's deadlines (REG-1, REG-6) that fell due before its removal, and the
    removal's own report (REG-6, e.g. Xi'an 19: within 30 days after it).

    Removing a system does not undo that it was filed or reported late, or never: those
    findings stay, and the ones still open are closed (nothing can be filed for a removed
    system any more). A report dated after the removal still resolves its deadline.
    """
    own = [*filing_findings(doc, view, pack, as_of), *relocation_findings(doc, pack, as_of)]
    for found in own:
        if date.fromisoformat(found.since) > removed:  # fell due after the removal: no duty
            continue
        if found.status == "open":
            found.status = "closed"
            found.detail += f"; the system was removed on {removed}"
        yield found
    if "removal_reported_on" in doc:  # older documents did not keep it: not known, not "never"
        subject = f"system-{doc['view']['system_id']}"
        reported = doc["removal_reported_on"]
        yield from _reported_after("removal", pack, subject, removed, reported, as_of)


def system_findings(
    doc: Document, view: reg.SystemView, pack: RulePack, as_of: date
) -> Iterator[reg.Finding]:
    if not view.system_id:
        return
    if removed_by(doc, view, as_of):
        removed = day_or_none(doc.get("removed_on", ""))
        if removed is not None:
            yield from removal_findings(doc, view, pack, removed, as_of)
        return
    subject = f"system-{view.system_id}"
    yield from filing_findings(doc, view, pack, as_of)
    yield from relocation_findings(doc, pack, as_of)
    yield from inspection_findings(view, pack, subject, as_of)
    if not in_use_on(doc, view, as_of):
        return
    in_use = date.fromisoformat(view.in_use_on)
    archives = pack.rule("archives")  # REG-7
    have = {
        a.kind
        for a in view.archives
        if day_or_none(a.attached_on) and day_or_none(a.attached_on) <= as_of  # type: ignore[operator]
    }
    missing = [k for k in archives.param("required_kinds", []) if k not in have]
    if missing and not archives.silent:
        yield finding(
            "archives", pack, subject, in_use, "open", f"no archive of: {', '.join(missing)}"
        )
    signage = pack.rule("signage")  # REG-8
    signed = {c for c, on in doc.get("signage", {}).items() if date.fromisoformat(on) <= as_of}
    unsigned = sorted({c.camera_id for c in view.cameras} - signed)
    if signage.param("required", False) and unsigned:
        yield finding(
            "signage", pack, subject, in_use, "open", f"no sign at: {', '.join(unsigned)}"
        )
    yield from personnel_findings(view, pack, subject, in_use, as_of)


def personnel_findings(
    view: reg.SystemView, pack: RulePack, subject: str, in_use: date, as_of: date
) -> Iterator[reg.Finding]:
    """REG-9, of a system in use: nobody on file to watch it, or staff untrained or unfiled.

    Only people on file by as_of count, each from the day they were put on file (one recorded
    before that day was kept: since the system's start). Nobody on file is open until the first
    person is, then resolved with that day; a person's own findings start when they are on file
    (or when the system went into use, if later), open until the person is trained, or filed
    with the police, then resolved with that day. A duty met by then is no finding.
    """
    personnel = pack.rule("personnel")
    if personnel.silent:
        return
    training = personnel.param("training_required", False)
    police = personnel.param("file_with_police", False)
    on_file = [(p, _on_file_since(p)) for p in view.personnel]
    on_file = [(p, since) for p, since in on_file if since <= as_of]
    first = min((since for _, since in on_file), default=None)
    if first is None or first > in_use:
        yield _nobody_on_file(pack, subject, in_use, training, police, first)
    for person, since in on_file:
        since = max(since, in_use)
        who = person.person_id
        if training:
            yield from _person_duty(
                pack, subject, since, person.trained_on, as_of,
                f"{who} has no recorded training", f"{who} had no recorded training",
            )  # fmt: skip
        if police:
            yield from _person_duty(
                pack, subject, since, person.filed_with_police_on, as_of,
                f"{who} is not filed with the police", f"{who} was not filed with the police",
            )  # fmt: skip


def _person_duty(
    pack: RulePack, subject: str, since: date, met_on: str, as_of: date, open_: str, met: str
) -> Iterator[reg.Finding]:
    """A person's training or police filing (REG-9), owed from `since`: open until the day it
    was met, then resolved with that day; met by `since`, no finding."""
    day = day_or_none(met_on)
    if day is not None and day <= since:
        return
    if day is not None and day <= as_of:
        yield finding("personnel", pack, subject, since, "resolved", f"{met} until {day}")
    else:
        yield finding("personnel", pack, subject, since, "open", open_)


def _on_file_since(person: reg.MonitoringPersonnelRegistered) -> date:
    """The day a person was put on file; date.min for a record made before that was kept."""
    return day_or_none(person.on_file_since) or date.min


def _nobody_on_file(
    pack: RulePack, subject: str, in_use: date, training: bool, police: bool, until: date | None
) -> reg.Finding:
    """A system in use whose unit has filed no monitoring staff at all: the unit keeps files on
    them (Xi'an 22(3), Wuxi 30(4)) or files their basic information with the police (Wuhan
    16(2)). The pack's staff_files_article names the item asking for the files, if not its own.
    Resolved once someone is on file, `until` that day."""
    if police:
        duty = "files the basic information of its monitoring staff with the police"
    else:
        duty = "keeps files on its monitoring staff"
    if until is None:
        status, detail = "open", "no monitoring staff on file for a system in use"
    else:
        status, detail = (
            "resolved",
            f"no monitoring staff on file for a system in use until {until}",
        )
    detail += f": its unit {duty}"
    detail += " and trains them" if training else ""
    found = finding("personnel", pack, subject, in_use, status, detail)
    found.article = pack.rule("personnel").param("staff_files_article", found.article)
    return found


def inspection_findings(
    view: reg.SystemView, pack: RulePack, subject: str, as_of: date
) -> Iterator[reg.Finding]:
    """REG-12: the latest inspection's order to rectify stays open until one passes.

    The latest is the one of the latest date; of several on one day, the last recorded."""
    done = [i for i in view.inspections if date.fromisoformat(i.inspected_on) <= as_of]
    if not done or pack.rule("inspections").silent:
        return
    latest = sorted(done, key=lambda i: i.inspected_on)[-1]  # a stable sort: recording order
    if latest.outcome != "passed":
        since = date.fromisoformat(latest.inspected_on)
        detail = f"inspection {latest.inspection_id}: {latest.outcome}; {latest.notes}".strip("; ")
        yield finding("inspections", pack, subject, since, "open", detail)
