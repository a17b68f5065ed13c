"""Key compromise over real mutual TLS: revoke and renew, then what an attacker with the old key
can still do (nothing new) and what an honest redelivery still gets (its original receipt).

Each test makes a federation of its own, because revocation and renewal change it.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from node import pki
from tests.grpc.conftest import (
    JS,
    SH,
    Cluster,
    Federation,
    LoopRunner,
    ping_envelope,
)
from tests.security.conftest import snapshot

C = grpc.StatusCode


def _adopt(c: Cluster, code: str, serial: int) -> None:
    node = c[code]
    node.trust.refresh_from_file(node.clock())
    assert node.trust.current.serial == serial


def test_after_a_signing_key_is_revoked_only_exact_redeliveries_get_a_receipt(
    new_federation: Callable[..., Federation], runner: LoopRunner
) -> None:
    """A stolen signing key stops working the moment the revoking manifest is adopted; an
    envelope accepted before gets its original receipt again and changes nothing (§6, §8.1)."""
    fed = new_federation((SH, JS))
    with Cluster(fed, runner, [SH]) as c:
        node = c[SH]
        accepted = ping_envelope(fed.signer(JS), JS, SH, note="before the compromise")
        first = c.call(SH, accepted)
        assert first.code is C.OK and first.response
        serial = format(fed.sign_cert(JS).serial_number, "x")
        _adopt(c, SH, pki.revoke(fed.root, serial, reason="key compromise"))

        before = snapshot(node.engine)
        again = c.call(SH, accepted)
        assert (again.code, again.response) == (C.OK, first.response)
        assert snapshot(node.engine) == before

        forged = ping_envelope(fed.signer(JS), JS, SH, note="signed with the stolen key")
        c.refused(SH, forged, C.PERMISSION_DENIED, "REVOKED_KEY")
        assert snapshot(node.engine) == before


def test_compromised_tls_key_is_renewed_then_revoked_and_refused(
    new_federation: Callable[..., Federation], runner: LoopRunner
) -> None:
    """``pki renew`` gives 320000 a new TLS key; revoking the old certificate shuts out whoever
    copied the old key, while the node goes on with the new one."""
    fed = new_federation((SH, JS))
    with Cluster(fed, runner, [SH]) as c:
        stolen = fed.tls(JS)
        _, serial = pki.renew(fed.root, JS)
        _adopt(c, SH, serial)
        renewed = fed.tls(JS)
        assert renewed.sha256 != stolen.sha256
        env = ping_envelope(fed.signer(JS), JS, SH)
        assert c.call(SH, env, client=stolen).code is C.OK  # still listed until revoked
        _adopt(c, SH, pki.revoke(fed.root, stolen.serial, reason="key compromise"))
        c.refused(
            SH,
            ping_envelope(fed.signer(JS), JS, SH),
            C.UNAUTHENTICATED,
            "REVOKED_PEER",
            client=stolen,
        )
        assert c.call(SH, ping_envelope(fed.signer(JS), JS, SH), client=renewed).code is C.OK
