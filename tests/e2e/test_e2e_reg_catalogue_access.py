"""REG-2 catalogue, REG-4 forbidden places, REG-10 classification and confidentiality, and who
may call at all (mutual TLS, roles)."""

from __future__ import annotations

import grpc
import pytest
from e2e_kit import (
    DENIED,
    INVALID,
    NOT_FOUND,
    REFUSED,
    camera,
    expect,
    placement,
    register,
    site,
    system,
    version,
    xian_system,
)
from psvis.pki import ensure_dev_pki, issue_client
from psvis.registry.v1 import registry_pb2 as reg
from psvis.registry.v1 import registry_pb2_grpc as reg_grpc


async def list_all(stub, **kw) -> list[reg.SystemSummary]:
    out, token = [], ""
    while True:
        page = await stub.ListSystems(reg.ListSystemsRequest(page_token=token, **kw))
        out += page.systems
        if not (token := page.next_page_token):
            return out


# --- REG-2 -------------------------------------------------------------------------------------


async def catalogue(clients) -> dict[str, str]:
    """Five systems of dev-unit and one of dev-unit-2, in three address-code areas."""
    ids = {}
    for i, (code, lon) in enumerate([("420102", 114.30), ("420102", 114.31), ("420102001", 114.32),
                                     ("420103", 114.40), ("420202", 114.50)]):  # fmt: skip
        cams = [
            camera(f"c{i}-{j}", lon=lon + j / 1000, lat=30.6, address_code=code) for j in range(2)
        ]
        ids[f"s{i}"] = await register(clients.unit, system(f"s{i}", cameras=cams, site_=site(
            f"site-{i}", address_code=code, lon=lon), connects_to_sharing_platform=i % 2 == 0))  # fmt: skip
    ids["other"] = await register(clients.unit2, system("other", unit="dev-unit-2"))
    return ids


async def test_reg2_list_systems_by_address_code_prefix_with_pagination(clients):
    await catalogue(clients)
    everything = await list_all(clients.police, page_size=2)
    assert sorted(s.system_id for s in everything) == ["other", "s0", "s1", "s2", "s3", "s4"]
    assert {s.camera_count for s in everything if s.system_id != "other"} == {2}
    in_4201 = await list_all(clients.police, address_code_prefix="4201", page_size=1)
    assert sorted(s.system_id for s in in_4201) == ["other", "s0", "s1", "s2", "s3"]
    first = await clients.police.ListSystems(
        reg.ListSystemsRequest(address_code_prefix="420102", page_size=2)
    )
    assert len(first.systems) == 2 and first.next_page_token
    rest = await clients.police.ListSystems(reg.ListSystemsRequest(
        address_code_prefix="420102", page_size=2, page_token=first.next_page_token))  # fmt: skip
    ids = [s.system_id for s in [*first.systems, *rest.systems]]
    assert len(ids) == len(set(ids)) and "s2" in ids and not rest.next_page_token
    assert len(await list_all(clients.auditor, managing_unit="dev-unit-2")) == 1


async def test_reg2_units_list_only_their_own_systems(clients):
    await catalogue(clients)
    mine = await list_all(clients.unit2, managing_unit="dev-unit")  # the filter cannot widen it
    assert [s.system_id for s in mine] == ["other"]
    assert len(await list_all(clients.unit)) == 5
    assert await list_all(clients.unit, state="in_use") == []


async def test_reg2_search_cameras_by_prefix_and_bounding_box(clients):
    await catalogue(clients)
    hits = (
        await clients.police.SearchCameras(reg.SearchCamerasRequest(address_code_prefix="420102"))
    ).cameras
    assert sorted(h.camera.camera_id for h in hits) == [
        "c0-0",
        "c0-1",
        "c1-0",
        "c1-1",
        "c2-0",
        "c2-1",
        "cam-1",
    ]
    box = reg.SearchCamerasRequest(
        min_longitude=114.305, min_latitude=30.5, max_longitude=114.405, max_latitude=30.7
    )
    hits = (await clients.police.SearchCameras(box)).cameras
    assert sorted((h.system_id, h.camera.camera_id) for h in hits) == [
        ("s1", "c1-0"),
        ("s1", "c1-1"),
        ("s2", "c2-0"),
        ("s2", "c2-1"),
        ("s3", "c3-0"),
        ("s3", "c3-1"),
    ]
    box.address_code_prefix, box.page_size = "420102", 3
    page = await clients.police.SearchCameras(box)
    nxt = await clients.police.SearchCameras(reg.SearchCamerasRequest(
        address_code_prefix="420102", min_longitude=114.305, min_latitude=30.5, max_longitude=114.405,
        max_latitude=30.7, page_size=3, page_token=page.next_page_token))  # fmt: skip
    assert len(page.cameras) == 3 and len(nxt.cameras) == 1 and not nxt.next_page_token
    assert hits[0].camera.location.latitude == 30.6 and hits[0].camera.device_type == "dome"


