"""Compliance findings of the registry, evaluated at a date from read models alone (AUD-4)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date, timedelta

from psvis.readstore.port import Document
from psvis.registry.v1 import registry_pb2 as reg
from psvis.rulepack import RulePack

from psvis_registry import domain
from psvis_registry.projections import view_of
from psvis_registry.rules import mandatory_categories

# a system's stored document, with its view parsed (once per request: a view is a large message)
System = tuple[Document, reg.SystemView]


def _d(value: str) -> date | None:
    return date.fromisoformat(value) if value else None


def _plus(day: date, days: int) -> date:
    """day + days, or the last date there is (requests are held to 2199; older logs may not be)."""
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return date.max


def finding(
    rule_id: str, pack: RulePack, subject: str, since: date, status: str, detail: str
) -> reg.Finding:
    rule = pack.rule(rule_id)
    return reg.Finding(
        spec=rule.spec, rule=rule.id, article=rule.article, subject=subject,
        since=since.isoformat(), status=status, detail=detail,
    )  # fmt: skip


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
    filings = [d for d in map(_d, doc.get("filings") or [view.filed_on]) if d is not None]
    rule = pack.rule("filing.new_system")
    trigger = rule.param("trigger", "")
    start = _d({"accepted": view.accepted_on, "in_use": view.in_use_on}.get(trigger, ""))
    if not rule.silent and start is not None and (pack.in_force is None or start >= pack.in_force):
        due = _plus(start, int(rule.param("within_days", 0)))
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
    built = _d(doc.get("built_on", ""))
    if not pre.silent and doc.get("pre_existing") and built and built < pre.param("built_before"):
        yield from _deadline(
            "filing.pre_existing", pack, subject, pre.param("due_by"), filed, as_of
        )


def _deadline(
    rule_id: str, pack: RulePack, subject: str, due: date, done: date | None, as_of: date
) -> Iterator[reg.Finding]:
    late_since = _plus(due, 1)
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
    due = _plus(moved, int(rule.param("days")))
    yield from _deadline(rule_id, pack, subject, due, _d(reported_on), as_of)


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


def removed_by(doc: Document, view: reg.SystemView, as_of: date) -> bool:
    """Whether the system had been removed on as_of (one removed on an unknown day: yes)."""
    if view.state != domain.REMOVED:
        return False
    removed = _d(doc.get("removed_on", ""))
    return removed is None or removed <= as_of


def in_use_on(doc: Document, view: reg.SystemView, as_of: date) -> bool:
    """Whether the system was in use on as_of: put into use by then, and not removed yet."""
    in_use = _d(view.in_use_on)
    return (
        view.state in (domain.IN_USE, domain.REMOVED)
        and in_use is not None
        and in_use <= as_of
        and not removed_by(doc, view, as_of)
    )


def site_on(doc: Document, view: reg.SystemView, as_of: date) -> str:
    """The site the system stood at on as_of: the one it left by its first later move."""
    for move in doc.get("relocations", []):
        if date.fromisoformat(move["relocated_on"]) > as_of:
            return str(move.get("from_site_id", view.site.site_id))  # older documents lack it
    return view.site.site_id


def system_findings(
    doc: Document, view: reg.SystemView, pack: RulePack, as_of: date
) -> Iterator[reg.Finding]:
    if not view.system_id:
        return
    if removed_by(doc, view, as_of):
        removed = _d(doc.get("removed_on", ""))
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
    have = {a.kind for a in view.archives if _d(a.attached_on) and _d(a.attached_on) <= as_of}  # type: ignore[operator]
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
    day = _d(met_on)
    if day is not None and day <= since:
        return
    if day is not None and day <= as_of:
        yield finding("personnel", pack, subject, since, "resolved", f"{met} until {day}")
    else:
        yield finding("personnel", pack, subject, since, "open", open_)


def _on_file_since(person: reg.MonitoringPersonnelRegistered) -> date:
    """The day a person was put on file; date.min for a record made before that was kept."""
    return _d(person.on_file_since) or date.min


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


def in_use_spans(doc: Document, view: reg.SystemView) -> Iterator[tuple[str, date, date]]:
    """The sites the system was in use at, each with the days [from, until): from going into
    use, or a move there, until a move away or the removal (date.max: still there).

    A day of a span is a day in_use_on and site_on count the system in use at that site."""
    in_use = _d(view.in_use_on)
    if view.state not in (domain.IN_USE, domain.REMOVED) or in_use is None:
        return
    end = _d(doc.get("removed_on", "")) if view.state == domain.REMOVED else date.max
    if end is None:  # removed on an unknown day: never counted in use (removed_by)
        return
    moves = (date.fromisoformat(m["relocated_on"]) for m in doc.get("relocations", []))
    starts = [in_use, *sorted({day for day in moves if in_use < day < end})]
    for start, until in zip(starts, [*starts[1:], end], strict=True):
        yield site_on(doc, view, start), start, until


def _unserved(
    start: date, stop: date, served: list[tuple[date, date]]
) -> Iterator[tuple[date, date]]:
    """The spells [from, until) of the days [start, stop) that no span [from, until) covers."""
    day = start
    for begins, ends in sorted(served):
        if begins >= stop:
            break
        if begins > day:
            yield day, begins
        day = max(day, ends)
    if day < stop:
        yield day, stop


def site_findings(
    sites: list[Document], systems: Sequence[System], pack: RulePack, as_of: date
) -> Iterator[reg.Finding]:
    """REG-3: each spell that a declared site went without a system in use there.

    The duty holds from the declaration (the articles, Xi'an 9-10 and Wuhan 6, give no time
    to comply), or from the day the city's Measures took effect if that is later, until the
    declaration is withdrawn. A site with no system in use on as_of is an open finding since
    the first day of that spell; a spell that ended, on or before as_of, when a system went
    into use there (or moved there) is resolved, and says on which day. A site served from
    the first day of its duty has no finding. As of the withdrawal on, the declaration owes
    nothing more: its spells stay listed, the one it ended resolved until the withdrawal (and
    saying so). Declared again later, the site owes a system anew from that declaration.
    """
    categories = mandatory_categories(pack)
    served: dict[str, list[tuple[date, date]]] = {}
    for doc, view in systems:
        for site_id, start, until in in_use_spans(doc, view):
            served.setdefault(site_id, []).append((start, until))
    declarations = [spell for doc in sites for spell in [*doc.get("earlier", []), doc]]
    for doc in declarations:  # REG-3: each declaration on its own; a withdrawn one keeps its spells
        site = doc["site"]
        start = date.fromisoformat(doc["declared_on"])
        if pack.in_force is not None:
            start = max(start, pack.in_force)
        if start > as_of:
            continue
        withdrawn = _d(doc.get("withdrawn_on", ""))
        if withdrawn is None or withdrawn > as_of:
            withdrawn = None  # in force on as_of: its duty runs to that day
        stop = _plus(as_of, 1) if withdrawn is None else withdrawn
        subject, where = (
            f"site-{site['site_id']}",
            f"{site['category']} at {site.get('address', '')}",
        )
        for since, until in _unserved(start, stop, served.get(site["site_id"], [])):
            if until == withdrawn:
                # a withdrawal logged before a reason was required has none
                why = doc.get("withdrawal_reason") or "no reason kept"
                f = finding("sites.mandatory", pack, subject, since, "resolved",
                            f"{where} had no system in use until {until}, when its"
                            f" declaration was withdrawn: {why}")  # fmt: skip
            elif until > as_of:
                f = finding("sites.mandatory", pack, subject, since, "open",
                            f"{where} has no system in use")  # fmt: skip
            else:
                f = finding("sites.mandatory", pack, subject, since, "resolved",
                            f"{where} had no system in use until {until}")  # fmt: skip
            f.article = categories.get(site["category"], f.article)
            yield f


_DONE = {"in_use": "put into use"}  # how a step reads after "were"; else its own name


def project_findings(
    systems: Sequence[System], projects: list[Document], pack: RulePack, as_of: date
) -> Iterator[reg.Finding]:
    """REG-5 (Wuhan 8 para 1, Xi'an 16): a construction project's system kept in step with its
    main works. For each step the pack lists (`steps`: Xi'an accepts the system independently),
    the system reaches it by the day the main works do; one that lags is a finding from the
    next day on: open, resolved once the system reaches the step, closed if it is removed.

    A system's design counts as done when its design review passed, or else when it was built;
    a system removed before the main works reached a step owes nothing for it. Documents
    written before these steps were kept (no "steps") are not judged on design and building.
    """
    rule = pack.rule("lifecycle.construction_project_sync")
    if rule.silent:
        return
    milestones = {doc["project_id"]: doc["milestones"] for doc in projects}
    for doc, view in systems:
        reached = milestones.get(doc.get("construction_project", ""))
        if not reached:
            continue
        steps = doc.get("steps")
        own = {"accepted": view.accepted_on, "in_use": view.in_use_on}
        if steps is not None:
            own |= {"designed": steps.get("designed") or steps.get("built", ""),
                    "built": steps.get("built", "")}  # fmt: skip
        for step in rule.param("steps", []):
            works = _d(reached.get(step, ""))
            if works is None or works >= as_of or step not in own:
                continue
            system = _d(own[step])
            if (system is not None and system <= works) or removed_by(doc, view, works):
                continue
            detail = (
                f"the main works of project {doc['construction_project']} were"
                f" {_DONE.get(step, step)} on {works}; the system "
            )
            if system is not None and system <= as_of:
                status, detail = "resolved", detail + f"only on {system}"
            elif removed_by(doc, view, as_of):
                status, detail = (
                    "closed",
                    detail + f"never was (removed on {doc.get('removed_on')})",
                )
            else:
                status, detail = "open", detail + "has not been yet"
            yield finding(
                "lifecycle.construction_project_sync", pack, f"system-{view.system_id}",
                _plus(works, 1), status, detail,
            )  # fmt: skip


def all_findings(
    systems: list[Document],
    sites: list[Document],
    projects: list[Document],
    pack: RulePack,
    as_of: date,
) -> list[reg.Finding]:
    parsed = [(doc, view_of(doc)) for doc in systems]
    found = [f for doc, view in parsed for f in system_findings(doc, view, pack, as_of)]
    found += site_findings(sites, parsed, pack, as_of)
    found += project_findings(parsed, projects, pack, as_of)
    return sorted(found, key=lambda f: (f.spec, f.subject, f.rule, f.since, f.detail))
