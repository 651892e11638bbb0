"""REG-5 lifecycle, REG-6 relocation and removal, REG-11 change control, through gRPC."""

from __future__ import annotations

import grpc
import pytest
from e2e_kit import (
    EXISTS,
    INVALID,
    REFUSED,
    accept,
    build,
    camera,
    change,
    expect,
    findings,
    into_use,
    new_id,
    placement,
    register,
    review,
    site,
    use,
    version,
    xian_system,
)
from psvis.registry.v1 import registry_pb2 as reg

XIAN = pytest.mark.parametrize("city", ["xian"])


async def get(stub, sid: str) -> reg.SystemView:
    return await stub.GetSystem(reg.GetSystemRequest(system_id=sid))


# --- REG-5 -------------------------------------------------------------------------------------


async def test_reg5_full_lifecycle_reaches_in_use(clients):
    sid = await register(clients.unit)
    await into_use(clients.unit, sid, accepted_on="2024-01-15", in_use_on="2024-02-01")
    view = await get(clients.unit, sid)
    assert (view.state, view.accepted_on, view.in_use_on) == ("in_use", "2024-01-15", "2024-02-01")
    assert view.version == 5


async def test_reg5_put_into_use_before_acceptance_is_refused_with_article(clients):
    sid = await register(clients.unit)
    await build(clients.unit, sid)
    await expect(use(clients.unit, sid), REFUSED, "Wuhan 8 para 2", "REG-5")
    view = await get(clients.unit, sid)
    assert view.state == "built" and view.version == 3  # the refusal is recorded, state unchanged


async def test_reg5_failed_acceptance_rectification_reacceptance(clients):
    sid = await register(clients.unit)
    await build(clients.unit, sid)
    await accept(clients.unit, sid, "2024-01-15", passed=False)
    assert (await get(clients.unit, sid)).state == "rectification"
    await expect(use(clients.unit, sid), REFUSED, "Wuhan 8 para 2")
    await expect(
        accept(clients.unit, sid, "2024-01-20"), REFUSED, "is rectification", "REG-5 lifecycle"
    )
    assert await version(clients.unit, sid) == 4  # nothing recorded: no rule refused it
    await clients.unit.CompleteRectification(reg.CompleteRectificationRequest(
        system_id=sid, rectification=reg.RectificationCompleted(completed_on="2024-01-25")))  # fmt: skip
    await accept(clients.unit, sid, "2024-01-30")
    await use(clients.unit, sid, "2024-02-01")
    view = await get(clients.unit, sid)
    assert (view.state, view.accepted_on) == ("in_use", "2024-01-30")


async def test_reg5_steps_out_of_order_cite_the_lifecycle_not_a_city_rule(clients):
    """A step the system is past is not refused by any article: nothing cited, nothing recorded."""
    sid = await register(clients.unit)
    await into_use(clients.unit, sid)
    v = await version(clients.unit, sid)
    for call, what in [
        (use(clients.unit, sid, "2024-03-01"), "going into use"),
        (review(clients.unit, sid), "a design review"),
        (accept(clients.unit, sid, "2024-03-01"), "acceptance"),
        (build(clients.unit, sid, "2024-03-01"), "construction"),
    ]:
        details = await expect(call, REFUSED, f"is in_use: {what} does not apply", "REG-5")
        assert "Wuhan" not in details, details
    assert await version(clients.unit, sid) == v


async def test_reg5_steps_dated_before_the_step_they_follow_are_refused(clients):
    sid = await register(clients.unit)
    await build(clients.unit, sid, "2024-01-10")
    await expect(accept(clients.unit, sid, "2024-01-09"), REFUSED,
                 "acceptance.accepted_on 2024-01-09 is before the system's construction on 2024-01-10",
                 "REG-5")  # fmt: skip
    await accept(clients.unit, sid, "2024-01-10")  # the same day is in order
    await expect(use(clients.unit, sid, "2024-01-01"), REFUSED, "use.in_use_on", "acceptance")
    await use(clients.unit, sid, "2024-02-01")
    await expect(remove(clients.unit, sid, removed_on="2024-01-31", reported_on="2024-01-15"),
                 REFUSED, "removal.date 2024-01-31 is before the system's going into use")  # fmt: skip
    view = await get(clients.unit, sid)
    assert (view.state, view.version) == ("in_use", 4)  # nothing recorded for the refused dates


async def test_reg5_failed_acceptance_must_list_defects(clients):
    sid = await register(clients.unit)
    await build(clients.unit, sid)
    req = reg.RecordAcceptanceRequest(system_id=sid, acceptance=reg.AcceptanceRecorded(
        passed=False, accepted_on="2024-01-15"))  # fmt: skip
    await expect(clients.unit.RecordAcceptance(req), INVALID, "defects")
    assert await version(clients.unit, sid) == 2


