"""Concurrent commands through gRPC: optimistic concurrency on one system's stream, no lost
updates, no gaps and no duplicate versions."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
from e2e_kit import ABORTED, EXISTS, OK, REFUSED, accept, build, change, register, system, use
from psvis.registry.v1 import registry_pb2 as reg

N = 50


async def outcome(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return OK


async def get(stub, sid: str) -> reg.SystemView:
    return await stub.GetSystem(reg.GetSystemRequest(system_id=sid))


def file_change(stub, sid: str, value: str, expected: int):
    ch = change("cam-1", "orientation", value)
    return stub.FileChange(
        reg.FileChangeRequest(system_id=sid, change=ch, expected_version=expected)
    )


async def test_concurrent_changes_pinned_to_one_version_exactly_one_wins(clients):
    sid = await register(clients.unit)
    codes = await asyncio.gather(
        *(outcome(file_change(clients.unit, sid, str(i), 1)) for i in range(N))
    )
    tally = Counter(codes)
    assert tally == {OK: 1, ABORTED: N - 1}, tally
    view = await get(clients.unit, sid)
    assert view.version == 1 + tally[OK] and len(view.changes) == 1
    winner = codes.index(OK)
    assert view.cameras[0].orientation_deg == float(winner)


async def test_concurrent_conflicting_lifecycle_commands_one_decision_recorded(clients):
    sid = await register(clients.unit)
    await build(clients.unit, sid)  # version 2: acceptance is valid, going into use is not yet
    calls = [
        accept(clients.unit, sid, expected=2) if i % 2 else use(clients.unit, sid, expected=2)
        for i in range(N)
    ]
    tally = Counter(await asyncio.gather(*(outcome(c) for c in calls)))
    assert tally[ABORTED] == N - 1 and tally[OK] + tally[REFUSED] == 1, tally
    view = await get(clients.unit, sid)
    assert view.version == 3  # exactly one event (acceptance or recorded refusal) after version 2
    assert view.state == ("accepted" if tally[OK] else "built")


async def test_concurrent_unpinned_changes_all_apply_without_gaps(clients):
    # expected_version 0 means "any": every command is decided against the latest state.
    sid = await register(clients.unit)
    codes = await asyncio.gather(
        *(outcome(file_change(clients.unit, sid, str(i), 0)) for i in range(N))
    )
    tally = Counter(codes)
    assert tally == {OK: N}, tally
    view = await get(clients.unit, sid)
    assert view.version == 1 + N
    assert sorted(float(c.new_value) for c in view.changes) == [float(i) for i in range(N)]


async def test_concurrent_results_report_distinct_consecutive_versions(clients):
    sid = await register(clients.unit)

    async def one(i: int) -> int:
        try:
            return (await file_change(clients.unit, sid, str(i), 0)).version
        except grpc.aio.AioRpcError:
            return -1

    versions = sorted(v for v in await asyncio.gather(*(one(i) for i in range(15))) if v > 0)
    assert versions == list(range(2, 2 + len(versions))) and len(versions) == 15
    assert (await get(clients.unit, sid)).version == 1 + len(versions)


async def test_concurrent_registrations_of_one_id_exactly_one_wins(clients):
    sys_ = system("dup")
    codes = await asyncio.gather(
        *(
            outcome(clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=sys_)))
            for _ in range(N)
        )
    )
    assert Counter(codes) == {OK: 1, EXISTS: N - 1}, Counter(codes)
    assert (await get(clients.unit, "dup")).version == 1


async def test_concurrent_registrations_of_many_systems_all_land(clients):
    systems = [system(f"many-{i:02d}") for i in range(N)]
    codes = await asyncio.gather(
        *(
            outcome(clients.unit.RegisterSystem(reg.RegisterSystemRequest(system=s)))
            for s in systems
        )
    )
    assert Counter(codes) == {OK: N}
    listed = await clients.police.ListSystems(reg.ListSystemsRequest(page_size=1000))
    assert sorted(s.system_id for s in listed.systems) == [s.system_id for s in systems]
    assert {s.version for s in listed.systems} == {1}


async def test_sequential_pinned_commands_chain_versions(clients):
    sid = await register(clients.unit)
    v = 1
    for i in range(5):
        result = await file_change(clients.unit, sid, str(i * 10), v)
        assert result.version == v + 1
        v = result.version
    assert await outcome(file_change(clients.unit, sid, "1", v - 1)) == ABORTED
    assert (await get(clients.unit, sid)).version == v == 6
