"""REG-3 mandatory sites: a declaration withdrawn (Xi'an 10's large public event is over), a site
served late shown resolved, and the declared category applied to the systems already there."""

from __future__ import annotations

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
    declare,
    expect,
    findings,
    into_use,
    placement,
    register,
    review,
    site,
    system,
    use,
    version,
    withdraw,
    xian_system,
)
from psvis.registry.v1 import registry_pb2 as reg


def xian_site(site_id: str, category: str) -> reg.Site:
    lon, lat, code = XIAN
    return site(site_id, category=category, lon=lon, lat=lat, address_code=code)


async def remove(stub, sid: str, on: str, plan: str = "") -> reg.CommandResult:
    removal = reg.SystemRemoved(removed_on=on, reason="planning change", rebuild_plan_ref=plan,
                                reported_on="2024-03-20" if on >= "2024-03-20" else on)  # fmt: skip
    return await stub.RemoveSystem(reg.RemoveSystemRequest(system_id=sid, removal=removal))


# --- a declaration withdrawn ----------------------------------------------------------------------


@pytest.mark.parametrize("city", ["xian"])
async def test_reg3_a_large_public_event_withdrawn_is_resolved_until_its_withdrawal(clients):
    """Xi'an 10: a large public event's site is mandatory while the event lasts. Withdrawn on
    2024-05-10 without a system there, its finding is resolved "until" that day (withdrawn) as
    of that day on, and still the open one it was before."""
    await declare(clients.police, xian_site("expo", "large_public_event"), "2024-05-01")
    result = await withdraw(clients.police, "expo", "2024-05-10")
    assert (result.stream_id, result.version) == ("site-expo", 2)
    (before,) = await findings(clients.police, "2024-05-09", "REG-3")
    assert (before.subject, before.status, before.article, before.since) == (
        "site-expo",
        "open",
        "Xi'an 10",
        "2024-05-01",
    )
    for as_of in ("2024-05-10", "2025-01-01"):
        (after,) = await findings(clients.police, as_of, "REG-3")
        assert (after.subject, after.status, after.article, after.since) == (
            "site-expo",
            "resolved",
            "Xi'an 10",
            "2024-05-01",
        ), as_of
        assert after.detail == (
            "large_public_event at 1 Jiefang Road had no system in use until 2024-05-10,"
            " when its declaration was withdrawn: the event is over"
        ), after.detail


async def test_reg3_a_withdrawal_is_checked_and_a_refused_one_appends_nothing(clients, platform):
    await declare(
        clients.police, site("site-fair", category="commerce_leisure_lodging"), "2024-03-01"
    )
    await expect(withdraw(clients.unit, "site-fair", "2024-04-01"), DENIED)
    await expect(withdraw(clients.police, "site-none", "2024-04-01"), NOT_FOUND, "site-none")
    await expect(
        withdraw(clients.police, "site-fair", "2024-02-30"), INVALID, "withdrawal.withdrawn_on"
    )
    await expect(withdraw(clients.police, "site-fair", "2024-04-01", reason=" "), INVALID,
                 "withdrawal.reason")  # fmt: skip
    await expect(withdraw(clients.police, "site fair", "2024-04-01"), INVALID, "site_id")
    await expect(withdraw(clients.police, "site-fair", "2024-02-29"), REFUSED,
                 "2024-02-29 is before", "declared on 2024-03-01")  # fmt: skip
    await withdraw(clients.police, "site-fair", "2024-04-01", expected=1)  # still at version 1
    await expect(withdraw(clients.police, "site-fair", "2024-05-01"), REFUSED,
                 "site-fair was withdrawn on 2024-04-01")  # fmt: skip
    assert len(await platform.stores.events.read_stream("site-site-fair")) == 2
    assert await platform.stores.events.read_stream("site-site-none") == []
    (withdrawn,) = await findings(clients.police, "2024-04-01", "REG-3")
    assert (withdrawn.status, withdrawn.since) == ("resolved", "2024-03-01")
    assert "until 2024-04-01, when its declaration was withdrawn" in withdrawn.detail


# --- a site served late: resolved -------------------------------------------------------------


