"""End-to-end fixtures: the whole platform in-process, called over gRPC with mutual TLS.

`platform` starts it on a free port for one test and stops it after; it runs on each backend
("distributed" is marked and needs PSVIS_KAFKA_BOOTSTRAP and PSVIS_MONGO_URL). Tests pick the
city with the `city` fixture (Wuhan) or `@pytest.mark.parametrize("city", ["xian"])`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from psvis.clock import Clock
from psvis.grpc_server import channel_credentials
from psvis.registry.v1 import registry_pb2_grpc as reg_grpc
from psvis.server import RunningPlatform, start_platform
from psvis.settings import Settings

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules"


@pytest.fixture
def city() -> str:
    return "wuhan"


@pytest.fixture(params=["embedded", pytest.param("distributed", marks=pytest.mark.distributed)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(tmp_path: Path, city: str, backend: str) -> Settings:
    s = Settings(
        data_dir=tmp_path, city=city, listen="127.0.0.1:0", rules_dirs=[RULES], backend=backend
    )
    if backend == "distributed":
        kafka, mongo = os.environ.get("PSVIS_KAFKA_BOOTSTRAP"), os.environ.get("PSVIS_MONGO_URL")
        if not kafka or not mongo:
            pytest.fail(
                "the distributed backend needs PSVIS_KAFKA_BOOTSTRAP and PSVIS_MONGO_URL (scripts/services.sh start)"
            )
        s.kafka_bootstrap, s.mongo_url = kafka, mongo
        s.namespace = f"e2e-{uuid.uuid4().hex[:12]}"
    return s


@pytest.fixture
def clock() -> Clock | None:
    """The platform's clock: the system's, unless a test parametrizes `clock` with its own."""
    return None


@pytest_asyncio.fixture
async def platform(settings: Settings, clock: Clock | None) -> AsyncIterator[RunningPlatform]:
    running = await start_platform(settings, clock=clock)
    try:
        yield running
    finally:
        await running.stop(grace=0.5)


@dataclass
class Clients:
    """One RegistryService stub per development identity, plus what is needed to make more."""

    unit: reg_grpc.RegistryServiceStub
    unit2: reg_grpc.RegistryServiceStub
    police: reg_grpc.RegistryServiceStub
    auditor: reg_grpc.RegistryServiceStub
    target: str
    pki: Path


def secure_channel(target: str, pki: Path, name: str) -> grpc.aio.Channel:
    creds = channel_credentials(pki / "ca.crt", pki / f"{name}.crt", pki / f"{name}.key")
    return grpc.aio.secure_channel(target, creds)


@pytest_asyncio.fixture
async def clients(platform: RunningPlatform, settings: Settings) -> AsyncIterator[Clients]:
    target, pki = f"localhost:{platform.port}", settings.pki_dir
    names = ["dev-unit", "dev-unit-2", "dev-police", "dev-auditor"]
    channels = [secure_channel(target, pki, n) for n in names]
    stubs = [reg_grpc.RegistryServiceStub(ch) for ch in channels]
    try:
        yield Clients(*stubs, target=target, pki=pki)
    finally:
        for ch in channels:
            await ch.close()
