"""What the compliance findings share (AUD-4): the Finding of a rule, days read and added, and
where a system stood on a day (removed, in use, at which site), from its read model alone."""

from __future__ import annotations

from datetime import date, timedelta

from psvis.readstore.port import Document
from psvis.registry.v1 import registry_pb2 as reg
from psvis.rulepack import RulePack

from psvis_registry import domain

# a system's stored document, with its view parsed (once per request: a view is a large message)
System = tuple[Document, reg.SystemView]


def day_or_none(value: str) -> date | None:
    return date.fromisoformat(value) if value else None


def plus_days(day: date, days: int) -> date:
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


def removed_by(doc: Document, view: reg.SystemView, as_of: date) -> bool:
    """Whether the system had been removed on as_of (one removed on an unknown day: yes)."""
    if view.state != domain.REMOVED:
        return False
    removed = day_or_none(doc.get("removed_on", ""))
    return removed is None or removed <= as_of


def in_use_on(doc: Document, view: reg.SystemView, as_of: date) -> bool:
    """Whether the system was in use on as_of: put into use by then, and not removed yet."""
    in_use = day_or_none(view.in_use_on)
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