async def test_reg3_a_site_without_a_system_that_gets_one_shows_resolved_and_when(clients):
    metro = site("site-metro", category="transport")
    await declare(clients.police, metro, "2024-01-01")
    await into_use(clients.unit, await register(clients.unit, site_=metro), in_use_on="2024-02-01")
    (unserved,) = await findings(clients.police, "2024-01-31", "REG-3")
    assert (unserved.status, unserved.since) == ("open", "2024-01-01")
    for as_of in ("2024-02-01", "2025-01-01"):
        (late,) = await findings(clients.police, as_of, "REG-3")
        assert (late.subject, late.status, late.since, late.article) == (
            "site-site-metro",
            "resolved",
            "2024-01-01",
            "Wuhan 6(2)",
        )
        assert "until 2024-02-01" in late.detail, late.detail


async def test_reg3_a_site_served_from_the_day_of_its_declaration_has_no_finding(clients):
    metro = site("site-metro", category="transport")
    await into_use(clients.unit, await register(clients.unit, site_=metro), in_use_on="2024-02-01")
    await declare(clients.police, metro, "2024-02-01")
    for as_of in ("2024-02-01", "2025-01-01"):
        assert await findings(clients.police, as_of, "REG-3") == [], as_of


async def test_reg3_each_spell_without_a_system_is_a_finding_of_its_own(clients):
    metro = site("site-metro", category="transport")
    await declare(clients.police, metro, "2024-01-01")
    first = await register(clients.unit, site_=metro)
    await into_use(clients.unit, first, in_use_on="2024-02-01")
    await remove(clients.unit, first, "2024-04-01", plan="PLAN-9")
    spells = [(f.status, f.since) for f in await findings(clients.police, "2024-04-15", "REG-3")]
    assert spells == [("resolved", "2024-01-01"), ("open", "2024-04-01")]
    await into_use(clients.unit, await register(clients.unit, site_=metro), in_use_on="2024-05-01")
    found = await findings(clients.police, "2024-05-01", "REG-3")
    assert [(f.status, f.since) for f in found] == [
        ("resolved", "2024-01-01"),
        ("resolved", "2024-04-01"),
    ]
    assert "until 2024-05-01" in found[1].detail, found[1].detail


async def test_reg3_a_site_owes_a_system_from_the_day_the_measures_took_effect(clients):
    """Wuhan 26: the Measures apply from 2023-03-01. A site declared before then owes nothing
    before it; served only later, it is a finding from 2023-03-01 (resolved once served)."""
    metro = site("site-metro", category="transport")
    await declare(clients.police, metro, "2023-01-01")
    assert await findings(clients.police, "2023-02-28", "REG-3") == []
    (unserved,) = await findings(clients.police, "2023-03-01", "REG-3")
    assert (unserved.status, unserved.since) == ("open", "2023-03-01")
    sid = await register(clients.unit, site_=metro, registered_on="2023-01-02")
    await review(clients.unit, sid, on="2023-01-05")
    await build(clients.unit, sid, "2023-01-10")
    await accept(clients.unit, sid, "2023-01-15")
    await use(clients.unit, sid, "2023-04-01")
    (late,) = await findings(clients.police, "2023-04-01", "REG-3")
    assert (late.status, late.since) == ("resolved", "2023-03-01")


async def test_reg3_a_site_served_before_the_measures_took_effect_has_no_finding(clients):
    metro = site("site-metro", category="transport")
    await declare(clients.police, metro, "2023-01-01")
    sid = await register(clients.unit, site_=metro, registered_on="2023-01-02")
    await review(clients.unit, sid, on="2023-01-05")
    await build(clients.unit, sid, "2023-01-10")
    await accept(clients.unit, sid, "2023-01-15")
    await use(clients.unit, sid, "2023-02-01")
    for as_of in ("2023-01-15", "2023-03-01", "2025-01-01"):
        assert await findings(clients.police, as_of, "REG-3") == [], as_of


# --- a site declared after a system was registered there ------------------------------------------


