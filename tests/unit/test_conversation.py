"""The two-party merge: causal, deterministic, independent of arrival order."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.conversation import Event, Side, fold, merge, seen_count
from federation.errors import ValidationError


def simulate(seed: int, steps: int) -> list[Event[str]]:
    """Two parties act at random; each side's events reach the other in order, late."""
    rnd = random.Random(seed)
    held: dict[Side, list[Event[str]]] = {"requester": [], "responder": []}
    in_flight: dict[Side, list[Event[str]]] = {"requester": [], "responder": []}  # to side
    counts = {"requester": 0, "responder": 0}
    everything: list[Event[str]] = []
    for _ in range(steps):
        side: Side = rnd.choice(["requester", "responder"])
        other: Side = "responder" if side == "requester" else "requester"
        if rnd.random() < 0.5 and in_flight[side]:
            held[side].append(in_flight[side].pop(0))  # deliver the oldest, FIFO
            continue
        e = Event(side, counts[side], seen_count(held[side], side), f"{side[:3]}{counts[side]}")
        counts[side] += 1
        held[side].append(e)
        in_flight[other].append(e)
        everything.append(e)
    return everything


def happened_before(a: Event[str], b: Event[str]) -> bool:
    if a.side == b.side:
        return a.index < b.index
    return b.seen > a.index


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 60))
def test_merge_is_a_linear_extension_of_causality(seed: int, steps: int) -> None:
    events = simulate(seed, steps)
    order = merge(events)
    assert sorted(order, key=id) == sorted(events, key=id)
    pos = {id(e): n for n, e in enumerate(order)}
    for a in events:
        for b in events:
            if happened_before(a, b):
                assert pos[id(a)] < pos[id(b)], (a, b)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 40), st.randoms())
def test_merge_does_not_depend_on_arrival_order(seed: int, steps: int, rnd: random.Random) -> None:
    events = simulate(seed, steps)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert merge(shuffled) == merge(events)


def test_concurrent_events_put_the_requester_first_unless_told_otherwise() -> None:
    r = Event("requester", 0, 0, "withdraw")
    s = Event("responder", 0, 0, "reply")
    assert [e.payload for e in merge([s, r])] == ["withdraw", "reply"]
    assert [e.payload for e in merge([s, r], first="responder")] == ["reply", "withdraw"]
    # once the responder had seen the withdrawal, its reply comes after it
    s2 = Event("responder", 0, 1, "reply")
    assert [e.payload for e in merge([s2, r], first="responder")] == ["withdraw", "reply"]


def test_gaps_and_cycles_are_refused() -> None:
    with pytest.raises(ValidationError) as gap:
        merge([Event("requester", 1, 0, "x")])
    assert gap.value.reason == "EVENT_GAP"
    with pytest.raises(ValidationError) as cycle:
        merge([Event("requester", 0, 1, "a"), Event("responder", 0, 1, "b")])
    assert cycle.value.reason == "EVENT_CYCLE"


def test_fold_voids_what_the_rules_refuse_and_keeps_going() -> None:
    def step(state: list[str], e: Event[str]) -> list[str]:
        if "closed" in state:
            raise ValidationError(f"{e.payload} after closing", reason="INVALID_TRANSITION")
        return [*state, e.payload]

    events = [
        Event("requester", 0, 0, "request"),
        Event("requester", 1, 0, "closed"),
        Event("responder", 0, 1, "reply"),  # concurrent with "closed": ordered after it
    ]
    start: list[str] = []
    folded = fold(start, events, step)
    assert folded.state == ["request", "closed"]
    assert [e.payload for e in folded.void] == ["reply"]

    def broken(state: list[str], e: Event[str]) -> list[str]:
        raise ValidationError("not a transition problem", reason="OTHER")

    with pytest.raises(ValidationError):
        fold(start, events, broken)
