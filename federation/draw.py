"""The verifiable random draw of experts (双随机: inspectors are drawn at random, guideline item 9).

Why this module exists: when a host bureau asks another province for supervision experts
(item 17), the experts must be drawn at random, and neither province alone may be able to choose
who goes. A random number generator on one node would let that node choose (rerun it until the
outcome suits). So both provinces contribute a random value, in an order that leaves neither a
choice, and the draw is a pure function of the two values that anyone holding the record can
recompute (:func:`verify_draw`).

Message order (commit-reveal; :mod:`federation.exchange` enforces it as a state machine)
=======================================================================================

1. **Request** (host → provider). The host draws a fresh 32-byte value ``h``
   (:func:`new_value`), keeps it secret, and sends ``commit(h)`` with the request.
2. **Proposal** (provider → host). Only after receiving ``commit(h)``, the provider computes
   who is eligible, fixes the candidates in fairness tiers (least recently sent first) and the
   number ``k`` to draw, draws its own fresh value ``p``, and sends tiers, ``k`` and ``p``
   *in clear*. It holds every proposed candidate for those dates until the host answers.
3. **Confirmation** (host → provider). The host reveals ``h`` and names the result it computed;
   the provider checks ``h`` against the commitment (:func:`check_reveal`) and recomputes the
   draw. From then on the result is final and the record verifiable. A host that *declines or
   cancels* a proposal must reveal ``h`` as well.
4. **Attendance confirmed** (provider → host): the drawn experts will attend.

Why this order is sound:

* The provider fixes ``p`` and the tiers knowing only ``commit(h)``, which hides ``h`` (32
  random bytes behind SHA-256), so it cannot predict the seed and cannot aim ``p`` or the tiers
  at an outcome.
* The host fixed ``h`` before seeing ``p`` or the tiers, and the commitment binds it (finding a
  second value with the same commitment means a SHA-256 collision), so the host cannot aim
  either.
* The provider needs no commitment of its own: it speaks second, after ``h`` is already fixed,
  and its value is fixed and revealed in the same signed message. A commitment matters only for a
  party whose value the other side could answer, and nobody answers ``p`` with a new value.
* What remains: the host, revealing last, can compute the outcome before answering and refuse
  it. Because every answer to a proposal must carry ``h``, a refusal puts the refused outcome on
  the record for anyone to recompute, and a proposal is drawn once — a new draw needs a new
  request. The provider's own influence is over eligibility (availability and conflicts are
  private to it), exercised before any seed exists and visible in the tiers it sent.
* A value must never be used twice: once revealed, a host value would let the provider predict
  the seed of a later request carrying the same commitment. The provider refuses a commitment it
  has already seen (``seen_commitments`` in :func:`federation.exchange.match`).

The draw itself: ``seed = SHA-256("cccfed.v1.draw-seed\\x00" ‖ h ‖ p)``; tiers are taken in
order; within a tier, candidates are ranked by ``SHA-256("cccfed.v1.draw-rank\\x00" ‖ seed ‖
expert_id)``, lowest first, and the first ``k`` overall are drawn. Every hash has its own
context string, so a value or digest made for one purpose never passes for another. ``h`` and
``p`` have a fixed length, so the concatenation is unambiguous.

Pure: no clock, no I/O; randomness is a parameter of :func:`new_value`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from federation.errors import ValidationError, VerificationError

__all__ = [
    "COMMIT_CONTEXT",
    "RANK_CONTEXT",
    "SEED_CONTEXT",
    "VALUE_BYTES",
    "DrawRecord",
    "check_draw",
    "check_reveal",
    "check_tiers",
    "commit",
    "draw",
    "new_value",
    "rank_key",
    "seed",
    "verify_draw",
]

COMMIT_CONTEXT: Final = b"cccfed.v1.draw-commit\x00"
"""Domain separation of a commitment to a draw value."""
SEED_CONTEXT: Final = b"cccfed.v1.draw-seed\x00"
"""Domain separation of the seed derived from the two revealed values."""
RANK_CONTEXT: Final = b"cccfed.v1.draw-rank\x00"
"""Domain separation of an expert's rank within a tier."""

VALUE_BYTES: Final = 32
"""Length of each side's value. Fixed and large on purpose: a short value could be found from
its commitment by trying them all, which would let the other side aim its own value."""

_DIGEST_BYTES: Final = 32
_MAX_ID_LENGTH: Final = 64