async def test_reg3_a_system_at_a_site_declared_later_is_moved_only_with_wuhan_10s_plan(clients):
    """Wuhan 10 para 1: a system of Wuhan 6 is moved or removed only with a rebuild or
    replacement plan. A system registered at a site as "other" is of the category the police
    declare the site from the declaration on: its move or removal without a plan is refused
    (and the refusal recorded); one dated before the declaration is not of Wuhan 6."""
    sid = await register(clients.unit, site_=site("site-depot"))
    await into_use(clients.unit, sid, in_use_on="2024-02-01")  # version 5
    before = await register(clients.unit, site_=site("site-depot"))
    await into_use(clients.unit, before, in_use_on="2024-02-01")
    await declare(clients.police, site("site-depot", category="transport"), "2024-03-01")
    move = reg.SystemRelocated(new_site=site("site-yard"), relocated_on="2024-04-01",
                               reported_on="2024-03-20", placements=[placement()])  # fmt: skip
    await expect(clients.unit.RelocateSystem(reg.RelocateSystemRequest(system_id=sid, relocation=move)),
                 REFUSED, "mandatory site", "rebuild", "Wuhan 10")  # fmt: skip
    await expect(remove(clients.unit, sid, "2024-04-01"), REFUSED, "rebuild", "Wuhan 10")
    assert await version(clients.unit, sid) == 7  # two refusals, recorded
    await remove(clients.unit, sid, "2024-04-01", plan="PLAN-9")
    await remove(clients.unit, before, "2024-02-20")  # dated before the declaration: no plan


async def test_reg3_a_withdrawn_site_is_of_the_category_filed_again(clients):
    sid = await register(clients.unit, site_=site("site-fair"))
    await into_use(clients.unit, sid, in_use_on="2024-02-01")
    await declare(
        clients.police, site("site-fair", category="commerce_leisure_lodging"), "2024-03-01"
    )
    await withdraw(clients.police, "site-fair", "2024-03-15", reason="the trade fair is over")
    await expect(remove(clients.unit, sid, "2024-03-14"), REFUSED, "rebuild", "Wuhan 10")
    await remove(clients.unit, sid, "2024-04-01")  # on the withdrawal's day on: no plan needed


@pytest.mark.parametrize("city", ["xian"])
async def test_reg3_xian_14_design_review_binds_a_system_at_a_site_declared_later(clients):
    """Xi'an 14 para 1: a system built at a site of Xi'an 9/10 needs a passed design review.
    A system filed at an "other" site that the police then declare a large public event's
    needs one from the declaration on, and no longer once the declaration is withdrawn."""
    planned = xian_system(category="other")
    sid = await register(clients.unit, planned)
    site_id = planned.site.site_id
    await declare(clients.police, xian_site(site_id, "large_public_event"), "2024-01-05")
    await expect(
        build(clients.unit, sid, "2024-01-10"), REFUSED, "design review", "Xi'an 14 para 1"
    )
    await withdraw(clients.police, site_id, "2024-01-20")
    await build(clients.unit, sid, "2024-01-25")
    assert await version(clients.unit, sid) == 3


async def test_reg3_a_site_declared_mandatory_keeps_other_systems_as_they_were(clients):
    """The declared category binds the systems at the declared site only."""
    sid = await register(clients.unit, system(site_=site("site-elsewhere")))
    await into_use(clients.unit, sid, in_use_on="2024-02-01")
    await declare(clients.police, site("site-depot", category="transport"), "2024-03-01")
    await remove(clients.unit, sid, "2024-04-01")


async def test_reg3_a_decision_reads_the_site_the_system_stands_at_not_the_read_models(
    clients, platform
):
    """The declaration read for a decision is that of the site the system's own events put it
    at: a read model behind them (here: one naming another site) does not decide."""
    sid = await register(clients.unit, site_=site("site-depot"))
    await into_use(clients.unit, sid, in_use_on="2024-02-01")
    await declare(clients.police, site("site-depot", category="transport"), "2024-03-01")
    reads = platform.stores.reads
    doc, at = await reads.get("registry.systems", sid)
    doc["view"]["site"]["site_id"] = "site-elsewhere"
    assert await reads.put("registry.systems", sid, doc, at, at)
    await expect(remove(clients.unit, sid, "2024-04-01"), REFUSED, "rebuild", "Wuhan 10")


# --- a site declared again after its withdrawal ---------------------------------------------------


