"""REG-1 filing deadlines and REG-3 mandatory sites, seen through ListFindings at a date."""

from __future__ import annotations

import pytest
from e2e_kit import (
    DENIED,
    EXISTS,
    INVALID,
    REFUSED,
    XIAN,
    accept,
    build,
    expect,
    findings,
    into_use,
    register,
    site,
    system,
    version,
    xian_system,
)
from psvis.registry.v1 import registry_pb2 as reg

CONTENTS = ["main_device_types", "point_layout"]


async def file_system(stub, sid: str, on: str, contents: list[str] = CONTENTS):
    filing = reg.SystemFiled(filed_on=on, receiving_agency="Jianghan police", contents=contents)
    return await stub.FileSystem(reg.FileSystemRequest(system_id=sid, filing=filing))


async def accepted_system(stub, accepted_on: str) -> str:
    sid = await register(stub)
    await build(stub, sid)
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


async def test_reg1_wuhan_filing_in_time_is_never_a_finding(clients):
    sid = await accepted_system(clients.unit, "2024-01-15")
    await file_system(clients.unit, sid, "2024-02-14")
    for as_of in ("2024-02-13", "2024-02-15", "2025-01-01"):
        assert await findings(clients.police, as_of, "REG-1", f"system-{sid}") == []


async def test_reg1_wuhan_filing_without_required_contents_is_refused(clients):
    sid = await accepted_system(clients.unit, "2024-01-15")
    await expect(file_system(clients.unit, sid, "2024-02-01", ["point_layout"]), REFUSED,
                 "Wuhan 9", "main_device_types")  # fmt: skip
    assert await version(clients.unit, sid) == 4
    assert (await findings(clients.police, "2024-03-01", "REG-1", f"system-{sid}"))[
        0
    ].status == "open"


async def test_reg1_wuhan_acceptance_before_in_force_has_no_deadline(clients):
    sid = await accepted_system(clients.unit, "2023-01-10")  # the Measures apply from 2023-03-01
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
    assert all(f.status == "resolved" for f in after)


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
    assert [f.status for f in await findings(clients.police, "2024-05-01", "REG-3")] == ["open"]
    # as of a day before the removal, the system still served the site
    assert [
        f for f in await findings(clients.police, "2024-03-31", "REG-3") if f.status == "open"
    ] == []
    (since_removal,) = await findings(clients.police, "2024-04-01", "REG-3")
    assert (since_removal.status, since_removal.since) == ("open", "2024-01-01")  # declared on


async def test_reg3_a_system_moved_away_served_the_site_until_its_move(clients):
    metro = site("site-metro", category="transport")
    await declare(clients.police, metro)
    sid = await register(clients.unit, system(site_=metro))
    await into_use(clients.unit, sid, in_use_on="2024-02-01")
    await clients.unit.RelocateSystem(reg.RelocateSystemRequest(system_id=sid, relocation=reg.SystemRelocated(
        new_site=site("site-depot"), relocated_on="2024-04-01", reported_on="2024-03-20",
        rebuild_plan_ref="PLAN-9")))  # fmt: skip
    assert (await clients.unit.GetSystem(reg.GetSystemRequest(system_id=sid))).site.site_id == (
        "site-depot"
    )
    assert [
        f for f in await findings(clients.police, "2024-03-31", "REG-3") if f.status == "open"
    ] == []
    (left,) = await findings(clients.police, "2024-04-01", "REG-3")
    assert (left.subject, left.status) == ("site-site-metro", "open")
