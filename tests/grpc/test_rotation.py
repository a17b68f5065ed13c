"""Trust changes while nodes run: TLS certificate renewal and manifest reload, no restart.

Each test mutates its federation directory, so each makes its own (``new_federation``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cccfed.v1 import federation_pb2, manifest_pb2
from federation.errors import VerificationError
from node import pki
from tests.grpc.conftest import (
    GET_MANIFEST,
    JS,
    SH,
    Cluster,
    Federation,
    LoopRunner,
    TlsPair,
    ping_envelope,
    presented_cert_sha256,
    utcnow,
)

C = grpc.StatusCode
#: No housekeeping during these tests: they decide exactly when each node reads changed files.
QUIET = 3600.0


def _der(pair: TlsPair) -> bytes:
    return x509.load_pem_x509_certificate(pair.cert_pem).public_bytes(serialization.Encoding.DER)


def presented(c: Cluster, server: str, client: str) -> str:
    """Fingerprint of the certificate ``server`` shows a new connection from ``client``."""
    fed = c.fed
    return c.run(
        asyncio.to_thread(
            presented_cert_sha256, fed.endpoint(server), fed.ca_path, fed.node_dir(client)
        )
    )


def adopt_everywhere(c: Cluster, serial: int) -> None:
    for node in c.nodes.values():
        adopted = node.trust.refresh_from_file(node.clock())
        assert adopted is not None and adopted.serial == serial, node.code
        assert node.trust.current.serial == serial


# --- TLS renewal ------------------------------------------------------------------------------


def test_renewed_certificate_is_served_and_used_without_restart(
    new_federation: Callable[..., Federation], runner: LoopRunner
) -> None:
    fed = new_federation((SH, JS))
    with Cluster(fed, runner, [SH, JS], manifest_refresh_seconds=QUIET) as c:
        a, b = c[SH], c[JS]
        old = fed.tls(JS)
        c.run(b.ping(SH))  # b's channel to a exists, built with the old identity
        c.run(a.ping(JS))
        assert presented(c, JS, SH) == old.sha256

        new_serial, manifest_serial = pki.renew(fed.root, JS)
        new = fed.tls(JS)
        assert new.serial == new_serial and new.sha256 != old.sha256
        adopt_everywhere(c, manifest_serial)
        # Peers now know both certificates as 320000's; the old one stays listed.
        for pair in (old, new):
            assert a.trust.current.peer_for_tls_cert(_der(pair), utcnow()).member == JS

        # 1. b's server shows the new certificate to new connections (checked first, before
        #    anything else reads the changed files).
        assert presented(c, JS, SH) == new.sha256
        # 2. b's outgoing calls still succeed.
        _, res = c.run(b.ping(SH))
        assert res.receipt.body.receiver_node == SH
        # 3. ...and they use the new certificate: with the old one revoked, they still work.
        revoked_serial = pki.revoke(fed.root, old.serial, reason="superseded")
        adopt_everywhere(c, revoked_serial)
        _, res = c.run(b.ping(SH))
        assert res.receipt.body.receiver_node == SH
        c.refused(
            SH, ping_envelope(fed.signer(JS), JS, SH), C.UNAUTHENTICATED, "REVOKED_PEER", client=old
        )
        # 4. Calls into b (whose server now presents the new certificate) still work.
        _, res = c.run(a.ping(JS))
        assert res.receipt.body.receiver_node == JS
        assert presented(c, JS, SH) == new.sha256


def test_server_presents_renewed_certificate_after_an_outgoing_call(
    new_federation: Callable[..., Federation], runner: LoopRunner
) -> None:
    fed = new_federation((SH, JS))
    with Cluster(fed, runner, [SH, JS], manifest_refresh_seconds=QUIET) as c:
        b = c[JS]
        old = fed.tls(JS)
        assert presented(c, JS, SH) == old.sha256
        _, manifest_serial = pki.renew(fed.root, JS)
        new = fed.tls(JS)
        adopt_everywhere(c, manifest_serial)
        _, res = c.run(b.ping(SH))  # the client side sees the renewed files first
        assert res.receipt.body.receiver_node == SH
        got = presented(c, JS, SH)
        assert got != old.sha256, "the server still presents the superseded certificate"
        assert got == new.sha256


def test_revoking_a_superseded_certificate_keeps_the_node_healthy(
    new_federation: Callable[..., Federation], runner: LoopRunner
) -> None:
    fed = new_federation((SH, JS))
    with Cluster(fed, runner, [SH, JS], manifest_refresh_seconds=QUIET) as c:
        b = c[JS]
        old = fed.tls(JS)
        _, manifest_serial = pki.renew(fed.root, JS)
        adopt_everywhere(c, manifest_serial)
        assert b.health_problems() == []
        adopt_everywhere(c, pki.revoke(fed.root, old.serial, reason="superseded"))
        _, res = c.run(b.ping(SH))  # the node works with its new certificate...
        assert res.receipt.body.receiver_node == SH
        assert b.health_problems() == []  # ...and should say so


# --- manifest reload --------------------------------------------------------------------------


def get_manifest(c: Cluster, server: str, client: str) -> bytes:
    req = federation_pb2.GetManifestRequest(known_serial=0).SerializeToString()
    out = c.call(server, req, client=client, method=GET_MANIFEST)
    assert out.code is C.OK and out.response is not None, out.details
    return out.response


def test_manifest_reload_adopts_newer_and_refuses_older_or_badly_signed(
    new_federation: Callable[..., Federation], runner: LoopRunner
) -> None:
    fed = new_federation((SH, JS))
    with Cluster(fed, runner, [SH], manifest_refresh_seconds=QUIET) as c:
        node = c[SH]
        first = node.trust.current
        old_raw = fed.manifest_path.read_bytes()
        assert get_manifest(c, SH, JS) == old_raw

        # A newer manifest written to the file is adopted without restart and served to peers.
        state = fed.fed_dir.load_state()
        fed.fed_dir.issue_manifest(state, utcnow())
        new_raw = fed.manifest_path.read_bytes()
        adopted = node.trust.refresh_from_file(node.clock())
        assert adopted is not None and adopted.serial == first.serial + 1
        assert node.trust.current.raw == new_raw
        assert get_manifest(c, SH, JS) == new_raw
        assert node.trust.refresh_from_file(node.clock()) is None  # unchanged file: no-op

        # An older one is refused...
        with pytest.raises(VerificationError) as ei:
            node.trust.adopt(old_raw, node.clock())
        assert ei.value.reason == "MANIFEST_ROLLBACK"
        pki.write_public(fed.manifest_path, old_raw)
        assert node.trust.refresh_from_file(node.clock()) is None

        # ...and so is a newer one not signed by the federation CA, or with a broken signature.
        body = manifest_pb2.Manifest()
        body.ParseFromString(manifest_pb2.SignedManifest.FromString(new_raw).manifest)
        body.serial += 1
        foreign_key, _ = pki.make_ca(utcnow())
        forged = pki.sign_manifest(foreign_key, body)
        signed = manifest_pb2.SignedManifest.FromString(
            pki.sign_manifest(fed.fed_dir.ca()[0], body)
        )
        signed.signature = signed.signature[:-1] + bytes([signed.signature[-1] ^ 1])
        broken = signed.SerializeToString()
        for bad in (forged, broken):
            with pytest.raises(VerificationError) as ei:
                node.trust.adopt(bad, node.clock())
            assert ei.value.reason == "MANIFEST_BAD_SIGNATURE"
            pki.write_public(fed.manifest_path, bad)
            assert node.trust.refresh_from_file(node.clock()) is None

        # The adopted manifest stays in force, and is still what the node serves.
        assert node.trust.current.raw == new_raw
        assert get_manifest(c, SH, JS) == new_raw
        assert c.call(SH, ping_envelope(fed.signer(JS), JS, SH)).code is C.OK