async def test_reg2_catalogue_queries_reject_bad_input_and_units(clients):
    await catalogue(clients)
    await expect(clients.unit.SearchCameras(reg.SearchCamerasRequest()), DENIED)
    bad_boxes = [(114.5, 30.0, 114.0, 31.0), (114.0, 31.0, 115.0, 30.0), (-200.0, 30.0, 115.0, 31.0),
                 (114.0, 30.0, 115.0, 95.0)]  # fmt: skip
    for a, b, c, d in bad_boxes:
        req = reg.SearchCamerasRequest(
            min_longitude=a, min_latitude=b, max_longitude=c, max_latitude=d
        )
        await expect(clients.police.SearchCameras(req), INVALID)
    for token in ("abc", "-1", "999"):
        await expect(
            clients.police.ListSystems(reg.ListSystemsRequest(page_token=token)),
            INVALID,
            "page_token",
        )
    for prefix in ("4201 02", "42/01", "4" * 33):  # not an address code's beginning
        await expect(
            clients.police.ListSystems(reg.ListSystemsRequest(address_code_prefix=prefix)),
            INVALID,
            "address_code_prefix",
        )
        await expect(
            clients.police.SearchCameras(reg.SearchCamerasRequest(address_code_prefix=prefix)),
            INVALID,
            "address_code_prefix",
        )


async def test_reg2_view_carries_catalogue_fields(clients):
    await catalogue(clients)
    view = await clients.police.GetSystem(reg.GetSystemRequest(system_id="s2"))
    assert (view.managing_unit, view.operator, view.connects_to_sharing_platform) == (
        "dev-unit",
        "Op Co",
        True,
    )
    assert view.site.address_code == "420102001" and len(view.cameras) == 2
    assert view.cameras[1].location.longitude == pytest.approx(114.321)


async def move(stub, sid: str, placements: list[reg.CameraPlacement], **kw) -> reg.CommandResult:
    """A relocation to the east of Wuhan (420111), filed in time (Wuhan 10)."""
    fields = {
        "new_site": site("site-east", lon=114.40, lat=30.50, address_code="420111"),
        "relocated_on": "2024-06-30",
        "reported_on": "2024-06-10",
        "placements": placements,
    }
    fields.update(kw)  # fmt: skip
    return await stub.RelocateSystem(
        reg.RelocateSystemRequest(system_id=sid, relocation=reg.SystemRelocated(**fields))
    )


async def test_reg2_a_relocated_systems_cameras_are_found_where_they_now_stand(clients):
    """REG-2, basic data kept current (Guangzhou 16 para 2) in one coordinate system (Wuhan 13):
    after the move, the catalogue shows each camera at the location and address code the
    relocation gave it, and no longer at its old place."""
    sid = await register(clients.unit, cameras=[camera("c1"), camera("c2", lon=114.301)])
    await move(clients.unit, sid, [placement("c1", lon=114.41, lat=30.51, address_code="420111001"),
                                   placement("c2", lon=114.42, lat=30.52, address_code="420111002")])  # fmt: skip
    hits = (await clients.police.SearchCameras(reg.SearchCamerasRequest(
        address_code_prefix="420111", min_longitude=114.405, min_latitude=30.5,
        max_longitude=114.425, max_latitude=30.53))).cameras  # fmt: skip
    assert sorted((h.system_id, h.camera.camera_id, h.camera.location.longitude,
                   h.camera.location.latitude, h.camera.address_code) for h in hits) == [
        (sid, "c1", 114.41, 30.51, "420111001"), (sid, "c2", 114.42, 30.52, "420111002"),
    ]  # fmt: skip
    assert (hits[0].camera.place, hits[0].camera.device_type) == ("street", "dome")  # kept
    old_place = (await clients.police.SearchCameras(reg.SearchCamerasRequest(
        address_code_prefix="420102", min_longitude=114.29, min_latitude=30.59,
        max_longitude=114.31, max_latitude=30.61))).cameras  # fmt: skip
    assert [h for h in old_place if h.system_id == sid] == []
    view = await clients.unit.GetSystem(reg.GetSystemRequest(system_id=sid))
    assert (view.site.site_id, [c.address_code for c in view.cameras]) == (
        "site-east",
        ["420111001", "420111002"],
    )


