"""Domain outcomes that reach clients, mapped to gRPC status codes in one place (grpc_errors)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Citation:
    """The rule and article behind a refusal or a finding (RULES-2)."""

    rule: str
    article: str
    spec: str
    reason: str

    def __str__(self) -> str:
        where = self.article or "no article: the pack is silent"
        return f"{self.reason} [{self.spec} {self.rule}; {where}]"


class PsvisError(Exception):
    """Base of every error a client may see; the message is written for a person."""


class InvalidArgument(PsvisError):
    """Malformed or out-of-range input; nothing was changed."""


class NotFound(PsvisError):
    pass


class AlreadyExists(PsvisError):
    pass


class PermissionDenied(PsvisError):
    pass


class Unauthenticated(PsvisError):
    pass


class ConcurrencyConflict(PsvisError):
    """The stream moved on since it was read: the expected version no longer holds."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream_id} is at version {actual}, not the expected {expected}; "
            "read it again and retry"
        )
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class FailedPrecondition(PsvisError):
    """The command does not apply to the aggregate as it stands (a lifecycle step out of order,
    a removed system). No rule refused it, so none is cited and nothing is recorded."""


class RuleRefusal(PsvisError):
    """A command the rule pack refuses; the refusal itself is recorded as an event."""

    def __init__(self, citation: Citation, *, stream_id: str = "", version: int = 0) -> None:
        super().__init__(str(citation))
        self.citation = citation
        self.stream_id = stream_id
        self.version = version


class Unavailable(PsvisError):
    """Infrastructure is down or too slow; the command may be retried."""
