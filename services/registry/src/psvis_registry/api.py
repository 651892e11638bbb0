"""RegistryService over gRPC: protobuf in, commands and queries out. Default deny."""

from __future__ import annotations

import re
from typing import Any

import grpc
from google.protobuf.message import Message
from psvis import validate as v
from psvis.envelope import RecordedEvent
from psvis.errors import InvalidArgument, NotFound, PermissionDenied
from psvis.grpc_server import Caller, caller_of
from psvis.registry.v1 import registry_pb2 as reg
from psvis.registry.v1 import registry_pb2_grpc as reg_grpc
from psvis.rulepack import SPEC_ID

from psvis_registry import domain, rules, rules_records
from psvis_registry.handlers import POLICE, UNIT, Decide, Registry
from psvis_registry.projections import view_of

AUDITOR = "auditor"
WRITERS = frozenset({UNIT, POLICE})
# Who may call what; anything not listed is denied.
POLICY: dict[str, frozenset[str]] = {
    "RecordInspection": frozenset({POLICE}),
    "DeclareMandatorySite": frozenset({POLICE}),
    "WithdrawMandatorySite": frozenset({POLICE}),
    "GetSystem": frozenset({UNIT, POLICE}),
    "ListSystems": frozenset({UNIT, POLICE, AUDITOR}),
    "SearchCameras": frozenset({POLICE}),
    "ListFindings": frozenset({POLICE, AUDITOR}),
    # REG-3: a unit reads a site by its id (its refusals name the site whose declared category
    # binds its systems there); the list of every mandatory site is the police's and auditors'
    "GetSite": frozenset({UNIT, POLICE, AUDITOR}),
    "ListSites": frozenset({POLICE, AUDITOR}),
}


def authorise(context: grpc.aio.ServicerContext, method: str) -> Caller:
    caller = caller_of(context)
    if caller.role not in POLICY.get(method, WRITERS):
        raise PermissionDenied(f"role {caller.role!r} of {caller.agency} may not call {method}")
    return caller


def result(recorded: RecordedEvent) -> reg.CommandResult:
    return reg.CommandResult(
        stream_id=recorded.stream_id, version=recorded.version, event_id=recorded.event_id
    )


PAGE_TOKEN = re.compile(r"[0-9]{1,10}")  # what next_page_token gives: an offset


def _page(items: list[str], size: int, token: str) -> tuple[int, int]:
    size = min(size or 100, 1000)
    start = 0
    if token:
        if not PAGE_TOKEN.fullmatch(token) or int(token) > len(items):
            raise InvalidArgument("page_token is not one this server issued")
        start = int(token)
    return start, size