@XIAN
async def test_reg5_xian_construction_without_passed_design_review_is_refused(clients):
    sid = await register(clients.unit, xian_system())
    await expect(build(clients.unit, sid), REFUSED, "Xi'an 14 para 1", "design review")
    await review(clients.unit, sid, passed=False)
    await expect(build(clients.unit, sid), REFUSED, "Xi'an 14 para 1")
    await review(clients.unit, sid, passed=True, on="2024-01-08")
    await build(clients.unit, sid)
    await accept(clients.unit, sid)
    await use(clients.unit, sid)
    view = await get(clients.unit, sid)
    assert view.state == "in_use" and view.version == 8  # 5 successes + 2 refusals + 1 rejection


@XIAN
async def test_reg5_xian_put_into_use_before_acceptance_cites_xian(clients):
    sid = await register(clients.unit, xian_system())
    await expect(use(clients.unit, sid), REFUSED, "Xi'an 14 para 2")


@XIAN
async def test_reg5_xian_system_outside_xian_9_needs_no_design_review(clients):
    # The pack's design-review rule applies_to "Systems built at the mandatory sites of Xi'an 9"
    # (Xi'an 14 para 1); a system at an ordinary site ("other") may be built without one.
    sid = await register(clients.unit, xian_system(category="other"))
    await build(clients.unit, sid)
    assert (await get(clients.unit, sid)).state == "built"


async def test_reg5_wuhan_needs_no_design_review_even_after_a_failed_one(clients):
    # The Wuhan pack is silent on design review: "a review that is recorded is kept as
    # information only". A failed review must not block construction (and a refusal under a
    # silent rule could cite no article, RULES-2).
    sid = await register(clients.unit)
    await build(clients.unit, sid)  # no review at all: fine
    other = await register(clients.unit)
    await review(clients.unit, other, passed=False)
    await build(clients.unit, other)
    assert (await get(clients.unit, other)).state == "built"


# --- REG-6 -------------------------------------------------------------------------------------


def relocation(**kw) -> reg.SystemRelocated:
    """A move of a system with one camera, cam-1, placed at its new site (REG-2)."""
    fields = {"new_site": site("site-new"), "relocated_on": "2024-06-30"}
    fields.update(kw)
    new = fields["new_site"]
    fields.setdefault("placements", [placement(lon=new.location.longitude, lat=new.location.latitude,
                                               address_code=new.address_code)])  # fmt: skip
    return reg.SystemRelocated(**fields)


async def relocate(stub, sid: str, **kw):
    return await stub.RelocateSystem(
        reg.RelocateSystemRequest(system_id=sid, relocation=relocation(**kw))
    )


async def remove(stub, sid: str, **kw):
    fields = {"removed_on": "2024-06-30", "reason": "urban works"}
    fields.update(kw)
    return await stub.RemoveSystem(
        reg.RemoveSystemRequest(system_id=sid, removal=reg.SystemRemoved(**fields))
    )


async def test_reg6_wuhan_relocation_filed_within_30_days_before(clients):
    sid = await register(clients.unit)
    await expect(relocate(clients.unit, sid), REFUSED, "Wuhan 10")  # never filed
    await expect(
        relocate(clients.unit, sid, reported_on="2024-05-20"), REFUSED, "Wuhan 10", "30 days"
    )
    await expect(
        relocate(clients.unit, sid, reported_on="2024-07-02"), REFUSED, "Wuhan 10"
    )  # after
    await relocate(clients.unit, sid, reported_on="2024-06-10")
    view = await get(clients.unit, sid)
    assert view.site.site_id == "site-new" and view.version == 5


async def test_reg6_wuhan_6_system_moves_only_with_rebuild_plan(clients):
    sid = await register(clients.unit, site_=site("site-metro", category="transport"))
    await expect(
        relocate(clients.unit, sid, reported_on="2024-06-10"), REFUSED, "Wuhan 10", "rebuild"
    )
    await expect(
        remove(clients.unit, sid, reported_on="2024-06-10"), REFUSED, "Wuhan 10", "rebuild"
    )
    await relocate(clients.unit, sid, rebuild_plan_ref="PLAN-1")
    assert (await get(clients.unit, sid)).site.site_id == "site-new"


