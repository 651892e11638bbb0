"""A generic gRPC client (grpcurl) against a running platform: it knows none of our .proto
files and learns the API from server reflection, as a partner agency's tooling would."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from e2e_kit import system
from google.protobuf.json_format import MessageToDict
from psvis.server import RunningPlatform
from psvis.settings import Settings

REPO = Path(__file__).resolve().parents[2]
REGISTRY = "psvis.registry.v1.RegistryService"


@pytest.fixture(scope="session")
def grpcurl() -> str:
    """The pinned grpcurl, built into the cache by the project's script on first use."""
    built = subprocess.run(
        [str(REPO / "scripts" / "install-grpcurl.sh")], capture_output=True, text=True, timeout=900
    )
    assert built.returncode == 0, f"scripts/install-grpcurl.sh failed:\n{built.stderr}"
    return built.stdout.strip()


async def call(grpcurl: str, platform: RunningPlatform, settings: Settings, *args: str,
               identity: str = "dev-unit", data: dict | None = None,
               options: tuple[str, ...] = ()) -> tuple[int, str, str]:  # fmt: skip
    """grpcurl [TLS] [-d DATA] [OPTIONS] ADDRESS ARGS...: (exit status, stdout, stderr)."""
    pki = settings.pki_dir
    tls = ["-cacert", str(pki / "ca.crt"), "-cert", str(pki / f"{identity}.crt"),
           "-key", str(pki / f"{identity}.key")]  # fmt: skip
    body = [] if data is None else ["-d", json.dumps(data)]
    proc = await asyncio.create_subprocess_exec(
        grpcurl, *tls, *body, *options, f"localhost:{platform.port}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode()


async def test_reflection_lists_and_describes_the_api(grpcurl, platform, settings):
    status, out, err = await call(grpcurl, platform, settings, "list")
    assert status == 0, err
    services = set(out.split())
    assert {REGISTRY, "grpc.health.v1.Health"} <= services, services
    status, out, err = await call(grpcurl, platform, settings, "describe", REGISTRY)
    assert status == 0, err
    assert "rpc RegisterSystem ( .psvis.registry.v1.RegisterSystemRequest )" in out, out
    status, out, err = await call(
        grpcurl, platform, settings, "describe", "psvis.registry.v1.SystemRegistered"
    )
    assert status == 0 and "managing_unit" in out, err


async def test_a_system_is_filed_read_and_refused_through_grpcurl(grpcurl, platform, settings):
    """REG-1, REG-3 and REG-4 through a client built from reflection alone."""
    filed = MessageToDict(system("gate-9"), preserving_proto_field_name=True)
    status, out, err = await call(grpcurl, platform, settings, f"{REGISTRY}/RegisterSystem",
                                  data={"system": filed})  # fmt: skip
    assert status == 0, err
    assert json.loads(out)["version"] == "1"  # uint64 in protobuf's JSON is a string
    status, out, err = await call(grpcurl, platform, settings, f"{REGISTRY}/GetSystem",
                                  data={"system_id": "gate-9"})  # fmt: skip
    assert status == 0, err
    view = json.loads(out)  # by .proto names: reflection's descriptors carry no json_name
    assert view["system_id"] == "gate-9" and view["cameras"][0]["camera_id"] == "cam-1", view

    hotel = MessageToDict(system("gate-10"), preserving_proto_field_name=True)
    hotel["cameras"][0]["place"] = "hotel_room"
    status, out, err = await call(grpcurl, platform, settings, f"{REGISTRY}/RegisterSystem",
                                  data={"system": hotel})  # fmt: skip
    assert status != 0 and "Code: FailedPrecondition" in err and "Wuhan 18(1)" in err, err
    status, _, err = await call(grpcurl, platform, settings, f"{REGISTRY}/GetSystem",
                                data={"system_id": "gate-10"})  # fmt: skip
    assert status != 0 and "Code: NotFound" in err, err  # the refusal filed nothing


async def test_a_client_without_a_certificate_of_the_platforms_ca_is_turned_away(
    grpcurl, platform, settings, tmp_path
):
    from psvis.pki import ensure_dev_pki

    stranger = tmp_path / "other-pki"
    ensure_dev_pki(stranger)  # a CA of its own, which the platform does not trust
    for name in ("dev-unit.crt", "dev-unit.key"):
        (settings.pki_dir / f"stranger-{name}").write_bytes((stranger / name).read_bytes())
    status, out, err = await call(
        grpcurl, platform, settings, "list", options=("-connect-timeout", "3")
    )
    assert status == 0 and REGISTRY in out, err  # the same call with the platform's own certificate
    status, out, err = await call(grpcurl, platform, settings, "list", identity="stranger-dev-unit",
                                  options=("-connect-timeout", "3"))  # fmt: skip
    assert status != 0 and "Failed to dial" in err and out == "", (out, err)
