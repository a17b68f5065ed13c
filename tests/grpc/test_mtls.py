"""Mutual TLS and peer identity through a real server: who may call, and as whom they may sign."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest

from tests.grpc.conftest import (
    GET_MANIFEST,
    JS,
    SH,
    ZJ,
    Cluster,
    Federation,
    LoopRunner,
    foreign_tls,
    ping_envelope,
    rows,
)

C = grpc.StatusCode


@pytest.fixture(scope="module")
def fed(new_federation: Callable[..., Federation]) -> Federation:
    return new_federation((SH, JS, ZJ))


@pytest.fixture(scope="module")
def cluster(fed: Federation, runner: LoopRunner) -> Iterator[Cluster]:
    """310000 serving; 320000 and 330000 call it as raw clients with their own files."""
    with Cluster(fed, runner, [SH]) as c:
        yield c


def test_listed_member_is_accepted(cluster: Cluster, fed: Federation) -> None:
    """The control for every refusal below: the same call with the member's own files works."""
    node = cluster[SH]
    before = rows(node.engine)
    out = cluster.call(SH, ping_envelope(fed.signer(JS), JS, SH), client=JS)
    assert out.code is C.OK and out.response
    assert rows(node.engine) == (before[0] + 1, before[1] + 2)


def test_client_certificate_from_another_ca_fails_the_handshake(
    cluster: Cluster, fed: Federation
) -> None:
    env = ping_envelope(fed.signer(JS), JS, SH)
    cluster.refused(SH, env, C.UNAVAILABLE, "", client=foreign_tls(JS))
    assert not cluster[SH].rejections.get("UNKNOWN_PEER")  # never reached the interceptor


def test_client_without_certificate_fails_the_handshake(cluster: Cluster, fed: Federation) -> None:
    env = ping_envelope(fed.signer(JS), JS, SH)
    cluster.refused(SH, env, C.UNAVAILABLE, "", client=None)


def test_unlisted_certificate_from_the_federation_ca_is_unknown_peer(
    cluster: Cluster, fed: Federation
) -> None:
    env = ping_envelope(fed.signer(JS), JS, SH)
    cluster.refused(SH, env, C.UNAUTHENTICATED, "UNKNOWN_PEER", client=fed.unlisted_tls(JS))


def test_unlisted_certificate_cannot_fetch_the_manifest_either(
    cluster: Cluster, fed: Federation
) -> None:
    """Identity is checked for every federation method, not only for envelope intake."""
    cluster.refused(
        SH, b"", C.UNAUTHENTICATED, "UNKNOWN_PEER", client=fed.unlisted_tls(JS), method=GET_MANIFEST
    )


def test_sender_other_than_tls_peer_is_sender_mismatch(cluster: Cluster, fed: Federation) -> None:
    """320000's TLS certificate, an envelope properly signed by and as 330000."""
    env = ping_envelope(fed.signer(ZJ), ZJ, SH)
    cluster.refused(SH, env, C.PERMISSION_DENIED, "SENDER_MISMATCH", client=JS)


def test_signing_key_of_another_node_is_key_sender_mismatch(
    cluster: Cluster, fed: Federation
) -> None:
    """320000's TLS certificate and 320000 as sender, but signed with 330000's key."""
    env = ping_envelope(fed.signer(ZJ), JS, SH)
    cluster.refused(SH, env, C.PERMISSION_DENIED, "KEY_SENDER_MISMATCH", client=JS)


def test_sender_bureau_of_another_province_is_sender_mismatch(
    cluster: Cluster, fed: Federation
) -> None:
    """320000 signing for Hangzhou's bureau (under 330000)."""
    env = ping_envelope(fed.signer(JS), JS, SH, sender_bureau="330100")
    cluster.refused(SH, env, C.PERMISSION_DENIED, "SENDER_MISMATCH", client=JS)


def test_revoked_tls_certificate_is_refused_after_manifest_reload(
    new_federation: Callable[..., Federation], runner: LoopRunner
) -> None:
    """Revocation is a trust change: its own federation, and the node adopts it without restart."""
    from node import pki

    fed = new_federation((SH, JS))
    with Cluster(fed, runner, [SH]) as c:
        node = c[SH]
        assert c.call(SH, ping_envelope(fed.signer(JS), JS, SH)).code is C.OK
        old_serial = node.trust.current.serial
        new_serial = pki.revoke(fed.root, fed.tls(JS).serial, reason="key compromise")
        adopted = node.trust.refresh_from_file(node.clock())
        assert adopted is not None and adopted.serial == new_serial > old_serial
        assert node.trust.current.serial == new_serial
        # A fresh, valid envelope; only the transport identity is revoked.
        env = ping_envelope(fed.signer(JS), JS, SH)
        c.refused(SH, env, C.UNAUTHENTICATED, "REVOKED_PEER", client=JS)


def test_client_verifies_the_server_as_the_member_it_calls(
    new_federation: Callable[..., Federation], runner: LoopRunner
) -> None:
    """A sender whose endpoint for 330000 leads to 310000's server (a wrong or hijacked
    endpoint) fails in the TLS handshake: the envelope never reaches 310000 at all."""
    from datetime import UTC, datetime

    from federation.manifest import node_tls_name
    from node.status import RemoteError

    fed = new_federation((SH, JS, ZJ))
    with Cluster(fed, runner, [SH, JS]) as c:
        js, sh = c[JS], c[SH]
        assert js.trust.current.tls_name(ZJ, datetime.now(UTC)) == node_tls_name(ZJ)
        # The control: the right server for the right member works through the pinned name.
        receipt = c.run(js.peers.deliver(SH, "federation", ping_envelope(fed.signer(JS), JS, SH)))
        assert receipt
        before, refused = rows(sh.engine), dict(sh.rejections)
        js.peers.endpoints[ZJ] = fed.endpoint(SH)  # 330000's traffic now reaches 310000
        env = ping_envelope(fed.signer(JS), JS, ZJ, note="for Zhejiang only")
        with pytest.raises(RemoteError) as e:
            c.run(js.peers.deliver(ZJ, "federation", env))
        assert e.value.code is C.UNAVAILABLE  # the handshake failed: no call was made
        assert rows(sh.engine) == before
        assert sh.rejections == refused  # 310000 never saw the envelope (no WRONG_RECIPIENT)
