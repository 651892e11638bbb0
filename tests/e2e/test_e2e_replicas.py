"""Two replicas of the platform on one Kafka log and one MongoDB (distributed): commands through
either one land in one log, both read models follow it, and the log verifies with one chain of
signed checkpoints although both replicas' notaries sign it."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from conftest import secure_channel
from e2e_kit import build, register
from psvis.audit import verify_store
from psvis.registry.v1 import registry_pb2 as reg
from psvis.registry.v1 import registry_pb2_grpc as reg_grpc
from psvis.server import start_platform
from psvis.settings import Settings
from psvis.signing import Signer
from psvis.stores import open_stores


@pytest.mark.parametrize("backend", [pytest.param("distributed", marks=pytest.mark.distributed)])
async def test_two_replicas_share_one_log_and_keep_one_chain_of_checkpoints(
    settings: Settings,
) -> None:
    settings.notary_every, settings.notary_interval = 4, 0.05  # checkpoints race often
    replicas = [await start_platform(settings)]
    # the second signs at other sizes, as a replica does while a new setting rolls out
    replicas.append(await start_platform(dataclasses.replace(settings, notary_every=3)))
    channels = [secure_channel(f"localhost:{p.port}", settings.pki_dir, "dev-unit")
                for p in replicas]  # fmt: skip
    units = [reg_grpc.RegistryServiceStub(c) for c in channels]
    try:
        sids = await asyncio.gather(*(register(units[i % 2]) for i in range(12)))
        # each system built through the replica that did not register it
        await asyncio.gather(*(build(units[(i + 1) % 2], sid) for i, sid in enumerate(sids)))
        for unit in units:  # both read models reach every system's second version
            for sid in sids:
                for _ in range(100):
                    view = await unit.GetSystem(reg.GetSystemRequest(system_id=sid))
                    if view.version == 2:
                        break
                    await asyncio.sleep(0.05)
                assert view.version == 2, (sid, view.version)
    finally:
        for channel in channels:
            await channel.close()
        for platform in replicas:
            await platform.stop(grace=0.5)

    stores = await open_stores(settings)
    try:
        assert await stores.events.log_size() == 24
        records = await stores.checkpoints.all(stores.events.log_id)
        assert [r.previous_size for r in records] == [0, *(r.tree_size for r in records[:-1])]
        signer = Signer.load_or_create(settings.notary_key)
        report = await verify_store(stores.events, stores.checkpoints, [signer.public])
        assert report.ok, report.failure
        assert report.events_checked == 24 and report.unnotarised_tail == 0
    finally:
        await stores.close()
