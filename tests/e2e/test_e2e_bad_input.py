"""Malformed input is INVALID_ARGUMENT (unknown targets NOT_FOUND) with a message naming the field,
and nothing is appended: the catalogue and the stream versions do not move."""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any

import grpc
import pytest
from conftest import secure_channel
from e2e_kit import (
    ABORTED,
    EXISTS,
    INVALID,
    NOT_FOUND,
    OK,
    REFUSED,
    accept,
    build,
    camera,
    change,
    expect,
    findings,
    new_id,
    register,
    site,
    system,
    use,
    version,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psvis.registry.v1 import registry_pb2 as reg
from psvis.validate import SHOWN
from psvis_registry.rules import PLACES


async def count(clients) -> int:
    return len((await clients.police.ListSystems(reg.ListSystemsRequest(page_size=1000))).systems)


def with_(base: reg.SystemRegistered, edit) -> reg.SystemRegistered:
    out = reg.SystemRegistered()
    out.CopyFrom(base)
    edit(out)
    return out


def _set(path: str, value: Any):
    def edit(s: reg.SystemRegistered) -> None:
        *parents, leaf = path.split(".")
        target: Any = s
        for p in parents:
            target = target[int(p)] if p.isdigit() else getattr(target, p)
        setattr(target, leaf, value)

    return edit


BAD_REGISTRATIONS = [
    ("system_id", "", "system_id"), ("system_id", "has space", "system_id"),
    ("system_id", "-leading-dash", "system_id"), ("system_id", "x" * 65, "system_id"),
    ("managing_unit", "", "managing_unit"), ("name", "   ", "name"), ("operator", "", "operator"),
    ("name", "n" * 201, "name"),
    ("registered_on", "", "registered_on"), ("registered_on", "2024-02-30", "registered_on"),
    ("registered_on", "yesterday", "registered_on"), ("built_on", "2024/01/01", "built_on"),
    ("site.site_id", "site 1", "site_id"), ("site.category", "casino", "category"),
    ("site.address", "", "address"), ("site.address_code", "42-01", "address_code"),
    ("site.location.latitude", 91.0, "location"), ("cameras.0.location.longitude", 180.5, "location"),
    ("cameras.0.location.latitude", -90.01, "location"), ("cameras.0.location.longitude", math.nan, "location"),
    ("cameras.0.location.latitude", math.inf, "location"), ("cameras.0.orientation_deg", 360.0, "orientation"),
    ("cameras.0.orientation_deg", -0.5, "orientation"), ("cameras.0.orientation_deg", math.nan, "orientation"),
    ("cameras.0.place", "moon", "place"), ("cameras.0.place", "Hotel_Room", "place"),
    ("cameras.0.camera_id", "", "camera_id"), ("cameras.0.device_type", "", "device_type"),
    ("cameras.0.address_code", "", "address_code"), ("cameras.0.address_code", "4" * 33, "address_code"),
    ("site.location.crs", "WGS84", "site.location.crs"), ("cameras.0.location.crs", "BD09", "CGCS2000"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "field"), BAD_REGISTRATIONS, ids=lambda x: str(x)[:20])
async def test_bad_registration_is_invalid_and_not_recorded(clients, path, value, field):
    bad = with_(system("s-bad"), _set(path, value))
    await expect(clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=bad)), INVALID, field)
    assert await count(clients) == 0
    if path != "system_id":
        await expect(
            clients.police.GetSystem(reg.GetSystemRequest(system_id="s-bad")), NOT_FOUND, "s-bad"
        )
        await register(clients.unit, system("s-bad"))  # version 1: nothing was appended before


async def test_a_site_or_camera_without_a_location_is_invalid_not_at_0_0(clients):
    """REG-2: a missing location is not the point (0, 0) off West Africa."""
    for where in ("site", "cameras[0]"):
        bad = system("s-bad")
        placed = bad.site if where == "site" else bad.cameras[0]
        placed.ClearField("location")
        await expect(clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=bad)), INVALID,
                     f"{where}.location is required")  # fmt: skip
    assert await count(clients) == 0
    ok = system("s-ok")
    ok.site.location.crs = "CGCS2000"  # said, or left empty: the same
    await register(clients.unit, ok)


async def test_registration_without_cameras_or_with_duplicate_camera_ids_is_invalid(clients):
    for cams, field in (([], "cameras"), ([camera("c1"), camera("c1")], "unique")):
        bad = system("s-bad", cameras=cams)
        await expect(
            clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=bad)), INVALID, field
        )
    await register(clients.unit, system("s-bad"))


