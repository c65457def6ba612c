"""gRPC status <-> memmgr domain errors, both directions in one table."""

from __future__ import annotations

import grpc

from services.memmgr.types import (ConflictError, ExhaustedError, InvalidArgumentError, MemmgrError,
                                   NotFoundError, SessionExpiredError)



class UnauthenticatedError(MemmgrError):
    """An internal RPC without the internal token (auth.py)."""


class PermissionDeniedError(MemmgrError):
    """A wrong internal token, or a call naming a session without that session's key (auth.py)."""


CODES: list[tuple[type[MemmgrError], grpc.StatusCode]] = [
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (SessionExpiredError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (ExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
]


class UnavailableError(MemmgrError):
    """memmgr could not be reached (or answered with an unexpected status)."""


def status_of(err: MemmgrError) -> grpc.StatusCode:
    return next((c for cls, c in CODES if isinstance(err, cls)), grpc.StatusCode.INTERNAL)


def domain_error(e: grpc.RpcError) -> MemmgrError:
    """The domain error for a failed call (client side); keeps the server's message."""
    code, details = e.code(), e.details() or ""
    cls = next((k for k, c in CODES if c == code), UnavailableError)
    return cls(details if cls is not UnavailableError else f"memmgr {code.name}: {details}")
