"""The embedded platform keeps its data across restarts and rebuilds lost read models from the log."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from conftest import secure_channel
from e2e_kit import build, register, review
from psvis.projection import FOLDS
from psvis.readstore.sqlite import SqliteReadStore
from psvis.registry.v1 import registry_pb2 as reg
from psvis.registry.v1 import registry_pb2_grpc as reg_grpc
from psvis.server import start_platform
from psvis.settings import Settings
from psvis.sqlite_db import SqliteDatabase
from psvis_registry.projections import PROJECTIONS, SYSTEMS


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[reg_grpc.RegistryServiceStub]:
    platform = await start_platform(settings)
    channel = secure_channel(f"localhost:{platform.port}", settings.pki_dir, "dev-unit")
    try:
        yield reg_grpc.RegistryServiceStub(channel)
    finally:
        await channel.close()
        await platform.stop(grace=0.5)


@pytest.mark.parametrize("backend", ["embedded"])
async def test_data_survives_a_restart_and_lost_read_models_are_rebuilt(settings: Settings) -> None:
    async with running(settings) as unit:
        sid = await register(unit)
        await review(unit, sid)
        before = await unit.GetSystem(reg.GetSystemRequest(system_id=sid))
        listed = await unit.ListSystems(reg.ListSystemsRequest())
    assert before.version == 2 and before.state

    async with running(settings) as unit:
        assert await unit.GetSystem(reg.GetSystemRequest(system_id=sid)) == before
        assert (await build(unit, sid)).version == 3  # the stream goes on where it was
        after = await unit.GetSystem(reg.GetSystemRequest(system_id=sid))
    assert after.version == 3

    read_models = list(settings.data_dir.glob(settings.read_models_path.name + "*"))
    assert settings.read_models_path in read_models
    for path in read_models:
        path.unlink()  # the read models, with their WAL: only a replay can bring them back
    async with running(settings) as unit:
        assert await unit.GetSystem(reg.GetSystemRequest(system_id=sid)) == after
        assert len((await unit.ListSystems(reg.ListSystemsRequest())).systems) == len(
            listed.systems
        )


@pytest.mark.parametrize("backend", ["embedded"])
async def test_read_models_ahead_of_a_restored_log_are_rebuilt_from_it(
    settings: Settings, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log is restored from a backup taken at v1; the read models had seen v3. They are
    rebuilt from the log, and the stream goes on from v1 as they show it."""
    log_files = [
        settings.sqlite_path.parent / (settings.sqlite_path.name + x) for x in ("", "-wal", "-shm")
    ]
    async with running(settings) as unit:
        sid = await register(unit)
    backup = tmp_path / "backup"
    backup.mkdir()
    for path in log_files:
        if path.exists():
            shutil.copy2(path, backup / path.name)
    async with running(settings) as unit:
        await review(unit, sid)
        await build(unit, sid)
    for path in log_files:
        path.unlink(missing_ok=True)
        if (backup / path.name).exists():
            shutil.copy2(backup / path.name, path)
    async with running(settings) as unit:
        view = await unit.GetSystem(reg.GetSystemRequest(system_id=sid))
        assert (view.version, view.state) == (1, "planned")
        assert (await review(unit, sid)).version == 2
        view = await unit.GetSystem(reg.GetSystemRequest(system_id=sid))
        assert (view.version, view.state) == (2, "design_reviewed")
    assert "rebuilding them from the log" in caplog.text