async def test_reg6_wuhan_removal_then_no_further_commands(clients):
    sid = await register(clients.unit)
    await expect(
        remove(clients.unit, sid, reported_on="2024-01-10"), REFUSED, "Wuhan 10", "30 days"
    )
    await remove(clients.unit, sid, reported_on="2024-06-15")
    view = await get(clients.unit, sid)
    assert view.state == "removed" and view.version == 3
    await expect(build(clients.unit, sid), REFUSED, "removed")
    assert await version(clients.unit, sid) == 3


@XIAN
async def test_reg6_xian_relocation_needs_using_unit_consent(clients):
    sid = await register(clients.unit, xian_system())
    new = site("site-x2", category="other", lon=108.95, lat=34.35, address_code="610103")
    await expect(relocate(clients.unit, sid, new_site=new), REFUSED, "Xi'an 19", "consent")
    await relocate(
        clients.unit, sid, new_site=new, consent_ref="USING-UNIT-OK", reported_on="2024-07-10"
    )
    assert (await get(clients.unit, sid)).site.address_code == "610103"
    await expect(remove(clients.unit, sid), REFUSED, "Xi'an 19", "consent")
    await remove(clients.unit, sid, consent_ref="OK-2", reported_on="2024-07-05")
    assert (await get(clients.unit, sid)).state == "removed"


@XIAN
async def test_reg6_xian_relocation_reported_later_than_30_days_after_is_not_silently_accepted(
    clients,
):
    # Xi'an 19 para 2: report within 30 days after the move. A report 45 days late must be either
    # refused citing Xi'an 19 or leave an open REG-6 finding.
    sid = await register(clients.unit, xian_system())
    new = site("site-x3", category="other", lon=108.95, lat=34.35, address_code="610103")
    try:
        await relocate(clients.unit, sid, new_site=new, consent_ref="OK", reported_on="2024-08-14")
    except grpc.aio.AioRpcError as err:
        assert err.code() == REFUSED and "Xi'an 19" in (err.details() or ""), err.details()
        return
    found = await clients.police.ListFindings(
        reg.ListFindingsRequest(as_of="2024-09-01", spec="REG-6")
    )
    assert [f.article for f in found.findings if f.subject == f"system-{sid}"] == ["Xi'an 19"]


@XIAN
async def test_reg6_xian_a_late_report_dated_after_the_removal_still_counts(clients):
    """The move (2024-03-01) was due to be reported by 2024-03-31; it was, late, on 2024-07-10,
    after the system's removal (2024-06-30): the finding is resolved, not closed unreported."""
    sid = await register(clients.unit, xian_system())
    new = site("site-x4", category="other", lon=108.95, lat=34.35, address_code="610103")
    await relocate(clients.unit, sid, new_site=new, relocated_on="2024-03-01", consent_ref="OK",
                   reported_on="2024-07-10")  # fmt: skip
    await remove(clients.unit, sid, consent_ref="OK-2", reported_on="2024-07-05")
    found = await clients.police.ListFindings(
        reg.ListFindingsRequest(as_of="2024-09-01", spec="REG-6")
    )
    [late] = [f for f in found.findings if f.subject == f"system-{sid}"]
    assert (late.status, late.since) == ("resolved", "2024-04-01"), late


@XIAN
async def test_reg6_xian_a_removal_is_to_be_reported_within_30_days_after_it(clients):
    """Xi'an 19 para 2: removed on 2024-06-30, due to be reported by 2024-07-30: never
    reported, an open finding from 2024-07-31; reported late, resolved; in time, none."""
    systems = {}
    for name, reported in [("never", ""), ("late", "2024-08-20"), ("in-time", "2024-07-20")]:
        systems[name] = sid = await register(clients.unit, xian_system())
        await remove(clients.unit, sid, consent_ref="OK", reported_on=reported)
    for as_of, expected in [
        ("2024-07-30", {}),
        ("2024-08-01", {"never": "open", "late": "open"}),
        ("2024-09-01", {"never": "open", "late": "resolved"}),
    ]:
        found = await clients.police.ListFindings(
            reg.ListFindingsRequest(as_of=as_of, spec="REG-6")
        )
        got = {name: f.status for name, sid in systems.items()
               for f in found.findings if f.subject == f"system-{sid}"}  # fmt: skip
        assert got == expected, (as_of, got)
        assert all(f.article == "Xi'an 19" and f.since == "2024-07-31" for f in found.findings
                   if f.subject in {f"system-{s}" for s in systems.values()})  # fmt: skip


# --- REG-11 ------------------------------------------------------------------------------------


async def file_change(stub, sid: str, ch: reg.ChangeFiled, expected: int = 0):
    return await stub.FileChange(
        reg.FileChangeRequest(system_id=sid, change=ch, expected_version=expected)
    )