async def test_reg2_a_relocation_that_does_not_place_every_camera_once_is_invalid(clients):
    """REG-2: a relocation says where each of the system's cameras now stands, in CGCS2000
    (Wuhan 13); one that leaves a camera out, names one twice or one the system lacks, or
    places one badly is INVALID_ARGUMENT and records nothing."""
    sid = await register(clients.unit, cameras=[camera("c1"), camera("c2")])
    c1, c2 = placement("c1", lon=114.41, lat=30.51), placement("c2", lon=114.42, lat=30.52)
    nowhere = reg.CameraPlacement(camera_id="c2", address_code="420111")
    wgs84 = placement("c2", lon=114.42, lat=30.52)
    wgs84.location.crs = "WGS84"
    for placements, fragments in [
        ([c1], ("relocation.placements", "c2")),
        ([], ("relocation.placements", "c1", "c2")),
        ([c1, c2, placement("c1", lon=114.43)], ("relocation.placements", "c1", "once")),
        ([c1, c2, placement("c9")], ("c9",)),
        ([c1, placement("c2", lat=100.0)], ("relocation.placements[1].location", "out of range")),
        ([c1, nowhere], ("relocation.placements[1].location", "required")),
        ([c1, wgs84], ("relocation.placements[1].location.crs", "CGCS2000")),
        ([c1, placement("c2", address_code="42-01")], ("relocation.placements[1].address_code",)),
    ]:
        await expect(move(clients.unit, sid, placements), INVALID, *fragments)
    assert await version(clients.unit, sid) == 1
    view = await clients.unit.GetSystem(reg.GetSystemRequest(system_id=sid))
    assert view.site.site_id == "site-1" and {c.address_code for c in view.cameras} == {"420102"}


# --- REG-4 -------------------------------------------------------------------------------------

WUHAN_18 = [("hotel_room", "Wuhan 18(1)"), ("dormitory", "Wuhan 18(2)"), ("apartment_room", "Wuhan 18(2)"),
            ("toilet", "Wuhan 18(3)"), ("nursing_room", "Wuhan 18(3)"),
            ("financial_client_info_area", "Wuhan 18(4)"), ("report_box", "Wuhan 18(5)"),
            ("other_private_place", "Wuhan 18(6)")]  # fmt: skip


@pytest.mark.parametrize(("place", "article"), WUHAN_18)
async def test_reg4_camera_in_private_place_is_refused_with_article(clients, place, article):
    bad = system("s-priv", cameras=[camera("cam-ok"), camera("cam-bad", place=place)])
    await expect(clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=bad)), REFUSED,
                 article, "cam-bad", "REG-4")  # fmt: skip
    await expect(clients.police.GetSystem(reg.GetSystemRequest(system_id="s-priv")), NOT_FOUND)
    assert await list_all(clients.police) == []
    result = await clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=system("s-priv")))
    assert result.version == 2  # the refusal was recorded on the stream first


@pytest.mark.parametrize("city", ["xian"])
@pytest.mark.parametrize(("place", "article"), [("hotel_room", "Xi'an 11(1)"), ("dormitory", "Xi'an 11(2)"),
                                                ("ballot_box", "Xi'an 11(5)")])  # fmt: skip
async def test_reg4_xian_camera_in_private_place_is_refused_with_article(clients, place, article):
    bad = xian_system("x-priv", places=("street", place))
    await expect(
        clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=bad)), REFUSED, article
    )
    assert (
        await clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=xian_system("x-priv")))
    ).version == 2


@pytest.mark.parametrize("city", ["xian"])
async def test_reg4_xian_does_not_borrow_wuhans_list(clients):
    # Xi'an 11 names no report boxes and no apartment rooms (Wuhan 18(2), 18(5) do).
    await register(clients.unit, xian_system(places=("report_box", "apartment_room")))


# --- REG-10 ------------------------------------------------------------------------------------


async def classify(stub, sid: str, **flags):
    c = reg.ClassificationSet(classification=reg.Classification(**flags), set_on="2024-03-01")
    return await stub.SetClassification(
        reg.SetClassificationRequest(system_id=sid, classification=c)
    )


