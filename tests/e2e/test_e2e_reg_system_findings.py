"""REG-7 archives, REG-8 signage, REG-9 personnel, REG-12 inspections: records and findings."""

from __future__ import annotations

import pytest
from e2e_kit import (
    DENIED,
    INVALID,
    NOT_FOUND,
    build,
    camera,
    expect,
    findings,
    into_use,
    register,
    review,
    sha,
    version,
    xian_system,
)
from psvis.registry.v1 import registry_pb2 as reg

KINDS = ["design", "construction", "acceptance", "maintenance", "units_and_technicians"]
XIAN = pytest.mark.parametrize("city", ["xian"])


async def in_use_system(stub, **kw) -> str:
    sid = await register(stub, **kw)
    await into_use(stub, sid, in_use_on="2024-02-01")
    return sid


async def attach(stub, sid: str, kind: str, on: str = "2024-02-10", digest: str | None = None):
    archive = reg.ArchiveAttached(kind=kind, sha256=digest or sha(kind), title=f"{kind} file",
                                  units=["Builder Co"], technicians=["Eng. Li"], attached_on=on)  # fmt: skip
    return await stub.AttachArchive(reg.AttachArchiveRequest(system_id=sid, archive=archive))


async def signage(stub, sid: str, cams: list[str], on: str = "2024-01-20"):
    return await stub.RecordSignage(reg.RecordSignageRequest(
        system_id=sid, signage=reg.SignageInstalled(camera_ids=cams, installed_on=on)))  # fmt: skip


async def person(
    stub, sid: str, pid: str, trained: str = "", filed: str = "", on: str = "2024-01-15"
):
    p = reg.MonitoringPersonnelRegistered(person_id=pid, name="Wang", duty="monitoring",
                                          trained_on=trained, training_course="basic" if trained else "",
                                          filed_with_police_on=filed, on_file_since=on)  # fmt: skip
    return await stub.RegisterMonitoringPersonnel(
        reg.RegisterMonitoringPersonnelRequest(system_id=sid, person=p)
    )


async def inspect(
    stub, sid: str, iid: str, outcome: str, on: str, scope: tuple[str, ...] = ("operation",)
):
    i = reg.InspectionRecorded(inspection_id=iid, inspected_on=on, inspecting_agency="district police",
                               scope=list(scope), outcome=outcome, notes="see report")  # fmt: skip
    return await stub.RecordInspection(reg.RecordInspectionRequest(system_id=sid, inspection=i))


def of(found: list[reg.Finding], rule: str) -> list[reg.Finding]:
    return [f for f in found if f.rule == rule]


# --- REG-7 -------------------------------------------------------------------------------------


async def test_reg7_missing_archive_kinds_are_a_finding_for_in_use_system(clients):
    sid = await in_use_system(clients.unit)
    (f,) = of(await findings(clients.police, "2024-03-01", "REG-7", f"system-{sid}"), "archives")
    assert (f.status, f.article, f.since) == ("open", "Wuhan 11", "2024-02-01")
    assert all(k in f.detail for k in KINDS)
    for kind in KINDS[:-1]:
        await attach(clients.unit, sid, kind)
    (f,) = await findings(clients.police, "2024-03-01", "REG-7", f"system-{sid}")
    assert "units_and_technicians" in f.detail and "design" not in f.detail
    await attach(clients.unit, sid, "units_and_technicians", on="2024-04-01")
    assert len(await findings(clients.police, "2024-03-31", "REG-7", f"system-{sid}")) == 1
    assert await findings(clients.police, "2024-04-01", "REG-7", f"system-{sid}") == []


async def test_reg7_a_removed_system_keeps_its_findings_as_of_days_before_the_removal(clients):
    sid = await in_use_system(clients.unit)
    await clients.unit.RemoveSystem(reg.RemoveSystemRequest(system_id=sid, removal=reg.SystemRemoved(
        removed_on="2024-06-30", reported_on="2024-06-15", reason="urban works")))  # fmt: skip
    (f,) = of(await findings(clients.police, "2024-06-29", "REG-7", f"system-{sid}"), "archives")
    assert (f.status, f.since) == ("open", "2024-02-01")
    assert await findings(clients.police, "2024-06-30", "REG-7", f"system-{sid}") == []


async def test_reg6_a_removal_needs_a_date(clients):
    sid = await in_use_system(clients.unit)
    await expect(clients.unit.RemoveSystem(reg.RemoveSystemRequest(system_id=sid, removal=reg.SystemRemoved(
        removed_on="June", reported_on="2024-06-15", reason="urban works"))), INVALID, "removal.date")  # fmt: skip
    assert (await clients.unit.GetSystem(reg.GetSystemRequest(system_id=sid))).state == "in_use"


