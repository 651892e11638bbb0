"""The video system aggregate: its state from events, and what each command decides. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date

from google.protobuf.message import Message
from psvis.decision import Aggregate, Refused
from psvis.errors import FailedPrecondition, InvalidArgument, NotFound
from psvis.registry.v1 import registry_pb2 as reg
from psvis.validate import shown

# REG-5: planned -> design reviewed -> built -> accepted -> in use -> relocated / removed;
# a failed acceptance goes through rectification to a new acceptance.
PLANNED, REVIEWED, REJECTED = "planned", "design_reviewed", "design_rejected"
BUILT, ACCEPTED, RECTIFICATION, RECTIFIED = "built", "accepted", "rectification", "rectified"
IN_USE, REMOVED = "in_use", "removed"
ACCEPTANCE_READY = frozenset({BUILT, RECTIFIED})
LIFECYCLE = (
    "planned, design reviewed, built, accepted (a failed acceptance: rectification, then"
    " acceptance again), in use"
)
STATES = frozenset(
    {PLANNED, REVIEWED, REJECTED, BUILT, ACCEPTED, RECTIFICATION, RECTIFIED, IN_USE, REMOVED}
)


# REG-3: a site's latest declaration on a given day: in force, withdrawn, or for a later day
IN_FORCE, WITHDRAWN, DECLARED = "in_force", "withdrawn", "declared"
SITE_STATUSES = frozenset({IN_FORCE, WITHDRAWN, DECLARED})


@dataclass(frozen=True)
class Declaration:
    """One spell of a site's duty (REG-3): from declared_on until withdrawn_on, if withdrawn."""

    category: str
    declared_on: str
    withdrawn_on: str = ""

    def in_force_on(self, day: date) -> bool:
        return date.fromisoformat(self.declared_on) <= day and not (
            self.withdrawn_on and date.fromisoformat(self.withdrawn_on) <= day
        )


@dataclass
class SiteState:
    """A site the police declared mandatory (REG-3), from its stream "site-<id>": declared,
    and withdrawn, maybe declared again after a withdrawal (a new spell of duty)."""

    site_id: str
    version: int = 0
    declarations: list[Declaration] = field(default_factory=list)  # in order, none overlapping

    @property
    def latest(self) -> Declaration:
        return self.declarations[-1] if self.declarations else Declaration("", "")

    @property
    def declared_on(self) -> str:
        return self.latest.declared_on

    @property
    def withdrawn_on(self) -> str:
        return self.latest.withdrawn_on

    def require_declared(self) -> None:
        if not self.declarations:
            raise NotFound(f"no site {shown(self.site_id)} is declared mandatory")

    def declaration_on(self, day: date) -> Declaration | None:
        """The declaration in force on `day`, if any: from its date until its withdrawal."""
        return next((d for d in self.declarations if d.in_force_on(day)), None)

    def in_force_on(self, day: date) -> bool:
        """Whether the site is mandatory on `day`."""
        return self.declaration_on(day) is not None


def evolve_site(state: SiteState, event: Message) -> None:
    state.version += 1
    match event:
        case reg.MandatorySiteDeclared():
            state.declarations.append(Declaration(event.site.category, event.declared_on))
        case reg.MandatorySiteWithdrawn() if state.declarations:
            state.declarations[-1] = replace(state.latest, withdrawn_on=event.withdrawn_on)
        case _:
            pass


