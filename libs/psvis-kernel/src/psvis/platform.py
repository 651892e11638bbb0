"""What a service gets from the platform, and what it gives back (the composition contract)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from psvis.clock import Clock
from psvis.eventstore.port import EventStore
from psvis.grpc_server import ServiceBinding
from psvis.projection import ProjectionRunner, StreamProjection
from psvis.readstore.port import ReadStore
from psvis.rulepack import ParamSpec, RulePack


@dataclass(frozen=True)
class Platform:
    events: EventStore
    reads: ReadStore
    projections: ProjectionRunner
    pack: RulePack
    clock: Clock


@dataclass(frozen=True)
class ServiceModule:
    """One service as the platform sees it; found through the `psvis.services` entry point."""

    name: str
    needs: Sequence[ParamSpec]
    projections: Sequence[StreamProjection]
    collections: Sequence[str]
    bind: Callable[[Platform], ServiceBinding]
    # Adds the service's `psvis <name> ...` commands to the CLI.
    cli: Callable[[Any], None] | None = None


def discover_services() -> list[ServiceModule]:
    found = []
    for entry in sorted(entry_points(group="psvis.services"), key=lambda e: e.name):
        module = entry.load()
        if not isinstance(module, ServiceModule):
            raise TypeError(f"entry point {entry.name} is not a ServiceModule")
        found.append(module)
    return found
