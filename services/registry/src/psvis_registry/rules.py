"""The REG checks of a city's rule pack: each decision validates, then cites its article."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from datetime import date, timedelta
from typing import NoReturn

from psvis import validate as v
from psvis.decision import Accepted, Decision, Refused
from psvis.errors import AlreadyExists, FailedPrecondition, InvalidArgument
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
    SiteState,
    SystemState,
)

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
CRS = "CGCS2000"
ARCHIVE_KINDS = frozenset(
    {"design", "construction", "acceptance", "maintenance", "units_and_technicians"}
)
INSPECTION_OUTCOMES = frozenset({"passed", "rectification_ordered", "failed"})
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


def mandatory_categories(pack: RulePack) -> dict[str, str]:
    rule = pack.rule("sites.mandatory")
    return (
        {} if rule.silent else {c["category"]: c["article"] for c in rule.param("categories", [])}
    )


def _site(site: reg.Site, field: str, pack: RulePack) -> None:
    v.identifier(site.site_id, f"{field}.site_id")
    allowed = set(mandatory_categories(pack)) | {"other"}
    v.one_of(site.category, allowed, f"{field}.category")
    v.required(site.address, f"{field}.address")
    v.address_code(site.address_code, f"{field}.address_code")
    _location(site, f"{field}.location")


def require_site_as_declared(
    site: reg.Site, declared: SiteState | None, on: date, field: str
) -> None:
    """A site the police declared mandatory (REG-3) is of the category they declared, while
    their declaration is in force on the command's date: the category decides which of the
    city's rules apply to the systems there (Wuhan 10's rebuild plan, Xi'an 14's design
    review), so a unit may not file one of its own."""
    in_force = declared.declaration_on(on) if declared is not None else None
    if in_force is not None and site.category != in_force.category:
        raise FailedPrecondition(
            f"{field}.category: site {site.site_id} is declared by the police a"
            f" {in_force.category} site from {in_force.declared_on} (REG-3), not"
            f" {v.shown(site.category)}"
        )


def _camera(camera: reg.Camera, i: int) -> None:
    field = f"system.cameras[{i}]"
    v.identifier(camera.camera_id, f"{field}.camera_id")
    v.required(camera.device_type, f"{field}.device_type")
    _location(camera, f"{field}.location")
    v.address_code(camera.address_code, f"{field}.address_code")
    v.one_of(camera.place, PLACES, f"{field}.place")
    if not 0.0 <= camera.orientation_deg < 360.0:
        raise InvalidArgument(f"{field}.orientation_deg must be in [0, 360)")


def _location(placed: reg.Site | reg.Camera | reg.CameraPlacement, field: str) -> None:
    """REG-2 (Wuhan 13 统一空间坐标): every site and camera has a location, in one coordinate
    system, CGCS2000 (an empty crs says so too); a missing location is not (0, 0)."""
    if not placed.HasField("location"):
        raise InvalidArgument(f"{field} is required (longitude and latitude, CGCS2000)")
    point = placed.location
    if point.crs not in ("", CRS):
        raise InvalidArgument(
            f"{field}.crs {v.shown(point.crs)}: locations are given in {CRS}, the one"
            " coordinate system of the catalogue (REG-2)"
        )
    v.coordinates(point.longitude, point.latitude, field)


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
    _site(cmd.site, "system.site", pack)
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
    _site(cmd.new_site, "relocation.new_site", pack)
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
        _location(placed, f"{at}.location")
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


MILESTONES = ("designed", "built", "accepted", "in_use")  # a construction project's, in order


def milestone_precheck(cmd: reg.ProjectMilestoneReached) -> None:
    """Format checks, before the project's stream is read."""
    v.identifier(cmd.project_id, "milestone.project_id")
    v.one_of(cmd.milestone, frozenset(MILESTONES), "milestone.milestone")
    v.need_date(cmd.reached_on, "milestone.reached_on")


def record_milestone(reached: dict[str, date], cmd: reg.ProjectMilestoneReached) -> None:
    """REG-5 (Wuhan 8 para 1, Xi'an 16): a step of a project's main works, each recorded once
    and dated in the order of MILESTONES among the steps recorded (the command has passed
    milestone_precheck)."""
    day, rank = date.fromisoformat(cmd.reached_on), MILESTONES.index(cmd.milestone)
    if cmd.milestone in reached:
        raise AlreadyExists(
            f"project {cmd.project_id} was already {cmd.milestone} on {reached[cmd.milestone]}"
        )
    for other, on in reached.items():
        before = MILESTONES.index(other) < rank
        if (before and on > day) or (not before and on < day):
            raise FailedPrecondition(
                f"milestone.reached_on {day} is {'before' if before else 'after'} the project's"
                f" {other} step on {on} (steps in order: {', '.join(MILESTONES)})"
            )


def declare_site(cmd: reg.MandatorySiteDeclared, pack: RulePack) -> None:
    """Format checks of a declaration (REG-3), before its stream is read."""
    _site(cmd.site, "declaration.site", pack)
    v.need_date(cmd.declared_on, "declaration.declared_on")
    if cmd.site.category not in mandatory_categories(pack):
        raise InvalidArgument(
            f"declaration.site.category {v.shown(cmd.site.category)} is not a mandatory category of {pack.name}"
        )


def declare_site_again(state: SiteState, cmd: reg.MandatorySiteDeclared) -> Decision:
    """REG-3: a site is declared while it is not: first, or again after its withdrawal (a new
    spell of duty, a large public event held there again, say), dated on or after it."""
    if state.declarations and not state.withdrawn_on:
        raise AlreadyExists(
            f"site {state.site_id} is already declared (on {state.declared_on}); withdraw it"
            " first to declare it again"
        )
    if state.withdrawn_on and cmd.declared_on < state.withdrawn_on:  # ISO dates order as text
        raise FailedPrecondition(
            f"declaration.declared_on {cmd.declared_on} is before the site's withdrawal: site"
            f" {state.site_id} was withdrawn on {state.withdrawn_on} (REG-3)"
        )
    return Accepted(cmd)


def withdraw_site(state: SiteState, cmd: reg.MandatorySiteWithdrawn, pack: RulePack) -> Decision:
    """REG-3: the police withdraw a declared site (a large public event is over, Xi'an 10):
    from the withdrawal's date on it is not mandatory; each declaration is withdrawn once."""
    state.require_declared()
    day = v.need_date(cmd.withdrawn_on, "withdrawal.withdrawn_on")
    v.required(cmd.reason, "withdrawal.reason")
    if state.withdrawn_on:
        raise FailedPrecondition(
            f"site {state.site_id} was withdrawn on {state.withdrawn_on}: a withdrawal does not"
            " apply (REG-3)"
        )
    if day < date.fromisoformat(state.declared_on):
        raise FailedPrecondition(
            f"withdrawal.withdrawn_on {day} is before the site's declaration: site"
            f" {state.site_id} was declared on {state.declared_on} (REG-3)"
        )
    return Accepted(cmd)
