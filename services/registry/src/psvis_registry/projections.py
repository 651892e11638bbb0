"""Registry read models: one document per system and per mandatory site (REG-2 catalogue)."""

from __future__ import annotations

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
