"""The one table between domain errors and gRPC statuses, used at both edges.

Server side: every :class:`FederationError` becomes a gRPC status with the machine-readable
reason in a ``google.rpc.ErrorInfo`` (domain ``cccfed.v1``) inside ``grpc-status-details-bin``,
and in the plain ``cccfed-reason`` trailer. Client side: a failed call becomes a
:class:`RemoteError` carrying the code and reason, and :func:`is_transient` — the only retry
predicate in the project — says whether trying again later can help.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from federation.errors import FederationError

ERROR_DOMAIN = "cccfed.v1"
C = grpc.StatusCode

REASON_CODES: dict[str, grpc.StatusCode] = {
    # transport identity (TLS peer)
    "UNKNOWN_PEER": C.UNAUTHENTICATED,
    "REVOKED_PEER": C.UNAUTHENTICATED,
    "EXPIRED_PEER": C.UNAUTHENTICATED,
    "NO_PEER_CERTIFICATE": C.UNAUTHENTICATED,
    # signing keys and sender
    "UNKNOWN_KEY": C.PERMISSION_DENIED,
    "REVOKED_KEY": C.PERMISSION_DENIED,
    "EXPIRED_KEY": C.PERMISSION_DENIED,
    "KEY_SENDER_MISMATCH": C.PERMISSION_DENIED,
    "SENDER_MISMATCH": C.PERMISSION_DENIED,
    # content
    "BAD_SIGNATURE": C.INVALID_ARGUMENT,
    "PAYLOAD_HASH_MISMATCH": C.INVALID_ARGUMENT,
    "MALFORMED": C.INVALID_ARGUMENT,
    "INVALID": C.INVALID_ARGUMENT,
    "UNSUPPORTED_VERSION": C.UNIMPLEMENTED,
    "UNSUPPORTED_KIND": C.UNIMPLEMENTED,
    "WRONG_RECIPIENT": C.FAILED_PRECONDITION,
    "CLOCK_SKEW": C.FAILED_PRECONDITION,
    "INVALID_TRANSITION": C.FAILED_PRECONDITION,
    "OVERSIZE": C.RESOURCE_EXHAUSTED,
    "DUPLICATE_CONFLICT": C.ALREADY_EXISTS,
    # this node cannot serve right now
    "STORE": C.UNAVAILABLE,
    # the receiver waits for something still on its way (e.g. a receipt being retried)
    "RECEIPT_PENDING": C.UNAVAILABLE,
    "NOT_SERVING": C.UNAVAILABLE,
}

#: Statuses after which the same bytes may succeed later. Everything else is permanent.
# RESOURCE_EXHAUSTED is not here: gRPC uses it for messages over the size limit, which no
# amount of waiting fixes.
TRANSIENT_CODES = frozenset({C.UNAVAILABLE, C.DEADLINE_EXCEEDED, C.ABORTED})
#: Reasons that are permanent whatever their status.
PERMANENT_REASONS = frozenset({"OVERSIZE"})
#: Refusals that a newer manifest at the peer cures: right after a renewal or key rotation the
#: peer may not have adopted the manifest listing our new certificate yet.
TRANSIENT_REASONS = frozenset({"UNKNOWN_PEER", "UNKNOWN_KEY"})


def code_for(err: FederationError) -> grpc.StatusCode:
    return REASON_CODES.get(err.reason, C.FAILED_PRECONDITION)


def error_trailers(
    code: grpc.StatusCode, reason: str, message: str, message_id: str = ""
) -> tuple[tuple[str, Any], ...]:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
    if message_id:
        info.metadata["message_id"] = message_id
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return (
        ("grpc-status-details-bin", status.SerializeToString()),
        ("cccfed-reason", reason),
    )


class RemoteError(FederationError):
    """A call to a peer failed; ``code`` and ``reason`` say how."""

    def __init__(self, peer: str, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(f"{peer}: {code.name}: {message}", reason=reason)
        self.peer = peer
        self.code = code


def reason_from_metadata(metadata: Sequence[tuple[str, Any]] | None) -> str:
    for key, value in metadata or ():
        if key == "grpc-status-details-bin":
            try:
                status = status_pb2.Status.FromString(value)
                for d in status.details:
                    info = error_details_pb2.ErrorInfo()
                    if d.Unpack(info) and info.domain == ERROR_DOMAIN:
                        return str(info.reason)
            except DecodeError:
                pass  # a peer's malformed details: fall back to the plain trailer or the code
    for key, value in metadata or ():
        if key == "cccfed-reason":
            return str(value)
    return ""


def from_rpc_error(peer: str, e: grpc.RpcError) -> RemoteError:
    code = e.code() if hasattr(e, "code") else C.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    trailing = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    reason = reason_from_metadata(trailing) or code.name
    return RemoteError(peer, code, reason, details or code.name)


def is_transient(err: BaseException) -> bool:
    """The retry predicate: only transport-level, try-again-later failures."""
    if isinstance(err, RemoteError):
        if err.reason in TRANSIENT_REASONS:
            return True
        return err.code in TRANSIENT_CODES and err.reason not in PERMANENT_REASONS
    return False
