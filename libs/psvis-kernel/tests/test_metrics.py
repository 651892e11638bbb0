"""Metrics: what commands and the projection runner record, read back through an SDK reader.

The instruments are global, and so is the process's reader of them (metrics.in_memory_reader):
each test compares the values before and after what it does.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from kernel_fixtures import START, build_log, note
from opentelemetry import metrics as otel
from psvis import metrics
from psvis.clock import FixedClock, SequentialIds
from psvis.common.v1 import envelope_pb2 as pb
from psvis.decision import Accepted, Aggregate, Decision, Refused, execute
from psvis.envelope import Actor, RecordedEvent
from psvis.errors import Citation, RuleRefusal
from psvis.eventstore.sqlite import SqliteEventStore
from psvis.projection import ProjectionRunner, StreamProjection
from psvis.readstore.sqlite import SqliteReadStore
from psvis.sqlite_db import SqliteDatabase
from test_replay import count_notes


def value(name: str, **attributes: Any) -> Any:
    """The instrument's value for these attributes; 0 if nothing was recorded yet."""
    found = metrics.measured(name, **attributes)
    return 0 if found is None else found


NOTES = Aggregate[list[Message]](
    new=lambda stream_id: [],
    evolve=lambda state, event: state.append(event),
    refusal_event=lambda refused: pb.Citation(rule=refused.citation.rule, reason="refused"),
)
ACTOR = Actor("unit-a", ("officer-1",))


class RacedStore(SqliteEventStore):
    """The real store, but another writer appends to the stream right after the first read:
    the command that read it loses the race once, as it would to a concurrent process."""

    raced = False

    async def read_stream(self, stream_id: str) -> list[RecordedEvent]:
        events = await super().read_stream(stream_id)
        if not self.raced:
            self.raced = True
            await self.append(stream_id, len(events), [note("the other writer", FixedClock(START))])
        return events


async def test_commands_count_their_events_refusals_and_lost_races(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "psvis.db")
    store = RacedStore(db, FixedClock(START), SequentialIds("ev"))
    citations = {"psvis.event_type": "psvis.common.v1.Citation"}
    accepted = value("psvis.events.appended", **citations)
    conflicts = value("psvis.append.conflicts")
    cited = {"psvis.rule": "placement.forbidden", "psvis.article": "Wuhan 18(1)"}
    refusals = value("psvis.refusals", **cited)

    def accept(state: list[Message]) -> Decision:
        return Accepted(pb.Citation(rule="test", reason=f"after {len(state)}"))

    recorded = await execute(store, NOTES, "s-1", accept, actor=ACTOR, occurred_at=START)
    assert recorded.version == 2  # decided again after the other writer's event
    assert value("psvis.append.conflicts") == conflicts + 1

    def refuse(state: list[Message]) -> Decision:
        return Refused("Place", Citation("placement.forbidden", "Wuhan 18(1)", "REG-4", "no"))

    with pytest.raises(RuleRefusal):
        await execute(store, NOTES, "s-1", refuse, actor=ACTOR, occurred_at=START)
    assert value("psvis.refusals", **cited) == refusals + 1
    # the accepted event and the refusal's own event (the other writer is not a command)
    assert value("psvis.events.appended", **citations) == accepted + 2
    await store.close()
    await db.close()


PROJECTIONS = [StreamProjection("s-", "notes", count_notes)]


async def test_projection_lag_is_what_the_log_holds_beyond_the_read_models(tmp_path: Path) -> None:
    log = await build_log(tmp_path, events=5, streams=2)
    runner = ProjectionRunner("lag-test", log.store, SqliteReadStore(log.db), PROJECTIONS)
    lag = metrics.ProjectionLag(runner, log.store, interval=0.01)
    assert await lag.look() is None  # the runner has not loaded its position yet: unknown
    empty = ProjectionRunner("empty-test", log.store, SqliteReadStore(log.db), PROJECTIONS)
    empty.position = -1  # loaded: nothing applied
    assert await metrics.ProjectionLag(empty, log.store).look() == 5
    await runner.catch_up()
    assert await lag.look() == 0
    await log.store.append("s-0", 3, [note("one more", log.clock)])
    assert await lag.look() == 1
    assert value("psvis.projection.lag", **{"psvis.projection": "lag-test"}) == 1

    looking = asyncio.create_task(lag.run())
    await runner.catch_up()
    for _ in range(200):
        await asyncio.sleep(0.01)
        if lag.value == 0:
            break
    assert value("psvis.projection.lag", **{"psvis.projection": "lag-test"}) == 0
    looking.cancel()
    await asyncio.gather(looking, return_exceptions=True)
    await log.store.close()
    await log.db.close()


async def test_projection_delay_is_recorded_once_per_committed_page(tmp_path: Path) -> None:
    log = await build_log(tmp_path, events=6, streams=2)  # recorded one minute apart
    newest = (await log.store.read_page(-1, 100))[-1]
    clock = FixedClock(newest.envelope.recorded_at.ToDatetime(tzinfo=START.tzinfo))
    clock.advance(timedelta(seconds=2.5))
    pages: list[RecordedEvent] = []

    def seen(event: RecordedEvent) -> None:
        pages.append(event)
        metrics.ProjectionDelay("delay-test", clock)(event)

    runner = ProjectionRunner(
        "delay-test", log.store, SqliteReadStore(log.db), PROJECTIONS, batch=3, on_commit=seen
    )
    await runner.catch_up()
    assert [e.position for e in pages] == [2, 5]  # each page's newest event
    count, total = value("psvis.projection.delay", **{"psvis.projection": "delay-test"})
    assert count == 2
    assert total == pytest.approx(2.5 + 3 * 60 + 2.5)  # the first page's newest is 3 min older
    await log.store.close()
    await log.db.close()


@pytest.mark.parametrize("listen", ["busy", "no-port", "127.0.0.1:http"])
def test_metrics_that_cannot_listen_are_refused_and_change_nothing(
    listen: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_provider(provider: object) -> None:
        raise AssertionError("a meter provider was set for an endpoint that does not serve")

    monkeypatch.setattr(otel, "set_meter_provider", no_provider)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}" if listen == "busy" else listen
        with pytest.raises(metrics.MetricsUnavailable, match="metrics"):
            metrics.serve_metrics(address, "psvis")
