"""Invariant 4, AUD-3: the registry's read models, dropped and replayed from the log, come back
identical to the ones the platform kept live, whether replayed in one process or in several."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from conftest import secure_channel
from e2e_kit import (
    REFUSED,
    accept,
    build,
    camera,
    expect,
    into_use,
    placement,
    register,
    review,
    site,
    system,
    use,
)
from psvis.audit import replay
from psvis.cli import audit as cli_audit
from psvis.cli import main as cli_main
from psvis.clock import RandomIds, SystemClock
from psvis.eventstore.sqlite import SqliteEventStore
from psvis.projection import ProjectionRunner
from psvis.readstore.port import canonical_digest
from psvis.readstore.sqlite import SqliteReadStore
from psvis.registry.v1 import registry_pb2 as reg
from psvis.registry.v1 import registry_pb2_grpc as reg_grpc
from psvis.server import start_platform
from psvis.settings import Settings
from psvis.sqlite_db import SqliteDatabase
from psvis_registry.projections import COLLECTIONS, PROJECTIONS


@pytest.mark.parametrize("backend", ["embedded"])
async def test_inv4_replayed_registry_read_models_equal_the_live_ones(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    platform = await start_platform(settings)
    channel = secure_channel(f"localhost:{platform.port}", settings.pki_dir, "dev-unit")
    try:
        unit = reg_grpc.RegistryServiceStub(channel)
        for n in range(6):
            cams = [camera(f"cam-{n}-{c}") for c in range(3)]
            sid = await register(unit, system(cameras=cams, construction_project=f"plaza-{n % 2}"))
            if n % 3 == 0:
                await into_use(unit, sid)
                await unit.RelocateSystem(reg.RelocateSystemRequest(system_id=sid, relocation=reg.SystemRelocated(
                    new_site=site(f"site-{n}-east", lon=114.4, address_code="420111"), relocated_on="2024-06-30",
                    reported_on="2024-06-10", placements=[placement(f"cam-{n}-{c}", lon=114.4 + c / 1000,
                    address_code=f"42011100{c}") for c in range(3)])))  # fmt: skip  # REG-2
            elif n % 3 == 1:
                await review(unit, sid)
                await build(unit, sid)
                await expect(use(unit, sid), REFUSED)  # a refusal is in the log too
                await accept(unit, sid, passed=False)
        await expect(register(unit, system(cameras=[camera(place="hotel_room")])), REFUSED)
        for step, on in (("built", "2024-01-08"), ("in_use", "2024-01-20")):  # REG-5
            reached = reg.ProjectMilestoneReached(
                project_id="plaza-0", milestone=step, reached_on=on
            )
            await unit.RecordProjectMilestone(reg.RecordProjectMilestoneRequest(milestone=reached))
    finally:
        await channel.close()
        await platform.stop(grace=0.5)

    log_db, reads_db = (
        SqliteDatabase(settings.sqlite_path),
        SqliteDatabase(settings.read_models_path),
    )
    store = SqliteEventStore(log_db, SystemClock(), RandomIds())
    live = SqliteReadStore(reads_db)
    try:
        # what the platform would fold on its next start, if it stopped a page behind
        await ProjectionRunner(
            f"{settings.namespace}.read-models", store, live, PROJECTIONS
        ).catch_up()
        live_digest = await canonical_digest(live, COLLECTIONS)
        assert len(await live.list(COLLECTIONS[0])) == 7  # and the refused one
        [(_, project)] = await live.list(COLLECTIONS[2])
        assert project["milestones"] == {"built": "2024-01-08", "in_use": "2024-01-20"}
        size = await store.log_size()
        alone = await replay(store, PROJECTIONS, COLLECTIONS, workers=1)
        assert (alone.digest, alone.position) == (live_digest, size - 1)
        await alone.db.close()
    finally:
        await store.close()
        await log_db.close()
        await reads_db.close()

    for workers in ("1", "2"):
        cli = subprocess.run(
            [sys.executable, "-m", "psvis.cli.main", "audit", "replay", "--data-dir",
             str(settings.data_dir), "--workers", workers, "--json"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        out = json.loads(cli.stdout)
        assert (out["digest"], out["position"]) == (live_digest, size - 1), workers

    monkeypatch.setattr(cli_audit, "SHOWN", 4)
    replay_cli = ["audit", "replay", "--data-dir", str(settings.data_dir)]
    for extra, listed in (([], 4), (["--all"], 7)):
        capsys.readouterr()
        assert await asyncio.to_thread(cli_main.main, [*replay_cli, *extra]) == 0
        human = capsys.readouterr().out  # the report on stdout (errors and progress on stderr)
        assert f"replayed to offset {size - 1}; digest {live_digest}" in human
        assert "registry.systems: 7" in human
        assert (
            human.count(": planned ")
            + human.count(": in_use ")
            + human.count(": rectification ")
            + human.count("nothing registered; 1 refusal(s) recorded")
            == listed
        ), human
        assert ("… and 3 more" in human) == (listed == 4), human


@pytest.mark.parametrize("backend", ["embedded"])
async def test_reg3_a_replayed_site_shows_its_category_declaration_and_withdrawal(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """REG-3: `psvis audit replay` lists a site by what its document holds (its category and
    address, its declaration, and its withdrawal with the reason), a project by its milestones."""
    platform = await start_platform(settings)
    channel = secure_channel(f"localhost:{platform.port}", settings.pki_dir, "dev-police")
    try:
        police = reg_grpc.RegistryServiceStub(channel)
        fair = site("fair-1", category="commerce_leisure_lodging")
        await police.DeclareMandatorySite(reg.DeclareMandatorySiteRequest(
            declaration=reg.MandatorySiteDeclared(site=fair, declared_on="2024-03-01")))  # fmt: skip
        await police.WithdrawMandatorySite(reg.WithdrawMandatorySiteRequest(site_id="fair-1",
            withdrawal=reg.MandatorySiteWithdrawn(withdrawn_on="2024-03-10", reason="the fair is over")))  # fmt: skip
        reached = reg.ProjectMilestoneReached(
            project_id="plaza-9", milestone="built", reached_on="2024-01-08"
        )
        await police.RecordProjectMilestone(reg.RecordProjectMilestoneRequest(milestone=reached))
    finally:
        await channel.close()
        await platform.stop(grace=0.5)
    capsys.readouterr()
    replayed = ["audit", "replay", "--data-dir", str(settings.data_dir)]
    assert await asyncio.to_thread(cli_main.main, replayed) == 0
    lines = capsys.readouterr().out.splitlines()
    (fair_line,) = [line for line in lines if line.startswith("  fair-1: ")]
    for said in ("declared_on 2024-03-01", "withdrawn_on 2024-03-10",
                 "withdrawal_reason the fair is over", "site.category commerce_leisure_lodging",
                 f"site.address {fair.address}"):  # fmt: skip
        assert said in fair_line, fair_line
    assert "  plaza-9: milestones.built 2024-01-08" in lines, lines
