"""Tests for federation.checkpoint: the note format, every refusal, cosignatures.

Signers and manifests come from the session federation of tests/conftest.py; tests that revoke a
key work on a copy of it.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.checkpoint import (
    MAX_SIZE,
    Checkpoint,
    Cosignature,
    SignedCheckpoint,
    cosign,
    format_body,
    make_checkpoint,
    parse_body,
    parse_checkpoint,
    parse_cosignature,
    verified_cosigners,
    verify_checkpoint,
    verify_cosignature,
)
from federation.crypto import CTX_CHECKPOINT, CTX_COSIGNATURE, Signer
from federation.errors import FederationError, ValidationError, VerificationError
from federation.manifest import TrustedManifest
from federation.merkle import EMPTY_ROOT
from node import pki

SH, JS, ZJ, AH = "310000", "320000", "330000", "340000"
ROOT = hashlib.sha256(b"a root").digest()
FAST = settings(max_examples=200, deadline=None)

SignerFor = Callable[..., Signer]


def reason_of(ei: pytest.ExceptionInfo[VerificationError]) -> str:
    return ei.value.reason


def note(body: bytes, signer: Signer, *, name: str = SH, context: bytes = CTX_CHECKPOINT) -> bytes:
    """A signed note assembled by hand, so that malformed bodies carry valid signatures."""
    blob = bytes.fromhex(signer.key_id) + signer.sign(context, body)
    return body + f"\n\u2014 cccfed.v1/{name} ".encode() + base64.b64encode(blob) + b"\n"


@pytest.fixture(scope="module")
def sh(signer_for: SignerFor) -> Signer:
    return signer_for(SH)


@pytest.fixture(scope="module")
def signed(sh: Signer, now: datetime) -> bytes:
    return make_checkpoint(sh, SH, 5, ROOT, now=now)


# --------------------------------------------------------------------------------------------
# Format and round trip
# --------------------------------------------------------------------------------------------


def test_body_is_the_c2sp_note_text(now: datetime) -> None:
    ts = int(now.timestamp())
    body = format_body(SH, 5, ROOT, timestamp=ts, extensions=("note x",))
    assert body == (b"cccfed.v1/310000\n5\n" + base64.b64encode(ROOT) + b"\ntime %d\nnote x\n" % ts)
    cp = parse_body(body)
    assert (cp.origin, cp.size, cp.root, cp.timestamp) == (SH, 5, ROOT, ts)
    assert cp.extensions == ("note x",)
    assert cp.origin_line == "cccfed.v1/310000"
    assert cp.signed_at == now


def test_round_trip(
    signed: bytes, sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    body, _, sigs = signed.partition(b"\n\n")
    assert sigs.startswith("\u2014 cccfed.v1/310000 ".encode()) and sigs.endswith(b"\n")
    assert sigs.count(b"\n") == 1
    parsed = parse_checkpoint(signed)
    assert parsed.key_id == sh.key_id
    assert parsed.cosignatures == ()
    assert parsed.checkpoint.body == body + b"\n"
    assert parsed.to_bytes() == signed
    cp = verify_checkpoint(signed, trusted_manifest, at=now)
    assert (cp.origin, cp.size, cp.root) == (SH, 5, ROOT)
    assert verify_checkpoint(parsed, trusted_manifest, at=now) == cp


def test_empty_tree(sh: Signer, trusted_manifest: TrustedManifest, now: datetime) -> None:
    cp = verify_checkpoint(
        make_checkpoint(sh, SH, 0, EMPTY_ROOT, now=now), trusted_manifest, at=now
    )
    assert (cp.size, cp.root) == (0, EMPTY_ROOT)


@pytest.mark.parametrize(
    ("origin", "size", "root", "extensions"),
    [
        ("31000", 1, ROOT, ()),
        ("310000\n1", 1, ROOT, ()),
        (SH, -1, ROOT, ()),
        (SH, MAX_SIZE + 1, ROOT, ()),
        (SH, 1, ROOT[:31], ()),
        (SH, 0, ROOT, ()),
        (SH, 1, ROOT, ("",)),
        (SH, 1, ROOT, ("a\nb",)),
        (SH, 1, ROOT, ("检查",)),
        (SH, 1, ROOT, ("x",) * 9),
    ],
)
def test_format_body_refuses_what_parse_would(
    origin: str, size: int, root: bytes, extensions: tuple[str, ...]
) -> None:
    with pytest.raises(ValidationError):
        format_body(origin, size, root, timestamp=1, extensions=extensions)


def test_make_checkpoint_needs_an_aware_time(sh: Signer, now: datetime) -> None:
    with pytest.raises(ValidationError):
        make_checkpoint(sh, SH, 1, ROOT, now=now.replace(tzinfo=None))


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------


def test_every_single_byte_change_is_refused(
    signed: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    """Flip each bit of each byte in turn: body, key name, key id or signature, all refused."""
    reasons: set[str] = set()
    for i in range(len(signed)):
        for bit in (0x01, 0x20, 0x80):
            tampered = signed[:i] + bytes([signed[i] ^ bit]) + signed[i + 1 :]
            with pytest.raises(VerificationError) as ei:
                verify_checkpoint(tampered, trusted_manifest, at=now)
            reasons.add(reason_of(ei))
    assert reasons <= {"CHECKPOINT_MALFORMED", "CHECKPOINT_BAD_SIGNATURE", "UNKNOWN_KEY"}
    assert {"CHECKPOINT_MALFORMED", "CHECKPOINT_BAD_SIGNATURE", "UNKNOWN_KEY"} <= reasons


def test_key_id_and_signature_parts_are_each_bound(
    signed: bytes, signer_for: SignerFor, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    parsed = parse_checkpoint(signed)
    cases = {
        "UNKNOWN_KEY": SignedCheckpoint(parsed.checkpoint, "ab" * 32, parsed.signature),
        "CHECKPOINT_SIGNER_MISMATCH": SignedCheckpoint(
            parsed.checkpoint, signer_for(JS).key_id, parsed.signature
        ),
        "CHECKPOINT_BAD_SIGNATURE": SignedCheckpoint(
            parsed.checkpoint,
            parsed.key_id,
            parsed.signature[:-1] + bytes([parsed.signature[-1] ^ 1]),
        ),
    }
    for reason, bad in cases.items():
        with pytest.raises(VerificationError) as ei:
            verify_checkpoint(bad.to_bytes(), trusted_manifest, at=now)
        assert reason_of(ei) == reason


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\n",
        b"cccfed.v1/310000\n5\n",
        b"trailing",
    ],
)
def test_truncated_or_garbage_is_malformed(
    data: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    with pytest.raises(VerificationError) as ei:
        verify_checkpoint(data, trusted_manifest, at=now)
    assert reason_of(ei) == "CHECKPOINT_MALFORMED"


def test_cut_or_extended_notes_are_malformed(
    signed: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    for bad in (signed[:-1], signed + b"x", signed + b"\n", b"\n" + signed, signed + signed):
        with pytest.raises(VerificationError) as ei:
            verify_checkpoint(bad, trusted_manifest, at=now)
        assert reason_of(ei) == "CHECKPOINT_MALFORMED"


R64 = base64.b64encode(ROOT)
E64 = base64.b64encode(EMPTY_ROOT)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"cccfed.v1/310000\n5\n" + R64 + b"\n", id="no-time-line"),
        pytest.param(b"cccfed.v1/310000\n05\n" + R64 + b"\ntime 1\n", id="leading-zero"),
        pytest.param(b"cccfed.v1/310000\n+5\n" + R64 + b"\ntime 1\n", id="plus-sign"),
        pytest.param(b"cccfed.v1/310000\n 5\n" + R64 + b"\ntime 1\n", id="space"),
        pytest.param(
            "cccfed.v1/310000\n\u0665\n".encode() + R64 + b"\ntime 1\n", id="arabic-digit"
        ),
        pytest.param(
            b"cccfed.v1/310000\n9223372036854775808\n" + R64 + b"\ntime 1\n", id="size-2^63"
        ),
        pytest.param(b"cccfed.v1/310000\n5\n" + R64[:-2] + b"\ntime 1\n", id="short-b64"),
        pytest.param(
            b"cccfed.v1/310000\n5\n" + base64.b64encode(ROOT[:31]) + b"\ntime 1\n",
            id="31-byte-root",
        ),
        pytest.param(b"cccfed.v1/310000\n5\n" + R64[:-2] + b"1=\ntime 1\n", id="noncanonical-b64"),
        pytest.param(
            b"cccfed.v1/310000\n5\n" + base64.urlsafe_b64encode(b"\xff" * 32) + b"\ntime 1\n",
            id="urlsafe-b64",
        ),
        pytest.param(b"cccfed.v1/310000\n0\n" + R64 + b"\ntime 1\n", id="size-0-nonempty-root"),
        pytest.param(b"cccfed.v1/310000\r\n5\n" + R64 + b"\ntime 1\n", id="crlf"),
        pytest.param(b"cccfed.v1/310000\n5\n" + R64 + b"\ntime 01\n", id="time-leading-zero"),
        pytest.param(b"cccfed.v1/310000\n5\n" + R64 + b"\ntime 1\n\nx\n", id="empty-extension"),
        pytest.param(
            b"cccfed.v1/310000\n5\n" + R64 + b"\ntime 253402300800\n", id="time-after-9999"
        ),
        pytest.param(b"cccfed.v1/310000\n5\n" + R64 + b"\ntime 1\nx\ty\n", id="tab"),
        pytest.param(b"cccfed.v2/310000\n5\n" + R64 + b"\ntime 1\n", id="wrong-prefix"),
        pytest.param(b"cccfed.v1/31000\n5\n" + R64 + b"\ntime 1\n", id="short-code"),
        pytest.param(b"cccfed.v1/310000\n5\n" + R64 + b"\ntime 1", id="no-final-newline"),
        pytest.param(
            b"cccfed.v1/310000\n5\n" + R64 + b"\ntime 1\n" + b"x\n" * 9, id="many-extensions"
        ),
        pytest.param(
            b"cccfed.v1/310000\n5\n" + R64 + b"\ntime 1\n" + b"x" * 300 + b"\n",
            id="long-extension",
        ),
    ],
)
def test_malformed_bodies_are_refused_even_when_signed(
    body: bytes, sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    with pytest.raises(VerificationError) as ei:
        verify_checkpoint(note(body, sh), trusted_manifest, at=now)
    assert reason_of(ei) == "CHECKPOINT_MALFORMED"


def test_well_formed_hand_made_note_verifies(
    sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    """The control for the table above: the same construction with a good body passes."""
    body = b"cccfed.v1/310000\n0\n" + E64 + b"\ntime 1\nsome extension\n"
    assert verify_checkpoint(note(body, sh), trusted_manifest, at=now).extensions == (
        "some extension",
    )


def test_signature_block_rules(
    signed: bytes,
    sh: Signer,
    signer_for: SignerFor,
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    parsed = parse_checkpoint(signed)
    cp = parsed.checkpoint
    js_cosig = cosign(signer_for(JS), JS, cp, now=now).to_line()
    zj_cosig = cosign(signer_for(ZJ), ZJ, cp, now=now).to_line()
    origin_line = signed[len(cp.body) + 1 :]
    cases = {
        "no-signature": cp.body,
        "empty-block": cp.body + b"\n",
        "cosignature-first": cp.body + b"\n" + js_cosig + origin_line,
        "origin-twice": signed + origin_line,
        "same-witness-twice": signed + js_cosig + js_cosig,
        "named-by-another": note(cp.body, sh, name=JS),
        "blank-line-in-block": signed + b"\n" + js_cosig,
        "hyphen-not-em-dash": cp.body + b"\n- " + origin_line[len("\u2014 ".encode()) :],
        "extra-field": signed[:-1] + b" x\n",
        "short-signature": cp.body
        + "\n\u2014 cccfed.v1/310000 ".encode()
        + base64.b64encode(bytes.fromhex(sh.key_id) + b"\x30\x00")
        + b"\n",
    }
    for name, data in cases.items():
        with pytest.raises(VerificationError) as ei:
            verify_checkpoint(data, trusted_manifest, at=now)
        assert reason_of(ei) == "CHECKPOINT_MALFORMED", name
    # Two distinct cosigners after the origin's line are fine.
    assert verify_checkpoint(signed + js_cosig + zj_cosig, trusted_manifest, at=now) == cp


def test_origin_must_be_a_member(
    sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    body = b"cccfed.v1/360000\n0\n" + E64 + b"\ntime 1\n"
    with pytest.raises(VerificationError) as ei:
        verify_checkpoint(note(body, sh, name="360000"), trusted_manifest, at=now)
    assert reason_of(ei) == "UNKNOWN_NODE"


def test_another_members_key_cannot_sign_for_the_origin(
    signer_for: SignerFor, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    forged = make_checkpoint(signer_for(JS), SH, 5, ROOT, now=now)
    with pytest.raises(VerificationError) as ei:
        verify_checkpoint(forged, trusted_manifest, at=now)
    assert reason_of(ei) == "CHECKPOINT_SIGNER_MISMATCH"


def test_key_outside_the_manifest_is_unknown(
    trusted_manifest: TrustedManifest, now: datetime
) -> None:
    rogue = Signer(ec.generate_private_key(ec.SECP256R1()), hashlib.sha256(b"rogue").hexdigest())
    with pytest.raises(VerificationError) as ei:
        verify_checkpoint(make_checkpoint(rogue, SH, 5, ROOT, now=now), trusted_manifest, at=now)
    assert reason_of(ei) == "UNKNOWN_KEY"


def test_signature_for_another_purpose_is_refused(
    sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    body = format_body(SH, 5, ROOT, timestamp=1)
    with pytest.raises(VerificationError) as ei:
        verify_checkpoint(note(body, sh, context=CTX_COSIGNATURE), trusted_manifest, at=now)
    assert reason_of(ei) == "CHECKPOINT_BAD_SIGNATURE"


def test_expired_or_not_yet_valid_key(
    signed: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    for at in (now + timedelta(days=400), now - timedelta(days=1)):
        with pytest.raises(VerificationError) as ei:
            verify_checkpoint(signed, trusted_manifest, at=at)
        assert reason_of(ei) == "EXPIRED_KEY"


def test_checkpoint_signed_by_a_revoked_key_is_refused(
    federation_dir: Path,
    tmp_path: Path,
    signed: bytes,
    sh: Signer,
    load_trusted: Callable[..., TrustedManifest],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    root = tmp_path / "fed"
    shutil.copytree(federation_dir, root)
    pki.revoke(root, trusted_manifest.keys[sh.key_id].serial, reason="key compromise", now=now)
    revoked = load_trusted(root)
    with pytest.raises(VerificationError) as ei:
        verify_checkpoint(signed, revoked, at=now)
    assert reason_of(ei) == "REVOKED_KEY"
    assert "key compromise" in str(ei.value)
    # The session manifest still accepts it.
    assert verify_checkpoint(signed, trusted_manifest, at=now).size == 5


# --------------------------------------------------------------------------------------------
# Cosignatures
# --------------------------------------------------------------------------------------------


def test_cosign_round_trip(
    signed: bytes, signer_for: SignerFor, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    parsed = parse_checkpoint(signed)
    cp = parsed.checkpoint
    c = cosign(signer_for(JS), JS, cp, now=now)
    assert c.timestamp == int(now.timestamp())
    line = c.to_line()
    assert line.startswith("\u2014 cccfed.v1/320000 ".encode())
    assert parse_cosignature(line) == c
    assert verify_cosignature(c, cp, trusted_manifest, at=now) == JS
    assert verify_cosignature(line, cp, trusted_manifest, at=now) == JS

    zj = cosign(signer_for(ZJ), ZJ, cp, now=now)
    cosigned = parsed.with_cosignatures([zj, c])
    data = cosigned.to_bytes()
    assert data == signed + c.to_line() + zj.to_line()  # sorted by witness
    again = parse_checkpoint(data)
    assert again == cosigned
    assert again.to_bytes(cosignatures=False) == signed
    assert verified_cosigners(again, trusted_manifest, at=now) == {JS, ZJ}
    assert verify_checkpoint(data, trusted_manifest, at=now) == cp


def test_newer_cosignature_replaces_the_older(
    signed: bytes, signer_for: SignerFor, now: datetime
) -> None:
    parsed = parse_checkpoint(signed)
    old = cosign(signer_for(JS), JS, parsed.checkpoint, now=now)
    new = cosign(signer_for(JS), JS, parsed.checkpoint, now=now + timedelta(minutes=1))
    assert parsed.with_cosignatures([new]).with_cosignatures([old]).cosignatures == (new,)
    with pytest.raises(ValidationError):
        parsed.with_cosignatures([Cosignature(SH, old.key_id, old.timestamp, old.signature)])


def test_cosignature_refusals(
    signed: bytes,
    sh: Signer,
    signer_for: SignerFor,
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    parsed = parse_checkpoint(signed)
    cp = parsed.checkpoint
    js = cosign(signer_for(JS), JS, cp, now=now)
    other = parse_checkpoint(make_checkpoint(sh, SH, 6, ROOT, now=now)).checkpoint
    with pytest.raises(ValidationError):
        cosign(sh, SH, cp, now=now)
    cases: list[tuple[str, Cosignature | bytes, Checkpoint]] = [
        ("COSIGNER_IS_ORIGIN", Cosignature(SH, sh.key_id, js.timestamp, js.signature), cp),
        ("COSIGNER_MISMATCH", Cosignature(ZJ, js.key_id, js.timestamp, js.signature), cp),
        ("UNKNOWN_NODE", Cosignature("360000", js.key_id, js.timestamp, js.signature), cp),
        ("UNKNOWN_KEY", Cosignature(JS, "cd" * 32, js.timestamp, js.signature), cp),
        ("COSIGNATURE_BAD_SIGNATURE", js, other),
        (
            "COSIGNATURE_BAD_SIGNATURE",
            Cosignature(JS, js.key_id, js.timestamp + 1, js.signature),
            cp,
        ),
        ("COSIGNATURE_MALFORMED", js.to_line()[:-1], cp),
        ("COSIGNATURE_MALFORMED", js.to_line() + js.to_line(), cp),
        ("COSIGNATURE_MALFORMED", b"\xff\n", cp),
    ]
    for reason, c, target in cases:
        with pytest.raises(VerificationError) as ei:
            verify_cosignature(c, target, trusted_manifest, at=now)
        assert reason_of(ei) == reason
    # A bad cosignature in a note is ignored, not fatal.
    bad = Cosignature(ZJ, signer_for(ZJ).key_id, js.timestamp, js.signature)
    noted = parse_checkpoint(parsed.with_cosignatures([js, bad]).to_bytes())
    assert verified_cosigners(noted, trusted_manifest, at=now) == {JS}


def test_cosignature_by_a_revoked_witness_key(
    federation_dir: Path,
    tmp_path: Path,
    signed: bytes,
    signer_for: SignerFor,
    load_trusted: Callable[..., TrustedManifest],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    root = tmp_path / "fed"
    shutil.copytree(federation_dir, root)
    js = signer_for(JS)
    pki.revoke(root, trusted_manifest.keys[js.key_id].serial, now=now)
    cp = parse_checkpoint(signed).checkpoint
    with pytest.raises(VerificationError) as ei:
        verify_cosignature(cosign(js, JS, cp, now=now), cp, load_trusted(root), at=now)
    assert reason_of(ei) == "REVOKED_KEY"


# --------------------------------------------------------------------------------------------
# Properties: bad input is always the project's own error
# --------------------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise_anything_else(data: bytes) -> None:
    with pytest.raises(VerificationError):
        parse_checkpoint(data)
    with pytest.raises(VerificationError):
        parse_cosignature(data)


@FAST
@given(data=st.data())
def test_mutated_notes_are_refused_or_unchanged(
    signed: bytes,
    trusted_manifest: TrustedManifest,
    now: datetime,
    data: st.DataObject,
) -> None:
    i = data.draw(st.integers(0, len(signed)))
    cut = data.draw(st.integers(0, 4))
    insert = data.draw(st.binary(max_size=4))
    mutated = signed[:i] + insert + signed[i + cut :]
    try:
        cp = verify_checkpoint(mutated, trusted_manifest, at=now)
    except FederationError as e:
        assert isinstance(e, VerificationError)
    else:
        assert mutated == signed
        assert cp.size == 5
