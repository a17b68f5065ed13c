"""Signed checkpoints of the inspection logs, and witnesses' cosignatures (DESIGN.md §7).

Each member appends its inspection results to its own RFC 6962 log (:mod:`federation.merkle`) and
commits to the log's state with a *checkpoint*: origin, tree size and root hash, signed with the
member's signing key. Every other member verifies it, checks that it extends the last one it
accepted (:mod:`federation.witness`) and *cosigns* it. A result counts as recognised once a
checkpoint covering it carries the cosignatures of the quorum.

The format follows C2SP ``tlog-checkpoint`` and ``signed-note`` closely enough to be read by eye and
compared with other transparency logs, with three cccfed choices (ECDSA P-256 keys listed in the
federation manifest instead of note verifier keys).

Checkpoint body (the note text; every line ends in ``\\n``, no line is empty)::

    cccfed.v1/310000                               origin line: "cccfed.v1/" + member code
    42                                             tree size, ASCII decimal, no leading zeroes
    mS1hZ2l...bm9wcXJzdHV2d3h5ejAxMjM0NTY3OA=      root hash, canonical standard base64
    time 1767225600                                when the origin signed it (POSIX seconds)
    <extension line>*                              optional, opaque, printable ASCII

The ``time`` line is cccfed's one mandatory extension line. C2SP discourages extension lines
because monitors cannot audit them, and indeed nobody checks the time against the tree; it is
there so that evidence kept for years (:class:`federation.witness.Equivocation`) can be checked
against the manifest's key validity *at the time of signing*, when the key has long expired.

Signed checkpoint (the wire and storage form): the body, one empty line, then signature lines
``— <key name> <base64 blob>`` (U+2014, a space, the name, a space, the blob, ``\\n``):

* the first line is the origin's own signature: name = the origin line, blob = 32-byte key id ‖
  ECDSA-P256-SHA256 DER signature over ``CTX_CHECKPOINT ‖ body``;
* any further lines are cosignatures: name = ``cccfed.v1/<witness code>``, blob = 32-byte key id
  ‖ 8-byte big-endian timestamp ‖ DER signature over ``CTX_COSIGNATURE ‖ "time <ts>\\n" ‖ body``
  (the C2SP ``cosignature/v1`` message, with our context string instead of its header line).

The key id is the SHA-256 of the signing certificate's DER (the manifest's fingerprint), not the
4-byte note key hash: the manifest resolves it to a member and a validity window. Every field is
parsed strictly (canonical base64, no leading zeroes, no ``\\r``), so a parsed checkpoint
serialises back to exactly the bytes received; signatures are still verified over the *received*
body bytes, never a re-serialisation.

Failures raise :class:`~federation.errors.VerificationError` with a ``reason``:
``CHECKPOINT_MALFORMED``, ``COSIGNATURE_MALFORMED``, the manifest's ``UNKNOWN_NODE``,
``UNKNOWN_KEY``, ``REVOKED_KEY`` and ``EXPIRED_KEY``, ``CHECKPOINT_SIGNER_MISMATCH``,
``CHECKPOINT_BAD_SIGNATURE``, ``COSIGNER_IS_ORIGIN``, ``COSIGNER_MISMATCH`` and
``COSIGNATURE_BAD_SIGNATURE``. This module is pure: the clock is a parameter.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final

from federation.crypto import CTX_CHECKPOINT, CTX_COSIGNATURE, Signer, verify
from federation.errors import ValidationError, VerificationError
from federation.manifest import TrustedManifest
from federation.merkle import EMPTY_ROOT, HASH_SIZE

__all__ = [
    "MAX_SIZE",
    "ORIGIN_PREFIX",
    "Checkpoint",
    "Cosignature",
    "SignedCheckpoint",
    "cosign",
    "format_body",
    "make_checkpoint",
    "origin_line",
    "parse_body",
    "parse_checkpoint",
    "parse_cosignature",
    "verified_cosigners",
    "verify_checkpoint",
    "verify_cosignature",
]

ORIGIN_PREFIX: Final = "cccfed.v1/"
"""Origin lines are this prefix followed by the member (province) code."""

MAX_SIZE: Final = 2**63 - 1
"""Largest tree size or timestamp accepted (C2SP: sizes are u64; we stay within signed 64 bits)."""

MAX_TIMESTAMP: Final = 253_402_300_799
"""9999-12-31T23:59:59Z: later times do not fit a ``datetime``, so they are refused as malformed."""

KEY_ID_SIZE: Final = 32
MAX_BODY_BYTES: Final = 1024
MAX_NOTE_BYTES: Final = 8192
MAX_EXTENSION_LINES: Final = 8
MAX_EXTENSION_CHARS: Final = 256
MAX_COSIGNATURES: Final = 32
MAX_DER_SIGNATURE: Final = 72  # ECDSA P-256: SEQUENCE of two INTEGERs of at most 33 bytes
MIN_DER_SIGNATURE: Final = 8

_MALFORMED: Final = "CHECKPOINT_MALFORMED"
_COSIG_MALFORMED: Final = "COSIGNATURE_MALFORMED"
_DASH: Final = "\u2014 "  # signed-note signature lines start with an em dash and a space

_CODE: Final = r"[0-9]{6}"
_ORIGIN_RE: Final = re.compile(re.escape(ORIGIN_PREFIX) + f"({_CODE})")
_DECIMAL_RE: Final = re.compile(r"0|[1-9][0-9]{0,18}")
_TIME_RE: Final = re.compile(r"time (0|[1-9][0-9]{0,18})")
_PRINTABLE_RE: Final = re.compile(r"[\x20-\x7e]+")


def origin_line(code: str) -> str:
    """The origin line of member ``code``'s log: ``cccfed.v1/<code>``."""
    return ORIGIN_PREFIX + code


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A parsed checkpoint body; build it with :func:`parse_body` or :func:`make_checkpoint`.

    ``body`` is the exact byte string the origin signed and witnesses cosign; the other fields
    are read from it.
    """

    origin: str
    """Member code of the log's owner (``310000``); the origin line is :attr:`origin_line`."""
    size: int
    """Number of entries in the log."""
    root: bytes
    """RFC 6962 root hash of the first :attr:`size` entries."""
    timestamp: int
    """POSIX seconds at which the origin signed (the ``time`` line)."""
    extensions: tuple[str, ...]
    """Extension lines after the ``time`` line, kept opaque."""
    body: bytes
    """The note text as signed."""

    @property
    def origin_line(self) -> str:
        """``cccfed.v1/<origin>``."""
        return origin_line(self.origin)

    @property
    def signed_at(self) -> datetime:
        """:attr:`timestamp` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.timestamp, UTC)


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A witness's timestamped signature over a checkpoint body."""

    witness: str
    """Member code of the cosigner."""
    key_id: str
    """Lowercase hex SHA-256 of the cosigner's signing certificate."""
    timestamp: int
    """POSIX seconds at which the witness cosigned."""
    signature: bytes
    """DER ECDSA signature over ``CTX_COSIGNATURE ‖ "time <timestamp>\\n" ‖ body``."""

    def to_line(self) -> bytes:
        """The note signature line, ``\\n``-terminated."""
        blob = bytes.fromhex(self.key_id) + self.timestamp.to_bytes(8, "big") + self.signature
        return _sig_line(origin_line(self.witness), blob)


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint with its origin signature and any cosignatures (parsed, not yet trusted)."""

    checkpoint: Checkpoint
    key_id: str
    """Lowercase hex SHA-256 of the certificate of the key that signed the body."""
    signature: bytes
    """DER ECDSA signature over ``CTX_CHECKPOINT ‖ body``."""
    cosignatures: tuple[Cosignature, ...] = ()

    def to_bytes(self, *, cosignatures: bool = True) -> bytes:
        """The signed note; without ``cosignatures`` it is the origin's bytes alone.

        Parsing enforces canonical encodings, so for parsed input this gives back exactly the
        bytes that were parsed.
        """
        out = self.checkpoint.body + b"\n"
        out += _sig_line(self.checkpoint.origin_line, bytes.fromhex(self.key_id) + self.signature)
        if cosignatures:
            out += b"".join(c.to_line() for c in self.cosignatures)
        return out

    def with_cosignatures(self, cosignatures: Iterable[Cosignature]) -> SignedCheckpoint:
        """A copy with ``cosignatures`` added; a newer one from the same witness replaces its own.

        Nothing is verified here (see :func:`verified_cosigners`): the note only carries them.
        """
        by_witness = {c.witness: c for c in self.cosignatures}
        for c in cosignatures:
            held = by_witness.get(c.witness)
            if held is None or c.timestamp >= held.timestamp:
                by_witness[c.witness] = c
        if self.checkpoint.origin in by_witness:
            raise ValidationError("the origin cannot cosign its own checkpoint", reason="INVALID")
        if len(by_witness) > MAX_COSIGNATURES:
            raise ValidationError(f"more than {MAX_COSIGNATURES} cosignatures", reason="INVALID")
        return replace(self, cosignatures=tuple(by_witness[w] for w in sorted(by_witness)))


# --------------------------------------------------------------------------------------------
# Encoding helpers
# --------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _sig_line(name: str, blob: bytes) -> bytes:
    return f"{_DASH}{name} {_b64(blob)}\n".encode()


def _unb64(text: str, what: str, reason: str) -> bytes:
    """Decode canonical standard base64 only.

    ``b64decode`` ignores the unused low bits of the last character, so several strings decode
    to the same bytes; re-encoding and comparing makes the text itself unique, so that no byte
    of a signed checkpoint can change without the parse failing or the bytes changing.
    """
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise VerificationError(f"{what} is not base64", reason=reason) from e
    if _b64(data) != text:
        raise VerificationError(f"{what} is not canonical base64", reason=reason)
    return data


def _decimal(text: str, what: str, reason: str) -> int:
    if not _DECIMAL_RE.fullmatch(text) or int(text) > MAX_SIZE:
        raise VerificationError(
            f"{what} {text[:24]!r} is not a decimal in 0..2^63-1 without leading zeroes",
            reason=reason,
        )
    return int(text)


def _unix_seconds(now: datetime) -> int:
    if now.tzinfo is None:
        raise ValidationError("now must be an aware datetime", reason="INVALID")
    ts = int(now.timestamp())
    if not 0 <= ts <= MAX_TIMESTAMP:
        raise ValidationError(f"{now.isoformat()} is before 1970", reason="INVALID")
    return ts


# --------------------------------------------------------------------------------------------
# Bodies
# --------------------------------------------------------------------------------------------


def format_body(
    origin: str, size: int, root: bytes, *, timestamp: int, extensions: Sequence[str] = ()
) -> bytes:
    """The checkpoint body for member ``origin``'s log at ``(size, root)``.

    Raises :class:`ValidationError` for arguments that :func:`parse_body` would refuse: this is
    our own output, so a bad value is a bug in the caller, not a peer's fault.
    """
    text = f"{origin_line(origin)}\n{size}\n{_b64(root)}\ntime {timestamp}\n" + "".join(
        f"{line}\n" for line in extensions
    )
    try:
        body = text.encode("ascii")
        parsed = parse_body(body)
    except (UnicodeEncodeError, VerificationError) as e:
        raise ValidationError(f"cannot make a checkpoint: {e}", reason="INVALID") from e
    fields = (parsed.origin, parsed.size, parsed.root, parsed.timestamp, parsed.extensions)
    if fields != (origin, size, root, timestamp, tuple(extensions)):
        raise ValidationError("cannot make a checkpoint: fields do not round-trip")
    return body


def parse_body(body: bytes) -> Checkpoint:
    """Parse a checkpoint body strictly; raises ``CHECKPOINT_MALFORMED``.

    Steps:

    1. Bounded, printable ASCII lines, each ``\\n``-terminated and non-empty (C2SP: the note
       text has at least three non-empty lines; we add the ``time`` line, and ``\\r`` or other
       control characters would let two byte strings display alike).
    2. Origin line ``cccfed.v1/<6-digit code>``; which codes are members is the manifest's
       business, in :func:`verify_checkpoint`.
    3. Tree size: decimal without leading zeroes, at most 2^63-1.
    4. Root: canonical base64 of exactly 32 bytes; a tree of size 0 must have the empty root, so
       that a size-0 checkpoint can never be half of a conflict.
    5. ``time <seconds>`` (up to the year 9999), then at most a few opaque extension lines.
    """
    # 1.
    if len(body) > MAX_BODY_BYTES:
        raise VerificationError(f"checkpoint body over {MAX_BODY_BYTES} bytes", reason=_MALFORMED)
    if not body.endswith(b"\n"):
        raise VerificationError("checkpoint body must end with a newline", reason=_MALFORMED)
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as e:
        raise VerificationError("checkpoint body is not ASCII", reason=_MALFORMED) from e
    lines = text[:-1].split("\n")
    if len(lines) < 4:
        raise VerificationError(
            "a checkpoint needs origin, size, root and time lines", reason=_MALFORMED
        )
    for i, line in enumerate(lines):
        if not _PRINTABLE_RE.fullmatch(line):
            raise VerificationError(
                f"checkpoint line {i + 1} is empty or not printable ASCII", reason=_MALFORMED
            )
    # 2.
    m = _ORIGIN_RE.fullmatch(lines[0])
    if m is None:
        raise VerificationError(
            f"origin line {lines[0][:40]!r} is not {ORIGIN_PREFIX}<member code>", reason=_MALFORMED
        )
    # 3.
    size = _decimal(lines[1], "tree size", _MALFORMED)
    # 4.
    root = _unb64(lines[2], "root hash", _MALFORMED)
    if len(root) != HASH_SIZE:
        raise VerificationError(
            f"root hash is {len(root)} bytes, not {HASH_SIZE}", reason=_MALFORMED
        )
    if size == 0 and root != EMPTY_ROOT:
        raise VerificationError(
            "a checkpoint of size 0 must have the empty root", reason=_MALFORMED
        )
    # 5.
    t = _TIME_RE.fullmatch(lines[3])
    if t is None or int(t.group(1)) > MAX_TIMESTAMP:
        raise VerificationError("the fourth line must be 'time <POSIX seconds>'", reason=_MALFORMED)
    extensions = tuple(lines[4:])
    if len(extensions) > MAX_EXTENSION_LINES or any(
        len(x) > MAX_EXTENSION_CHARS for x in extensions
    ):
        raise VerificationError(
            f"at most {MAX_EXTENSION_LINES} extension lines of {MAX_EXTENSION_CHARS} characters",
            reason=_MALFORMED,
        )
    return Checkpoint(
        origin=m.group(1),
        size=size,
        root=root,
        timestamp=int(t.group(1)),
        extensions=extensions,
        body=bytes(body),
    )


# --------------------------------------------------------------------------------------------
# Signed notes
# --------------------------------------------------------------------------------------------


def make_checkpoint(
    signer: Signer,
    origin: str,
    size: int,
    root: bytes,
    *,
    now: datetime,
    extensions: Sequence[str] = (),
) -> bytes:
    """Sign a checkpoint of member ``origin``'s log at ``(size, root)``; returns the signed note.

    ``origin`` is the member code (the origin line is derived); ``signer`` must be that member's
    signing key, which only verification can tell. ``now`` becomes the ``time`` line.
    """
    body = format_body(origin, size, root, timestamp=_unix_seconds(now), extensions=extensions)
    signed = SignedCheckpoint(
        checkpoint=parse_body(body),
        key_id=signer.key_id,
        signature=signer.sign(CTX_CHECKPOINT, body),
    )
    return signed.to_bytes()


def _split_sig_line(line: str, reason: str) -> tuple[str, bytes]:
    """``— <name> <base64>`` → (member code of name, blob)."""
    if not line.startswith(_DASH):
        raise VerificationError("a signature line must start with '\u2014 '", reason=reason)
    parts = line[len(_DASH) :].split(" ")
    if len(parts) != 2:
        raise VerificationError("a signature line is '\u2014 <name> <base64>'", reason=reason)
    m = _ORIGIN_RE.fullmatch(parts[0])
    if m is None:
        raise VerificationError(
            f"signature key name {parts[0][:40]!r} is not {ORIGIN_PREFIX}<member code>",
            reason=reason,
        )
    return m.group(1), _unb64(parts[1], "signature", reason)


def _check_der_length(signature: bytes, reason: str) -> None:
    if not MIN_DER_SIGNATURE <= len(signature) <= MAX_DER_SIGNATURE:
        raise VerificationError(
            f"signature of {len(signature)} bytes is not a P-256 DER signature", reason=reason
        )


def _cosignature_from(witness: str, blob: bytes, reason: str) -> Cosignature:
    if len(blob) < KEY_ID_SIZE + 8:
        raise VerificationError("cosignature is too short", reason=reason)
    timestamp = int.from_bytes(blob[KEY_ID_SIZE : KEY_ID_SIZE + 8], "big")
    if timestamp > MAX_TIMESTAMP:
        raise VerificationError("cosignature timestamp is after the year 9999", reason=reason)
    signature = blob[KEY_ID_SIZE + 8 :]
    _check_der_length(signature, reason)
    return Cosignature(witness, blob[:KEY_ID_SIZE].hex(), timestamp, signature)


def parse_cosignature(line: bytes) -> Cosignature:
    """Parse one cosignature line (a witness's response); raises ``COSIGNATURE_MALFORMED``."""
    if len(line) > MAX_NOTE_BYTES or not line.endswith(b"\n") or line.count(b"\n") != 1:
        raise VerificationError(
            "a cosignature is one newline-terminated line", reason=_COSIG_MALFORMED
        )
    try:
        text = line[:-1].decode("utf-8")
    except UnicodeDecodeError as e:
        raise VerificationError("cosignature is not UTF-8", reason=_COSIG_MALFORMED) from e
    witness, blob = _split_sig_line(text, _COSIG_MALFORMED)
    return _cosignature_from(witness, blob, _COSIG_MALFORMED)


def parse_checkpoint(data: bytes) -> SignedCheckpoint:
    """Parse a signed checkpoint note; checks structure only, trusts nothing.

    Steps: 1. split the body from the signature block at the first empty line (the body has
    none); 2. :func:`parse_body`; 3. the first signature line is the origin's (its key name is
    the origin line) and the only one with that name; 4. every further line is a well-formed
    cosignature from a distinct other member. Raises ``CHECKPOINT_MALFORMED``.
    """
    # 1.
    if len(data) > MAX_NOTE_BYTES:
        raise VerificationError(f"signed checkpoint over {MAX_NOTE_BYTES} bytes", reason=_MALFORMED)
    cut = data.find(b"\n\n")
    if cut < 0:
        raise VerificationError("signed checkpoint has no signature block", reason=_MALFORMED)
    body, block = data[: cut + 1], data[cut + 2 :]
    # 2.
    checkpoint = parse_body(body)
    # 3.
    if not block.endswith(b"\n"):
        raise VerificationError("signature lines must end with a newline", reason=_MALFORMED)
    try:
        lines = block[:-1].decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise VerificationError("signature lines are not UTF-8", reason=_MALFORMED) from e
    if len(lines) > 1 + MAX_COSIGNATURES:
        raise VerificationError(f"more than {MAX_COSIGNATURES} cosignatures", reason=_MALFORMED)
    signer, blob = _split_sig_line(lines[0], _MALFORMED)
    if signer != checkpoint.origin:
        raise VerificationError(
            f"the first signature must be the origin's ({checkpoint.origin_line}), "
            f"not {origin_line(signer)}",
            reason=_MALFORMED,
        )
    if len(blob) < KEY_ID_SIZE:
        raise VerificationError("origin signature is too short", reason=_MALFORMED)
    _check_der_length(blob[KEY_ID_SIZE:], _MALFORMED)
    # 4.
    cosignatures: list[Cosignature] = []
    for line in lines[1:]:
        witness, cblob = _split_sig_line(line, _MALFORMED)
        if witness == checkpoint.origin or any(c.witness == witness for c in cosignatures):
            raise VerificationError(
                f"a second signature line named {origin_line(witness)}", reason=_MALFORMED
            )
        cosignatures.append(_cosignature_from(witness, cblob, _MALFORMED))
    return SignedCheckpoint(
        checkpoint=checkpoint,
        key_id=blob[:KEY_ID_SIZE].hex(),
        signature=blob[KEY_ID_SIZE:],
        cosignatures=tuple(cosignatures),
    )


def verify_checkpoint(
    signed: bytes | SignedCheckpoint, manifest: TrustedManifest, *, at: datetime
) -> Checkpoint:
    """Verify the origin's signature on a checkpoint against the manifest, as of ``at``.

    Cosignature lines are parsed but not verified here (see :func:`verified_cosigners`); like
    C2SP's rule to ignore unknown signatures, they never make a checkpoint invalid.

    Steps:

    1. Parse (``CHECKPOINT_MALFORMED``).
    2. The origin is a member (``UNKNOWN_NODE``): a log nobody vouches for is not witnessed.
    3. The key id resolves to a signing certificate listed in the manifest, not revoked and
       valid at ``at`` (``UNKNOWN_KEY``, ``REVOKED_KEY``, ``EXPIRED_KEY``).
    4. That certificate belongs to the origin (``CHECKPOINT_SIGNER_MISMATCH``): another member's
       valid key must not speak for this log.
    5. The signature verifies over ``CTX_CHECKPOINT ‖ body``, the received body bytes
       (``CHECKPOINT_BAD_SIGNATURE``).
    """
    # 1.
    if not isinstance(signed, SignedCheckpoint):
        signed = parse_checkpoint(signed)
    cp = signed.checkpoint
    # 2.
    manifest.member(cp.origin)
    # 3.
    key = manifest.signing_key(signed.key_id, at)
    # 4.
    if key.member != cp.origin:
        raise VerificationError(
            f"checkpoint of {cp.origin_line} is signed with a key of {key.member}",
            reason="CHECKPOINT_SIGNER_MISMATCH",
        )
    # 5.
    verify(
        key.public_key,
        signed.signature,
        CTX_CHECKPOINT,
        cp.body,
        reason="CHECKPOINT_BAD_SIGNATURE",
        what=f"checkpoint signature of {cp.origin_line}",
    )
    return cp


# --------------------------------------------------------------------------------------------
# Cosignatures
# --------------------------------------------------------------------------------------------


def _cosigned_message(checkpoint: Checkpoint, timestamp: int) -> bytes:
    return b"time %d\n" % timestamp + checkpoint.body


def cosign(
    signer: Signer, witness_code: str, checkpoint: Checkpoint, *, now: datetime
) -> Cosignature:
    """Cosign ``checkpoint`` as member ``witness_code`` at ``now``.

    Call it only after :func:`federation.witness.witness_update` accepted the checkpoint: a
    cosignature states "as of ``now``, this is the largest tree of this origin I have seen, and it
    extends everything I saw before".
    """
    if witness_code == checkpoint.origin:
        raise ValidationError("the origin cannot cosign its own checkpoint", reason="INVALID")
    timestamp = _unix_seconds(now)
    return Cosignature(
        witness=witness_code,
        key_id=signer.key_id,
        timestamp=timestamp,
        signature=signer.sign(CTX_COSIGNATURE, _cosigned_message(checkpoint, timestamp)),
    )


def verify_cosignature(
    cosignature: Cosignature | bytes,
    checkpoint: Checkpoint,
    manifest: TrustedManifest,
    *,
    at: datetime,
) -> str:
    """Verify a witness's cosignature over ``checkpoint``; returns the witness's member code.

    Steps:

    1. Parse a line if given bytes (``COSIGNATURE_MALFORMED``).
    2. The witness is not the origin (``COSIGNER_IS_ORIGIN``): a log vouching for itself adds
       nothing to its own signature.
    3. The witness is a member (``UNKNOWN_NODE``) and the key id resolves to a signing key valid
       at ``at`` (``UNKNOWN_KEY``, ``REVOKED_KEY``, ``EXPIRED_KEY``).
    4. The key belongs to the named witness (``COSIGNER_MISMATCH``), so one member cannot count
       twice towards a quorum.
    5. The signature verifies over ``CTX_COSIGNATURE ‖ "time <ts>\\n" ‖ body``
       (``COSIGNATURE_BAD_SIGNATURE``).
    """
    # 1.
    if not isinstance(cosignature, Cosignature):
        cosignature = parse_cosignature(cosignature)
    # 2.
    if cosignature.witness == checkpoint.origin:
        raise VerificationError(
            f"{checkpoint.origin} cannot cosign its own checkpoint", reason="COSIGNER_IS_ORIGIN"
        )
    # 3.
    manifest.member(cosignature.witness)
    key = manifest.signing_key(cosignature.key_id, at)
    # 4.
    if key.member != cosignature.witness:
        raise VerificationError(
            f"cosignature named {cosignature.witness} is made with a key of {key.member}",
            reason="COSIGNER_MISMATCH",
        )
    # 5.
    verify(
        key.public_key,
        cosignature.signature,
        CTX_COSIGNATURE,
        _cosigned_message(checkpoint, cosignature.timestamp),
        reason="COSIGNATURE_BAD_SIGNATURE",
        what=f"cosignature of {cosignature.witness} on {checkpoint.origin_line}",
    )
    return cosignature.witness


def verified_cosigners(
    signed: SignedCheckpoint, manifest: TrustedManifest, *, at: datetime
) -> frozenset[str]:
    """Members whose cosignatures on ``signed`` verify; the others are ignored, as C2SP asks.

    Ignoring rather than refusing matters: a relay that appends a bad cosignature must not be
    able to make a good checkpoint unusable. The origin signature is *not* checked here; verify
    it with :func:`verify_checkpoint` first.
    """
    good: set[str] = set()
    for c in signed.cosignatures:
        try:
            good.add(verify_cosignature(c, signed.checkpoint, manifest, at=at))
        except VerificationError:
            continue
    return frozenset(good)