@pytest.mark.parametrize("value", ["s1\n", "cam-1\n"])
async def test_identifier_with_trailing_newline_is_invalid(clients, value):
    # IDENTIFIER ends in `$`, which also matches before a final "\n".
    await expect(
        clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=system(value))),
        INVALID,
        "system_id",
    )
    cams = [camera(value)]
    await expect(clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=system(cameras=cams))), INVALID,
                 "camera_id")  # fmt: skip
    bad_code = system(site_=site(address_code="420102\n"))
    await expect(
        clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=bad_code)),
        INVALID,
        "address_code",
    )
    assert await count(clients) == 0


@pytest.mark.parametrize("value", ["20240101", "2024-W01-1", "2024-001"])
async def test_dates_must_be_calendar_dates_like_2024_03_01(clients, value):
    # The proto promises ISO calendar dates ("2024-03-01") and the service compares stored
    # dates as strings (e.g. the latest inspection), so other ISO forms must not get in.
    await expect(clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=system(registered_on=value))),
                 INVALID, "registered_on")  # fmt: skip
    sid = await register(clients.unit)
    await build(clients.unit, sid)
    await accept(clients.unit, sid)
    await expect(use(clients.unit, sid, on=value), INVALID, "in_use_on")
    assert await version(clients.unit, sid) == 3


async def test_commands_with_bad_fields_leave_the_stream_unchanged(clients):
    sid = await register(clients.unit)
    stub = clients.unit
    calls = [
        (stub.FileSystem(reg.FileSystemRequest(system_id=sid, filing=reg.SystemFiled(
            filed_on="2024-01-32", receiving_agency="police"))), "filed_on"),
        (stub.FileSystem(reg.FileSystemRequest(system_id=sid, filing=reg.SystemFiled(
            filed_on="2024-01-30", receiving_agency=" "))), "receiving_agency"),
        (stub.CompleteConstruction(reg.CompleteConstructionRequest(system_id=sid)), "completed_on"),
        (stub.RecordDesignReview(reg.RecordDesignReviewRequest(system_id=sid, review=reg.DesignReviewed(
            passed=True, reviewed_on="soon"))), "reviewed_on"),
        (stub.RelocateSystem(reg.RelocateSystemRequest(system_id=sid, relocation=reg.SystemRelocated(
            new_site=site("s2", lat=100.0), relocated_on="2024-05-01", reported_on="2024-04-20"))), "location"),
        (stub.RelocateSystem(reg.RelocateSystemRequest(system_id=sid, relocation=reg.SystemRelocated(
            new_site=site("s2", category="casino"), relocated_on="2024-05-01"))), "category"),
        (stub.RemoveSystem(reg.RemoveSystemRequest(system_id=sid, removal=reg.SystemRemoved(
            removed_on="2024-05-01", reported_on="2024-04-20"))), "reason"),
        (stub.PutIntoUse(reg.PutIntoUseRequest(system_id="bad id", use=reg.SystemPutIntoUse(
            in_use_on="2024-02-01"))), "system_id"),
        (clients.police.GetSystem(reg.GetSystemRequest(system_id="../etc")), "system_id"),
    ]  # fmt: skip
    for call, field in calls:
        await expect(call, INVALID, field)
    assert await version(stub, sid) == 1


async def test_unknown_system_is_not_found_and_nothing_is_recorded(clients):
    ghost = new_id("ghost")
    await expect(clients.police.GetSystem(reg.GetSystemRequest(system_id=ghost)), NOT_FOUND, ghost)
    await expect(build(clients.unit, ghost), NOT_FOUND, ghost)
    await expect(use(clients.unit, ghost), NOT_FOUND, ghost)
    await expect(clients.police.RecordInspection(reg.RecordInspectionRequest(
        system_id=ghost, inspection=reg.InspectionRecorded(inspection_id="i1", inspected_on="2024-01-01",
        inspecting_agency="police", scope=["x"], outcome="passed"))), NOT_FOUND, ghost)  # fmt: skip
    assert await count(clients) == 0
    await register(clients.unit, system(ghost))  # its stream is still empty: version 1


