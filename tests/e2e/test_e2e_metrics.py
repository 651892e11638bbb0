"""Metrics (ARCHITECTURE, operations): appends, refusals, projection delay and lag, on both
backends, read back through the process's reader of every instrument."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from e2e_kit import camera, expect, register, system
from psvis import metrics
from psvis.registry.v1 import registry_pb2 as reg
from psvis.server import RunningPlatform
from psvis.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.metrics_interval = 0.05  # the lag is looked at often enough for a test
    return settings


value = metrics.measured


async def test_appends_refusals_delay_and_lag_are_measured(
    platform: RunningPlatform, clients: Any, settings: Settings
) -> None:
    registered = {"psvis.event_type": "psvis.registry.v1.SystemRegistered"}
    refused = {"psvis.event_type": "psvis.registry.v1.CommandRefused"}
    cited = {"psvis.rule": "placement.forbidden", "psvis.article": "Wuhan 18(1)"}
    runner = {"psvis.projection": platform.projections.name}
    before = {
        "registered": value("psvis.events.appended", **registered) or 0,
        "refused": value("psvis.events.appended", **refused) or 0,
        "cited": value("psvis.refusals", **cited) or 0,
        "delays": (value("psvis.projection.delay", **runner) or (0, 0.0))[0],
    }

    await register(clients.unit)
    await register(clients.unit)
    hotel = system(cameras=[camera(place="hotel_room")])
    await expect(
        clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=hotel)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "Wuhan 18(1)",
    )

    assert value("psvis.events.appended", **registered) == before["registered"] + 2
    assert value("psvis.events.appended", **refused) == before["refused"] + 1
    assert value("psvis.refusals", **cited) == before["cited"] + 1

    size = await platform.stores.events.log_size()
    assert await platform.projections.wait_for(size - 1)
    delays, seconds = value("psvis.projection.delay", **runner)
    assert delays > before["delays"] and seconds >= 0
    lag = None
    for _ in range(200):  # looked at every 0.05 s
        lag = value("psvis.projection.lag", **runner)
        if lag == 0:
            break
        await asyncio.sleep(0.05)
    assert lag == 0
