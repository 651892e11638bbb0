"""The registry as a platform service: its rules, read models and gRPC binding."""

from __future__ import annotations

from psvis.grpc_server import ServiceBinding
from psvis.platform import Platform, ServiceModule
from psvis.registry.v1 import registry_pb2_grpc as reg_grpc
from psvis.telemetry import trace_headers

from psvis_registry.api import RegistryApi
from psvis_registry.cli import add_cli
from psvis_registry.handlers import Registry
from psvis_registry.projections import COLLECTIONS, PROJECTIONS
from psvis_registry.rules import NEEDS


def bind(platform: Platform) -> ServiceBinding:
    api = RegistryApi(Registry(platform, trace=trace_headers))
    return ServiceBinding(
        api, reg_grpc.add_RegistryServiceServicer_to_server, "psvis.registry.v1.RegistryService"
    )


SERVICE = ServiceModule(
    name="registry",
    needs=NEEDS,
    projections=PROJECTIONS,
    collections=COLLECTIONS,
    bind=bind,
    cli=add_cli,
)
