"""Unit tests of the REG decisions against the real rule packs: pure, no I/O."""

from __future__ import annotations

from pathlib import Path

import pytest
from psvis.decision import Accepted, Refused
from psvis.errors import FailedPrecondition, InvalidArgument, NotFound
from psvis.registry.v1 import registry_pb2 as reg
from psvis.rulepack import RulePack, check_requirements, load_pack
from psvis_registry import rules, rules_common
from psvis_registry.domain import SystemState, evolve

RULES = Path(__file__).resolve().parents[3] / "rules"


@pytest.fixture(params=["wuhan", "xian"])
def pack(request: pytest.FixtureRequest) -> RulePack:
    return load_pack(RULES / f"{request.param}.toml")


def wuhan() -> RulePack:
    return load_pack(RULES / "wuhan.toml")


def xian() -> RulePack:
    return load_pack(RULES / "xian.toml")


def system(place: str = "entrance", category: str = "other") -> reg.SystemRegistered:
    point = reg.GeoPoint(longitude=114.3, latitude=30.6)
    return reg.SystemRegistered(
        system_id="sys-1", name="Gate", managing_unit="unit-a", operator="Op", registered_on="2024-01-02",
        site=reg.Site(site_id="site-1", category=category, address="1 Rd", address_code="420102", location=point),
        cameras=[reg.Camera(camera_id="c1", device_type="dome", address_code="420102", place=place, location=point)],
    )  # fmt: skip


def registered(pack: RulePack, *events: object) -> SystemState:
    state = SystemState("sys-1")
    evolve(state, system())
    for event in events:
        evolve(state, event)  # type: ignore[arg-type]
    return state


def test_rules1_both_packs_give_the_registry_every_rule_it_needs(pack: RulePack) -> None:
    assert check_requirements(pack, rules.NEEDS) == []


@pytest.mark.parametrize(("city", "place", "article"), [
    ("wuhan", "hotel_room", "Wuhan 18(1)"), ("wuhan", "report_box", "Wuhan 18(5)"),
    ("xian", "hotel_room", "Xi'an 11(1)"), ("xian", "ballot_box", "Xi'an 11(5)"),
])  # fmt: skip
def test_reg4_forbidden_place_is_refused_citing_the_item(
    city: str, place: str, article: str
) -> None:
    decision = rules.register(
        SystemState("sys-1"), system(place), load_pack(RULES / f"{city}.toml")
    )
    assert isinstance(decision, Refused)
    assert decision.citation.article == article and decision.citation.spec == "REG-4"


def test_reg4_public_places_are_accepted(pack: RulePack) -> None:
    assert isinstance(rules.register(SystemState("sys-1"), system("street"), pack), Accepted)


def test_reg5_use_before_acceptance_is_refused(pack: RulePack) -> None:
    state = registered(pack, reg.ConstructionCompleted(completed_on="2024-02-01"))
    decision = rules.put_into_use(state, reg.SystemPutIntoUse(in_use_on="2024-02-02"), pack)
    assert isinstance(decision, Refused) and decision.citation.spec == "REG-5"


def test_reg5_failed_acceptance_needs_rectification_then_reacceptance(pack: RulePack) -> None:
    state = registered(pack, reg.ConstructionCompleted(completed_on="2024-02-01"),
                       reg.AcceptanceRecorded(passed=False, accepted_on="2024-02-05", defects=["blind spot"]))  # fmt: skip
    again = reg.AcceptanceRecorded(passed=True, accepted_on="2024-02-06")
    with pytest.raises(FailedPrecondition, match="is rectification: acceptance does not apply"):
        rules.record_acceptance(state, again, pack)
    evolve(state, reg.RectificationCompleted(completed_on="2024-02-08"))
    with pytest.raises(FailedPrecondition, match="before the system's rectification on 2024-02-08"):
        rules.record_acceptance(state, again, pack)  # dated before the rectification it follows
    again.accepted_on = "2024-02-09"
    assert isinstance(rules.record_acceptance(state, again, pack), Accepted)


def test_reg5_xian_requires_a_passed_design_review_at_mandatory_sites() -> None:
    state = SystemState("sys-1")
    evolve(state, system(category=next(iter(rules_common.mandatory_categories(xian())))))
    decision = rules.complete_construction(
        state, reg.ConstructionCompleted(completed_on="2024-02-01"), xian()
    )
    assert isinstance(decision, Refused) and decision.citation.article.startswith("Xi'an 14")
    evolve(state, reg.DesignReviewed(passed=True, reviewed_on="2024-01-20"))
    assert isinstance(
        rules.complete_construction(
            state, reg.ConstructionCompleted(completed_on="2024-02-01"), xian()
        ),
        Accepted,
    )


def test_reg5_wuhan_is_silent_on_design_review() -> None:
    state = registered(wuhan())
    assert isinstance(
        rules.complete_construction(
            state, reg.ConstructionCompleted(completed_on="2024-02-01"), wuhan()
        ),
        Accepted,
    )


def test_reg6_wuhan_filing_must_come_within_30_days_before_the_move() -> None:
    state = registered(wuhan())
    site = reg.Site(site_id="site-2", category="other", address="2 Rd", address_code="420103",
                    location=reg.GeoPoint(longitude=114.4, latitude=30.7))  # fmt: skip
    c1 = [reg.CameraPlacement(camera_id="c1", location=site.location, address_code="420103")]
    late = reg.SystemRelocated(new_site=site, relocated_on="2024-05-01", reported_on="2024-05-03",
                               placements=c1)  # fmt: skip
    early = reg.SystemRelocated(new_site=site, relocated_on="2024-05-01", reported_on="2024-03-01",
                                placements=c1)  # fmt: skip
    ok = reg.SystemRelocated(new_site=site, relocated_on="2024-05-01", reported_on="2024-04-20",
                             placements=c1)  # fmt: skip
    assert isinstance(rules.relocate(state, late, wuhan()), Refused)
    assert isinstance(rules.relocate(state, early, wuhan()), Refused)
    assert isinstance(rules.relocate(state, ok, wuhan()), Accepted)


def test_reg11_orientation_change_without_approval_is_refused_in_wuhan() -> None:
    state = registered(wuhan())
    change = reg.ChangeFiled(
        camera_id="c1", attribute="orientation", new_value="90", effective_on="2024-03-01"
    )
    assert isinstance(rules.file_change(state, change, wuhan()), Refused)
    change.approval_ref, change.approved_by = "APPR-1", "district police"
    assert isinstance(rules.file_change(state, change, wuhan()), Accepted)


@pytest.mark.parametrize("mutate", [
    lambda s: setattr(s, "system_id", "bad id!"),
    lambda s: setattr(s, "registered_on", "2024-13-01"),
    lambda s: setattr(s.cameras[0].location, "latitude", 91.0),
    lambda s: setattr(s.cameras[0], "place", "moon"),
    lambda s: setattr(s.cameras[0], "orientation_deg", 360.0),
    lambda s: s.ClearField("cameras"),
])  # fmt: skip
def test_bad_input_is_invalid_argument(mutate: object, pack: RulePack) -> None:
    cmd = system()
    mutate(cmd)  # type: ignore[operator]
    with pytest.raises(InvalidArgument):
        rules.register(SystemState("sys-1"), cmd, pack)


def test_commands_on_an_unknown_system_are_not_found(pack: RulePack) -> None:
    with pytest.raises(NotFound):
        rules.put_into_use(SystemState("nope"), reg.SystemPutIntoUse(in_use_on="2024-01-01"), pack)
