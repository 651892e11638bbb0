"""REG-3 mandatory sites read back: GetSite and ListSites (the declaration in force with its
article, its withdrawal, the declarations before it), who may read them, and bad queries."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from conftest import secure_channel
from e2e_kit import DENIED, INVALID, NOT_FOUND, XIAN, declare, expect, site, withdraw
from psvis.clock import FixedClock
from psvis.registry.v1 import registry_pb2 as reg
from psvis.registry.v1 import registry_pb2_grpc as reg_grpc
from psvis.server import start_platform


async def get_site(stub, site_id: str) -> reg.SiteView:
    return await stub.GetSite(reg.GetSiteRequest(site_id=site_id))


async def list_sites(stub, **kw) -> list[reg.SiteView]:
    """Every page of ListSites, in order."""
    out, token = [], ""
    while True:
        page = await stub.ListSites(reg.ListSitesRequest(page_token=token, **kw))
        out += page.sites
        if not (token := page.next_page_token):
            return out


async def test_reg3_get_site_shows_the_declaration_in_force_and_its_article(clients):
    metro = site("site-metro", category="transport", address_code="420102001")
    await declare(clients.police, metro, "2024-01-01")
    view = await get_site(clients.police, "site-metro")
    assert (view.site_id, view.category, view.address, view.address_code) == (
        "site-metro",
        "transport",
        "1 Jiefang Road",
        "420102001",
    )
    assert (view.status, view.version, list(view.earlier)) == ("in_force", 1, [])
    assert view.declaration == reg.SiteDeclaration(
        site=metro, declared_on="2024-01-01", article="Wuhan 6(2)"
    )
    assert not view.declaration.HasField("withdrawal")


async def test_reg3_get_site_shows_a_withdrawal_and_the_declarations_before_the_latest(clients):
    """A site declared for a fair, withdrawn, declared again as a transport site: the view is
    of the latest declaration, and keeps the earlier one with its withdrawal; withdrawn again,
    the site is "withdrawn" with the day and the reason."""
    fair = site("site-fair", category="commerce_leisure_lodging")
    await declare(clients.police, fair, "2024-03-01")
    await withdraw(clients.police, "site-fair", "2024-03-10", reason="the fair is over")
    view = await get_site(clients.police, "site-fair")
    assert (view.status, view.category, view.version) == (
        "withdrawn",
        "commerce_leisure_lodging",
        2,
    )
    first = reg.SiteDeclaration(
        site=fair, declared_on="2024-03-01", article="Wuhan 6(5)",
        withdrawal=reg.MandatorySiteWithdrawn(withdrawn_on="2024-03-10", reason="the fair is over"),
    )  # fmt: skip
    assert view.declaration == first and list(view.earlier) == []
    again = site("site-fair", category="transport", address_code="420103")
    await declare(clients.police, again, "2024-04-01")
    view = await get_site(clients.police, "site-fair")
    assert (view.status, view.category, view.address_code, view.version) == (
        "in_force",
        "transport",
        "420103",
        3,
    )
    assert view.declaration == reg.SiteDeclaration(
        site=again, declared_on="2024-04-01", article="Wuhan 6(2)"
    )
    assert list(view.earlier) == [first]
    await withdraw(clients.police, "site-fair", "2024-05-01", reason="the line moved", expected=3)
    view = await get_site(clients.auditor, "site-fair")
    assert (view.status, view.version, list(view.earlier)) == ("withdrawn", 4, [first])
    assert view.declaration.withdrawal == reg.MandatorySiteWithdrawn(
        withdrawn_on="2024-05-01", reason="the line moved"
    )


@pytest.mark.parametrize("clock", [FixedClock(datetime(2024, 6, 1, 4, 0, tzinfo=UTC))])
async def test_reg3_a_sites_status_is_of_today_with_declarations_and_withdrawals_ahead(clients):
    """Police may record a declaration or a withdrawal for a later day (an expo's dates are
    known ahead): today (2024-06-01 in the city) a site withdrawn from 2024-07-01 is still in
    force, one declared from then on is "declared", one withdrawn yesterday is "withdrawn"."""
    await declare(clients.police, site("a-expo", category="commerce_leisure_lodging"), "2024-05-01")
    await withdraw(clients.police, "a-expo", "2024-07-01", reason="the expo ends")
    await declare(clients.police, site("b-station", category="transport"), "2024-07-01")
    await declare(clients.police, site("c-fair", category="commerce_leisure_lodging"), "2024-05-01")
    await withdraw(clients.police, "c-fair", "2024-05-31", reason="the fair is over")
    statuses = {v.site_id: v.status for v in await list_sites(clients.police)}
    assert statuses == {"a-expo": "in_force", "b-station": "declared", "c-fair": "withdrawn"}
    assert (await get_site(clients.police, "a-expo")).status == "in_force"
    assert [v.site_id for v in await list_sites(clients.police, status="declared")] == ["b-station"]
    assert [v.site_id for v in await list_sites(clients.police, status="in_force")] == ["a-expo"]


@pytest.mark.parametrize("city", ["xian"])
async def test_reg3_a_sites_article_is_its_own_citys(clients):
    """Xi'an 10: a large public event's site cites Xi'an 10, by the pack the server runs."""
    lon, lat, code = XIAN
    expo = site("expo", category="large_public_event", lon=lon, lat=lat, address_code=code)
    await declare(clients.police, expo, "2024-05-01")
    assert (await get_site(clients.police, "expo")).declaration.article == "Xi'an 10"


