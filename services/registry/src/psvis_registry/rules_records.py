"""REG checks of the records attached to a system: archives (REG-7), signage (REG-8), monitoring
personnel (REG-9), classification (REG-10) and supervisory inspections (REG-12)."""

from __future__ import annotations

from psvis import validate as v
from psvis.decision import Accepted, Decision, Refused
from psvis.errors import InvalidArgument
from psvis.registry.v1 import registry_pb2 as reg
from psvis.rulepack import RulePack

from psvis_registry.domain import SystemState

ARCHIVE_KINDS = frozenset(
    {"design", "construction", "acceptance", "maintenance", "units_and_technicians"}
)
INSPECTION_OUTCOMES = frozenset({"passed", "rectification_ordered", "failed"})


def attach_archive(state: SystemState, cmd: reg.ArchiveAttached, pack: RulePack) -> Decision:
    state.require_registered()
    v.one_of(cmd.kind, ARCHIVE_KINDS, "archive.kind")
    v.sha256_hex(cmd.sha256, "archive.sha256")
    v.required(cmd.title, "archive.title")
    v.need_date(cmd.attached_on, "archive.attached_on")
    if cmd.kind == "units_and_technicians" and not (cmd.units or cmd.technicians):
        raise InvalidArgument(  # what that archive is (Wuhan 11, Xi'an 17)
            "archive.units: an archive of units and technicians names at least one unit or"
            " technician"
        )
    return Accepted(cmd)


def record_signage(state: SystemState, cmd: reg.SignageInstalled, pack: RulePack) -> Decision:
    state.require_not_removed("signage")
    if not cmd.camera_ids:
        raise InvalidArgument("signage.camera_ids: name at least one camera")
    for camera_id in cmd.camera_ids:
        state.require_camera(camera_id)
    v.need_date(cmd.installed_on, "signage.installed_on")
    return Accepted(cmd)


def register_personnel(
    state: SystemState, cmd: reg.MonitoringPersonnelRegistered, pack: RulePack
) -> Decision:
    state.require_not_removed("monitoring personnel")
    v.identifier(cmd.person_id, "person.person_id")
    v.required(cmd.name, "person.name")
    v.required(cmd.duty, "person.duty")
    v.need_date(cmd.on_file_since, "person.on_file_since")  # REG-9: findings as of a date
    v.iso_date(cmd.trained_on, "person.trained_on", optional=True)
    v.iso_date(cmd.filed_with_police_on, "person.filed_with_police_on", optional=True)
    return Accepted(cmd)


def set_classification(state: SystemState, cmd: reg.ClassificationSet, pack: RulePack) -> Decision:
    state.require_not_removed("classification")
    v.need_date(cmd.set_on, "classification.set_on")
    c = cmd.classification
    if c.security_level > 5:
        raise InvalidArgument("classification.security_level must be 0-5")
    rule = pack.rule("classification.state_secret_no_internet")
    if c.state_secret_area and c.internet_connected and not rule.silent:
        reason = "a system in a state-secret area must not connect to the internet"
        return Refused("SetClassification", rule.cite(reason))
    return Accepted(cmd)


def record_inspection(state: SystemState, cmd: reg.InspectionRecorded, pack: RulePack) -> Decision:
    state.require_registered()
    v.identifier(cmd.inspection_id, "inspection.inspection_id")
    v.need_date(cmd.inspected_on, "inspection.inspected_on")
    v.required(cmd.inspecting_agency, "inspection.inspecting_agency")
    v.one_of(cmd.outcome, INSPECTION_OUTCOMES, "inspection.outcome")
    if not cmd.scope:
        raise InvalidArgument("inspection.scope: name what was inspected")
    return Accepted(cmd)