class RegistryApi(reg_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._r = registry

    async def RegisterSystem(
        self, request: reg.RegisterSystemRequest, context: grpc.aio.ServicerContext
    ) -> reg.CommandResult:
        caller = authorise(context, "RegisterSystem")
        return result(await self._r.register(caller, request.system))

    async def _command(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        request: Any,
        decide: Decide,
        payload: Message,
    ) -> reg.CommandResult:
        caller = self._caller(context, method, request)
        recorded = await self._r.command(
            caller, request.system_id, request.expected_version, decide, payload
        )
        return result(recorded)

    def _caller(self, context: grpc.aio.ServicerContext, method: str, request: Any) -> Caller:
        """Who calls, allowed to call `method`, about a system id that is one."""
        caller = authorise(context, method)
        v.identifier(request.system_id, "system_id")
        return caller

    async def FileSystem(self, request, context):  # type: ignore[no-untyped-def]
        return await self._command(
            context, "FileSystem", request, rules.file_system, request.filing
        )

    async def RecordDesignReview(self, request, context):  # type: ignore[no-untyped-def]
        return await self._command(
            context, "RecordDesignReview", request, rules.review_design, request.review
        )

    async def CompleteConstruction(self, request, context):  # type: ignore[no-untyped-def]
        return await self._command(
            context,
            "CompleteConstruction",
            request,
            rules.complete_construction,
            request.construction,
        )

    async def RecordAcceptance(self, request, context):  # type: ignore[no-untyped-def]
        return await self._command(
            context, "RecordAcceptance", request, rules.record_acceptance, request.acceptance
        )

    async def CompleteRectification(self, request, context):  # type: ignore[no-untyped-def]
        return await self._command(
            context,
            "CompleteRectification",
            request,
            rules.complete_rectification,
            request.rectification,
        )

    async def PutIntoUse(self, request, context):  # type: ignore[no-untyped-def]
        return await self._command(context, "PutIntoUse", request, rules.put_into_use, request.use)

    async def FileChange(self, request, context):  # type: ignore[no-untyped-def]
        return await self._command(
            context, "FileChange", request, rules.file_change, request.change
        )

    async def RelocateSystem(self, request, context):  # type: ignore[no-untyped-def]
        caller = self._caller(context, "RelocateSystem", request)
        return result(
            await self._r.relocate(
                caller, request.system_id, request.expected_version, request.relocation
            )
        )

    async def RemoveSystem(self, request, context):  # type: ignore[no-untyped-def]
        return await self._command(context, "RemoveSystem", request, rules.remove, request.removal)

    async def AttachArchive(self, request, context):  # type: ignore[no-untyped-def]
        return await self._command(
            context, "AttachArchive", request, rules_records.attach_archive, request.archive
        )

    async def RecordSignage(self, request, context):  # type: ignore[no-untyped-def]
        return await self._command(
            context, "RecordSignage", request, rules_records.record_signage, request.signage
        )

    async def RegisterMonitoringPersonnel(self, request, context):  # type: ignore[no-untyped-def]
        return await self._command(
            context,
            "RegisterMonitoringPersonnel",
            request,
            rules_records.register_personnel,
            request.person,
        )

    async def SetClassification(self, request, context):  # type: ignore[no-untyped-def]
        return await self._command(
            context,
            "SetClassification",
            request,
            rules_records.set_classification,
            request.classification,
        )

    async def RecordInspection(self, request, context):  # type: ignore[no-untyped-def]
        return await self._command(
            context,
            "RecordInspection",
            request,
            rules_records.record_inspection,
            request.inspection,
        )

    async def RecordProjectMilestone(
        self, request: reg.RecordProjectMilestoneRequest, context: grpc.aio.ServicerContext
    ) -> reg.CommandResult:
        caller = authorise(context, "RecordProjectMilestone")
        return result(await self._r.record_milestone(caller, request.milestone))

    async def DeclareMandatorySite(
        self, request: reg.DeclareMandatorySiteRequest, context: grpc.aio.ServicerContext
    ) -> reg.CommandResult:
        caller = authorise(context, "DeclareMandatorySite")
        return result(await self._r.declare_site(caller, request.declaration))

    async def WithdrawMandatorySite(
        self, request: reg.WithdrawMandatorySiteRequest, context: grpc.aio.ServicerContext
    ) -> reg.CommandResult:
        caller = authorise(context, "WithdrawMandatorySite")
        v.identifier(request.site_id, "site_id")
        return result(
            await self._r.withdraw_site(
                caller, request.site_id, request.expected_version, request.withdrawal
            )
        )

    async def GetSystem(
        self, request: reg.GetSystemRequest, context: grpc.aio.ServicerContext
    ) -> reg.SystemView:
        caller = authorise(context, "GetSystem")
        v.identifier(request.system_id, "system_id")
        doc = await self._r.system_doc(request.system_id)
        if doc is None:
            raise NotFound(f"no video system {v.shown(request.system_id)} is registered")
        view = view_of(doc)
        if caller.role == UNIT and view.managing_unit != caller.agency:
            # REG-10: basic information is confidential; only its unit and the police read it
            raise PermissionDenied(
                f"basic information of {request.system_id} is not readable by {caller.agency}"
            )
        return view

    async def ListSystems(
        self, request: reg.ListSystemsRequest, context: grpc.aio.ServicerContext
    ) -> reg.ListSystemsResponse:
        caller = authorise(context, "ListSystems")
        if request.state:
            v.one_of(request.state, domain.STATES, "state")
        v.address_code_prefix(request.address_code_prefix)
        views = [view_of(d) for d in await self._r.system_docs()]
        unit = caller.agency if caller.role == UNIT else request.managing_unit
        chosen = [
            s for s in views
            if (not unit or s.managing_unit == unit)
            and (not request.state or s.state == request.state)
            and s.site.address_code.startswith(request.address_code_prefix)
        ]  # fmt: skip
        start, size = _page([s.system_id for s in chosen], request.page_size, request.page_token)
        page = chosen[start : start + size]
        more = start + size < len(chosen)
        return reg.ListSystemsResponse(
            systems=[
                reg.SystemSummary(
                    system_id=s.system_id,
                    name=s.name,
                    managing_unit=s.managing_unit,
                    state=s.state,
                    camera_count=len(s.cameras),
                    version=s.version,
                )
                for s in page
            ],
            next_page_token=str(start + size) if more else "",
        )

    async def SearchCameras(
        self, request: reg.SearchCamerasRequest, context: grpc.aio.ServicerContext
    ) -> reg.SearchCamerasResponse:
        authorise(context, "SearchCameras")
        v.address_code_prefix(request.address_code_prefix)
        box = (
            request.min_longitude,
            request.min_latitude,
            request.max_longitude,
            request.max_latitude,
        )
        if any(box):
            v.coordinates(box[0], box[1], "min corner")
            v.coordinates(box[2], box[3], "max corner")
            if box[0] > box[2] or box[1] > box[3]:
                raise InvalidArgument(
                    "the bounding box's min corner must be below and left of its max corner"
                )
        hits = [
            reg.CameraHit(system_id=s.system_id, camera=c)
            for s in (view_of(d) for d in await self._r.system_docs())
            if s.state != "removed"
            for c in s.cameras
            if c.address_code.startswith(request.address_code_prefix)
            and (not any(box) or (box[0] <= c.location.longitude <= box[2] and box[1] <= c.location.latitude <= box[3]))
        ]  # fmt: skip
        start, size = _page(
            [h.camera.camera_id for h in hits], request.page_size, request.page_token
        )
        more = start + size < len(hits)
        return reg.SearchCamerasResponse(
            cameras=hits[start : start + size], next_page_token=str(start + size) if more else ""
        )

    async def ListFindings(
        self, request: reg.ListFindingsRequest, context: grpc.aio.ServicerContext
    ) -> reg.ListFindingsResponse:
        authorise(context, "ListFindings")
        as_of = v.need_date(request.as_of, "as_of") if request.as_of else self._r.today()
        if request.spec and not SPEC_ID.fullmatch(request.spec):
            raise InvalidArgument(
                f"spec {v.shown(request.spec)} is not a requirement id like REG-7"
            )
        found = await self._r.findings(as_of)
        return reg.ListFindingsResponse(
            findings=[f for f in found if not request.spec or f.spec == request.spec]
        )

    async def GetSite(
        self, request: reg.GetSiteRequest, context: grpc.aio.ServicerContext
    ) -> reg.SiteView:
        authorise(context, "GetSite")
        v.identifier(request.site_id, "site_id")
        view = await self._r.site_view(request.site_id)
        if view is None:
            raise NotFound(f"no site {v.shown(request.site_id)} is declared mandatory")
        return view

    async def ListSites(
        self, request: reg.ListSitesRequest, context: grpc.aio.ServicerContext
    ) -> reg.ListSitesResponse:
        authorise(context, "ListSites")
        v.address_code_prefix(request.address_code_prefix)
        category = request.category
        mandatory = self._r.mandatory_categories()
        # a category the pack no longer lists is still that of the sites declared under it
        if category and category not in mandatory and not await self._r.site_ids("", category, ""):
            v.one_of(category, mandatory, "category")
        if request.status:
            v.one_of(request.status, domain.SITE_STATUSES, "status")
        chosen = await self._r.site_ids(request.address_code_prefix, category, request.status)
        start, size = _page(chosen, request.page_size, request.page_token)
        more = start + size < len(chosen)
        return reg.ListSitesResponse(
            sites=await self._r.site_views(chosen[start : start + size]),
            next_page_token=str(start + size) if more else "",
        )