async def test_reg7_archives_are_kept_by_sha256(clients):
    sid = await register(clients.unit)
    digest = sha("design drawings v3")
    await attach(clients.unit, sid, "design", digest=digest)
    view = await clients.unit.GetSystem(reg.GetSystemRequest(system_id=sid))
    (a,) = view.archives
    assert (a.kind, a.sha256, list(a.technicians)) == ("design", digest, ["Eng. Li"])
    assert (
        await findings(clients.police, "2024-03-01", "REG-7", f"system-{sid}") == []
    )  # not in use


async def test_reg7_bad_hash_or_kind_is_invalid_and_not_recorded(clients):
    sid = await register(clients.unit)
    for bad in (sha("x").upper(), sha("x")[:63], sha("x") + "0", "g" * 64, ""):
        await expect(attach(clients.unit, sid, "design", digest=bad or " "), INVALID, "sha256")
    await expect(attach(clients.unit, sid, "blueprints"), INVALID, "archive.kind")
    await expect(attach(clients.unit, sid, "design", on="2024-02-31"), INVALID, "attached_on")
    nobody = reg.ArchiveAttached(kind="units_and_technicians", sha256=sha("list"),
                                 title="units and technicians", attached_on="2024-02-10")  # fmt: skip
    await expect(clients.unit.AttachArchive(reg.AttachArchiveRequest(system_id=sid, archive=nobody)),
                 INVALID, "at least one unit or technician")  # fmt: skip
    assert await version(clients.unit, sid) == 1


# --- REG-8 -------------------------------------------------------------------------------------


async def test_reg8_unsigned_cameras_of_in_use_system_are_a_finding(clients):
    sid = await in_use_system(clients.unit, cameras=[camera("cam-1"), camera("cam-2")])
    await signage(clients.unit, sid, ["cam-1"])
    (f,) = await findings(clients.police, "2024-03-01", "REG-8", f"system-{sid}")
    assert (f.article, f.status, f.rule) == ("Wuhan 7 para 2", "open", "signage")
    assert "cam-2" in f.detail and "cam-1" not in f.detail
    await signage(clients.unit, sid, ["cam-2"])
    assert await findings(clients.police, "2024-03-01", "REG-8", f"system-{sid}") == []
    view = await clients.unit.GetSystem(reg.GetSystemRequest(system_id=sid))
    assert list(view.signed_camera_ids) == ["cam-1", "cam-2"]


async def test_reg8_signage_of_unknown_camera_or_none_is_invalid(clients):
    sid = await register(clients.unit)
    await expect(signage(clients.unit, sid, ["cam-404"]), INVALID, "cam-404")
    await expect(signage(clients.unit, sid, []), INVALID, "camera")
    assert await version(clients.unit, sid) == 1


async def test_reg8_signage_installed_after_as_of_does_not_count_at_as_of(clients):
    # Findings are "evaluated at" as_of: on 2024-03-01 the in-use camera had no sign yet.
    sid = await in_use_system(clients.unit)
    await signage(clients.unit, sid, ["cam-1"], on="2024-06-01")
    assert await findings(clients.police, "2024-07-01", "REG-8", f"system-{sid}") == []
    assert len(await findings(clients.police, "2024-03-01", "REG-8", f"system-{sid}")) == 1


# --- REG-9 -------------------------------------------------------------------------------------


async def test_reg9_wuhan_untrained_or_unfiled_monitoring_staff_are_findings(clients):
    sid = await in_use_system(clients.unit)
    await person(clients.unit, sid, "p-1")
    await person(clients.unit, sid, "p-2", trained="2024-01-10")
    await person(clients.unit, sid, "p-3", trained="2024-01-10", filed="2024-01-12")
    found = await findings(clients.police, "2024-03-01", "REG-9", f"system-{sid}")
    assert {f.article for f in found} == {"Wuhan 16(2)"} and {f.status for f in found} == {"open"}
    details = sorted(f.detail for f in found)
    assert len(details) == 3 and not any("p-3" in d for d in details)
    assert sum("p-1" in d for d in details) == 2 and sum("p-2" in d for d in details) == 1
    assert any("training" in d for d in details) and any("police" in d for d in details)


