"""Registry read models: one document per system and per mandatory site (REG-2 catalogue).

A system's document is {"view": <SystemView as proto3 JSON>, "refusals", "relocations",
"signage", "filings", "steps", "construction_project", "pre_existing", "built_on", "removed_on",
"removal_reported_on"}. The folds edit that JSON in place (the projection
runner hands them a document it owns), so an event costs its own size, not the document's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.message import Message
from psvis.common.v1 import envelope_pb2 as pb
from psvis.payloads import json_dict
from psvis.projection import StreamProjection
from psvis.readstore.port import Document
from psvis.registry.v1 import registry_pb2 as reg

from psvis_registry import domain

SYSTEMS, SITES, PROJECTS = "registry.systems", "registry.sites", "registry.projects"
COLLECTIONS = (SYSTEMS, SITES, PROJECTS)

View = dict[str, Any]
Edit = Callable[[Document, View, Any, pb.EventEnvelope], None]


def view_of(doc: Document) -> reg.SystemView:
    return ParseDict(doc.get("view", {}), reg.SystemView())


def fold_system(doc: Document | None, event: Message, env: pb.EventEnvelope) -> Document:
    """Fold one event into a system's document, in place.

    The view is exactly json_dict(SystemView) of the system; until the system is registered
    it stays empty, and only the document's own fields (refusals, signage...) change.
    """
    if doc is None:
        doc = {"view": {}, "refusals": [], "relocations": [], "steps": {}}
    view: View = doc["view"]
    if view.get("system_id"):
        view["version"] = str(env.stream_version)  # uint64 is a string in proto3 JSON
    else:
        view = {}  # edits of an unregistered system's view are dropped
    edit = _EDITS.get(type(event))
    if edit is not None:
        edit(doc, view, event, env)
    return doc


def _registered(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
    doc["pre_existing"], doc["built_on"] = event.pre_existing, event.built_on
    doc["construction_project"] = event.construction_project
    if view:  # registered again: merged into the view it has, as SystemView.MergeFrom does
        system = ParseDict(view, reg.SystemView())
        system.MergeFrom(_view_of_registration(event))
        system.version = env.stream_version
        doc["view"] = json_dict(system)
    elif event.system_id:
        # = json_dict(_view_of_registration(event)), without building the SystemView
        registered = json_dict(event)
        doc["view"] = fresh = {k: registered[k] for k in _REGISTERED_VIEW if k in registered}
        fresh["site"] = registered.get("site", {})  # set, though maybe empty, in the view
        fresh["state"] = domain.PLANNED
        fresh["version"] = str(env.stream_version)


_REGISTERED_VIEW = (
    "system_id",
    "name",
    "managing_unit",
    "operator",
    "cameras",
    "registered_on",
    "connects_to_sharing_platform",
)


def _view_of_registration(event: reg.SystemRegistered) -> reg.SystemView:
    return reg.SystemView(
        system_id=event.system_id,
        name=event.name,
        managing_unit=event.managing_unit,
        operator=event.operator,
        state=domain.PLANNED,
        site=event.site,
        cameras=event.cameras,
        registered_on=event.registered_on,
        connects_to_sharing_platform=event.connects_to_sharing_platform,
    )


def _put(view: View, key: str, value: Any) -> None:
    """proto3 JSON leaves out empty values."""
    if value:
        view[key] = value
    else:
        view.pop(key, None)


def _appends(key: str) -> Edit:
    def edit(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
        view.setdefault(key, []).append(json_dict(event))

    return edit


def _state(state: str) -> Edit:
    def edit(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
        view["state"] = state

    return edit


def _signage(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
    camera_ids, on = list(event.camera_ids), event.installed_on
    _put(view, "signed_camera_ids", sorted({*view.get("signed_camera_ids", ()), *camera_ids}))
    since = doc.setdefault("signage", {})  # REG-8: when each camera got its sign
    for camera_id in camera_ids:
        since[camera_id] = min(since.get(camera_id, on), on)


def _filed(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
    _put(view, "filed_on", view.get("filed_on") or event.filed_on)
    doc["filings"] = sorted([*doc.get("filings", []), event.filed_on])  # REG-1: every filing


def _reviewed(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
    view["state"] = domain.REVIEWED if event.passed else domain.REJECTED
    if event.passed:
        _step(doc, "designed", event.reviewed_on)


def _built(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
    view["state"] = domain.BUILT
    _step(doc, "built", event.completed_on)


def _step(doc: Document, step: str, on: str) -> None:
    """REG-5: when the system first reached a step that its construction project's main works
    reach too. Documents written before steps were kept have no "steps": theirs are unknown."""
    if "steps" in doc:
        doc["steps"].setdefault(step, on)


def _accepted(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
    view["state"] = domain.ACCEPTED if event.passed else domain.RECTIFICATION
    if event.passed:
        _put(view, "accepted_on", event.accepted_on)


def _in_use(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
    view["state"] = domain.IN_USE
    _put(view, "in_use_on", event.in_use_on)


def _removed(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
    view["state"] = domain.REMOVED
    doc["removed_on"] = event.removed_on  # findings as of an earlier date still see the system
    doc["removal_reported_on"] = event.reported_on  # where a city wants it reported after (REG-6)


def _changed(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
    view.setdefault("changes", []).append(json_dict(event))
    field = {"orientation": "orientation_deg", "position": "position"}.get(
        event.attribute, "function"
    )
    for camera in view.get("cameras", ()):
        if camera.get("camera_id", "") == event.camera_id:
            edited = reg.Camera()
            setattr(
                edited,
                field,
                float(event.new_value) if field == "orientation_deg" else event.new_value,
            )
            as_json = json_dict(edited)  # as proto3 JSON has it: 0.0 goes, -0.0 stays
            if field in as_json:
                camera[field] = as_json[field]
            else:
                camera.pop(field, None)


def _relocated(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
    moved = json_dict(event)
    moved["from_site_id"] = view.get("site", {}).get("site_id", "")  # for findings as of before
    view["site"] = json_dict(event.new_site)
    _place_cameras(view, event.placements)
    doc["relocations"].append(moved)


def _place_cameras(view: View, placements: Any) -> None:
    """REG-2: each camera where the move placed it; a move recorded before relocations placed
    cameras names none, and leaves them where they were. Of two placements, the last counts."""
    placed = {p.camera_id: p for p in placements}
    for camera in view.get("cameras", ()):
        p = placed.get(camera.get("camera_id", ""))
        if p is None:
            continue
        if p.HasField("location"):
            camera["location"] = json_dict(p.location)
        else:
            camera.pop("location", None)
        _put(camera, "address_code", p.address_code)


def _person(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
    """A person registered again (their training or police filing recorded later, say): the
    fields given are merged into their record where it stands, as MergeFrom merges them;
    each person_id is listed once, and an earlier date is never lost.

    A record first made without on_file_since (before it was kept) is on file since the
    system's start (REG-9), which no later date moves."""
    personnel, person = view.setdefault("personnel", []), json_dict(event)
    for i, known in enumerate(personnel):
        if known.get("person_id", "") == event.person_id:
            merged = {**known, **person}
            for on in _PERSON_DATES:  # trained or filed again later: still so since the first
                if on in known and on in person:
                    merged[on] = min(known[on], person[on])  # ISO dates order as text
            if "on_file_since" not in known:
                merged.pop("on_file_since", None)
            personnel[i] = merged
            return
    personnel.append(person)


