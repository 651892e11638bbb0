"""gRPC servers: mutual TLS, health, reflection, callers from certificates, one error mapping."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from psvis import errors, validate
from psvis.pki import pem_certificates, pem_private_key

log = logging.getLogger(__name__)

STATUS = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.ConcurrencyConflict, grpc.StatusCode.ABORTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.RuleRefusal, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_of(error: errors.PsvisError) -> grpc.StatusCode:
    for kind, code in STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.UNKNOWN


@dataclass(frozen=True)
class Caller:
    """Who calls: the agency and role named by the client certificate."""

    agency: str
    role: str


@lru_cache(maxsize=1024)
def _caller_from_pem(pem: bytes) -> Caller:
    cert = x509.load_pem_x509_certificate(pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not cn or not ou:
        raise errors.Unauthenticated("client certificate names no agency (CN) or role (OU)")
    return Caller(agency=str(cn[0].value), role=str(ou[0].value))


def caller_of(context: grpc.aio.ServicerContext) -> Caller:
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        raise errors.Unauthenticated("a client certificate is required (mutual TLS)")
    return _caller_from_pem(pems[0])


@dataclass(frozen=True)
class Undecodable:
    """What a request whose bytes are not its message type is parsed into."""

    error: str


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The request parser, answering Undecodable instead of raising (grpc would say UNKNOWN)."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as e:  # DecodeError, or bad UTF-8 in a string field
            return Undecodable(str(e))

    return parse


class ErrorMapping(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Domain errors become gRPC status + human message; anything else is logged, never leaked.

    Before a servicer sees a request, its bytes must parse as the method's message and every
    field must be within validate.bounded's limits; otherwise it is INVALID_ARGUMENT.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = details.method

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request's bytes are not a {method.rsplit('/', 1)[-1]} request",
                )
            try:
                validate.bounded(request)
                return await inner(request, context)
            except errors.PsvisError as e:
                await context.abort(status_of(e), str(e))
            except grpc.aio.AbortError:
                raise
            except Exception:
                log.exception("internal error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def server_credentials(pki: Path) -> grpc.ServerCredentials:
    """The server's mutual TLS from the PKI folder; TlsFileError names a file it cannot use."""
    return grpc.ssl_server_credentials(
        [(pem_private_key(pki / "server.key"), pem_certificates(pki / "server.crt"))],
        root_certificates=pem_certificates(pki / "ca.crt"),
        require_client_auth=True,
    )


def channel_credentials(ca: Path, cert: Path, key: Path) -> grpc.ChannelCredentials:
    """A client's mutual TLS; TlsFileError names a file it cannot use."""
    return grpc.ssl_channel_credentials(
        root_certificates=pem_certificates(ca),  # read in this order: the first file at fault
        certificate_chain=pem_certificates(cert),  # is named, the agency's certificate before
        private_key=pem_private_key(key),  # its key
    )


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer, the generated function that adds it, and its full service name."""

    servicer: object
    add: Callable[[Any, grpc.aio.Server], None]
    name: str


def create_server(
    bind: str,
    credentials: grpc.ServerCredentials | None,
    services: Sequence[ServiceBinding],
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int, health.HealthServicer]:
    """Build (not start) a server; returns it with its bound port and health servicer."""
    # grpc shares ports by default (SO_REUSEPORT): a second server on a busy port would start
    # and take half of the first one's calls; without it, binding the port fails
    server = grpc.aio.server(
        interceptors=[*interceptors, ErrorMapping()], options=[("grpc.so_reuseport", 0)]
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in services:
        service.add(service.servicer, server)
    names = [s.name for s in services]
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    if credentials is None:
        port = server.add_insecure_port(bind)
    else:
        port = server.add_secure_port(bind, credentials)
    return server, port, health_servicer


async def mark_serving(health_servicer: health.HealthServicer, names: Sequence[str]) -> None:
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
