"""`psvis registry get, list, cameras, get-site, sites, findings`: the registry's queries, printed
one line per row, or as JSON with --json."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message
from psvis.cli.client import run_rpc, to_json, whole
from psvis.registry.v1 import registry_pb2 as reg
from psvis.registry.v1 import registry_pb2_grpc as reg_grpc

from psvis_registry.cli_flags import registry_stub


def get_system(args: argparse.Namespace) -> int:
    async def call() -> None:
        view = await registry_stub(args).GetSystem(reg.GetSystemRequest(system_id=args.system_id))
        if args.json:
            print(to_json(view))
            return
        print(f"{view.system_id}  {view.name}  [{view.state}]  v{view.version}")
        print(
            f"  unit {view.managing_unit}, operator {view.operator}; site {view.site.site_id} ({view.site.category}) {view.site.address} [{view.site.address_code}]"
        )
        print(
            f"  registered {view.registered_on or '-'}, filed {view.filed_on or '-'}, accepted {view.accepted_on or '-'}, in use {view.in_use_on or '-'}"
        )
        for c in view.cameras:
            sign = "sign" if c.camera_id in view.signed_camera_ids else "no sign"
            print(
                f"  camera {c.camera_id}: {c.device_type} at {c.place} ({c.location.longitude}, {c.location.latitude}) facing {c.orientation_deg:g}° [{sign}]"
            )
        print(
            f"  archives {len(view.archives)}, personnel {len(view.personnel)}, inspections {len(view.inspections)}, changes {len(view.changes)}"
        )

    return run_rpc(call)


def _show(
    args: argparse.Namespace,
    query: Callable[[reg_grpc.RegistryServiceStub], Awaitable[Message]],
    rows: Callable[[Any], list[str]],
    empty: str,
) -> int:
    """Run a query: JSON with --json, else one line per row (or `empty`)."""

    async def call() -> None:
        response = await query(registry_stub(args))
        print(to_json(response) if args.json else "\n".join(rows(response)) or empty)

    return run_rpc(call)


def list_systems(args: argparse.Namespace) -> int:
    request = reg.ListSystemsRequest(managing_unit=args.unit or "", state=args.state or "",
                                     address_code_prefix=args.address_code or "", page_size=args.limit,
                                     page_token=args.page_token or "")  # fmt: skip
    return _show(
        args,
        lambda stub: stub.ListSystems(request),
        lambda r: _paged([
            f"{s.system_id:20} {s.state:16} {s.camera_count:3} cameras  v{s.version:<4} {s.managing_unit:14} {s.name}"
            for s in r.systems
        ], r.next_page_token),
        "no systems",
    )  # fmt: skip


def page_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=whole(1, 1000), default=100, help="page size, 1-1000")
    p.add_argument("--page-token", help="the next page, as the previous page's last line gave it")


def _paged(lines: list[str], next_page_token: str) -> list[str]:
    """A page's lines, and how to ask for the next page if there is one."""
    return lines + ([f"more: --page-token {next_page_token}"] if next_page_token else [])


def search_cameras(args: argparse.Namespace) -> int:
    box = args.bbox or [0.0, 0.0, 0.0, 0.0]
    request = reg.SearchCamerasRequest(address_code_prefix=args.address_code or "", min_longitude=box[0],
                                       min_latitude=box[1], max_longitude=box[2], max_latitude=box[3], page_size=args.limit,
                                       page_token=args.page_token or "")  # fmt: skip
    return _show(
        args,
        lambda stub: stub.SearchCameras(request),
        lambda r: _paged([
            f"{h.system_id:20} {h.camera.camera_id:12} {h.camera.device_type:10} {h.camera.place:12} "
            f"({h.camera.location.longitude}, {h.camera.location.latitude}) {h.camera.address_code}"
            for h in r.cameras
        ], r.next_page_token),
        "no cameras",
    )  # fmt: skip


def _declaration_line(d: reg.SiteDeclaration, *, category: bool = True) -> str:
    line = f"declared {d.declared_on}" + (f" a {d.site.category} site" if category else "")
    line += f" ({d.article})"
    if d.HasField("withdrawal"):
        line += f", withdrawn {d.withdrawal.withdrawn_on}: {d.withdrawal.reason}"
    return line


def _site_lines(view: reg.SiteView) -> list[str]:
    """A site as get-site prints it (REG-3): the latest declaration, then the earlier ones."""
    where = view.declaration.site
    return [
        f"{view.site_id}  {view.category}  [{view.status}]  v{view.version}",
        f"  {view.address} [{view.address_code}] ({where.location.longitude}, {where.location.latitude})",
        f"  {_declaration_line(view.declaration)}",
        *(f"  earlier: {_declaration_line(d)}" for d in view.earlier),
    ]


def get_site(args: argparse.Namespace) -> int:
    request = reg.GetSiteRequest(site_id=args.site_id)
    return _show(args, lambda stub: stub.GetSite(request), _site_lines, "")


def list_sites(args: argparse.Namespace) -> int:
    request = reg.ListSitesRequest(
        address_code_prefix=args.address_code or "", category=args.category or "",
        status=args.status or "", page_size=args.limit, page_token=args.page_token or "",
    )  # fmt: skip

    def rows(r: reg.ListSitesResponse) -> list[str]:
        lines = [
            f"{s.site_id:20} {s.status:9} {s.category:34} {s.address_code:12} "
            f"{_declaration_line(s.declaration, category=False)}"
            for s in r.sites
        ]
        return _paged(lines, r.next_page_token)

    return _show(args, lambda stub: stub.ListSites(request), rows, "no sites")


def list_findings(args: argparse.Namespace) -> int:
    request = reg.ListFindingsRequest(as_of=args.as_of or "", spec=args.spec or "")
    return _show(
        args,
        lambda stub: stub.ListFindings(request),
        lambda r: [
            f"{f.status:8} {f.spec:6} {f.article:16} {f.subject:22} since {f.since}: {f.detail}"
            for f in r.findings
        ],
        "no findings",
    )