_PERSON_DATES = ("trained_on", "filed_with_police_on", "on_file_since")


def _classified(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
    view["classification"] = json_dict(event.classification)


def _refused(doc: Document, view: View, event: Any, env: pb.EventEnvelope) -> None:
    on = env.occurred_at.ToDatetime().date().isoformat()
    doc["refusals"].append({"command": event.command, "on": on, **MessageToDict(env.refusal)})


_EDITS: dict[type[Message], Edit] = {
    reg.SystemRegistered: _registered,
    reg.SystemFiled: _filed,
    reg.DesignReviewed: _reviewed,
    reg.ConstructionCompleted: _built,
    reg.AcceptanceRecorded: _accepted,
    reg.RectificationCompleted: _state(domain.RECTIFIED),
    reg.SystemPutIntoUse: _in_use,
    reg.ChangeFiled: _changed,
    reg.SystemRelocated: _relocated,
    reg.SystemRemoved: _removed,
    reg.ArchiveAttached: _appends("archives"),
    reg.SignageInstalled: _signage,
    reg.MonitoringPersonnelRegistered: _person,
    reg.ClassificationSet: _classified,
    reg.InspectionRecorded: _appends("inspections"),
    reg.CommandRefused: _refused,
}


def fold_site(doc: Document | None, event: Message, env: pb.EventEnvelope) -> Document:
    """A site's document: its latest declaration as proto3 JSON, "withdrawn_on" and
    "withdrawal_reason" once withdrawn, and "earlier": the documents of the declarations before
    it, each withdrawn, oldest first (REG-3: a site declared again after a withdrawal)."""
    if isinstance(event, reg.MandatorySiteDeclared):
        declared = json_dict(event)
        if doc and doc.get("declared_on"):
            latest = {k: v for k, v in doc.items() if k != "earlier"}
            declared["earlier"] = [*doc.get("earlier", []), latest]
        return declared
    doc = doc if doc is not None else {}
    if isinstance(event, reg.MandatorySiteWithdrawn):
        doc["withdrawn_on"] = event.withdrawn_on
        doc["withdrawal_reason"] = event.reason
    return doc


def site_view(
    doc: Document, version: int, article_of: Callable[[str], str], today: date
) -> reg.SiteView:
    """A site's document as the SiteView the API gives (REG-3): its latest declaration, with
    the article `article_of` its category, its status `today`, and the earlier ones."""
    latest = _declaration(doc, article_of)
    return reg.SiteView(
        site_id=latest.site.site_id, category=latest.site.category, address=latest.site.address,
        address_code=latest.site.address_code, declaration=latest, version=version,
        status=site_status(doc, today),
        earlier=[_declaration(d, article_of) for d in doc.get("earlier", [])],
    )  # fmt: skip


def site_status(doc: Document, day: date) -> str:
    """REG-3: a site's latest declaration on `day`: in force, withdrawn (on or before that day),
    or declared for a later day (police may record a declaration or a withdrawal ahead)."""
    withdrawn_on = doc.get("withdrawn_on")
    if withdrawn_on and date.fromisoformat(withdrawn_on) <= day:
        return domain.WITHDRAWN
    return domain.IN_FORCE if date.fromisoformat(doc["declared_on"]) <= day else domain.DECLARED


def _declaration(doc: Document, article_of: Callable[[str], str]) -> reg.SiteDeclaration:
    declared = ParseDict(
        {"site": doc.get("site", {}), "declared_on": doc.get("declared_on", "")},
        reg.MandatorySiteDeclared(),
    )
    out = reg.SiteDeclaration(
        site=declared.site,
        declared_on=declared.declared_on,
        article=article_of(declared.site.category),
    )
    if doc.get("withdrawn_on"):
        out.withdrawal.withdrawn_on = doc["withdrawn_on"]
        out.withdrawal.reason = doc.get("withdrawal_reason", "")
    return out


def fold_project(doc: Document | None, event: Message, env: pb.EventEnvelope) -> Document:
    """A construction project's document: {"project_id", "milestones": {step: date}}."""
    doc = doc if doc is not None else {"project_id": "", "milestones": {}}
    if isinstance(event, reg.ProjectMilestoneReached):
        doc["project_id"] = event.project_id
        doc["milestones"].setdefault(event.milestone, event.reached_on)
    return doc


# v2: filing dates, the system's own steps and its construction project (REG-1, REG-5)
# v3: the day each person was put on file (REG-9), kept from a person's first record
PROJECTIONS = [
    StreamProjection("system-", SYSTEMS, fold_system, version=3),
    # v2: the withdrawal's reason, and the declarations before a site's latest (REG-3)
    StreamProjection("site-", SITES, fold_site, version=2),
    StreamProjection("project-", PROJECTS, fold_project),
]
