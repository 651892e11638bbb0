"""The REG checks of a city's rule pack: each decision validates, then cites its article.

Here: what the registry needs of a pack (NEEDS) and a system's lifecycle, from registration
(REG-2, REG-4) and filing (REG-1) through design review, building, acceptance and use (REG-5),
changes (REG-11), relocation and removal (REG-6). The records attached to a system are checked in
rules_records, declared sites in rules_sites, construction projects in rules_projects; what they
share is in rules_common."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from datetime import date, timedelta
from typing import NoReturn

from psvis import validate as v
from psvis.decision import Accepted, Decision, Refused
from psvis.errors import FailedPrecondition, InvalidArgument
from psvis.registry.v1 import registry_pb2 as reg
from psvis.rulepack import ParamSpec, RulePack

from psvis_registry.domain import (
    ACCEPTANCE_READY,
    ACCEPTED,
    IN_USE,
    LIFECYCLE,
    PLANNED,
    RECTIFICATION,
    REJECTED,
    REVIEWED,
    SystemState,
)
from psvis_registry.rules_common import location, mandatory_categories, site

PLACES = frozenset(
    {
        # REG-4 codes a pack may forbid
        "hotel_room", "dormitory", "apartment_room", "public_bath", "changing_room",
        "dressing_room", "toilet", "nursing_room", "financial_client_info_area", "ballot_box",
        "voting_point", "report_box", "other_private_place",
        # ordinary public places
        "street", "road", "intersection", "entrance", "lobby", "corridor", "parking",
        "square", "platform", "hall", "perimeter", "public_area", "other",
    }
)  # fmt: skip
CHANGE_ATTRIBUTES = frozenset({"position", "function", "orientation"})
DEGREES = re.compile(r"[0-9]{1,3}(\.[0-9]{1,6})?")  # a new orientation, as a plain decimal

NEEDS = [
    ParamSpec("filing.new_system", {"trigger": str, "within_days": int, "contents": list}),
    ParamSpec("filing.pre_existing"),
    ParamSpec("sites.mandatory", {"categories": list}),
    ParamSpec("placement.forbidden", {"places": list}),
    ParamSpec("lifecycle.design_review", {"required": bool}),
    ParamSpec("lifecycle.acceptance_before_use"),
    ParamSpec("lifecycle.construction_project_sync", {"steps": list}),
    ParamSpec("relocation", {"timing": str, "days": int, "needs_consent_of": str}),
    ParamSpec("removal", {"timing": str, "days": int, "allowed_reasons": list}),
    ParamSpec("archives", {"required_kinds": list}),
    ParamSpec("signage", {"required": bool}),
    ParamSpec("personnel", {"training_required": bool}),
    ParamSpec("classification.anti_terror_key_target"),
    ParamSpec("classification.state_secret_no_internet"),
    ParamSpec("classification.basic_info_confidential"),
    ParamSpec("change_control", {"attributes": list}),
    ParamSpec("inspections"),
]


def _camera(camera: reg.Camera, i: int) -> None:
    field = f"system.cameras[{i}]"
    v.identifier(camera.camera_id, f"{field}.camera_id")
    v.required(camera.device_type, f"{field}.device_type")
    location(camera, f"{field}.location")
    v.address_code(camera.address_code, f"{field}.address_code")
    v.one_of(camera.place, PLACES, f"{field}.place")
    if not 0.0 <= camera.orientation_deg < 360.0:
        raise InvalidArgument(f"{field}.orientation_deg must be in [0, 360)")


def register_precheck(cmd: reg.SystemRegistered) -> None:
    """Format checks that need no state, so bad input never reaches the log."""
    v.identifier(cmd.system_id, "system.system_id")
    v.identifier(cmd.managing_unit, "system.managing_unit")


def register(state: SystemState, cmd: reg.SystemRegistered, pack: RulePack) -> Decision:
    v.identifier(cmd.system_id, "system.system_id")
    v.required(cmd.name, "system.name")
    v.identifier(cmd.managing_unit, "system.managing_unit")
    v.required(cmd.operator, "system.operator")
    v.need_date(cmd.registered_on, "system.registered_on")
    v.iso_date(cmd.built_on, "system.built_on", optional=True)
    site(cmd.site, "system.site", pack)
    if not cmd.cameras:
        raise InvalidArgument("system.cameras: a system has at least one camera")
    if len({c.camera_id for c in cmd.cameras}) != len(cmd.cameras):
        raise InvalidArgument("system.cameras: camera ids must be unique")
    for i, camera in enumerate(cmd.cameras):
        _camera(camera, i)
    forbidden = pack.rule("placement.forbidden")
    for camera in cmd.cameras:  # REG-4: no cameras in private places
        for place in [] if forbidden.silent else forbidden.param("places", []):
            if camera.place == place["place"]:
                reason = f"camera {camera.camera_id} would watch a {camera.place.replace('_', ' ')}"
                return Refused("RegisterSystem", forbidden.cite(reason, place["article"]))
    return Accepted(cmd)


def file_system(state: SystemState, cmd: reg.SystemFiled, pack: RulePack) -> Decision:
    state.require_not_removed("filing")
    v.need_date(cmd.filed_on, "filing.filed_on")
    v.required(cmd.receiving_agency, "filing.receiving_agency")
    rule = pack.rule("filing.new_system")  # REG-1: the filing holds what the city lists
    missing = (
        [] if rule.silent else [c for c in rule.param("contents", []) if c not in cmd.contents]
    )
    if missing:
        return Refused("FileSystem", rule.cite(f"the filing lacks {', '.join(missing)}"))
    return Accepted(cmd)


def _step_on(state: SystemState, value: str, field: str) -> date:
    """The date of a lifecycle step: a date, and not before the step it follows."""
    day = v.need_date(value, field)
    state.require_dated_in_order(day, field)
    return day


def review_design(state: SystemState, cmd: reg.DesignReviewed, pack: RulePack) -> Decision:
    state.require_not_removed("a design review")
    day = v.need_date(cmd.reviewed_on, "review.reviewed_on")
    if state.state not in (PLANNED, REJECTED):
        _out_of_order(state, "a design review")
    state.require_dated_in_order(day, "review.reviewed_on")
    return Accepted(cmd)


def complete_construction(
    state: SystemState, cmd: reg.ConstructionCompleted, pack: RulePack
) -> Decision:
    state.require_not_removed("construction")
    day = v.need_date(cmd.completed_on, "construction.completed_on")
    if state.state not in (PLANNED, REVIEWED, REJECTED):
        _out_of_order(state, "construction")
    state.require_dated_in_order(day, "construction.completed_on")
    review = pack.rule("lifecycle.design_review")  # REG-5: no building before a passed review
    # Xi'an 14 para 1: the review is required of systems at the mandatory sites of Xi'an 9
    mandatory = state.category_on(day) in mandatory_categories(pack)
    required = review.param("required", False) and mandatory
    if required and state.state != REVIEWED:
        reason = f"system {state.system_id} is {state.state}: building needs a passed design review"
        return Refused("CompleteConstruction", review.cite(reason))
    return Accepted(cmd)


def record_acceptance(state: SystemState, cmd: reg.AcceptanceRecorded, pack: RulePack) -> Decision:
    state.require_not_removed("acceptance")
    day = v.need_date(cmd.accepted_on, "acceptance.accepted_on")
    if not cmd.passed and not cmd.defects:
        raise InvalidArgument("acceptance.defects: a failed acceptance lists its defects")
    if state.state not in ACCEPTANCE_READY:
        _out_of_order(state, "acceptance")
    state.require_dated_in_order(day, "acceptance.accepted_on")
    return Accepted(cmd)


def complete_rectification(
    state: SystemState, cmd: reg.RectificationCompleted, pack: RulePack
) -> Decision:
    state.require_not_removed("rectification")
    day = v.need_date(cmd.completed_on, "rectification.completed_on")
    if state.state != RECTIFICATION:
        _out_of_order(state, "rectification")
    state.require_dated_in_order(day, "rectification.completed_on")
    return Accepted(cmd)


def put_into_use(state: SystemState, cmd: reg.SystemPutIntoUse, pack: RulePack) -> Decision:
    state.require_not_removed("going into use")
    day = v.need_date(cmd.in_use_on, "use.in_use_on")
    if state.state == IN_USE:
        _out_of_order(state, "going into use")
    state.require_dated_in_order(day, "use.in_use_on")
    if state.state != ACCEPTED:  # REG-5: nothing goes into use without passed acceptance
        rule = pack.rule("lifecycle.acceptance_before_use")
        reason = f"system {state.system_id} is {state.state}, not accepted"
        return Refused("PutIntoUse", rule.cite(reason))
    return Accepted(cmd)


def _out_of_order(state: SystemState, what: str) -> NoReturn:
    """A lifecycle step the system is past, or not yet at (REG-5's order, not a city's rule)."""
    raise FailedPrecondition(
        f"system {state.system_id} is {state.state}: {what} does not apply"
        f" (REG-5 lifecycle: {LIFECYCLE})"
    )


def file_change(state: SystemState, cmd: reg.ChangeFiled, pack: RulePack) -> Decision:
    state.require_not_removed("a change")
    state.require_camera(cmd.camera_id)
    v.one_of(cmd.attribute, CHANGE_ATTRIBUTES, "change.attribute")
    v.required(cmd.new_value, "change.new_value")
    if cmd.attribute == "orientation" and not (
        DEGREES.fullmatch(cmd.new_value) and float(cmd.new_value) < 360.0
    ):
        raise InvalidArgument("change.new_value: an orientation is degrees like 90 or 12.5, 0-360")
    v.need_date(cmd.effective_on, "change.effective_on")
    rule = pack.rule("change_control")  # REG-11: no change without an approved change/filing
    controlled = [] if rule.silent else rule.param("attributes", [])
    if cmd.attribute in controlled and not (cmd.approval_ref and cmd.approved_by):
        reason = f"a change of {cmd.attribute} needs an approval reference and approver"
        return Refused("FileChange", rule.cite(reason))
    return Accepted(cmd)


def _move_timing(
    rule_id: str, state: SystemState, moved_on: date, cmd: reg.SystemRelocated | reg.SystemRemoved,
    pack: RulePack,
) -> Refused | None:  # fmt: skip
    """REG-6: each city's timing, consent and (Wuhan 10) rebuild plan for a move or removal."""
    rule = pack.rule(rule_id)
    if rule.silent:
        return None
    command = "RelocateSystem" if rule_id == "relocation" else "RemoveSystem"
    reported = v.iso_date(cmd.reported_on, f"{rule_id}.reported_on", optional=True)
    mandatory = state.category_on(moved_on) in mandatory_categories(pack)
    if mandatory and rule.param("mandatory_site_requires_rebuild_plan", False):
        if not cmd.rebuild_plan_ref:
            reason = "the system serves a mandatory site: a rebuild or replacement plan is required"
            return Refused(command, rule.cite(reason))
        return None
    if rule.param("needs_consent_of") and not cmd.consent_ref:
        return Refused(
            command, rule.cite(f"needs the consent of the {rule.param('needs_consent_of')}")
        )
    timing, days = rule.param("timing"), rule.param("days", 0)
    if timing in ("report_before", "file_before", "approval_before", "consent_before"):
        if reported is None:
            return Refused(command, rule.cite("must be reported/filed before it happens"))
        if days and moved_on - reported < timedelta(days=days) and timing == "report_before":
            return Refused(command, rule.cite(f"must be reported at least {days} days before"))
        if reported > moved_on:
            return Refused(command, rule.cite("must be filed before it happens"))
        if timing == "file_before" and days and moved_on - reported > timedelta(days=days):
            return Refused(command, rule.cite(f"must be filed within the {days} days before"))
    return None


