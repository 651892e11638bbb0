"""Registry application layer: authorise, load, decide, append (REG-1..12)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any, TypeVar

from google.protobuf.message import Message
from psvis.clock import city_date
from psvis.decision import Accepted, Aggregate, Decision, execute, load
from psvis.envelope import Actor, RecordedEvent
from psvis.errors import AlreadyExists, PermissionDenied, RuleRefusal, Unavailable
from psvis.grpc_server import Caller
from psvis.platform import Platform
from psvis.registry.v1 import registry_pb2 as reg
from psvis.rulepack import RulePack

from psvis_registry import rules, rules_common, rules_projects, rules_sites
from psvis_registry.domain import (
    PROJECT,
    SITE,
    SYSTEM,
    ProjectState,
    SiteState,
    SystemState,
    project_stream,
    site_stream,
    system_stream,
)
from psvis_registry.findings import all_findings
from psvis_registry.projections import PROJECTS, SITES, SYSTEMS, site_status, site_view

UNIT, POLICE = "management_unit", "police"
ATTEMPTS = 100

Decide = Callable[[SystemState, Any, RulePack], Decision]
S = TypeVar("S")


class _StandsElsewhere(Exception):
    """The system stands at another site than the one whose declaration was read."""

    def __init__(self, site_id: str) -> None:
        super().__init__(site_id)
        self.site_id = site_id


class Registry:
    def __init__(self, platform: Platform, trace: Callable[[], dict[str, str]] = dict) -> None:
        self._p = platform
        self._trace = trace

    async def register(self, caller: Caller, system: reg.SystemRegistered) -> RecordedEvent:
        rules.register_precheck(system)
        if caller.role == UNIT and system.managing_unit != caller.agency:
            raise PermissionDenied(
                f"{caller.agency} may register only its own systems, not {system.managing_unit}'s"
            )

        declared = await self._declaration(system.site.site_id)

        def decide(state: SystemState) -> Decision:
            if state.registered:
                raise AlreadyExists(f"video system {state.system_id} is already registered")
            decision = rules.register(state, system, self._p.pack)  # bad input is named first
            if isinstance(decision, Accepted):  # a rule's refusal stands, and is recorded
                on = date.fromisoformat(system.registered_on)
                rules_sites.require_site_as_declared(system.site, declared, on, "system.site")
            return decision

        return await self._run(caller, SYSTEM, system_stream(system.system_id), decide, 0)

    async def command(
        self, caller: Caller, system_id: str, expected: int, decide: Decide, payload: Message
    ) -> RecordedEvent:
        """Decide with the state of the system and the police's declaration of its site (REG-3).

        The site is first taken from the read model; should the system stand elsewhere when
        the decision loads it (the read model behind, or a move in between), the decision is
        made again with the declaration of the site it stands at."""
        view = (await self.system_doc(system_id) or {}).get("view")
        site_id = str(view.get("site", {}).get("site_id", "")) if isinstance(view, dict) else ""
        for _ in range(ATTEMPTS):
            try:
                return await self._command_at(site_id, caller, system_id, expected, decide, payload)
            except _StandsElsewhere as moved:
                site_id = moved.site_id
        raise Unavailable(f"system {system_id} keeps moving: gave up after {ATTEMPTS} attempts")

    async def _command_at(
        self, site_id: str, caller: Caller, system_id: str, expected: int, decide: Decide,
        payload: Message,
    ) -> RecordedEvent:  # fmt: skip
        """The command, decided with the declaration of the site the system must stand at."""
        declared = await self._declaration(site_id)

        def decided(state: SystemState) -> Decision:
            state.require_registered()
            if caller.role == UNIT and state.managing_unit != caller.agency:
                raise PermissionDenied(f"system {system_id} is not managed by {caller.agency}")
            if state.site_id != site_id:
                raise _StandsElsewhere(state.site_id)
            state.site_declaration = declared
            return decide(state, payload, self._p.pack)

        return await self._run(caller, SYSTEM, system_stream(system_id), decided, expected)

    async def relocate(
        self, caller: Caller, system_id: str, expected: int, move: reg.SystemRelocated
    ) -> RecordedEvent:
        """A command like the others, but that the new site's declaration (REG-3) is read
        first, and holds for a move the city's rules accept."""
        declared = await self._declaration(move.new_site.site_id)

        def decide(state: SystemState, cmd: reg.SystemRelocated, pack: RulePack) -> Decision:
            decision = rules.relocate(state, cmd, pack)  # bad input is named first
            if isinstance(decision, Accepted):  # a rule's refusal stands, and is recorded
                on = date.fromisoformat(cmd.relocated_on)
                rules_sites.require_site_as_declared(
                    cmd.new_site, declared, on, "relocation.new_site"
                )
            return decision

        return await self.command(caller, system_id, expected, decide, move)

    async def _run(
        self,
        caller: Caller,
        kind: Aggregate[S],
        stream: str,
        decide: Callable[[S], Decision],
        expected: int,
    ) -> RecordedEvent:
        try:
            recorded = await execute(
                self._p.events,
                kind,
                stream,
                decide,
                actor=Actor(agency=caller.agency, role=caller.role),
                occurred_at=self._p.clock.now(),
                expected_version=expected,
                trace=self._trace(),
            )
        except RuleRefusal as refusal:  # recorded too: let readers see it before the caller does
            await self._p.projections.wait_for_stream(refusal.stream_id, refusal.version)
            raise
        await self._p.projections.wait_for_stream(recorded.stream_id, recorded.version)
        return recorded

    async def declare_site(self, caller: Caller, cmd: reg.MandatorySiteDeclared) -> RecordedEvent:
        rules_sites.declare_site(cmd, self._p.pack)

        def decide(state: SiteState) -> Decision:
            return rules_sites.declare_site_again(state, cmd)

        return await self._run(caller, SITE, site_stream(cmd.site.site_id), decide, 0)

    async def withdraw_site(
        self, caller: Caller, site_id: str, expected: int, cmd: reg.MandatorySiteWithdrawn
    ) -> RecordedEvent:
        def decide(state: SiteState) -> Decision:
            return rules_sites.withdraw_site(state, cmd, self._p.pack)

        return await self._run(caller, SITE, site_stream(site_id), decide, expected)

    async def record_milestone(
        self, caller: Caller, cmd: reg.ProjectMilestoneReached
    ) -> RecordedEvent:
        """A step of a construction project's main works (REG-5), on the project's stream."""
        rules_projects.milestone_precheck(cmd)

        def decide(state: ProjectState) -> Decision:
            rules_projects.record_milestone(state.reached, cmd)
            return Accepted(cmd)

        return await self._run(caller, PROJECT, project_stream(cmd.project_id), decide, 0)

    async def _declaration(self, site_id: str) -> SiteState | None:
        """The police's declaration of the site, if they declared it (from the log)."""
        if not site_id:
            return None  # the command's validation names the missing id
        state, version = await load(self._p.events, SITE, site_stream(site_id))
        return state if version else None

    async def system_doc(self, system_id: str) -> dict[str, object] | None:
        found = await self._p.reads.get(SYSTEMS, system_id)
        return None if found is None or not found[0].get("view") else found[0]

    async def system_docs(self) -> list[dict[str, object]]:
        return [doc for _, doc in await self._p.reads.list(SYSTEMS) if doc.get("view")]

    async def site_view(self, site_id: str) -> reg.SiteView | None:
        """The site the police declared mandatory (REG-3), if they did."""
        found = await self._p.reads.get(SITES, site_id)
        if found is None or not found[0].get("declared_on"):
            return None
        return site_view(*found, self._article, self.today())

    async def site_ids(self, address_code_prefix: str, category: str, status: str) -> list[str]:
        """The declared sites whose latest declaration has that address code prefix, category
        (any if empty) and status today (any if empty), in site id order."""
        today = self.today()
        return [
            site_id for site_id, doc in await self._p.reads.list(SITES)
            if doc.get("declared_on")
            and doc.get("site", {}).get("address_code", "").startswith(address_code_prefix)
            and category in ("", doc.get("site", {}).get("category"))
            and status in ("", site_status(doc, today))
        ]  # fmt: skip

    async def site_views(self, site_ids: list[str]) -> list[reg.SiteView]:
        found = await self._p.reads.get_many(SITES, site_ids)
        today = self.today()
        return [site_view(*found[s], self._article, today) for s in site_ids if s in found]

    def mandatory_categories(self) -> frozenset[str]:
        """The site categories the city's pack makes mandatory (REG-3)."""
        return frozenset(rules_common.mandatory_categories(self._p.pack))

    def _article(self, category: str) -> str:
        """The article making a site category mandatory; the rule's own for one the pack no
        longer lists."""
        rule = self._p.pack.rule("sites.mandatory")
        return rules_common.mandatory_categories(self._p.pack).get(category, rule.article)

    def today(self) -> date:
        """Today in the city, by the platform's clock."""
        return city_date(self._p.clock.now())

    async def findings(self, as_of: date) -> list[reg.Finding]:
        sites = [doc for _, doc in await self._p.reads.list(SITES)]
        projects = [doc for _, doc in await self._p.reads.list(PROJECTS)]
        return all_findings(await self.system_docs(), sites, projects, self._p.pack, as_of)