async def test_reg11_orientation_change_without_approval_is_refused(clients):
    sid = await register(clients.unit, cameras=[camera("cam-1", orientation_deg=90.0)])
    await expect(file_change(clients.unit, sid, change("cam-1", "orientation", "180", approved=False)),
                 REFUSED, "Wuhan 7 para 2", "approval")  # fmt: skip
    await expect(file_change(clients.unit, sid, change("cam-1", "position", "roof", approved=False)),
                 REFUSED, "Wuhan 7 para 2")  # fmt: skip
    view = await get(clients.unit, sid)
    assert view.cameras[0].orientation_deg == 90.0 and view.cameras[0].position == "gate pole"
    assert not view.changes and view.version == 3


async def test_reg11_approved_change_is_applied_to_the_camera(clients):
    sid = await register(
        clients.unit, cameras=[camera("cam-1"), camera("cam-2", orientation_deg=10.0)]
    )
    await file_change(clients.unit, sid, change("cam-2", "orientation", "275.5"))
    await file_change(clients.unit, sid, change("cam-2", "position", "north mast"))
    view = await get(clients.unit, sid)
    cam = {c.camera_id: c for c in view.cameras}
    assert cam["cam-2"].orientation_deg == 275.5 and cam["cam-2"].position == "north mast"
    assert cam["cam-1"].orientation_deg == 0.0 and cam["cam-1"].position == "gate pole"
    assert [c.attribute for c in view.changes] == ["orientation", "position"]
    assert view.changes[0].approval_ref == "APP-7"


async def test_reg11_wuhan_function_change_is_not_controlled(clients):
    sid = await register(clients.unit)
    await file_change(
        clients.unit, sid, change("cam-1", "function", "plate reading", approved=False)
    )
    assert (await get(clients.unit, sid)).cameras[0].function == "plate reading"


@XIAN
async def test_reg11_xian_controls_position_and_function_not_orientation(clients):
    sid = await register(clients.unit, xian_system())
    await expect(file_change(clients.unit, sid, change("cam-1", "function", "x", approved=False)),
                 REFUSED, "Xi'an 22(7)")  # fmt: skip
    await expect(file_change(clients.unit, sid, change("cam-1", "position", "x", approved=False)),
                 REFUSED, "Xi'an 22(7)")  # fmt: skip
    await file_change(clients.unit, sid, change("cam-1", "orientation", "45", approved=False))
    assert (await get(clients.unit, sid)).cameras[0].orientation_deg == 45.0


async def test_reg11_change_of_unknown_camera_or_bad_orientation_is_invalid(clients):
    sid = await register(clients.unit)
    await expect(file_change(clients.unit, sid, change("cam-9", "position", "x")), INVALID, "cam-9")
    for bad in ("360", "-1", "north", "nan", "inf"):
        await expect(
            file_change(clients.unit, sid, change("cam-1", "orientation", bad)),
            INVALID,
            "orientation",
        )
    await expect(
        file_change(clients.unit, sid, change("cam-1", "colour", "red")), INVALID, "attribute"
    )
    assert await version(clients.unit, sid) == 1


# --- REG-5: construction projects (Wuhan 8 para 1, Xi'an 16) -----------------------------------


async def milestone(stub, project: str, step: str, on: str) -> reg.CommandResult:
    reached = reg.ProjectMilestoneReached(project_id=project, milestone=step, reached_on=on)
    return await stub.RecordProjectMilestone(reg.RecordProjectMilestoneRequest(milestone=reached))


async def project_system(stub, project: str, sys_: reg.SystemRegistered | None = None) -> str:
    """A system of the project through its whole lifecycle, reviewed 01-05, built 01-10,
    accepted 01-15 and put into use 02-01 (2024)."""
    if sys_ is None:
        sid = await register(stub, construction_project=project)
    else:
        sys_.construction_project = project
        sid = await register(stub, sys_)
    await into_use(stub, sid, accepted_on="2024-01-15", in_use_on="2024-02-01")
    return sid


