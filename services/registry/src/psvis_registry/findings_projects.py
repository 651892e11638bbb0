"""REG-5 findings as of a date (AUD-4): a construction project's system that lags its main works."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date

from psvis.readstore.port import Document
from psvis.registry.v1 import registry_pb2 as reg
from psvis.rulepack import RulePack

from psvis_registry.findings_common import System, day_or_none, finding, plus_days, removed_by

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
            works = day_or_none(reached.get(step, ""))
            if works is None or works >= as_of or step not in own:
                continue
            system = day_or_none(own[step])
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
                plus_days(works, 1), status, detail,
            )  # fmt: skip
