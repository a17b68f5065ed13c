"""Fail points for crash tests: make a node process die at an exact moment.

``CCCFED_FAILPOINTS="after_send=3,before_commit=1"`` kills the process with SIGKILL the 3rd time
it passes ``after_send`` (and the 1st time for ``before_commit``). Unset in production, a fail
point costs one dictionary lookup. The points:

- ``after_claim``: an outbox row is committed as ``sending``, nothing sent yet.
- ``after_send``: the peer has answered with a receipt, which is not stored yet.
- ``after_receive_commit``: an inbox message is committed, its receipt not yet returned.
- ``reconcile_after_origin``: the entries one origin's log pulled by reconciliation are
  committed, the other origins of the answer not yet.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _parse(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for part in spec.split(","):
        name, _, nth = part.strip().partition("=")
        if name:
            points[name] = int(nth or "1")
    return points


_POINTS = _parse(os.environ.get("CCCFED_FAILPOINTS", ""))


def failpoint(name: str) -> None:
    nth = _POINTS.get(name)
    if nth is None:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= nth:
        os.kill(os.getpid(), signal.SIGKILL)
