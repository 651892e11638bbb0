"""REG-1 filing deadlines and REG-3 mandatory sites, seen through ListFindings at a date."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from e2e_kit import (
    DENIED,
    EXISTS,
    INVALID,
    NOT_FOUND,
    REFUSED,
    XIAN,
    accept,
    build,
    camera,
    expect,
    findings,
    into_use,
    placement,
    register,
    site,
    system,
    version,
    xian_system,
)
from psvis.clock import FixedClock
from psvis.registry.v1 import registry_pb2 as reg

CONTENTS = ["main_device_types", "point_layout"]


async def file_system(stub, sid: str, on: str, contents: list[str] = CONTENTS):
    filing = reg.SystemFiled(filed_on=on, receiving_agency="Jianghan police", contents=contents)
    return await stub.FileSystem(reg.FileSystemRequest(system_id=sid, filing=filing))


async def accepted_system(stub, accepted_on: str, built_on: str = "2024-01-10") -> str:
    sid = await register(stub)
    await build(stub, sid, built_on)
    await accept(stub, sid, accepted_on)
    return sid


# --- REG-1 -------------------------------------------------------------------------------------


async def test_reg1_wuhan_filing_due_30_days_after_acceptance(clients):
    sid = await accepted_system(clients.unit, "2024-01-15")  # due 2024-02-14
    assert await findings(clients.police, "2024-02-14", "REG-1", f"system-{sid}") == []
    (late,) = await findings(clients.police, "2024-02-15", "REG-1", f"system-{sid}")
    assert (late.status, late.since, late.article, late.rule) == (
        "open",
        "2024-02-15",
        "Wuhan 9",
        "filing.new_system",
    )


async def test_reg1_wuhan_late_filing_is_open_until_filed_then_resolved(clients):
    sid = await accepted_system(clients.unit, "2024-01-15")
    await file_system(clients.unit, sid, "2024-02-20")
    assert (
        await clients.unit.GetSystem(reg.GetSystemRequest(system_id=sid))
    ).filed_on == "2024-02-20"
    (before,) = await findings(clients.police, "2024-02-18", "REG-1", f"system-{sid}")
    assert before.status == "open"
    (after,) = await findings(clients.police, "2024-03-01", "REG-1", f"system-{sid}")
    assert (after.status, after.article, after.since) == ("resolved", "Wuhan 9", "2024-02-15")


@pytest.mark.parametrize("clock", [FixedClock(datetime(2024, 2, 14, 17, 0, tzinfo=UTC))])
async def test_reg1_findings_default_to_today_in_the_citys_time_zone_not_utc(clients):
    """17:00 UTC on the due day is 01:00 the next day in China (UTC+8): the filing is late,
    and still open (on 2024-02-14 there was no finding; after 2024-02-20 it is resolved)."""
    sid = await accepted_system(clients.unit, "2024-01-15")  # due 2024-02-14
    await file_system(clients.unit, sid, "2024-02-20")
    found = await clients.police.ListFindings(reg.ListFindingsRequest(spec="REG-1"))
    [late] = [f for f in found.findings if f.subject == f"system-{sid}"]
    assert (late.status, late.since) == ("open", "2024-02-15")


async def test_reg1_a_removed_system_keeps_its_missed_filing_closed(clients):
    """Removing a system does not erase that it was never filed: the finding is closed."""
    sid = await accepted_system(clients.unit, "2024-01-15")  # due 2024-02-14, never filed
    removal = reg.SystemRemoved(
        removed_on="2024-06-30", reason="urban works", reported_on="2024-06-15"
    )
    await clients.unit.RemoveSystem(reg.RemoveSystemRequest(system_id=sid, removal=removal))
    (before,) = await findings(clients.police, "2024-06-29", "REG-1", f"system-{sid}")
    assert before.status == "open"
    for as_of in ("2024-06-30", "2025-01-01"):
        (after,) = await findings(clients.police, as_of, "REG-1", f"system-{sid}")
        assert (after.status, after.since, after.article) == ("closed", "2024-02-15", "Wuhan 9")
        assert "removed on 2024-06-30" in after.detail, after.detail
    await expect(file_system(clients.unit, sid, "2024-07-01"), REFUSED, "removed")


async def test_reg1_a_system_removed_before_its_deadline_has_no_filing_finding(clients):
    sid = await accepted_system(clients.unit, "2024-01-15")  # due 2024-02-14
    removal = reg.SystemRemoved(
        removed_on="2024-02-01", reason="urban works", reported_on="2024-01-20"
    )
    await clients.unit.RemoveSystem(reg.RemoveSystemRequest(system_id=sid, removal=removal))
    assert await findings(clients.police, "2024-06-01", "REG-1", f"system-{sid}") == []


async def test_reg1_wuhan_filing_in_time_is_never_a_finding(clients):
    sid = await accepted_system(clients.unit, "2024-01-15")
    await file_system(clients.unit, sid, "2024-02-14")
    for as_of in ("2024-02-13", "2024-02-15", "2025-01-01"):
        assert await findings(clients.police, as_of, "REG-1", f"system-{sid}") == []


async def test_reg1_wuhan_a_filing_before_acceptance_does_not_meet_wuhan_9(clients):
    """Wuhan 9 wants what was accepted filed within 30 days from the acceptance: a filing made
    while the system was being built does not meet it; one after the acceptance does."""
    sid = await register(clients.unit)
    await build(clients.unit, sid, "2024-01-10")
    await file_system(clients.unit, sid, "2024-01-12")
    await accept(clients.unit, sid, "2024-01-15")  # due 2024-02-14
    (late,) = await findings(clients.police, "2024-02-15", "REG-1", f"system-{sid}")
    assert (late.status, late.since, late.article) == ("open", "2024-02-15", "Wuhan 9")
    assert "filing of 2024-01-12 came before the acceptance on 2024-01-15" in late.detail
    await file_system(clients.unit, sid, "2024-02-20")
    (after,) = await findings(clients.police, "2024-03-01", "REG-1", f"system-{sid}")
    assert (after.status, after.since) == ("resolved", "2024-02-15")
    assert "filed late on 2024-02-20" in after.detail


async def test_reg1_wuhan_filing_without_required_contents_is_refused(clients):
    sid = await accepted_system(clients.unit, "2024-01-15")
    await expect(file_system(clients.unit, sid, "2024-02-01", ["point_layout"]), REFUSED,
                 "Wuhan 9", "main_device_types")  # fmt: skip
    assert await version(clients.unit, sid) == 4
    assert (await findings(clients.police, "2024-03-01", "REG-1", f"system-{sid}"))[
        0
    ].status == "open"


async def test_reg1_wuhan_acceptance_before_in_force_has_no_deadline(clients):
    # the Measures apply from 2023-03-01
    sid = await accepted_system(clients.unit, "2023-01-10", built_on="2023-01-05")
    assert await findings(clients.police, "2024-06-01", "REG-1", f"system-{sid}") == []


async def test_reg1_wuhan_deadline_runs_from_passed_reacceptance(clients):
    sid = await register(clients.unit)
    await build(clients.unit, sid)
    await accept(clients.unit, sid, "2024-01-10", passed=False)
    assert await findings(clients.police, "2024-03-01", "REG-1", f"system-{sid}") == []
    await clients.unit.CompleteRectification(reg.CompleteRectificationRequest(
        system_id=sid, rectification=reg.RectificationCompleted(completed_on="2024-02-01")))  # fmt: skip
    await accept(clients.unit, sid, "2024-02-05")  # due 2024-03-06
    assert await findings(clients.police, "2024-03-06", "REG-1", f"system-{sid}") == []
    assert len(await findings(clients.police, "2024-03-07", "REG-1", f"system-{sid}")) == 1


@pytest.mark.parametrize("city", ["xian"])
async def test_reg1_xian_has_no_filing_duty(clients):
    sid = await register(clients.unit, xian_system())
    await into_use(clients.unit, sid, accepted_on="2024-01-15")
    assert await findings(clients.police, "2025-01-01", "REG-1") == []


async def test_reg1_findings_readable_by_police_and_auditor_not_units(clients):
    await accepted_system(clients.unit, "2024-01-15")
    assert len(await findings(clients.auditor, "2024-03-01", "REG-1")) == 1
    await expect(clients.unit.ListFindings(reg.ListFindingsRequest(as_of="2024-03-01")), DENIED)
    await expect(
        clients.police.ListFindings(reg.ListFindingsRequest(as_of="2024-02-30")), INVALID, "as_of"
    )


# --- REG-3 -------------------------------------------------------------------------------------


async def declare(stub, site_: reg.Site, on: str = "2024-01-01"):
    return await stub.DeclareMandatorySite(reg.DeclareMandatorySiteRequest(
        declaration=reg.MandatorySiteDeclared(site=site_, declared_on=on)))  # fmt: skip


async def test_reg3_mandatory_site_without_system_in_use_is_a_finding(clients):
    metro = site("site-metro", category="transport")
    result = await declare(clients.police, metro)
    assert result.stream_id == "site-site-metro" and result.version == 1
    assert await findings(clients.police, "2023-12-31", "REG-3") == []
    (f,) = await findings(clients.police, "2024-01-10", "REG-3")
    assert (f.subject, f.status, f.article, f.since) == (
        "site-site-metro",
        "open",
        "Wuhan 6(2)",
        "2024-01-01",
    )


async def test_reg3_finding_resolved_once_a_system_at_the_site_is_in_use(clients):
    metro = site("site-metro", category="transport")
    await declare(clients.police, metro)
    other = await register(clients.unit)  # in use, but at another site
    await into_use(clients.unit, other, in_use_on="2024-01-20")
    sid = await register(clients.unit, site_=metro)
    await build(clients.unit, sid)
    await accept(clients.unit, sid, "2024-01-25")
    assert [f.status for f in await findings(clients.police, "2024-01-30", "REG-3")] == ["open"]
    await into_use(clients.unit, await register(clients.unit, site_=metro), in_use_on="2024-02-01")
    assert [f.status for f in await findings(clients.police, "2024-01-31", "REG-3")] == ["open"]
    after = await findings(clients.police, "2024-02-01", "REG-3")
    assert [(f.status, f.since) for f in after] == [("resolved", "2024-01-01")]


async def test_reg3_a_system_at_a_declared_site_is_of_the_declared_category(clients):
    """A unit cannot file a system at the police's metro site as "other" (and so escape the
    rules of mandatory sites, such as Wuhan 10's rebuild plan): refused, nothing recorded,
    whether it registers there or moves there."""
    await declare(clients.police, site("site-metro", category="transport"))
    disguised = system(site_=site("site-metro", category="other"))
    await expect(clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=disguised)),
                 REFUSED, "site-metro is declared by the police a transport site", "REG-3")  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as nothing:
        await clients.unit.GetSystem(reg.GetSystemRequest(system_id=disguised.system_id))
    assert nothing.value.code() == NOT_FOUND
    in_a_hotel_room = system(site_=site("site-metro", category="other"),
                             cameras=[camera("c1", place="hotel_room")])  # fmt: skip
    await expect(clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=in_a_hotel_room)),
                 REFUSED, "Wuhan 18(1)")  # a city rule's refusal stands (and is recorded)  # fmt: skip
    await register(clients.unit, site_=site("site-metro", category="transport"))
    elsewhere = await register(clients.unit)
    move = reg.SystemRelocated(
        new_site=site("site-metro", category="other"),
        relocated_on="2024-06-30",
        reported_on="2024-06-15",
        placements=[placement()],
    )
    await expect(clients.unit.RelocateSystem(reg.RelocateSystemRequest(system_id=elsewhere, relocation=move)),
                 REFUSED, "relocation.new_site.category", "transport")  # fmt: skip
    assert await version(clients.unit, elsewhere) == 1


async def test_reg3_declaring_sites_is_for_police_and_mandatory_categories_only(clients):
    await expect(declare(clients.unit, site("site-a", category="transport")), DENIED)
    await expect(declare(clients.police, site("site-b", category="other")), INVALID, "category")
    await expect(declare(clients.police, site("site-c", category="casino")), INVALID, "category")
    await declare(clients.police, site("site-d", category="residential_areas"))
    await expect(
        declare(clients.police, site("site-d", category="residential_areas")), EXISTS, "site-d"
    )
    assert [f.article for f in await findings(clients.police, "2024-06-01", "REG-3")] == [
        "Wuhan 6(10)"
    ]


@pytest.mark.parametrize("city", ["xian"])
async def test_reg3_xian_large_public_event_cites_xian_10(clients):
    lon, lat, code = XIAN
    await declare(
        clients.police,
        site("expo", category="large_public_event", lon=lon, lat=lat, address_code=code),
    )
    (f,) = await findings(clients.police, "2024-02-01", "REG-3")
    assert (f.subject, f.article) == ("site-expo", "Xi'an 10")


async def test_reg3_removed_system_no_longer_serves_the_site(clients):
    metro = site("site-metro", category="transport")
    await declare(clients.police, metro)
    sid = await register(clients.unit, system(site_=metro))
    await into_use(clients.unit, sid, in_use_on="2024-02-01")
    assert [
        f for f in await findings(clients.police, "2024-03-01", "REG-3") if f.status == "open"
    ] == []
    await clients.unit.RemoveSystem(reg.RemoveSystemRequest(system_id=sid, removal=reg.SystemRemoved(
        removed_on="2024-04-01", reason="planning change", rebuild_plan_ref="PLAN-9")))  # fmt: skip
    # unserved before the system went into use (resolved), and again since its removal
    spells = [(f.status, f.since) for f in await findings(clients.police, "2024-05-01", "REG-3")]
    assert spells == [("resolved", "2024-01-01"), ("open", "2024-04-01")]
    # as of a day before the removal, the system still served the site
    assert [
        f for f in await findings(clients.police, "2024-03-31", "REG-3") if f.status == "open"
    ] == []
    (since_removal,) = [
        f for f in await findings(clients.police, "2024-04-01", "REG-3") if f.status == "open"
    ]
    assert since_removal.since == "2024-04-01"  # the removal's day


async def test_reg3_a_system_moved_away_served_the_site_until_its_move(clients):
    metro = site("site-metro", category="transport")
    await declare(clients.police, metro)
    sid = await register(clients.unit, system(site_=metro))
    await into_use(clients.unit, sid, in_use_on="2024-02-01")
    await clients.unit.RelocateSystem(reg.RelocateSystemRequest(system_id=sid, relocation=reg.SystemRelocated(
        new_site=site("site-depot"), relocated_on="2024-04-01", reported_on="2024-03-20",
        rebuild_plan_ref="PLAN-9", placements=[placement()])))  # fmt: skip
    assert (await clients.unit.GetSystem(reg.GetSystemRequest(system_id=sid))).site.site_id == (
        "site-depot"
    )
    assert [
        f for f in await findings(clients.police, "2024-03-31", "REG-3") if f.status == "open"
    ] == []
    (left,) = [
        f for f in await findings(clients.police, "2024-04-01", "REG-3") if f.status == "open"
    ]
    assert (left.subject, left.since) == ("site-site-metro", "2024-04-01")  # the move's day