async def test_wrong_expected_version_is_aborted_and_not_recorded(clients):
    sid = await register(clients.unit)
    req = reg.CompleteConstructionRequest(
        system_id=sid,
        expected_version=5,
        construction=reg.ConstructionCompleted(completed_on="2024-01-10"),
    )
    await expect(clients.unit.CompleteConstruction(req), ABORTED, "version")
    assert await version(clients.unit, sid) == 1
    req.system_id = "no-such-system"  # no version would do: not found, not "retry"
    await expect(clients.unit.CompleteConstruction(req), NOT_FOUND, "no-such-system")


# --- limits every request is held to, before the registry sees it --------------------------------


@pytest.mark.parametrize("value", ["9999-12-31", "2200-01-01", "1899-12-31", "0001-01-01"])
async def test_dates_far_from_now_are_out_of_range(clients, value):
    """A date near the end of the calendar would overflow every deadline computed from it."""
    await expect(clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=system(registered_on=value))),
                 INVALID, "registered_on", "out of range")  # fmt: skip
    sid = await register(clients.unit)
    await build(clients.unit, sid)
    await expect(accept(clients.unit, sid, on=value), INVALID, "accepted_on", "out of range")
    await expect(
        clients.police.ListFindings(reg.ListFindingsRequest(as_of=value)), INVALID, "as_of"
    )
    assert await version(clients.unit, sid) == 2
    await findings(clients.police, "2199-12-31")  # the latest date there is: no overflow


@pytest.mark.parametrize("token", ["\u00b2", "\u0661", "9" * 5000, "1e3", " 1"])
async def test_page_tokens_are_only_those_the_server_gives(clients, token):
    await register(clients.unit)
    await expect(
        clients.police.ListSystems(reg.ListSystemsRequest(page_token=token)), INVALID, "page_token"
    )
    await expect(clients.police.SearchCameras(reg.SearchCamerasRequest(page_token=token)), INVALID, "page_token")  # fmt: skip


async def test_bytes_that_are_not_the_request_message_are_invalid(clients):
    """A client with a broken encoder gets INVALID_ARGUMENT, not UNKNOWN with a Python class."""
    async with secure_channel(clients.target, clients.pki, "dev-unit") as channel:
        for method in ("GetSystem", "RegisterSystem"):
            call = channel.unary_unary(
                f"/psvis.registry.v1.RegistryService/{method}",
                request_serializer=None,
                response_deserializer=None,
            )
            for body in (b"\x0a\x02\xff\xfe", b"\x0a\x05ab", b"\xff\xff\xff"):
                details = await expect(call(body), INVALID, method)
                assert "google" not in details and "<class" not in details
    assert await count(clients) == 0


LONG = "x" * 15_000


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.unit.GetSystem(reg.GetSystemRequest(system_id=LONG[:3999])),
        lambda c: c.unit.RegisterSystem(reg.RegisterSystemRequest(system=system(LONG[:3999]))),
        lambda c: c.unit.RegisterSystem(reg.RegisterSystemRequest(system=system(cameras=[camera(place=LONG[:3999])]))),
        lambda c: c.police.ListFindings(reg.ListFindingsRequest(as_of=LONG[:3999])),
        lambda c: c.unit.GetSystem(reg.GetSystemRequest(system_id=LONG)),
    ],
    ids=["get", "register", "place", "as_of", "over-limit"],
)  # fmt: skip
async def test_a_long_bad_value_is_quoted_short(clients, call):
    """The message quotes the start of a bad value, so it always fits in the status header."""
    details = await expect(call(clients), INVALID)
    assert "x" * (SHOWN + 1) not in details and len(details) < 1000, details
    assert await count(clients) == 0


@pytest.mark.parametrize("text", ["Gate\x00cams", "bell\x07", "esc\x1b[31m", "c1\x85"])
async def test_control_characters_are_refused_in_any_text(clients, text):
    edits = [("name", "system.name"), ("operator", "system.operator"),
             ("site.address", "system.site.address"), ("cameras.0.position", "system.cameras[0].position")]  # fmt: skip
    for path, field in edits:
        bad = with_(system("s-bad"), _set(path, text))
        await expect(clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=bad)), INVALID,
                     field, "control character")  # fmt: skip
    assert await count(clients) == 0
    # tabs and line breaks are text
    await register(
        clients.unit, system("s-ok", name="Gate\tcams", construction_project="phase 1\nphase 2")
    )