async def test_reg3_a_withdrawn_site_declared_again_owes_a_system_anew(clients, platform):
    """REG-3: a site withdrawn (a fair is over) is declared again for the next fair, a new spell
    of duty: as of a day of either declaration, its finding runs from that declaration; between
    them the site owes nothing. The second declaration's category binds the systems there."""
    fair = site("site-fair", category="commerce_leisure_lodging")
    await declare(clients.police, fair, "2024-03-01")
    await expect(declare(clients.police, fair, "2024-03-05"), EXISTS, "already declared",
                 "on 2024-03-01")  # fmt: skip
    await withdraw(clients.police, "site-fair", "2024-03-10", reason="the fair is over")
    await expect(declare(clients.police, fair, "2024-03-09"), REFUSED,
                 "2024-03-09 is before", "withdrawn on 2024-03-10")  # fmt: skip
    assert len(await platform.stores.events.read_stream("site-site-fair")) == 2
    again = site("site-fair", category="transport")
    result = await declare(clients.police, again, "2024-04-01")
    assert (result.stream_id, result.version) == ("site-site-fair", 3)
    (first,) = await findings(clients.police, "2024-03-05", "REG-3")
    assert (first.status, first.since, first.article) == ("open", "2024-03-01", "Wuhan 6(5)")
    (withdrawn,) = await findings(clients.police, "2024-03-20", "REG-3")  # owes nothing then
    assert (withdrawn.status, withdrawn.since, withdrawn.article) == (
        "resolved",
        "2024-03-01",
        "Wuhan 6(5)",
    )
    assert "until 2024-03-10, when its declaration was withdrawn" in withdrawn.detail
    earlier, second = await findings(clients.police, "2024-04-05", "REG-3")
    assert earlier == withdrawn
    assert (second.status, second.since, second.article) == ("open", "2024-04-01", "Wuhan 6(2)")
    await expect(register(clients.unit, site_=fair, registered_on="2024-04-02"), REFUSED,
                 "declared by the police a transport site from 2024-04-01")  # fmt: skip
    sid = await register(clients.unit, site_=again)
    await into_use(clients.unit, sid, in_use_on="2024-04-10")
    earlier, served = await findings(clients.police, "2024-04-15", "REG-3")
    assert earlier == withdrawn and (served.status, served.since) == ("resolved", "2024-04-01")
    assert "until 2024-04-10" in served.detail, served.detail
    await withdraw(clients.police, "site-fair", "2024-05-01")
    assert await findings(clients.police, "2024-06-01", "REG-3") == [withdrawn, served]
    await expect(withdraw(clients.police, "site-fair", "2024-05-02"), REFUSED,
                 "withdrawn on 2024-05-01")  # fmt: skip


async def test_reg3_a_withdrawn_declarations_spells_stay_resolved_each_as_it_ended(clients):
    """REG-3: withdrawn, a declaration keeps the findings it raised: a spell a system ended is
    resolved as it was, the one still open at the withdrawal resolved until then (withdrawn);
    as of the days it was in force they read as they did."""
    metro = site("site-metro", category="transport")
    await declare(clients.police, metro, "2024-01-01")
    sid = await register(clients.unit, site_=metro)
    await into_use(clients.unit, sid, in_use_on="2024-02-01")
    await remove(clients.unit, sid, "2024-04-01", plan="PLAN-9")
    await withdraw(clients.police, "site-metro", "2024-05-01", reason="the line closed")
    spells = await findings(clients.police, "2024-04-30", "REG-3")
    assert [(f.status, f.since) for f in spells] == [
        ("resolved", "2024-01-01"),
        ("open", "2024-04-01"),
    ]
    for as_of in ("2024-05-01", "2030-01-01"):
        served, withdrawn = await findings(clients.police, as_of, "REG-3")
        assert served == spells[0], as_of
        assert (withdrawn.status, withdrawn.since, withdrawn.article) == (
            "resolved",
            "2024-04-01",
            "Wuhan 6(2)",
        )
        assert withdrawn.detail == (
            "transport at 1 Jiefang Road had no system in use until 2024-05-01, when its"
            " declaration was withdrawn: the line closed"
        ), withdrawn.detail


async def test_reg3_a_declaration_withdrawn_before_the_measures_took_effect_has_no_finding(
    clients,
):
    """Wuhan 26: a site declared and withdrawn before 2023-03-01 owed nothing, then or since."""
    await declare(clients.police, site("site-metro", category="transport"), "2023-01-01")
    await withdraw(clients.police, "site-metro", "2023-02-01")
    for as_of in ("2023-01-15", "2023-03-01", "2025-01-01"):
        assert await findings(clients.police, as_of, "REG-3") == [], as_of