@pytest.mark.parametrize("city", ["xian"])
async def test_reg10_xian_state_secret_system_on_internet_is_refused(clients):
    sid = await register(clients.unit, xian_system())
    await expect(classify(clients.unit, sid, state_secret_area=True, internet_connected=True),
                 REFUSED, "Xi'an 20")  # fmt: skip
    await classify(clients.unit, sid, state_secret_area=True, security_level=3)
    view = await clients.unit.GetSystem(reg.GetSystemRequest(system_id=sid))
    assert view.classification.state_secret_area and not view.classification.internet_connected
    assert view.classification.security_level == 3 and view.version == 3


async def test_reg10_wuhan_records_flags_and_is_silent_on_state_secret_networks(clients):
    sid = await register(clients.unit)
    await classify(
        clients.unit,
        sid,
        anti_terror_key_target=True,
        state_secret_area=True,
        internet_connected=True,
    )
    view = await clients.unit.GetSystem(reg.GetSystemRequest(system_id=sid))
    assert view.classification.anti_terror_key_target and view.classification.internet_connected
    await expect(classify(clients.unit, sid, security_level=6), INVALID, "security_level")


async def test_reg10_basic_information_readable_by_its_unit_and_police_only(clients):
    sid = await register(clients.unit)
    await expect(clients.unit2.GetSystem(reg.GetSystemRequest(system_id=sid)), DENIED, sid)
    await expect(clients.auditor.GetSystem(reg.GetSystemRequest(system_id=sid)), DENIED)
    assert (
        (await clients.police.GetSystem(reg.GetSystemRequest(system_id=sid)))
        .cameras[0]
        .address_code
    )
    assert (await clients.unit.GetSystem(reg.GetSystemRequest(system_id=sid))).system_id == sid


async def test_reg10_other_unit_cannot_command_or_register_for_another_unit(clients):
    sid = await register(clients.unit)
    await expect(classify(clients.unit2, sid, security_level=1), DENIED, "dev-unit-2")
    await expect(
        clients.unit2.RegisterSystem(reg.RegisterSystemRequest(system=system(unit="dev-unit"))),
        DENIED,
    )
    assert (await clients.police.GetSystem(reg.GetSystemRequest(system_id=sid))).version == 1


# --- who may call ------------------------------------------------------------------------------


async def test_auditor_cannot_register_or_command(clients):
    await expect(clients.auditor.RegisterSystem(reg.RegisterSystemRequest(system=system(unit="dev-auditor"))),
                 DENIED, "auditor")  # fmt: skip
    sid = await register(clients.unit)
    await expect(classify(clients.auditor, sid, security_level=1), DENIED)
    assert await list_all(clients.auditor) != []


async def no_cert_call(target: str, creds: grpc.ChannelCredentials) -> grpc.StatusCode:
    async with grpc.aio.secure_channel(target, creds) as channel:
        stub = reg_grpc.RegistryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListSystems(reg.ListSystemsRequest(), timeout=10)
        return info.value.code()


async def test_client_without_certificate_cannot_call(clients):
    ca = (clients.pki / "ca.crt").read_bytes()
    code = await no_cert_call(clients.target, grpc.ssl_channel_credentials(root_certificates=ca))
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)


async def test_client_with_certificate_of_another_ca_cannot_call(clients, tmp_path):
    foreign = ensure_dev_pki(tmp_path / "foreign")
    creds = grpc.ssl_channel_credentials(root_certificates=(clients.pki / "ca.crt").read_bytes(),
                                         private_key=(foreign / "dev-police.key").read_bytes(),
                                         certificate_chain=(foreign / "dev-police.crt").read_bytes())  # fmt: skip
    assert await no_cert_call(clients.target, creds) in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_certificate_with_unknown_role_is_denied_everything(clients):
    who = issue_client(clients.pki, "dev-janitor", "janitor")
    creds = grpc.ssl_channel_credentials((clients.pki / "ca.crt").read_bytes(), who.key.read_bytes(),
                                         who.cert.read_bytes())  # fmt: skip
    async with grpc.aio.secure_channel(clients.target, creds) as channel:
        stub = reg_grpc.RegistryServiceStub(channel)
        await expect(stub.ListSystems(reg.ListSystemsRequest()), DENIED, "janitor")
        await expect(
            stub.RegisterSystem(reg.RegisterSystemRequest(system=system(unit="dev-janitor"))),
            DENIED,
        )