async def test_every_text_field_and_list_is_bounded(clients):
    sid = await register(clients.unit)
    long_notes = reg.RectificationCompleted(completed_on="2024-01-20", notes="n" * 4001)
    cases = [
        (clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=system(construction_project="p" * 4001)))
         , "system.construction_project"),
        (clients.unit.CompleteRectification(reg.CompleteRectificationRequest(system_id=sid, rectification=long_notes)),
         "rectification.notes"),
        (clients.unit.RecordDesignReview(reg.RecordDesignReviewRequest(system_id=sid, review=reg.DesignReviewed(
            passed=True, reviewed_on="2024-01-05", reviewers=["expert"] * 10_001))), "10001 entries"),
        (clients.unit.RecordAcceptance(reg.RecordAcceptanceRequest(system_id=sid, acceptance=reg.AcceptanceRecorded(
            passed=False, accepted_on="2024-01-15", defects=[""]))), "acceptance.defects[0] is blank"),
        (clients.unit.RecordDesignReview(reg.RecordDesignReviewRequest(system_id=sid, review=reg.DesignReviewed(
            passed=True, reviewed_on="2024-01-05", reviewers=["expert", "  "]))), "review.reviewers[1] is blank"),
    ]  # fmt: skip
    for call, fragment in cases:
        await expect(call, INVALID, fragment)
    assert await version(clients.unit, sid) == 1
    assert await count(clients) == 1


@pytest.mark.parametrize("value", ["1_0", " 5 ", "\u0665", "5.", "+5", "1e2", "0x10"])
async def test_a_new_orientation_is_a_plain_decimal(clients, value):
    sid = await register(clients.unit)
    await expect(clients.unit.FileChange(reg.FileChangeRequest(system_id=sid, change=change("cam-1", "orientation", value))),
                 INVALID, "orientation")  # fmt: skip
    assert await version(clients.unit, sid) == 1


async def test_unknown_states_and_specs_in_queries_are_invalid(clients):
    await expect(
        clients.police.ListSystems(reg.ListSystemsRequest(state="BOGUS")), INVALID, "state"
    )
    await expect(clients.police.ListFindings(reg.ListFindingsRequest(as_of="2024-01-01", spec="BOGUS")),
                 INVALID, "spec")  # fmt: skip
    assert (await clients.police.ListSystems(reg.ListSystemsRequest(state="in_use"))).systems == []
    assert await findings(clients.police, "2024-01-01", "REG-3") == []


# --- property: junk in a few fields never gets in, and never breaks the server -------------------

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", re.ASCII)
CODE = re.compile(r"[0-9A-Za-z]{1,32}", re.ASCII)
CATEGORIES = ["other", "transport", "residential_areas"]


def valid_date(s: str) -> bool:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", s, re.ASCII):
        return False
    try:
        return date(1900, 1, 1) <= date.fromisoformat(s) <= date(2199, 12, 31)
    except ValueError:
        return False


JUNK = st.one_of(st.text(max_size=70), st.text(alphabet="ab1-_. \n:/", max_size=12))
FIELDS = ["sid", "on", "place", "code", "category"]


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    junk=st.dictionaries(st.sampled_from(FIELDS), JUNK, max_size=3),  # 0-3 fields get junk
    on=st.sampled_from(["2024-01-02", "2023-12-31"]),
    place=st.sampled_from(["street", "lobby", "hotel_room"]),
    code=st.sampled_from(["420102", "4201"]),
    category=st.sampled_from(CATEGORIES),
)
async def test_property_junk_fields_are_invalid_and_never_appended(
    clients, junk, on, place, code, category
):
    sid = junk.get("sid", new_id("h"))
    on, place, code, category = (
        junk.get(k, v) for k, v in zip(FIELDS[1:], (on, place, code, category), strict=True)
    )
    before = await count(clients)
    registered = {
        s.system_id for s in (await clients.police.ListSystems(reg.ListSystemsRequest())).systems
    }
    cam = camera("cam-1", place=place, address_code=code)
    candidate = system(sid, cameras=[cam], site_=site(category=category), registered_on=on)
    fields_ok = (
        valid_date(on) and place in PLACES and CODE.fullmatch(code) and category in CATEGORIES
    )
    if not ID.fullmatch(sid):
        want = INVALID
    elif sid in registered:
        want = EXISTS
    elif not fields_ok:
        want = INVALID
    else:
        want = REFUSED if place == "hotel_room" else OK
    try:
        await clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=candidate))
        got = OK
    except grpc.aio.AioRpcError as err:
        got = err.code()
        assert err.details(), "an error must say what is wrong"
    assert got == want, (sid, on, place, code, category)
    assert await count(clients) == before + (got == OK)
