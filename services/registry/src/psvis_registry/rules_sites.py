"""REG-3 checks of mandatory sites: the police declare and withdraw them, and a system's site is
of the category they declared while their declaration is in force."""

from __future__ import annotations

from datetime import date

from psvis import validate as v
from psvis.decision import Accepted, Decision
from psvis.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from psvis.registry.v1 import registry_pb2 as reg
from psvis.rulepack import RulePack

from psvis_registry.domain import SiteState
from psvis_registry.rules_common import mandatory_categories, site


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


def declare_site(cmd: reg.MandatorySiteDeclared, pack: RulePack) -> None:
    """Format checks of a declaration (REG-3), before its stream is read."""
    site(cmd.site, "declaration.site", pack)
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
