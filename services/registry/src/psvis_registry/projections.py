"""Registry read models: one document per system and per mandatory site (REG-2 catalogue)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.message import Message
from psvis.common.v1 import envelope_pb2 as pb
from psvis.projection import StreamProjection
from psvis.readstore.port import Document
from psvis.registry.v1 import registry_pb2 as reg

from psvis_registry import domain

SYSTEMS, SITES = "registry.systems", "registry.sites"
COLLECTIONS = (SYSTEMS, SITES)


def to_doc(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def view_of(doc: Document) -> reg.SystemView:
    return ParseDict(doc.get("view", {}), reg.SystemView())


def fold_system(doc: Document | None, event: Message, env: pb.EventEnvelope) -> Document:
    """Fold one event; the frequent ones edit the JSON view in place of a proto round trip.

    Both paths give the same document: the view is what to_doc(SystemView) would give.
    """
    edit = _EDITS.get(type(event))
    if edit is None or doc is None or not doc["view"].get("system_id"):
        return _fold_view(doc, event, env)
    doc = dict(doc)
    view = doc["view"] = dict(doc["view"])
    view["version"] = str(env.stream_version)  # uint64 is a string in proto3 JSON
    edit(doc, view, event, env)
    return doc


def _fold_view(doc: Document | None, event: Message, env: pb.EventEnvelope) -> Document:
    doc = dict(doc or {"view": {}, "refusals": [], "relocations": []})
    view = view_of(doc)
    view.version = env.stream_version
    on = env.occurred_at.ToDatetime().date().isoformat()
    match event:
        case reg.SystemRegistered():
            view.MergeFrom(
                reg.SystemView(
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
            )
            doc["pre_existing"], doc["built_on"] = event.pre_existing, event.built_on
        case reg.SystemFiled():
            view.filed_on = view.filed_on or event.filed_on
        case reg.DesignReviewed():
            view.state = domain.REVIEWED if event.passed else domain.REJECTED
        case reg.ConstructionCompleted():
            view.state = domain.BUILT
        case reg.AcceptanceRecorded():
            view.state = domain.ACCEPTED if event.passed else domain.RECTIFICATION
            view.accepted_on = event.accepted_on if event.passed else view.accepted_on
        case reg.RectificationCompleted():
            view.state = domain.RECTIFIED
        case reg.SystemPutIntoUse():
            view.state, view.in_use_on = domain.IN_USE, event.in_use_on
        case reg.ChangeFiled():
            _apply_change(view, event)
        case reg.SystemRelocated():
            view.site.CopyFrom(event.new_site)
            doc["relocations"] = [*doc["relocations"], to_doc(event)]
        case reg.SystemRemoved():
            view.state = domain.REMOVED
        case reg.ArchiveAttached():
            view.archives.append(event)
        case reg.SignageInstalled():
            signed = set(view.signed_camera_ids) | set(event.camera_ids)
            del view.signed_camera_ids[:]
            view.signed_camera_ids.extend(sorted(signed))
            since = dict(doc.get("signage", {}))  # REG-8: when each camera got its sign
            for camera_id in event.camera_ids:
                since[camera_id] = min(since.get(camera_id, event.installed_on), event.installed_on)
            doc["signage"] = since
        case reg.MonitoringPersonnelRegistered():
            view.personnel.append(event)
        case reg.ClassificationSet():
            view.classification.CopyFrom(event.classification)
        case reg.InspectionRecorded():
            view.inspections.append(event)
        case reg.CommandRefused():
            refusal = {"command": event.command, "on": on, **MessageToDict(env.refusal)}
            doc["refusals"] = [*doc["refusals"], refusal]
    if view.system_id:
        doc["view"] = to_doc(view)
    return doc


Edit = Callable[[Document, dict[str, Any], Any, pb.EventEnvelope], None]


def _put(view: dict[str, Any], key: str, value: Any) -> None:
    """proto3 JSON leaves out empty values."""
    if value:
        view[key] = value
    else:
        view.pop(key, None)


def _appends(key: str) -> Edit:
    def edit(doc: Document, view: dict[str, Any], event: Any, env: pb.EventEnvelope) -> None:
        view[key] = [*view.get(key, ()), to_doc(event)]

    return edit


def _state(state: str) -> Edit:
    def edit(doc: Document, view: dict[str, Any], event: Any, env: pb.EventEnvelope) -> None:
        view["state"] = state

    return edit


def _signage(doc: Document, view: dict[str, Any], event: Any, env: pb.EventEnvelope) -> None:
    signed = set(view.get("signed_camera_ids", ())) | set(event.camera_ids)
    _put(view, "signed_camera_ids", sorted(signed))
    since = dict(doc.get("signage", {}))  # REG-8: when each camera got its sign
    for camera_id in event.camera_ids:
        since[camera_id] = min(since.get(camera_id, event.installed_on), event.installed_on)
    doc["signage"] = since


def _filed(doc: Document, view: dict[str, Any], event: Any, env: pb.EventEnvelope) -> None:
    _put(view, "filed_on", view.get("filed_on") or event.filed_on)


def _reviewed(doc: Document, view: dict[str, Any], event: Any, env: pb.EventEnvelope) -> None:
    view["state"] = domain.REVIEWED if event.passed else domain.REJECTED


def _accepted(doc: Document, view: dict[str, Any], event: Any, env: pb.EventEnvelope) -> None:
    view["state"] = domain.ACCEPTED if event.passed else domain.RECTIFICATION
    if event.passed:
        _put(view, "accepted_on", event.accepted_on)


def _in_use(doc: Document, view: dict[str, Any], event: Any, env: pb.EventEnvelope) -> None:
    view["state"] = domain.IN_USE
    _put(view, "in_use_on", event.in_use_on)


def _refused(doc: Document, view: dict[str, Any], event: Any, env: pb.EventEnvelope) -> None:
    on = env.occurred_at.ToDatetime().date().isoformat()
    refusal = {"command": event.command, "on": on, **MessageToDict(env.refusal)}
    doc["refusals"] = [*doc["refusals"], refusal]


# Registration, changes, relocation and classification stay on the SystemView path.
_EDITS: dict[type[Message], Edit] = {
    reg.ArchiveAttached: _appends("archives"),
    reg.InspectionRecorded: _appends("inspections"),
    reg.MonitoringPersonnelRegistered: _appends("personnel"),
    reg.SignageInstalled: _signage,
    reg.SystemFiled: _filed,
    reg.DesignReviewed: _reviewed,
    reg.ConstructionCompleted: _state(domain.BUILT),
    reg.AcceptanceRecorded: _accepted,
    reg.RectificationCompleted: _state(domain.RECTIFIED),
    reg.SystemPutIntoUse: _in_use,
    reg.SystemRemoved: _state(domain.REMOVED),
    reg.CommandRefused: _refused,
}


def _apply_change(view: reg.SystemView, change: reg.ChangeFiled) -> None:
    view.changes.append(change)
    for camera in view.cameras:
        if camera.camera_id != change.camera_id:
            continue
        if change.attribute == "orientation":
            camera.orientation_deg = float(change.new_value)
        elif change.attribute == "position":
            camera.position = change.new_value
        else:
            camera.function = change.new_value


def fold_site(doc: Document | None, event: Message, env: pb.EventEnvelope) -> Document:
    if isinstance(event, reg.MandatorySiteDeclared):
        return to_doc(event)
    return dict(doc or {})


PROJECTIONS = [
    StreamProjection("system-", SYSTEMS, fold_system),
    StreamProjection("site-", SITES, fold_site),
]