@XIAN
async def test_reg9_xian_requires_training_but_no_police_filing(clients):
    sid = await register(clients.unit, xian_system())
    await into_use(clients.unit, sid)
    await person(clients.unit, sid, "p-1")
    await person(clients.unit, sid, "p-2", trained="2024-01-10")
    (f,) = await findings(clients.police, "2024-03-01", "REG-9", f"system-{sid}")
    assert (f.article, f.status) == ("Xi'an 22(2)", "open") and "p-1" in f.detail


async def test_reg9_wuhan_a_system_in_use_with_nobody_filed_to_watch_it_is_a_finding(clients):
    """Wuhan 16(2): the unit files the basic information of its monitoring staff with the
    district police. A system in use with no monitoring staff filed at all is an open finding
    from the day it went into use, until someone is filed; before use, none."""
    sid = await in_use_system(clients.unit)
    assert await findings(clients.police, "2024-01-31", "REG-9", f"system-{sid}") == []
    (f,) = await findings(clients.police, "2024-03-01", "REG-9", f"system-{sid}")
    assert (f.rule, f.article, f.status, f.since) == (
        "personnel",
        "Wuhan 16(2)",
        "open",
        "2024-02-01",
    )
    assert "no monitoring staff" in f.detail and "police" in f.detail
    await person(clients.unit, sid, "p-1", trained="2024-01-10", filed="2024-01-12")
    assert await findings(clients.police, "2024-03-01", "REG-9", f"system-{sid}") == []


@XIAN
async def test_reg9_xian_a_system_in_use_without_monitoring_staff_files_is_a_finding(clients):
    """Xi'an 22(3): the using unit keeps files on its monitoring staff (and trains them, 22(2));
    a system in use with nobody on file is an open finding, citing 22(3)."""
    sid = await register(clients.unit, xian_system())
    await into_use(clients.unit, sid)
    (f,) = await findings(clients.police, "2024-03-01", "REG-9", f"system-{sid}")
    assert (f.article, f.status, f.since) == ("Xi'an 22(3)", "open", "2024-02-01")
    assert "no monitoring staff" in f.detail and "police" not in f.detail
    await person(clients.unit, sid, "p-1", trained="2024-01-10")
    assert await findings(clients.police, "2024-03-01", "REG-9", f"system-{sid}") == []


async def test_reg9_a_person_registered_again_is_one_record_whose_training_counts(clients):
    sid = await in_use_system(clients.unit)
    await person(clients.unit, sid, "p-1")
    await person(clients.unit, sid, "p-1", trained="2024-03-05")
    await person(clients.unit, sid, "p-1", filed="2024-03-06")  # the training date stays
    view = await clients.police.GetSystem(reg.GetSystemRequest(system_id=sid))
    assert [(p.person_id, p.trained_on, p.filed_with_police_on) for p in view.personnel] == [
        ("p-1", "2024-03-05", "2024-03-06")
    ]
    before = await findings(clients.police, "2024-03-01", "REG-9", f"system-{sid}")
    assert [f.status for f in before] == ["open", "open"]  # neither trained nor filed yet
    after = await findings(clients.police, "2024-03-10", "REG-9", f"system-{sid}")
    assert [f.status for f in after] == ["resolved", "resolved"]


async def test_reg9_a_person_trained_and_filed_later_is_resolved_from_the_day_each_was_met(
    clients,
):
    """REG-9 (Wuhan 16(2)): a person's training finding and police-filing finding stay listed
    once met, resolved "until" the day each was met, and still open as of the days before."""
    sid = await in_use_system(clients.unit)  # in use from 2024-02-01
    await person(clients.unit, sid, "p-1")  # on file from 2024-01-15
    await person(clients.unit, sid, "p-1", trained="2024-03-05")
    await person(clients.unit, sid, "p-1", filed="2024-03-06")

    async def reg9(as_of: str) -> list[tuple[str, str, str, str]]:
        found = await findings(clients.police, as_of, "REG-9", f"system-{sid}")
        return [(f.status, f.since, f.article, f.detail) for f in found]

    untrained, unfiled = "p-1 has no recorded training", "p-1 is not filed with the police"
    assert await reg9("2024-03-04") == [
        ("open", "2024-02-01", "Wuhan 16(2)", untrained),
        ("open", "2024-02-01", "Wuhan 16(2)", unfiled),
    ]
    trained = "p-1 had no recorded training until 2024-03-05"
    assert await reg9("2024-03-05") == [
        ("resolved", "2024-02-01", "Wuhan 16(2)", trained),
        ("open", "2024-02-01", "Wuhan 16(2)", unfiled),
    ]
    filed = "p-1 was not filed with the police until 2024-03-06"
    for as_of in ("2024-03-06", "2025-01-01"):
        assert await reg9(as_of) == [
            ("resolved", "2024-02-01", "Wuhan 16(2)", trained),
            ("resolved", "2024-02-01", "Wuhan 16(2)", filed),
        ], as_of


