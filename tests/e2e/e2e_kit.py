"""Builders and small helpers shared by the end-to-end tests (REG over gRPC with mutual TLS)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import grpc
import pytest
from psvis.registry.v1 import registry_pb2 as reg
from psvis.registry.v1 import registry_pb2_grpc as reg_grpc

Stub = reg_grpc.RegistryServiceStub
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
REFUSED = grpc.StatusCode.FAILED_PRECONDITION
ABORTED = grpc.StatusCode.ABORTED
EXISTS = grpc.StatusCode.ALREADY_EXISTS

# Somewhere in Wuhan (address codes 4201xx) and in Xi'an (6101xx).
WUHAN = (114.30, 30.60, "420102")
XIAN = (108.94, 34.34, "610102")


def new_id(prefix: str = "sys") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def point(lon: float, lat: float) -> reg.GeoPoint:
    return reg.GeoPoint(longitude=lon, latitude=lat)


def camera(camera_id: str = "cam-1", *, place: str = "street", lon: float = WUHAN[0],
           lat: float = WUHAN[1], address_code: str = WUHAN[2], **kw: Any) -> reg.Camera:  # fmt: skip
    fields: dict[str, Any] = {
        "device_type": "dome",
        "function": "overview",
        "position": "gate pole",
    }
    fields.update(kw)
    return reg.Camera(camera_id=camera_id, place=place, location=point(lon, lat),
                      address_code=address_code, **fields)  # fmt: skip


def placement(camera_id: str = "cam-1", *, lon: float = WUHAN[0], lat: float = WUHAN[1],
              address_code: str = WUHAN[2]) -> reg.CameraPlacement:  # fmt: skip
    """Where a camera stands after its system moved (REG-2)."""
    return reg.CameraPlacement(camera_id=camera_id, location=point(lon, lat),
                               address_code=address_code)  # fmt: skip


def site(site_id: str = "site-1", *, category: str = "other", lon: float = WUHAN[0],
         lat: float = WUHAN[1], address_code: str = WUHAN[2]) -> reg.Site:  # fmt: skip
    return reg.Site(site_id=site_id, category=category, address="1 Jiefang Road",
                    address_code=address_code, location=point(lon, lat))  # fmt: skip


def system(system_id: str | None = None, *, unit: str = "dev-unit", cameras: list[reg.Camera] | None = None,
           site_: reg.Site | None = None, **kw: Any) -> reg.SystemRegistered:  # fmt: skip
    fields: dict[str, Any] = {
        "name": "Gate cameras",
        "operator": "Op Co",
        "registered_on": "2024-01-02",
    }
    fields.update(kw)
    return reg.SystemRegistered(
        system_id=new_id() if system_id is None else system_id, managing_unit=unit,
        site=site_ if site_ is not None else site(),
        cameras=cameras if cameras is not None else [camera()], **fields,
    )  # fmt: skip


def xian_system(system_id: str | None = None, *, category: str = "urban_public_areas",
                places: tuple[str, ...] = ("street",), **kw: Any) -> reg.SystemRegistered:  # fmt: skip
    lon, lat, code = XIAN
    cams = [
        camera(f"cam-{i + 1}", place=p, lon=lon, lat=lat, address_code=code)
        for i, p in enumerate(places)
    ]
    return system(system_id, cameras=cams, site_=site(new_id("site"), category=category, lon=lon,
                  lat=lat, address_code=code), **kw)  # fmt: skip


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    """Await a call that must fail and return its error."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def expect(call: Any, code: grpc.StatusCode, *fragments: str) -> str:
    """Await a failing call: its status is `code` and its message names every fragment."""
    err = await rpc_error(call)
    assert err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}"
    for fragment in fragments:
        assert fragment in (err.details() or ""), f"{fragment!r} not in {err.details()!r}"
    return err.details() or ""


async def register(stub: Stub, sys_: reg.SystemRegistered | None = None, **kw: Any) -> str:
    sys_ = sys_ if sys_ is not None else system(**kw)
    result = await stub.RegisterSystem(reg.RegisterSystemRequest(system=sys_))
    assert result.version == 1 and result.stream_id == f"system-{sys_.system_id}"
    return sys_.system_id


async def version(stub: Stub, system_id: str) -> int:
    return (await stub.GetSystem(reg.GetSystemRequest(system_id=system_id))).version


async def review(
    stub: Stub, sid: str, passed: bool = True, on: str = "2024-01-05"
) -> reg.CommandResult:
    return await stub.RecordDesignReview(reg.RecordDesignReviewRequest(
        system_id=sid, review=reg.DesignReviewed(passed=passed, reviewed_on=on, reviewers=["expert"])))  # fmt: skip


async def build(stub: Stub, sid: str, on: str = "2024-01-10") -> reg.CommandResult:
    return await stub.CompleteConstruction(reg.CompleteConstructionRequest(
        system_id=sid, construction=reg.ConstructionCompleted(completed_on=on)))  # fmt: skip


async def accept(stub: Stub, sid: str, on: str = "2024-01-15", passed: bool = True,
                 expected: int = 0) -> reg.CommandResult:  # fmt: skip
    acc = reg.AcceptanceRecorded(
        passed=passed, accepted_on=on, defects=[] if passed else ["blurry"]
    )
    return await stub.RecordAcceptance(
        reg.RecordAcceptanceRequest(system_id=sid, acceptance=acc, expected_version=expected)
    )


async def use(stub: Stub, sid: str, on: str = "2024-02-01", expected: int = 0) -> reg.CommandResult:
    return await stub.PutIntoUse(reg.PutIntoUseRequest(
        system_id=sid, use=reg.SystemPutIntoUse(in_use_on=on), expected_version=expected))  # fmt: skip


async def into_use(stub: Stub, sid: str, *, accepted_on: str = "2024-01-15",
                   in_use_on: str = "2024-02-01") -> None:  # fmt: skip
    """Design review (passes), construction, acceptance, use: valid in every pack."""
    await review(stub, sid)
    await build(stub, sid)
    await accept(stub, sid, accepted_on)
    await use(stub, sid, in_use_on)


async def findings(stub: Stub, as_of: str, spec: str = "", subject: str = "") -> list[reg.Finding]:
    found = (await stub.ListFindings(reg.ListFindingsRequest(as_of=as_of, spec=spec))).findings
    return [f for f in found if not subject or f.subject == subject]


def change(camera_id: str, attribute: str, value: str, *, approved: bool = True,
           on: str = "2024-03-01") -> reg.ChangeFiled:  # fmt: skip
    return reg.ChangeFiled(camera_id=camera_id, attribute=attribute, new_value=value,
                           approval_ref="APP-7" if approved else "",
                           approved_by="district police" if approved else "", effective_on=on)  # fmt: skip


async def declare(stub: Stub, site_: reg.Site, on: str) -> reg.CommandResult:
    """The police declare a site mandatory (REG-3)."""
    return await stub.DeclareMandatorySite(reg.DeclareMandatorySiteRequest(
        declaration=reg.MandatorySiteDeclared(site=site_, declared_on=on)))  # fmt: skip


async def withdraw(stub: Stub, site_id: str, on: str, reason: str = "the event is over",
                   expected: int = 0) -> reg.CommandResult:  # fmt: skip
    """The police withdraw a declared site (REG-3)."""
    return await stub.WithdrawMandatorySite(reg.WithdrawMandatorySiteRequest(
        site_id=site_id, expected_version=expected,
        withdrawal=reg.MandatorySiteWithdrawn(withdrawn_on=on, reason=reason)))  # fmt: skip
