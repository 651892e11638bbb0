"""Run the platform: every discovered service in one process (embedded) or one per pod."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

import grpc
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from psvis.clock import Clock, SystemClock
from psvis.grpc_server import create_server, mark_serving, server_credentials
from psvis.metrics import ProjectionDelay, ProjectionLag, serve_metrics
from psvis.notary import Notary
from psvis.pki import ensure_dev_pki
from psvis.platform import Platform, ServiceModule, discover_services
from psvis.projection import ProjectionRunner, read_models_fit
from psvis.rulepack import RulePackError, check_requirements, find_pack, load_pack
from psvis.settings import Settings
from psvis.signing import Signer
from psvis.stores import Stores, open_stores
from psvis.telemetry import setup_tracing

if TYPE_CHECKING:
    from psvis.subscribers import EventsFeed

log = logging.getLogger(__name__)


@dataclass
class RunningPlatform:
    server: grpc.aio.Server
    port: int
    stores: Stores
    notary: Notary
    projections: ProjectionRunner
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _lock_file: object | None = None
    feed: EventsFeed | None = None  # distributed: the subscriber the read models follow

    async def stop(self, grace: float = 2.0) -> None:
        """Stop serving, stop the background loops, notarise the tail, close the stores.

        Every step has a time limit, so a stuck client library cannot keep the process from
        exiting; a step that overruns is logged and the next one runs.
        """
        await self.server.stop(grace)
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            ended, stuck = await asyncio.wait(self.tasks, timeout=STOP_STEP_TIMEOUT)
            for task in ended:
                if not task.cancelled() and task.exception() is not None:
                    log.warning("background task ended with %r", task.exception())
            for task in stuck:
                log.warning("background task %s did not stop in time", task.get_coro())
        try:
            await _bounded(self.notary.catch_up(), "notarising the tail of the log")
            if self.feed is not None:
                await _bounded(self.feed.stop(), "stopping the event feed")
        finally:
            await _bounded(self.stores.close(), "closing the stores")


STOP_STEP_TIMEOUT = 10.0


async def _bounded(step: Awaitable[object], what: str) -> None:
    try:
        await asyncio.wait_for(step, STOP_STEP_TIMEOUT)
    except TimeoutError:
        log.warning("shutdown: %s took over %.0f s; going on without it", what, STOP_STEP_TIMEOUT)


def _leader_lock(settings: Settings) -> TextIO:
    """Embedded: one process per data directory runs the singletons (notary, projections)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    handle = (settings.data_dir / "leader.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"another psvis server already runs on {settings.data_dir}") from None
    return handle


def read_models_runner(settings: Settings) -> str:
    """The name of the runner that keeps this process's read models: one per set of services
    (`--services`), so that a Deployment per service keeps its own position and folds, and a
    fold that changes in one service rebuilds that service's read models only."""
    name = f"{settings.namespace}.read-models"
    return f"{name}.{'+'.join(sorted(set(settings.services)))}" if settings.services else name


def chosen(found: list[ServiceModule], names: list[str]) -> list[ServiceModule]:
    """The services named (all of them if none is); a name no service has is an error."""
    unknown = sorted(set(names) - {s.name for s in found})
    if unknown:
        known = ", ".join(s.name for s in found) or "none"
        raise ValueError(f"no service named {', '.join(unknown)} (installed: {known})")
    return [s for s in found if not names or s.name in names]


async def _read_models_within_log(stores: Stores, projection: str) -> None:
    """Embedded: read models further on than the log are dropped, to be rebuilt from it.

    The log and the read models are two files: a log restored from a backup, or one whose
    newest commits a power loss took (synchronous=NORMAL), can be behind read models that
    kept theirs. Kept, their documents would be of versions the log no longer holds, and
    would pass over the events appended again at those versions.
    """
    size = await stores.events.log_size()
    position = await stores.reads.get_position(projection)
    if position >= size:
        log.warning(
            "the read models have applied the log up to position %d, but it holds %d events"
            " (restored from a backup, or its newest commits lost): rebuilding them from the log",
            position,
            size,
        )
        await stores.reads.drop_all()


async def start_platform(
    settings: Settings,
    *,
    clock: Clock | None = None,
    services: list[ServiceModule] | None = None,
) -> RunningPlatform:
    clock = clock or SystemClock()
    services = services if services is not None else chosen(discover_services(), settings.services)
    pack = load_pack(find_pack(settings.city, settings.rules_dirs))
    problems = [p for s in services for p in check_requirements(pack, list(s.needs))]
    if problems:
        raise RulePackError("; ".join(problems))
    lock = _leader_lock(settings) if settings.backend == "embedded" else None
    try:
        stores = await open_stores(settings, clock)
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    feed: EventsFeed | None = None
    server: grpc.aio.Server | None = None
    tasks: list[asyncio.Task[None]] = []
    read_models = read_models_runner(settings)
    try:
        projections = [p for s in services for p in s.projections]
        if settings.backend == "embedded":
            await _read_models_within_log(stores, read_models)
        await read_models_fit(stores.reads, read_models, projections)
        feed = await _live_feed(settings, stores)
        runner = ProjectionRunner(
            read_models,
            stores.events if feed is None else feed.delivered,
            stores.reads,
            projections,
            traced=True,
            on_commit=ProjectionDelay(read_models, clock),
        )
        platform = Platform(stores.events, stores.reads, runner, pack, clock)
        ensure_dev_pki(settings.pki_dir)
        signer = Signer.load_or_create(settings.notary_key)
        notary = Notary(
            stores.events, stores.checkpoints, signer, clock,
            every=settings.notary_every, interval=settings.notary_interval,
        )  # fmt: skip
        bindings = [s.bind(platform) for s in services]
        credentials = server_credentials(settings.pki_dir)
        # the read models catch up before the port is bound: a client (or a readiness probe)
        # that can connect finds the platform serving
        await runner.catch_up()
        server, port, health = create_server(
            settings.listen, credentials, bindings, [aio_server_interceptor()]
        )
        background: list[Callable[[], Awaitable[None]]] = [
            runner.run,
            notary.run,
            ProjectionLag(runner, stores.events, settings.metrics_interval).run,
            *stores.background,
        ]
        tasks += [asyncio.create_task(_supervised(work)) for work in background]
        await server.start()
        await mark_serving(health, [b.name for b in bindings])
    except BaseException:
        # a platform that does not start leaves nothing running or locked behind
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            if server is not None:
                await server.stop(0)
            if feed is not None:
                await feed.stop()
        finally:
            await stores.close()
            if lock is not None:
                lock.close()
        raise
    return RunningPlatform(server, port, stores, notary, runner, tasks, lock, feed)


async def _live_feed(settings: Settings, stores: Stores) -> EventsFeed | None:
    """Distributed: the FastStream subscriber that delivers the log to the live read models."""
    if settings.backend != "distributed":
        return None
    from psvis.distributed import open_live_feed

    return await open_live_feed(settings, stores.events)


async def _supervised(work: Callable[[], Awaitable[None]]) -> None:
    """Keep a singleton loop alive: log a crash and start it again."""
    while True:
        try:
            await work()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "background task %s failed; restarting in 1 s", getattr(work, "__qualname__", work)
            )
            await asyncio.sleep(1)


async def serve(settings: Settings, ready: Callable[[RunningPlatform], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM; one that comes while the platform is still starting (its
    read models catching up) gives the start up, leaving nothing open or locked."""
    setup_tracing("psvis")
    # /metrics answers from the start (a liveness probe), also while the read models catch up
    endpoint = serve_metrics(settings.metrics_listen, "psvis") if settings.metrics_listen else None
    try:
        if endpoint is not None:
            settings.metrics_listen = endpoint.address  # the port, if it was 0
        stop = asyncio.Event()
        starting = asyncio.ensure_future(start_platform(settings))

        def on_signal() -> None:
            stop.set()
            starting.cancel()  # nothing, once started

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            running = await starting
        except asyncio.CancelledError:
            if stop.is_set():
                return  # stopped while starting
            raise
        try:
            if ready is not None:
                ready(running)
            await stop.wait()
        finally:
            await running.stop()
    finally:
        if endpoint is not None:
            endpoint.close()
