"""REG-3 findings as of a date (AUD-4): the spells a declared mandatory site went without a
system in use there, from the sites each system was in use at."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date

from psvis.readstore.port import Document
from psvis.registry.v1 import registry_pb2 as reg
from psvis.rulepack import RulePack

from psvis_registry import domain
from psvis_registry.findings_common import System, day_or_none, finding, plus_days, site_on
from psvis_registry.rules_common import mandatory_categories


def in_use_spans(doc: Document, view: reg.SystemView) -> Iterator[tuple[str, date, date]]:
    """The sites the system was in use at, each with the days [from, until): from going into
    use, or a move there, until a move away or the removal (date.max: still there).

    A day of a span is a day in_use_on and site_on count the system in use at that site."""
    in_use = day_or_none(view.in_use_on)
    if view.state not in (domain.IN_USE, domain.REMOVED) or in_use is None:
        return
    end = day_or_none(doc.get("removed_on", "")) if view.state == domain.REMOVED else date.max
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
        withdrawn = day_or_none(doc.get("withdrawn_on", ""))
        if withdrawn is None or withdrawn > as_of:
            withdrawn = None  # in force on as_of: its duty runs to that day
        stop = plus_days(as_of, 1) if withdrawn is None else withdrawn
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
