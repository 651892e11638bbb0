"""`psvis registry ...`: file and manage video systems from the command line.

The commands that change the registry are here, with the parser of all of them; how their flags
are declared and read is in cli_flags, the queries and their printing in cli_queries."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

from psvis.cli.client import CliError, add_connection_flags, payload_from, run_rpc, to_json, whole
from psvis.registry.v1 import registry_pb2 as reg

from psvis_registry import domain, rules_projects
from psvis_registry.cli_flags import (
    Command,
    Flag,
    add_flags,
    fill,
    on,
    payload_flags,
    registry_stub,
)
from psvis_registry.cli_queries import (
    get_site,
    get_system,
    list_findings,
    list_sites,
    list_systems,
    page_flags,
    search_cameras,
)

COMMANDS = [
    Command("file", "file the system with the police (REG-1)", "FileSystem", reg.FileSystemRequest, "filing",
            (on("filed_on"), Flag("--agency", "receiving_agency", help="police agency receiving the filing", required=True),
             Flag("--content", "contents", "list", "what the filing holds, e.g. main_device_types, point_layout"))),
    Command("review", "record a design review (REG-5)", "RecordDesignReview", reg.RecordDesignReviewRequest, "review",
            (on("reviewed_on"), Flag("--passed", "passed", "bool", "the design passed"),
             Flag("--reviewer", "reviewers", "list"), Flag("--notes", "notes"))),
    Command("build", "record construction completed (REG-5)", "CompleteConstruction", reg.CompleteConstructionRequest,
            "construction", (on("completed_on"),)),
    Command("accept", "record an acceptance, passed or failed (REG-5)", "RecordAcceptance", reg.RecordAcceptanceRequest,
            "acceptance", (on("accepted_on"), Flag("--passed", "passed", "bool", "acceptance passed"),
                           Flag("--defect", "defects", "list", "a defect found (failed acceptance)"))),
    Command("rectify", "record rectification completed (REG-5)", "CompleteRectification", reg.CompleteRectificationRequest,
            "rectification", (on("completed_on"), Flag("--notes", "notes"))),
    Command("use", "put the system into use (REG-5)", "PutIntoUse", reg.PutIntoUseRequest, "use",
            (on("in_use_on"),)),
    Command("change", "file a change of a camera's position, function or orientation (REG-11)", "FileChange",
            reg.FileChangeRequest, "change",
            (on("effective_on"), Flag("--camera", "camera_id", required=True),
             Flag("--attribute", "attribute", help="position, function or orientation", required=True),
             Flag("--value", "new_value", required=True), Flag("--approval", "approval_ref"), Flag("--approved-by", "approved_by"))),
    Command("relocate", "relocate the system; --data holds {\"new_site\": {...}}, --camera places each camera (REG-6, REG-2)",
            "RelocateSystem", reg.RelocateSystemRequest, "relocation",
            (on("relocated_on"), Flag("--reported-on", "reported_on"), Flag("--consent", "consent_ref"),
             Flag("--rebuild-plan", "rebuild_plan_ref"),
             Flag("--camera", "placements", "placement",
                  "where a camera stands after the move, CAMERA_ID=LONGITUDE,LATITUDE,ADDRESS_CODE (CGCS2000); every camera once"))),
    Command("remove", "remove the system (REG-6)", "RemoveSystem", reg.RemoveSystemRequest, "removal",
            (on("removed_on"), Flag("--reason", "reason", required=True), Flag("--reported-on", "reported_on"),
             Flag("--consent", "consent_ref"), Flag("--rebuild-plan", "rebuild_plan_ref"))),
    Command("archive", "attach an archive document by content hash (REG-7)", "AttachArchive", reg.AttachArchiveRequest,
            "archive",
            (on("attached_on"), Flag("--kind", "kind", help="design, construction, acceptance, maintenance, units_and_technicians", required=True),
             Flag("--title", "title", required=True), Flag("--sha256", "sha256", help="or --document to hash a file"),
             Flag("--unit", "units", "list"), Flag("--technician", "technicians", "list"))),
    Command("signage", "record signs installed at cameras (REG-8)", "RecordSignage", reg.RecordSignageRequest, "signage",
            (on("installed_on"), Flag("--camera", "camera_ids", "list", required=True))),
    Command("personnel", "register monitoring personnel and training (REG-9)", "RegisterMonitoringPersonnel",
            reg.RegisterMonitoringPersonnelRequest, "person",
            (Flag("--on", "on_file_since", help="date the person was put on file, e.g. 2024-03-01", required=True),
             Flag("--person", "person_id", required=True), Flag("--name", "name", required=True), Flag("--duty", "duty", required=True),
             Flag("--trained-on", "trained_on"), Flag("--course", "training_course"), Flag("--filed-on", "filed_with_police_on"))),
    Command("inspect", "record a supervisory inspection (REG-12; police)", "RecordInspection", reg.RecordInspectionRequest,
            "inspection",
            (on("inspected_on"), Flag("--id", "inspection_id", required=True), Flag("--agency", "inspecting_agency", required=True),
             Flag("--scope", "scope", "list", required=True), Flag("--outcome", "outcome", help="passed, rectification_ordered or failed", required=True),
             Flag("--notes", "notes"))),
]  # fmt: skip


def _print_result(args: argparse.Namespace, response: reg.CommandResult) -> None:
    if args.json:
        print(to_json(response))
    else:
        print(
            f"ok: {response.stream_id} is at version {response.version} (event {response.event_id})"
        )


def _run_command(command: Command, args: argparse.Namespace) -> int:
    payload_cls = type(getattr(command.request(), command.payload_field))
    payload = payload_cls()
    fill(payload, command.flags, args)
    if command.name == "archive" and args.document:
        try:
            content = Path(args.document).read_bytes()
        except OSError as e:
            raise CliError(f"--document {args.document}: {e.strerror or e}") from None
        payload.sha256 = hashlib.sha256(content).hexdigest()  # type: ignore[attr-defined,unused-ignore]
    payload = payload_from(args, payload)
    request = command.request(system_id=args.system_id, expected_version=args.expected_version)
    getattr(request, command.payload_field).CopyFrom(payload)

    async def call() -> None:
        _print_result(args, await getattr(registry_stub(args), command.rpc)(request))

    return run_rpc(call)


def _register(args: argparse.Namespace) -> int:
    system = payload_from(args, reg.SystemRegistered())

    async def call() -> None:
        _print_result(
            args, await registry_stub(args).RegisterSystem(reg.RegisterSystemRequest(system=system))
        )

    return run_rpc(call)


def _declare_site(args: argparse.Namespace) -> int:
    declaration = payload_from(args, reg.MandatorySiteDeclared(declared_on=args.on))

    async def call() -> None:
        request = reg.DeclareMandatorySiteRequest()
        request.declaration.CopyFrom(declaration)
        _print_result(args, await registry_stub(args).DeclareMandatorySite(request))

    return run_rpc(call)


def _milestone(args: argparse.Namespace) -> int:
    step = reg.ProjectMilestoneReached(
        project_id=args.project_id, milestone=args.step, reached_on=args.on
    )

    async def call() -> None:
        request = reg.RecordProjectMilestoneRequest(milestone=step)
        _print_result(args, await registry_stub(args).RecordProjectMilestone(request))

    return run_rpc(call)


def _withdraw_site(args: argparse.Namespace) -> int:
    withdrawal = reg.MandatorySiteWithdrawn(withdrawn_on=args.on, reason=args.reason)
    request = reg.WithdrawMandatorySiteRequest(
        site_id=args.site_id, expected_version=args.expected_version, withdrawal=withdrawal
    )

    async def call() -> None:
        _print_result(args, await registry_stub(args).WithdrawMandatorySite(request))

    return run_rpc(call)


def _classify(args: argparse.Namespace) -> int:
    c = reg.Classification(
        anti_terror_key_target=args.anti_terror, security_key_unit=args.key_unit,
        state_secret_area=args.state_secret, internet_connected=args.internet,
        security_level=args.level, data_grade=args.data_grade or "",
    )  # fmt: skip
    request = reg.SetClassificationRequest(
        system_id=args.system_id, expected_version=args.expected_version,
        classification=reg.ClassificationSet(classification=c, set_on=args.on),
    )  # fmt: skip

    async def call() -> None:
        _print_result(args, await registry_stub(args).SetClassification(request))

    return run_rpc(call)


def add_cli(sub: Any) -> None:
    parser = sub.add_parser("registry", help="file and manage video systems (REG)")
    commands = parser.add_subparsers(dest="sub", required=True, metavar="SUB")

    p = commands.add_parser(
        "register", help="register a video system with its cameras (REG-2, REG-4)"
    )
    payload_flags(p)
    add_connection_flags(p)
    p.set_defaults(run=_register)

    for command in COMMANDS:
        p = commands.add_parser(command.name, help=command.help)
        p.add_argument("system_id")
        add_flags(p, command.flags)
        if command.name == "archive":
            p.add_argument("--document", help="a file whose SHA-256 to record")
        p.add_argument(
            "--expected-version",
            type=whole(0, 2**63 - 1),
            default=0,
            help="refuse the command unless the system is at this version (0: any)",
        )
        payload_flags(p)
        add_connection_flags(p)
        p.set_defaults(run=lambda a, c=command: _run_command(c, a))

    p = commands.add_parser("classify", help="set classification flags (REG-10)")
    p.add_argument("system_id")
    p.add_argument("--on", required=True, help="date")
    for flag in ("--anti-terror", "--key-unit", "--state-secret", "--internet"):
        p.add_argument(flag, action="store_true")
    p.add_argument("--level", type=whole(0, 5), default=0, help="security level 0-5")
    p.add_argument("--data-grade")
    p.add_argument("--expected-version", type=whole(0, 2**63 - 1), default=0,
                   help="refuse the command unless the system is at this version (0: any)")  # fmt: skip
    add_connection_flags(p)
    p.set_defaults(run=_classify)

    p = commands.add_parser(
        "declare-site",
        help='declare a site of a mandatory category (REG-3; police); --data holds {"site": {...}}',
    )
    p.add_argument("--on", required=True, help="date")
    payload_flags(p)
    add_connection_flags(p)
    p.set_defaults(run=_declare_site)

    p = commands.add_parser(
        "milestone",
        help="record a step of a construction project's main works, which its systems keep"
        " in step with (REG-5)",
    )
    p.add_argument("project_id", help="the project, as systems name it in construction_project")
    p.add_argument("--step", required=True, choices=rules_projects.MILESTONES)
    p.add_argument("--on", required=True, help="date the main works reached it, e.g. 2024-03-01")
    add_connection_flags(p)
    p.set_defaults(run=_milestone)

    p = commands.add_parser(
        "withdraw-site",
        help="withdraw a declared site, e.g. once a large public event is over (REG-3; police)",
    )
    p.add_argument("site_id")
    p.add_argument("--on", required=True, help="date from which the site is not mandatory")
    p.add_argument("--reason", required=True, help="why, e.g. the event is over")
    p.add_argument("--expected-version", type=whole(0, 2**63 - 1), default=0,
                   help="refuse the withdrawal unless the site is at this version (0: any)")  # fmt: skip
    add_connection_flags(p)
    p.set_defaults(run=_withdraw_site)

    p = commands.add_parser(
        "get", help="a system's basic information (REG-10: its unit or the police)"
    )
    p.add_argument("system_id")
    add_connection_flags(p)
    p.set_defaults(run=get_system)

    p = commands.add_parser("list", help="list systems (REG-2 catalogue)")
    p.add_argument("--unit")
    p.add_argument("--state")
    p.add_argument("--address-code", help="address code prefix")
    page_flags(p)
    add_connection_flags(p)
    p.set_defaults(run=list_systems)

    p = commands.add_parser(
        "cameras", help="search cameras by address code and bounding box (police)"
    )
    p.add_argument("--address-code", help="address code prefix")
    p.add_argument(
        "--bbox", type=float, nargs=4, metavar=("MIN_LON", "MIN_LAT", "MAX_LON", "MAX_LAT")
    )
    page_flags(p)
    add_connection_flags(p)
    p.set_defaults(run=search_cameras)

    p = commands.add_parser(
        "get-site",
        help="a declared site (REG-3): its declaration with the article, withdrawal and earlier"
        " declarations (police, auditors, units)",
    )
    p.add_argument("site_id", help="the site's id, as the police declared it")
    add_connection_flags(p)
    p.set_defaults(run=get_site)

    p = commands.add_parser("sites", help="list declared sites (REG-3; police, auditors)")
    p.add_argument("--address-code", help="address code prefix")
    p.add_argument(
        "--category", help="a mandatory category of the city's pack, or one a declared site holds"
    )
    p.add_argument(
        "--status",
        choices=sorted(domain.SITE_STATUSES),
        help="the latest declaration today: in_force; withdrawn (on or before today);"
        " declared (for a later day)",
    )
    page_flags(p)
    add_connection_flags(p)
    p.set_defaults(run=list_sites)

    p = commands.add_parser(
        "findings", help="compliance findings with article (REG-1, 3, 5, 6, 7, 8, 9, 12)"
    )
    p.add_argument(
        "--as-of", help="date to evaluate at, YYYY-MM-DD (default: today in China, UTC+8)"
    )
    p.add_argument("--spec", help="only this requirement, e.g. REG-1")
    add_connection_flags(p)
    p.set_defaults(run=list_findings)