@pytest.mark.parametrize("backend", ["embedded"])
async def test_a_platform_that_fails_to_start_leaves_its_data_folder_usable(
    settings: Settings,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings.listen = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(Exception):  # noqa: B017  (whatever grpc raises for a taken port)
            await start_platform(settings)
    settings.listen = "127.0.0.1:0"
    async with running(settings) as unit:  # the leader lock and the stores were released
        await register(unit)


@pytest.mark.parametrize("backend", ["embedded"])
async def test_a_second_platform_on_a_busy_port_does_not_start(
    settings: Settings, tmp_path
) -> None:
    """grpc would share the port by default, and the two would take turns answering."""
    first = await start_platform(settings)
    try:
        other = Settings(data_dir=tmp_path / "other", city=settings.city, rules_dirs=settings.rules_dirs,
                         backend="embedded", listen=f"127.0.0.1:{first.port}")  # fmt: skip
        with pytest.raises(RuntimeError, match="bind"):
            await start_platform(other)
    finally:
        await first.stop(grace=0.5)


@pytest.mark.parametrize("backend", ["embedded"])
async def test_read_models_of_an_older_fold_are_rebuilt_at_start(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """An upgrade changed how systems fold (their projection's version): the documents the
    older fold wrote are rebuilt from the log at the next start; a start with the same folds
    keeps them."""
    async with running(settings) as unit:
        sid = await register(unit)
        await review(unit, sid)
        view = await unit.GetSystem(reg.GetSystemRequest(system_id=sid))
    name = f"{settings.namespace}.read-models"
    (systems_fold,) = [p for p in PROJECTIONS if p.collection == SYSTEMS]

    async def mark(older_fold: bool) -> None:
        """A mark in the system's document, as if an older fold had written it."""
        db = SqliteDatabase(settings.read_models_path)
        reads = SqliteReadStore(db)
        try:
            doc, version = await reads.get(SYSTEMS, sid) or ({}, 0)
            await reads.put(SYSTEMS, sid, {**doc, "mark": "older"}, version, version)
            folds, at = await reads.get(FOLDS, name) or ({}, 0)
            assert folds == {"folds": sorted(p.signature for p in PROJECTIONS)}
            if older_fold:
                current = f"registry.systems v{systems_fold.version}"
                older = [f.replace(current, "registry.systems v1") for f in folds["folds"]]
                assert await reads.put(FOLDS, name, {"folds": older}, at + 1, at)
        finally:
            await db.close()

    async def marked() -> bool:
        db = SqliteDatabase(settings.read_models_path)
        try:
            doc, _ = await SqliteReadStore(db).get(SYSTEMS, sid) or ({}, 0)
            return "mark" in doc
        finally:
            await db.close()

    await mark(older_fold=False)
    async with running(settings):
        pass
    assert await marked()  # the same folds: kept as they are
    assert "rebuilding them from the log" not in caplog.text
    await mark(older_fold=True)
    async with running(settings) as unit:
        assert await unit.GetSystem(reg.GetSystemRequest(system_id=sid)) == view
    assert not await marked()
    assert "registry.systems v1" in caplog.text and "rebuilding them from the log" in caplog.text


@pytest.mark.parametrize("backend", ["embedded"])
async def test_a_start_that_fails_at_the_last_step_leaves_nothing_open(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server was listening when the start failed: it stops, its background work ends, the
    data folder is let go; the next start works."""
    import psvis.server as server_module

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.listen = f"127.0.0.1:{port}"

    async def broken(*args: object) -> None:
        raise RuntimeError("the health service broke")

    monkeypatch.setattr(server_module, "mark_serving", broken)
    with pytest.raises(RuntimeError, match="the health service broke"):
        await start_platform(settings)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    monkeypatch.undo()
    async with running(settings) as unit:
        await register(unit)


@pytest.mark.parametrize("backend", ["embedded"])
async def test_a_signal_while_psvis_serve_starts_gives_the_start_up_cleanly(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (Kubernetes stopping a pod) while the platform is still starting: serve returns
    at once, and the start it gave up leaves the port closed and the data folder free."""
    import psvis.server as server_module

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.listen, settings.metrics_listen = f"127.0.0.1:{port}", ""
    starting = asyncio.Event()

    async def slow(*args: object) -> None:
        starting.set()
        await asyncio.sleep(60)  # the last step of a start that takes long

    monkeypatch.setattr(server_module, "mark_serving", slow)
    serving = asyncio.create_task(server_module.serve(settings))
    await asyncio.wait_for(starting.wait(), 30)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, 10)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    monkeypatch.undo()
    async with running(settings) as unit:
        await register(unit)