async def test_reg3_get_site_of_an_unknown_or_malformed_site_is_refused(clients, platform):
    await expect(
        get_site(clients.police, "site-none"), NOT_FOUND, "no site 'site-none' is declared"
    )
    await expect(get_site(clients.police, "site none"), INVALID, "site_id")
    await expect(get_site(clients.police, ""), INVALID, "site_id")
    assert await platform.stores.events.read_stream("site-site-none") == []


async def test_reg3_a_unit_reads_a_site_by_its_id_but_does_not_list_them(clients):
    """A unit asks about the site it builds at (the declared category binds its systems there);
    the list of every mandatory site is for the police and auditors."""
    await declare(clients.police, site("site-metro", category="transport"), "2024-01-01")
    assert (await get_site(clients.unit, "site-metro")).category == "transport"
    await expect(clients.unit.ListSites(reg.ListSitesRequest()), DENIED, "ListSites")
    assert [s.site_id for s in await list_sites(clients.auditor)] == ["site-metro"]


async def sites_of_three_kinds(clients) -> None:
    """Four sites in two districts (420102, 420103), of two categories, one withdrawn."""
    for site_id, category, code in [("a-metro", "transport", "420102001"),
                                    ("b-fair", "commerce_leisure_lodging", "420102002"),
                                    ("c-port", "transport", "420103001"),
                                    ("d-bank", "state_organs_media_finance", "420103")]:  # fmt: skip
        await declare(clients.police, site(site_id, category=category, address_code=code),
                      "2024-01-01")  # fmt: skip
    await withdraw(clients.police, "b-fair", "2024-02-01", reason="the fair is over")


async def test_reg3_list_sites_by_address_code_category_and_status_with_pages(clients):
    await sites_of_three_kinds(clients)

    async def ids(**kw) -> list[str]:
        return [s.site_id for s in await list_sites(clients.police, **kw)]

    assert await ids() == ["a-metro", "b-fair", "c-port", "d-bank"]
    assert await ids(page_size=1) == ["a-metro", "b-fair", "c-port", "d-bank"]
    assert await ids(address_code_prefix="420102") == ["a-metro", "b-fair"]
    assert await ids(address_code_prefix="420103", page_size=1) == ["c-port", "d-bank"]
    assert await ids(category="transport") == ["a-metro", "c-port"]
    assert await ids(status="in_force") == ["a-metro", "c-port", "d-bank"]
    assert await ids(status="withdrawn") == ["b-fair"]
    assert await ids(status="in_force", address_code_prefix="420102") == ["a-metro"]
    assert await ids(address_code_prefix="4202") == []
    first = await clients.police.ListSites(reg.ListSitesRequest(page_size=3))
    assert [s.site_id for s in first.sites] == ["a-metro", "b-fair", "c-port"]
    assert first.next_page_token
    fair = first.sites[1]
    assert (fair.status, fair.version, fair.declaration.article) == ("withdrawn", 2, "Wuhan 6(5)")
    assert fair.declaration.withdrawal.reason == "the fair is over"
    rest = await clients.police.ListSites(
        reg.ListSitesRequest(page_size=3, page_token=first.next_page_token)
    )
    assert [s.site_id for s in rest.sites] == ["d-bank"] and rest.next_page_token == ""


async def test_reg3_list_sites_rejects_bad_filters(clients):
    await sites_of_three_kinds(clients)
    bad = [
        (reg.ListSitesRequest(status="open"), "status"),
        (reg.ListSitesRequest(category="casino"), "category"),
        (reg.ListSitesRequest(category="other"), "category"),  # never a mandatory one
        (reg.ListSitesRequest(address_code_prefix="42-01"), "address_code_prefix"),
        (reg.ListSitesRequest(page_token="abc"), "page_token"),
        (reg.ListSitesRequest(page_token="99"), "page_token"),
    ]
    for request, field in bad:
        await expect(clients.police.ListSites(request), INVALID, field)


@pytest.mark.parametrize("backend", ["embedded"])
async def test_reg3_sites_of_a_category_the_pack_no_longer_lists_can_still_be_listed_by_it(
    settings, tmp_path
):
    """A city's pack drops a mandatory category (an article repealed): the sites declared under
    it stay readable, listed by that category, with the rule's own article; a category that no
    pack listed and no site holds is still refused."""

    async def police_call(make_call):
        platform = await start_platform(settings)
        channel = secure_channel(f"localhost:{platform.port}", settings.pki_dir, "dev-police")
        try:
            return await make_call(reg_grpc.RegistryServiceStub(channel))
        finally:
            await channel.close()
            await platform.stop(grace=0.5)

    homes = site("homes-1", category="residential_areas", address_code="420102001")
    await police_call(lambda police: declare(police, homes, "2024-01-01"))
    pack = (settings.rules_dirs[0] / "wuhan.toml").read_text(encoding="utf-8")
    repealed = [line for line in pack.splitlines() if 'category = "residential_areas"' in line]
    assert len(repealed) == 1
    rules = tmp_path / "rules-after"
    rules.mkdir()
    (rules / "wuhan.toml").write_text(pack.replace(repealed[0] + "\n", ""), encoding="utf-8")
    for other in settings.rules_dirs[0].glob("*.toml"):
        if other.name != "wuhan.toml":
            (rules / other.name).write_text(other.read_text(encoding="utf-8"), encoding="utf-8")
    settings.rules_dirs = [rules]

    async def read(police):
        listed = await list_sites(police, category="residential_areas")
        await expect(police.ListSites(reg.ListSitesRequest(category="casino")), INVALID, "category")
        return listed

    listed = await police_call(read)
    assert [(s.site_id, s.declaration.article) for s in listed] == [("homes-1", "Wuhan 6")]
