"""One order for a two-party conversation, the same on both nodes (pure).

A request's lifecycle is written by two parties at once: the requester (the request itself,
withdrawal, extension decisions, closing) and the responder (acceptance, progress, extension
requests, the reply, a refusal). Each party's own events reach the other in order (the outbox
delivers a conversation in order), but the two streams interleave differently on the two
nodes: a withdrawal and a reply can cross on the wire.

Each event therefore says how many of the *other* party's events its author had seen
(``seen``). That is a two-party vector clock: ``a`` happened before ``b`` when ``b``'s author
had seen ``a``. :func:`merge` orders the events of both streams consistently with that relation
and breaks ties between concurrent events by a fixed rule, so two nodes holding the same events
compute the same order — and, folding the same rules over it, the same state. An event that the
rules refuse at its place in that order is *void* on both nodes alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from federation.errors import ValidationError

Side = Literal["requester", "responder"]
S = TypeVar("S")
P = TypeVar("P")


@dataclass(frozen=True)
class Event(Generic[P]):
    """One event of a conversation.

    ``index`` is the event's place in its author's stream (0, 1, 2 …); ``seen`` is how many
    events of the other stream its author had applied when it created this one.
    """

    side: Side
    index: int
    seen: int
    payload: P


def _other(side: Side) -> Side:
    return "responder" if side == "requester" else "requester"


def check_stream(events: Sequence[Event[P]], side: Side) -> list[Event[P]]:
    """The events of one side, in index order, refusing gaps and duplicates."""
    own = sorted((e for e in events if e.side == side), key=lambda e: e.index)
    for expected, e in enumerate(own):
        if e.index != expected:
            raise ValidationError(
                f"{side} event {expected} is missing (have {e.index})", reason="EVENT_GAP"
            )
    return own


def merge(events: Sequence[Event[P]], *, first: Side = "requester") -> list[Event[P]]:
    """A total order of both streams, consistent with causality, identical on both nodes.

    Concurrent events (neither author had seen the other's) are ordered ``first`` side first.
    Each stream must be a prefix without gaps (see :func:`check_stream`); ``seen`` values may
    point past what is held (the other node knows more), which only means "after all of them".
    """
    req = check_stream(events, "requester")
    rsp = check_stream(events, "responder")
    out: list[Event[P]] = []
    i = k = 0
    while i < len(req) or k < len(rsp):
        if i == len(req):
            out.append(rsp[k])
            k += 1
            continue
        if k == len(rsp):
            out.append(req[i])
            i += 1
            continue
        r, s = req[i], rsp[k]
        r_after_s = r.seen > k  # r's author had seen s
        s_after_r = s.seen > i  # s's author had seen r
        if r_after_s and s_after_r:
            raise ValidationError(
                "events claim to have seen each other (inconsistent history)",
                reason="EVENT_CYCLE",
            )
        take_r = s_after_r or (not r_after_s and first == "requester")
        if take_r:
            out.append(r)
            i += 1
        else:
            out.append(s)
            k += 1
    return out


@dataclass(frozen=True)
class Folded(Generic[S, P]):
    state: S
    applied: tuple[Event[P], ...]
    void: tuple[Event[P], ...]


def fold(
    initial: S,
    events: Sequence[Event[P]],
    step: Callable[[S, Event[P]], S],
    *,
    first: Side = "requester",
) -> Folded[S, P]:
    """Apply ``step`` over the merged order; events it refuses become void, state unchanged."""
    state = initial
    applied: list[Event[P]] = []
    void: list[Event[P]] = []
    for e in merge(events, first=first):
        try:
            state = step(state, e)
        except ValidationError as err:
            if err.reason not in {"INVALID_TRANSITION", "INVALID_EVENT", "INVALID"}:
                raise
            void.append(e)
        else:
            applied.append(e)
    return Folded(state, tuple(applied), tuple(void))


def seen_count(events: Sequence[Event[P]], side: Side) -> int:
    """What a new event by ``side`` reports as ``seen``: the other stream's length held."""
    return len([e for e in events if e.side == _other(side)])