@dataclass
class SystemState:
    system_id: str
    version: int = 0
    registered: bool = False
    state: str = ""
    managing_unit: str = ""
    site_id: str = ""
    site_category: str = ""  # as the unit filed it
    cameras: set[str] = field(default_factory=set)
    # the latest dated lifecycle step (REG-5, REG-6): what it was, and its ISO date
    last_step: tuple[str, str] = ("", "")
    # the police's declaration of the site the system stands at, if any: not in the system's
    # stream, so the application reads it from the site's and hands it to the decision
    site_declaration: SiteState | None = None

    def category_on(self, day: date) -> str:
        """The category of the system's site on `day` (REG-3): the one the police declared
        while their declaration is in force, else the one filed. It decides which of the city's
        rules apply to the system (Wuhan 10's rebuild plan, Xi'an 14's design review)."""
        declared = self.site_declaration
        in_force = declared.declaration_on(day) if declared is not None else None
        return in_force.category if in_force is not None else self.site_category

    def require_registered(self) -> None:
        if not self.registered:
            raise NotFound(f"no video system {shown(self.system_id)} is registered")

    def require_not_removed(self, command: str) -> None:
        self.require_registered()
        if self.state == REMOVED:
            raise FailedPrecondition(
                f"system {self.system_id} was removed; {command} does not apply"
            )

    def require_dated_in_order(self, day: date, field: str) -> None:
        """Lifecycle steps happen in order, so their dates do: none before the step it follows."""
        what, on = self.last_step
        try:
            last = date.fromisoformat(on)
        except ValueError:  # none yet (or an older log's unreadable date): nothing to follow
            return
        if day < last:
            raise FailedPrecondition(
                f"{field} {day} is before the system's {what} on {on}: the lifecycle's steps"
                " are dated in the order they happen (REG-5)"
            )

    def require_camera(self, camera_id: str) -> None:
        if camera_id not in self.cameras:
            raise InvalidArgument(f"system {self.system_id} has no camera {shown(camera_id)}")


def evolve(state: SystemState, event: Message) -> None:
    """Apply one event to the state; refusals change nothing but the version."""
    state.version += 1
    match event:
        case reg.SystemRegistered():
            state.registered = True
            state.state = PLANNED
            state.managing_unit = event.managing_unit
            state.site_id = event.site.site_id
            state.site_category = event.site.category
            state.cameras = {c.camera_id for c in event.cameras}
        case reg.DesignReviewed():
            state.state = REVIEWED if event.passed else REJECTED
            state.last_step = ("design review", event.reviewed_on)
        case reg.ConstructionCompleted():
            state.state = BUILT
            state.last_step = ("construction", event.completed_on)
        case reg.AcceptanceRecorded():
            state.state = ACCEPTED if event.passed else RECTIFICATION
            state.last_step = ("acceptance", event.accepted_on)
        case reg.RectificationCompleted():
            state.state = RECTIFIED
            state.last_step = ("rectification", event.completed_on)
        case reg.SystemPutIntoUse():
            state.state = IN_USE
            state.last_step = ("going into use", event.in_use_on)
        case reg.SystemRelocated():
            state.site_id = event.new_site.site_id
            state.site_category = event.new_site.category
            state.last_step = ("relocation", event.relocated_on)
        case reg.SystemRemoved():
            state.state = REMOVED
            state.last_step = ("removal", event.removed_on)
        case _:
            pass


def refusal_event(refused: Refused) -> Message:
    return reg.CommandRefused(command=refused.command, summary=refused.citation.reason)


SYSTEM = Aggregate[SystemState](
    new=lambda sid: SystemState(sid.removeprefix("system-")),
    evolve=evolve,
    refusal_event=refusal_event,
)


SITE = Aggregate[SiteState](
    new=lambda sid: SiteState(sid.removeprefix("site-")),
    evolve=evolve_site,
    refusal_event=refusal_event,
)


@dataclass
class ProjectState:
    """A construction project's main works (REG-5), from its stream "project-<id>"."""

    project_id: str
    reached: dict[str, date] = field(default_factory=dict)  # step -> the day it was reached


def evolve_project(state: ProjectState, event: Message) -> None:
    if isinstance(event, reg.ProjectMilestoneReached):
        state.reached.setdefault(event.milestone, date.fromisoformat(event.reached_on))


PROJECT = Aggregate[ProjectState](
    new=lambda sid: ProjectState(sid.removeprefix("project-")),
    evolve=evolve_project,
    refusal_event=refusal_event,
)


def system_stream(system_id: str) -> str:
    return f"system-{system_id}"


def site_stream(site_id: str) -> str:
    return f"site-{site_id}"


def project_stream(project_id: str) -> str:
    return f"project-{project_id}"
