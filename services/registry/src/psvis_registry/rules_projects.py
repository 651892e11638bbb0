"""REG-5 checks of a construction project's main works, which its systems keep in step with:
the project's milestones, each recorded once and in order."""

from __future__ import annotations

from datetime import date

from psvis import validate as v
from psvis.errors import AlreadyExists, FailedPrecondition
from psvis.registry.v1 import registry_pb2 as reg

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