async def test_reg9_a_later_training_does_not_undo_an_earlier_one(clients):
    """A refresher course (registered again with a later date) leaves the findings as of the
    days between the two as they were: the person was trained since the first."""
    sid = await in_use_system(clients.unit)
    await person(clients.unit, sid, "p-1", trained="2024-01-20", filed="2024-01-21")
    assert await findings(clients.police, "2024-06-01", "REG-9", f"system-{sid}") == []
    await person(clients.unit, sid, "p-1", trained="2025-01-20", filed="2025-01-21")
    assert await findings(clients.police, "2024-06-01", "REG-9", f"system-{sid}") == []
    view = await clients.police.GetSystem(reg.GetSystemRequest(system_id=sid))
    assert [(p.trained_on, p.filed_with_police_on) for p in view.personnel] == [
        ("2024-01-20", "2024-01-21")
    ]


async def test_reg9_staff_count_from_the_day_they_are_on_file(clients):
    """REG-9 (Wuhan 16(2)): findings as of a day before a person was put on file do not count
    them; "nobody on file" is open until the first person is, then resolved with that day."""
    sid = await in_use_system(clients.unit)
    await person(
        clients.unit, sid, "p-1", trained="2024-01-10", filed="2024-01-12", on="2024-03-05"
    )
    (f,) = await findings(clients.police, "2024-03-04", "REG-9", f"system-{sid}")
    assert (f.status, f.since, f.article) == ("open", "2024-02-01", "Wuhan 16(2)")
    assert "no monitoring staff on file" in f.detail
    (f,) = await findings(clients.police, "2024-03-05", "REG-9", f"system-{sid}")
    assert (f.status, f.since, f.article) == ("resolved", "2024-02-01", "Wuhan 16(2)")
    assert "until 2024-03-05" in f.detail
    assert (await findings(clients.police, "2024-06-01", "REG-9", f"system-{sid}")) == [f]


@XIAN
async def test_reg9_xian_a_persons_own_findings_start_when_they_are_on_file(clients):
    """REG-9 (Xi'an 22(2)): an untrained person is a finding only from the day they are on file."""
    sid = await register(clients.unit, xian_system())
    await into_use(clients.unit, sid)  # 2024-02-01
    await person(clients.unit, sid, "p-1", on="2024-03-05")
    (f,) = await findings(clients.police, "2024-03-01", "REG-9", f"system-{sid}")
    assert (f.status, f.article) == ("open", "Xi'an 22(3)") and "p-1" not in f.detail
    nobody, untrained = await findings(clients.police, "2024-03-10", "REG-9", f"system-{sid}")
    assert (nobody.status, nobody.article, nobody.since) == (
        "resolved",
        "Xi'an 22(3)",
        "2024-02-01",
    )
    assert (untrained.status, untrained.article, untrained.since) == (
        "open",
        "Xi'an 22(2)",
        "2024-03-05",
    )
    assert "p-1 has no recorded training" in untrained.detail
    await person(clients.unit, sid, "p-1", trained="2024-04-01", on="2024-03-05")
    _, trained = await findings(clients.police, "2024-04-01", "REG-9", f"system-{sid}")
    assert (trained.status, trained.article, trained.since, trained.detail) == (
        "resolved",
        "Xi'an 22(2)",
        "2024-03-05",
        "p-1 had no recorded training until 2024-04-01",
    )
    (_, still) = await findings(clients.police, "2024-03-31", "REG-9", f"system-{sid}")
    assert (still.status, still.detail) == ("open", "p-1 has no recorded training")


async def test_reg9_a_person_registered_again_stays_on_file_since_the_first_day(clients):
    sid = await in_use_system(clients.unit)
    await person(
        clients.unit, sid, "p-1", trained="2024-01-10", filed="2024-01-12", on="2024-01-20"
    )
    await person(clients.unit, sid, "p-1", on="2024-05-01")
    view = await clients.police.GetSystem(reg.GetSystemRequest(system_id=sid))
    assert [(p.person_id, p.on_file_since) for p in view.personnel] == [("p-1", "2024-01-20")]
    assert await findings(clients.police, "2024-03-01", "REG-9", f"system-{sid}") == []