async def test_reg5_wuhan_a_system_accepted_after_its_projects_main_works_is_a_finding(clients):
    """Wuhan 8 para 1: designed, built, accepted and put into use at the same time as the main
    works. The system was accepted three days after them: open from the next day, resolved
    once it was accepted; the steps it kept in step with raise nothing."""
    project = new_id("proj")
    sid = await project_system(clients.unit, project)
    for step, on in [("designed", "2024-01-05"), ("built", "2024-01-10"),
                     ("accepted", "2024-01-12"), ("in_use", "2024-02-01")]:  # fmt: skip
        await milestone(clients.unit, project, step, on)
    subject = f"system-{sid}"
    assert await findings(clients.police, "2024-01-12", "REG-5", subject) == []
    (lag,) = await findings(clients.police, "2024-01-14", "REG-5", subject)
    assert (lag.status, lag.since, lag.article, lag.rule) == (
        "open", "2024-01-13", "Wuhan 8 para 1", "lifecycle.construction_project_sync",
    )  # fmt: skip
    assert f"project {project} were accepted on 2024-01-12" in lag.detail, lag.detail
    (done,) = await findings(clients.police, "2024-03-01", "REG-5", subject)
    assert (done.status, done.since) == ("resolved", "2024-01-13")
    assert "only on 2024-01-15" in done.detail, done.detail


async def test_reg5_wuhan_main_works_in_use_before_the_system_is_open_until_it_is(clients):
    project = new_id("proj")
    sid = await register(clients.unit, construction_project=project)
    await review(clients.unit, sid)
    await build(clients.unit, sid)
    await milestone(clients.unit, project, "built", "2024-01-08")  # the system: 01-10
    (built,) = await findings(clients.police, "2024-01-09", "REG-5", f"system-{sid}")
    assert (built.status, built.since) == ("open", "2024-01-09")
    (built,) = await findings(clients.police, "2024-01-10", "REG-5", f"system-{sid}")
    assert built.status == "resolved"
    await milestone(clients.unit, project, "in_use", "2024-03-01")
    found = await findings(clients.police, "2024-06-01", "REG-5", f"system-{sid}")
    assert [(f.status, f.since) for f in found] == [("resolved", "2024-01-09"),
                                                    ("open", "2024-03-02")]  # fmt: skip
    assert "put into use on 2024-03-01; the system has not been yet" in found[1].detail


@XIAN
async def test_reg5_xian_accepts_the_system_independently_of_the_main_works(clients):
    """Xi'an 16: 同步设计、同步施工、独立验收、同步投入使用: acceptance is not compared."""
    project = new_id("proj")
    sid = await project_system(clients.unit, project, xian_system())
    await milestone(clients.unit, project, "accepted", "2024-01-11")
    await milestone(clients.unit, project, "in_use", "2024-01-20")
    (lag,) = await findings(clients.police, "2024-06-01", "REG-5", f"system-{sid}")
    assert (lag.status, lag.since, lag.article) == ("resolved", "2024-01-21", "Xi'an 16")
    assert "put into use on 2024-01-20; the system only on 2024-02-01" in lag.detail


async def test_reg5_a_system_not_of_a_project_or_removed_before_it_owes_nothing(clients):
    project = new_id("proj")
    plain = await register(clients.unit)
    removed = await register(clients.unit, construction_project=project)
    await build(clients.unit, removed)
    await clients.unit.RemoveSystem(reg.RemoveSystemRequest(system_id=removed, removal=reg.SystemRemoved(
        removed_on="2024-01-20", reason="urban works", reported_on="2024-01-01")))  # fmt: skip
    await milestone(clients.unit, project, "accepted", "2024-01-12")
    await milestone(clients.unit, project, "in_use", "2024-02-01")
    found = await findings(clients.police, "2024-06-01", "REG-5")
    assert [(f.subject, f.status) for f in found if f.subject in (f"system-{plain}", f"system-{removed}")] == [
        (f"system-{removed}", "closed")  # accepted: lagged from 01-13; in use: removed before
    ]  # fmt: skip


async def test_reg5_project_milestones_bad_input_and_order_append_nothing(clients):
    project = new_id("proj")
    await expect(milestone(clients.unit, project, "opened", "2024-01-01"), INVALID,
                 "milestone.milestone", "designed, in_use")  # fmt: skip
    await expect(milestone(clients.unit, project, "built", "2024-02-30"), INVALID,
                 "milestone.reached_on")  # fmt: skip
    await expect(milestone(clients.unit, "bad id!", "built", "2024-02-01"), INVALID,
                 "milestone.project_id")  # fmt: skip
    assert (await milestone(clients.unit, project, "built", "2024-02-01")).version == 1
    await expect(milestone(clients.unit, project, "built", "2024-02-03"), EXISTS,
                 "already built on 2024-02-01")  # fmt: skip
    await expect(milestone(clients.unit, project, "designed", "2024-02-02"), REFUSED,
                 "after the project's built step on 2024-02-01")  # fmt: skip
    await expect(milestone(clients.unit, project, "in_use", "2024-01-31"), REFUSED,
                 "before the project's built step")  # fmt: skip
    assert (await milestone(clients.unit, project, "in_use", "2024-02-01")).version == 2