def _check_value(value: bytes, what: str) -> bytes:
    if len(value) != VALUE_BYTES:
        raise ValidationError(
            f"{what} must be {VALUE_BYTES} random bytes, got {len(value)}", reason="DRAW_VALUE"
        )
    return bytes(value)


def new_value(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> bytes:
    """Return a fresh value for one draw (one per request and side, never reused).

    ``random_bytes`` is injectable so that a test can replay a draw; the node uses the
    default, the operating system's CSPRNG.
    """
    return _check_value(random_bytes(VALUE_BYTES), "a draw value")


def commit(value: bytes) -> bytes:
    """The commitment to ``value``: ``SHA-256(COMMIT_CONTEXT ‖ value)`` (32 bytes).

    Raises :class:`~federation.errors.ValidationError` (``DRAW_VALUE``) unless ``value`` is
    :data:`VALUE_BYTES` long.
    """
    return hashlib.sha256(COMMIT_CONTEXT + _check_value(value, "a draw value")).digest()


def check_reveal(commitment: bytes, value: bytes) -> None:
    """Refuse a revealed ``value`` that is not the one ``commitment`` was made to.

    Raises :class:`~federation.errors.VerificationError` with reason ``REVEAL_MISMATCH`` (a value
    of the wrong length cannot match either).
    """
    if len(value) != VALUE_BYTES or len(commitment) != _DIGEST_BYTES:
        raise VerificationError(
            f"revealed draw value ({len(value)} bytes) or commitment ({len(commitment)} bytes) "
            f"has the wrong length; both must be {VALUE_BYTES} bytes",
            reason="REVEAL_MISMATCH",
        )
    # Constant time out of habit: nothing secret is compared, but it costs nothing.
    if not hmac.compare_digest(commit(value), commitment):
        raise VerificationError(
            "revealed draw value does not match its commitment "
            f"(commitment {commitment.hex()[:16]}…, SHA-256 of the revealed value "
            f"{commit(value).hex()[:16]}…)",
            reason="REVEAL_MISMATCH",
        )


def seed(host_value: bytes, provider_value: bytes) -> bytes:
    """The seed of a draw: ``SHA-256(SEED_CONTEXT ‖ host_value ‖ provider_value)``.

    The order of the arguments matters (host first), so that both sides derive the same seed.
    """
    host = _check_value(host_value, "the host's draw value")
    provider = _check_value(provider_value, "the provider's draw value")
    return hashlib.sha256(SEED_CONTEXT + host + provider).digest()


def rank_key(draw_seed: bytes, expert_id: str) -> bytes:
    """An expert's rank within its tier: ``SHA-256(RANK_CONTEXT ‖ seed ‖ expert_id)``."""
    return hashlib.sha256(RANK_CONTEXT + draw_seed + expert_id.encode("utf-8")).digest()


def check_tiers(tiers: Sequence[Sequence[str]], k: int) -> int:
    """Refuse malformed tiers or ``k`` (as :func:`draw` would); return the number of candidates.

    Lets a host check a proposal's tiers before it can compute the draw.
    """
    seen: set[str] = set()
    for tier in tiers:
        if isinstance(tier, str):
            raise ValidationError(
                "each tier must be a sequence of expert ids, not one string", reason="DRAW_TIERS"
            )
        if not tier:
            raise ValidationError("a fairness tier is empty", reason="DRAW_TIERS")
        for expert_id in tier:
            if not expert_id or len(expert_id) > _MAX_ID_LENGTH:
                raise ValidationError(
                    f"expert id {expert_id!r} must be 1 to {_MAX_ID_LENGTH} characters",
                    reason="DRAW_TIERS",
                )
            if expert_id in seen:
                raise ValidationError(
                    f"expert {expert_id!r} appears twice among the candidates",
                    reason="DRAW_TIERS",
                )
            seen.add(expert_id)
    if not 0 <= k <= len(seen):
        raise ValidationError(
            f"cannot draw {k} experts from {len(seen)} candidates", reason="DRAW_K"
        )
    return len(seen)


def draw(draw_seed: bytes, tiers: Sequence[Sequence[str]], k: int) -> list[str]:
    """Draw ``k`` expert ids from fairness ``tiers`` (earlier tiers first) with ``draw_seed``.

    Deterministic: the same seed, tiers and ``k`` give the same list, whatever the order of
    ids within a tier. The result is in draw order (tier by tier, lowest rank first).

    Raises :class:`~federation.errors.ValidationError`: ``DRAW_TIERS`` (an empty tier, an id
    twice), ``DRAW_K`` (``k`` negative or more than the candidates), ``DRAW_SEED``.
    """
    if len(draw_seed) != _DIGEST_BYTES:
        raise ValidationError(
            f"a draw seed is {_DIGEST_BYTES} bytes, got {len(draw_seed)}", reason="DRAW_SEED"
        )
    check_tiers(tiers, k)
    chosen: list[str] = []
    for tier in tiers:
        if len(chosen) == k:
            break
        # The id breaks a tie between equal digests, which would take a SHA-256 collision.
        ranked = sorted(tier, key=lambda expert_id: (rank_key(draw_seed, expert_id), expert_id))
        chosen.extend(ranked[: k - len(chosen)])
    return chosen


@dataclass(frozen=True, slots=True)
class DrawRecord:
    """Everything needed to recompute a draw, as both provinces keep it after confirmation.

    Build it from the signed messages (request, proposal, confirmation); :func:`verify_draw`
    recomputes it. Tiers are kept in the order the provider sent them: fairness order between
    tiers; the order within a tier does not matter.
    """

    request_id: str
    """The exchange the draw belongs to (for people; not part of any hash)."""
    host_commitment: bytes
    """``commit(host_value)``, sent with the request."""
    host_value: bytes
    """Revealed by the host with its answer to the proposal."""
    provider_value: bytes
    """Sent in clear with the proposal."""
    tiers: tuple[tuple[str, ...], ...]
    """The candidates the provider proposed, least recently sent first."""
    k: int
    """How many experts were drawn."""
    result: tuple[str, ...]
    """The expert ids drawn, in draw order."""

    @property
    def seed(self) -> bytes:
        """The seed derived from the two values."""
        return seed(self.host_value, self.provider_value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (bytes as lower-case hex)."""
        return {
            "request_id": self.request_id,
            "host_commitment": self.host_commitment.hex(),
            "host_value": self.host_value.hex(),
            "provider_value": self.provider_value.hex(),
            "tiers": [list(tier) for tier in self.tiers],
            "k": self.k,
            "result": list(self.result),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DrawRecord:
        """Read :meth:`to_dict` output; refuses anything else with ``INVALID_RECORD``."""
        try:
            tiers = tuple(tuple(_text_list(tier)) for tier in data["tiers"])
            record = cls(
                request_id=_text(data["request_id"]),
                host_commitment=bytes.fromhex(_text(data["host_commitment"])),
                host_value=bytes.fromhex(_text(data["host_value"])),
                provider_value=bytes.fromhex(_text(data["provider_value"])),
                tiers=tiers,
                k=_integer(data["k"]),
                result=tuple(_text_list(data["result"])),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValidationError(f"not a draw record: {e!r}", reason="INVALID_RECORD") from e
        return record


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _text_list(value: object) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"expected a list of strings, got {type(value).__name__}")
    return [_text(item) for item in value]


def check_draw(record: DrawRecord) -> None:
    """Recompute ``record`` and refuse it if anything does not hold.

    Steps, each for a reason:

    1. The host's value matches the commitment it sent before seeing the provider's value —
       otherwise the host could have picked it afterwards.
    2. The tiers and ``k`` are well formed — otherwise the recomputation below is meaningless.
    3. The draw recomputed from the two values equals the recorded result — the result is a
       function of the record and nothing else.

    Raises :class:`~federation.errors.VerificationError` with reason ``REVEAL_MISMATCH``,
    ``DRAW_MALFORMED`` or ``DRAW_MISMATCH``.
    """
    check_reveal(record.host_commitment, record.host_value)
    try:
        expected = draw(record.seed, record.tiers, record.k)
    except ValidationError as e:
        raise VerificationError(f"draw record is malformed: {e}", reason="DRAW_MALFORMED") from e
    if tuple(expected) != record.result:
        raise VerificationError(
            f"draw of {record.request_id}: recorded result {list(record.result)} differs from "
            f"the recomputed {expected}",
            reason="DRAW_MISMATCH",
        )


def verify_draw(record: DrawRecord) -> bool:
    """Whether ``record`` recomputes to its stored result (see :func:`check_draw` for why not)."""
    try:
        check_draw(record)
    except VerificationError:
        return False
    return True