def relocate(state: SystemState, cmd: reg.SystemRelocated, pack: RulePack) -> Decision:
    state.require_not_removed("relocation")
    moved_on = _step_on(state, cmd.relocated_on, "relocation.date")  # findings need it too
    site(cmd.new_site, "relocation.new_site", pack)
    _placements(state, cmd.placements, "relocation.placements")
    refusal = _move_timing("relocation", state, moved_on, cmd, pack)
    return refusal or Accepted(cmd)


def _placements(state: SystemState, placements: Sequence[reg.CameraPlacement], field: str) -> None:
    """REG-2, basic data kept current (Guangzhou 16 para 2): a move says where each of the
    system's cameras now stands, every camera once, located as a registration locates it."""
    for i, placed in enumerate(placements):
        at = f"{field}[{i}]"
        if placed.camera_id not in state.cameras:
            raise InvalidArgument(
                f"{at}.camera_id: system {state.system_id} has no camera {v.shown(placed.camera_id)}"
            )
        location(placed, f"{at}.location")
        v.address_code(placed.address_code, f"{at}.address_code")
    named = Counter(p.camera_id for p in placements)
    twice = sorted(c for c, n in named.items() if n > 1)
    if twice:
        raise InvalidArgument(
            f"{field}: {', '.join(twice)} placed more than once; place each camera once"
        )
    missing = sorted(state.cameras - set(named))
    if missing:
        raise InvalidArgument(
            f"{field}: no place given for {', '.join(missing)} of system {state.system_id}; a"
            " relocation says where each camera now stands (location and address code, REG-2)"
        )


def remove(state: SystemState, cmd: reg.SystemRemoved, pack: RulePack) -> Decision:
    state.require_not_removed("removal")
    removed_on = _step_on(state, cmd.removed_on, "removal.date")  # findings need it too
    v.required(cmd.reason, "removal.reason")
    rule = pack.rule("removal")
    allowed = [] if rule.silent else rule.param("allowed_reasons", [])
    if allowed and cmd.reason not in allowed:
        return Refused("RemoveSystem", rule.cite(f"removal only for: {', '.join(allowed)}"))
    refusal = _move_timing("removal", state, removed_on, cmd, pack)
    return refusal or Accepted(cmd)