async def test_reg9_bad_person_record_is_invalid(clients):
    sid = await register(clients.unit)
    await expect(person(clients.unit, sid, "p-1", on=""), INVALID, "person.on_file_since")
    await expect(person(clients.unit, sid, "p-1", on="2024-02-30"), INVALID, "on_file_since")
    await expect(person(clients.unit, sid, "p-1", on="1899-12-31"), INVALID, "on_file_since")
    await expect(person(clients.unit, sid, "p 1"), INVALID, "person_id")
    await expect(person(clients.unit, sid, "p-1", trained="10/01/2024"), INVALID, "trained_on")
    await expect(
        person(clients.unit, sid, "p-1", filed="2024-13-01"), INVALID, "filed_with_police_on"
    )
    assert await version(clients.unit, sid) == 1


# --- REG-12 ------------------------------------------------------------------------------------


async def test_reg12_only_police_record_inspections(clients):
    sid = await register(clients.unit)
    await expect(
        inspect(clients.unit, sid, "insp-1", "passed", "2024-03-01"), DENIED, "RecordInspection"
    )
    await expect(inspect(clients.auditor, sid, "insp-1", "passed", "2024-03-01"), DENIED)
    await inspect(clients.police, sid, "insp-1", "passed", "2024-03-01")
    view = await clients.police.GetSystem(reg.GetSystemRequest(system_id=sid))
    assert [(i.inspection_id, i.outcome) for i in view.inspections] == [("insp-1", "passed")]
    assert view.version == 2


@XIAN
async def test_reg12_rectification_ordered_is_open_until_a_passed_inspection(clients):
    sid = await register(clients.unit, xian_system())
    await into_use(clients.unit, sid)
    await inspect(
        clients.police,
        sid,
        "insp-1",
        "rectification_ordered",
        "2024-03-01",
        ("operation", "filings"),
    )
    assert await findings(clients.police, "2024-02-28", "REG-12", f"system-{sid}") == []
    (f,) = await findings(clients.police, "2024-03-15", "REG-12", f"system-{sid}")
    assert (f.status, f.article, f.since) == ("open", "Xi'an 30", "2024-03-01")
    assert "insp-1" in f.detail and "rectification_ordered" in f.detail
    await inspect(clients.police, sid, "insp-2", "passed", "2024-04-01")
    assert len(await findings(clients.police, "2024-03-31", "REG-12", f"system-{sid}")) == 1
    assert await findings(clients.police, "2024-04-01", "REG-12", f"system-{sid}") == []


@XIAN
async def test_reg12_of_two_inspections_on_one_day_the_last_recorded_counts(clients):
    """insp-10 passed after insp-2 ordered a rectification on the same day: nothing is open
    (inspection ids are names, not a sequence: "insp-2" sorts after "insp-10")."""
    sid = await register(clients.unit, xian_system())
    await into_use(clients.unit, sid)
    await inspect(clients.police, sid, "insp-2", "rectification_ordered", "2024-03-01")
    (f,) = await findings(clients.police, "2024-04-01", "REG-12", f"system-{sid}")
    assert "insp-2" in f.detail
    await inspect(clients.police, sid, "insp-10", "passed", "2024-03-01")
    assert await findings(clients.police, "2024-04-01", "REG-12", f"system-{sid}") == []


@XIAN
async def test_reg12_rectification_ordered_before_use_is_open_too(clients):
    # An inspection of construction or acceptance (Wuxi 32 scope) happens before use; its order
    # to rectify is still an open finding.
    sid = await register(clients.unit, xian_system())
    await review(clients.unit, sid)
    await build(clients.unit, sid)
    await inspect(
        clients.police, sid, "insp-1", "rectification_ordered", "2024-01-12", ("construction",)
    )
    (f,) = await findings(clients.police, "2024-01-20", "REG-12", f"system-{sid}")
    assert (f.status, f.article) == ("open", "Xi'an 30")


async def test_reg12_invalid_inspection_is_not_recorded(clients):
    sid = await register(clients.unit)
    await expect(inspect(clients.police, sid, "insp-1", "so-so", "2024-03-01"), INVALID, "outcome")
    await expect(
        inspect(clients.police, sid, "insp-1", "passed", "2024-03-01", ()), INVALID, "scope"
    )
    await expect(
        inspect(clients.police, sid, "insp 1", "passed", "2024-03-01"), INVALID, "inspection_id"
    )
    await expect(
        inspect(clients.police, sid, "insp-1", "passed", "yesterday"), INVALID, "inspected_on"
    )
    await expect(
        inspect(clients.police, "no-such-system", "insp-1", "passed", "2024-03-01"), NOT_FOUND
    )
    assert await version(clients.police, sid) == 1
