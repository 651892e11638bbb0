"""OpenTelemetry metrics: appends, conflicts, refusals, projection delay and lag.

The instruments are made from the global meter, so they record nothing until a meter provider
is set: `psvis serve` sets one that Prometheus scrapes (serve_metrics); tests set one of their
own. Attributes are bounded: event types, the rule packs' rules and articles, and runner names.

Served to Prometheus as (OpenTelemetry's names, translated by its exporter):
- psvis_events_appended_total{psvis_event_type}: events that commands appended to the log;
- psvis_append_conflicts_total: appends refused because the stream had moved on (optimistic
  concurrency): the command is decided again against the new state, or, when the caller named
  the version it expected, refused to it (ABORTED);
- psvis_refusals_total{psvis_rule, psvis_article}: commands refused by rule (each also an event);
- psvis_projection_delay_seconds (histogram){psvis_projection}: from an event's recording to
  the read models holding it, once per page the live runner commits (its newest event);
- psvis_projection_lag{psvis_projection}: events the log holds that the read models have not
  applied, as of the last look (every ProjectionLag.interval seconds).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable
from datetime import UTC
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from psvis.clock import Clock

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from psvis.envelope import RecordedEvent
    from psvis.errors import Citation
    from psvis.eventstore.port import EventStore
    from psvis.projection import ProjectionRunner

log = logging.getLogger(__name__)

meter = metrics.get_meter("psvis")

events_appended = meter.create_counter(
    "psvis.events.appended",
    unit="{event}",
    description="Events that commands appended to the log, by event type",
)
append_conflicts = meter.create_counter(
    "psvis.append.conflicts",
    unit="{conflict}",
    description="Appends refused because the stream had moved on: the command is decided again,"
    " or refused to a caller that named the version it expected",
)
refusals = meter.create_counter(
    "psvis.refusals",
    unit="{refusal}",
    description="Commands refused by rule (each recorded as an event), by rule and article",
)
projection_delay = meter.create_histogram(
    "psvis.projection.delay",
    unit="s",
    description="From an event's recording to the read models holding it (per committed page)",
    explicit_bucket_boundaries_advisory=[
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
        60,
        300,
    ],
)


def appended(event_type: str) -> None:
    events_appended.add(1, {"psvis.event_type": event_type})


def refused(citation: Citation) -> None:
    refusals.add(1, {"psvis.rule": citation.rule, "psvis.article": citation.article})


class ProjectionDelay:
    """Records, for a live runner's committed page, how long its newest event took to arrive."""

    def __init__(self, name: str, clock: Clock) -> None:
        self._attributes = {"psvis.projection": name}
        self._clock = clock

    def __call__(self, newest: RecordedEvent) -> None:
        recorded = newest.envelope.recorded_at.ToDatetime(tzinfo=UTC)
        seconds = (self._clock.now() - recorded).total_seconds()
        projection_delay.record(max(seconds, 0.0), self._attributes)  # a clock set back: 0


_lags: weakref.WeakSet[ProjectionLag] = weakref.WeakSet()


class ProjectionLag:
    """Events the log holds beyond a runner's position, looked at every `interval` seconds.

    Both adapters answer log_size; the gauge reads the last value (a scrape never waits on a
    store). Until the first look, and when the log cannot be read, the runner shows no lag.
    """

    def __init__(self, runner: ProjectionRunner, events: EventStore, interval: float = 5.0) -> None:
        self.runner = runner
        self.interval = interval
        self.value: int | None = None
        self._events = events
        _lags.add(self)

    async def look(self) -> int | None:
        """The lag now; None until the runner has loaded its position (-2: unknown yet)."""
        size = await self._events.log_size()
        position = self.runner.position
        self.value = max(size - 1 - position, 0) if position >= -1 else None
        return self.value

    async def run(self) -> None:
        """Look for ever; once stopped, the gauge no longer shows this runner."""
        _lags.add(self)
        try:
            while True:
                try:
                    await self.look()
                except Exception as e:  # the store is down: the lag is unknown, not zero
                    self.value = None
                    log.warning("projection lag of %s unknown: %s", self.runner.name, e)
                await asyncio.sleep(self.interval)
        finally:
            _lags.discard(self)


def _observe_lags(options: CallbackOptions) -> Iterable[Observation]:
    for lag in list(_lags):
        if lag.value is not None:
            yield Observation(lag.value, {"psvis.projection": lag.runner.name})


projection_lag = meter.create_observable_gauge(
    "psvis.projection.lag",
    callbacks=[_observe_lags],
    unit="{event}",
    description="Events the log holds that the read models have not applied yet",
)


_in_memory: InMemoryMetricReader | None = None


def in_memory_reader() -> InMemoryMetricReader:
    """A reader of every instrument's values in this process, for tests and tools: the first
    call sets a meter provider with it as the global one, later calls return the same reader.

    A process sets its meter provider once; one set by anything else is an error here.
    """
    global _in_memory
    if _in_memory is None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        metrics.set_meter_provider(provider)
        if metrics.get_meter_provider() is not provider:
            raise RuntimeError("this process has a meter provider already")
        _in_memory = reader
    return _in_memory


def measured(name: str, **attributes: Any) -> Any:
    """What in_memory_reader() reads of instrument `name` for exactly these attributes: a
    number (counter, gauge), (count, sum) of a histogram, or None if nothing was recorded."""
    from opentelemetry.sdk.metrics.export import NumberDataPoint

    data = in_memory_reader().get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for p in metric.data.data_points if metric.name == name else []:
                    if dict(p.attributes or {}) == attributes:
                        if isinstance(p, NumberDataPoint):
                            return p.value
                        return (p.count, p.sum)
    return None


class MetricsUnavailable(RuntimeError):
    """The metrics endpoint cannot listen where it was told to."""


class MetricsEndpoint:
    """The HTTP server of /metrics, and the address it listens on."""

    def __init__(self, server: Any, host: str) -> None:
        self._server = server
        port = server.server_port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(listen: str, service: str) -> MetricsEndpoint:
    """Serve every instrument at http://<listen>/metrics for Prometheus, with a meter provider
    set as the global one; close() the endpoint to stop serving.

    The port is bound before the provider is set, so a busy port changes nothing; a provider
    set already (by anything else in this process) is an error, as /metrics would lack ours.
    """
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from prometheus_client import start_http_server

    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise MetricsUnavailable(f"metrics listen address {listen!r} is not host:port")
    try:
        server, _thread = start_http_server(int(port), addr=host)
    except OSError as e:
        raise MetricsUnavailable(
            f"cannot serve metrics on {listen}: {e.strerror or e}; choose another address"
            " with --metrics-listen (env PSVIS_METRICS_LISTEN), or none with --metrics-listen ''"
        ) from None
    endpoint = MetricsEndpoint(server, host)
    provider = MeterProvider(
        resource=Resource.create({"service.name": service}),
        metric_readers=[PrometheusMetricReader()],
    )
    metrics.set_meter_provider(provider)
    if metrics.get_meter_provider() is not provider:
        endpoint.close()
        raise MetricsUnavailable("this process has a meter provider already: /metrics not served")
    return endpoint
