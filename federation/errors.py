"""One exception family for the domain.

Two branches, as in python-tuf: :class:`ValidationError` for input that a person or a peer got
wrong (bad request file, bad code, invalid transition), and :class:`VerificationError` for bytes
that fail a cryptographic or structural check (signatures, proofs, manifests). Every error carries
a machine-readable ``reason`` (UPPER_SNAKE_CASE) and a one-line text for people.
"""

from __future__ import annotations


class FederationError(Exception):
    """Base of every error this project raises on purpose."""

    reason: str = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    def diagnostics(self) -> str:
        """One line for people: what went wrong, with the reason code."""
        return f"{self} [{self.reason}]"


class ValidationError(FederationError):
    """Input that does not satisfy the domain rules (files, codes, transitions)."""

    reason = "INVALID"


class VerificationError(FederationError):
    """Bytes that fail a signature, hash, proof or trust check."""

    reason = "VERIFICATION_FAILED"


class ConfigError(FederationError):
    """A configuration file or value is wrong; the message names the file and the key."""

    reason = "CONFIG"


class CalendarError(ValidationError):
    """A holiday schedule file is malformed, or a period cannot be computed."""

    reason = "CALENDAR"
