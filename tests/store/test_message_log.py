"""The message log end to end: a real log built through the store, then tampered with.

``verify_store`` (and ``cccfed log verify``) must name the first bad record; export bundles must
verify offline and fail on any change to a record, the signed index or the file set; signatures
are judged by the keys valid when each record was written (revocation is not retroactive).
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine

from cccfed.v1 import federation_pb2, log_pb2
from federation import message_log as mlog
from federation.crypto import Signer, serial_hex
from federation.envelope import Opened, Policy, make_receipt, open_envelope, seal
from federation.errors import VerificationError
from federation.manifest import TrustedManifest, load_manifest
from node import cli, pki
from node.logbundle import ca_pem_of, export_bundle, verify_bundle, verify_store
from node.store.db import make_engine, migrate, transaction
from node.store.ops import (
    LOG,
    inbox_accept,
    outbox_claim,
    outbox_delivered,
    outbox_enqueue,
    record_manifest,
)

SH, JS = "310000", "320000"
STEP = timedelta(seconds=10)


# --- building a real log -----------------------------------------------------------------------


@dataclass(frozen=True)
class Parties:
    sh: Signer
    js: Signer
    manifest: TrustedManifest
    ca: x509.Certificate


def ping(signer: Signer, sender: str, recipient: str, at: datetime) -> bytes:
    return seal(
        signer,
        sender_node=sender,
        recipient_node=recipient,
        payload=federation_pb2.Ping(note=f"{sender}->{recipient} at {at.isoformat()}"),
        now=at,
    )


def opened(data: bytes, p: Parties, *, self_node: str, peer: str, at: datetime) -> Opened:
    return open_envelope(
        data, p.manifest, self_node=self_node, peer_node=peer, now=at, policy=Policy()
    )


def send(engine: Engine, p: Parties, at: datetime) -> tuple[int, Opened]:
    """Shanghai queues a ping to Jiangsu (1 record); returns the row and Jiangsu's view of it."""
    env = ping(p.sh, SH, JS, at)
    at_js = opened(env, p, self_node=JS, peer=SH, at=at)
    with transaction(engine) as s:
        row_id = outbox_enqueue(
            s,
            env,
            message_id=at_js.message_id,
            recipient_node=JS,
            service="Federation",
            kind=at_js.kind,
            now=at,
        )
    return row_id, at_js


def deliver(engine: Engine, p: Parties, row_id: int, at_js: Opened, at: datetime) -> None:
    """Jiangsu's receipt comes back (1 record)."""
    receipt = make_receipt(p.js, at_js, receiver_node=JS, received_at=at)
    with transaction(engine) as s:
        outbox_claim(s, replica="r", now=at, limit=100, lease=timedelta(minutes=5))
        assert outbox_delivered(
            s,
            row_id=row_id,
            message_id=at_js.message_id,
            recipient=JS,
            receipt=receipt,
            received_at=at,
            now=at,
        )


def receive(engine: Engine, p: Parties, at: datetime) -> bytes:
    """Jiangsu sends a ping that Shanghai accepts (2 records); returns the receipt."""
    got = opened(ping(p.js, JS, SH, at), p, self_node=SH, peer=JS, at=at)
    with transaction(engine) as s:
        return inbox_accept(s, got, signer=p.sh, self_node=SH, now=at)


def build_log(engine: Engine, p: Parties, manifest_bytes: bytes, start: datetime) -> int:
    """Eight records of every kind: sent/received envelopes and receipts."""
    with transaction(engine) as s:
        record_manifest(s, serial=p.manifest.serial, signed=manifest_bytes, now=start)
    t = [start + STEP * i for i in range(7)]
    r1, e1 = send(engine, p, t[1])  # 1 SENT ENVELOPE
    receive(engine, p, t[2])  # 2 RECEIVED ENVELOPE, 3 SENT RECEIPT
    r2, e2 = send(engine, p, t[3])  # 4
    deliver(engine, p, r1, e1, t[4])  # 5 RECEIVED RECEIPT
    receive(engine, p, t[5])  # 6, 7
    deliver(engine, p, r2, e2, t[6])  # 8
    return 8


@pytest.fixture
def parties(
    sh: Signer, js: Signer, trusted_manifest: TrustedManifest, ca_cert: x509.Certificate
) -> Parties:
    return Parties(sh, js, trusted_manifest, ca_cert)


@pytest.fixture
def log_engine(engine: Engine, parties: Parties, manifest_bytes: bytes, now: datetime) -> Engine:
    """A store holding a real eight-record log of node 310000."""
    assert build_log(engine, parties, manifest_bytes, now) == 8
    return engine


def set_column(engine: Engine, seq: int, **values: object) -> None:
    with engine.begin() as conn:
        assert conn.execute(update(LOG).where(LOG.c.seq == seq).values(**values)).rowcount == 1


def stored(engine: Engine, seq: int) -> tuple[bytes, bytes]:
    with engine.connect() as conn:
        row = conn.execute(select(LOG.c.record, LOG.c.record_hash).where(LOG.c.seq == seq)).one()
    return bytes(row.record), bytes(row.record_hash)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def refused(engine: Engine, ca: x509.Certificate) -> mlog.LogVerificationError:
    with pytest.raises(mlog.LogVerificationError) as ei:
        verify_store(engine, ca, SH)
    assert ei.value.reason == "LOG_INVALID"
    return ei.value


# --- verify_store --------------------------------------------------------------------------------


def test_untouched_log_verifies(log_engine: Engine, ca_cert: x509.Certificate) -> None:
    result = verify_store(log_engine, ca_cert, SH)
    assert (result.records, result.envelopes, result.receipts, result.last_seq) == (8, 4, 4, 8)
    assert bytes.fromhex(result.last_hash) == stored(log_engine, 8)[1]
    records = [log_pb2.LogRecord.FromString(stored(log_engine, k)[0]) for k in range(1, 9)]
    assert [(r.direction, r.type) for r in records] == [
        (mlog.SENT, mlog.ENVELOPE),
        (mlog.RECEIVED, mlog.ENVELOPE),
        (mlog.SENT, mlog.RECEIPT),
        (mlog.SENT, mlog.ENVELOPE),
        (mlog.RECEIVED, mlog.RECEIPT),
        (mlog.RECEIVED, mlog.ENVELOPE),
        (mlog.SENT, mlog.RECEIPT),
        (mlog.RECEIVED, mlog.RECEIPT),
    ]


def test_empty_log_verifies(engine: Engine, ca_cert: x509.Certificate) -> None:
    result = verify_store(engine, ca_cert, SH)
    assert (result.records, result.last_seq) == (0, 0)


@pytest.mark.parametrize("k", [1, 4, 8])
@pytest.mark.parametrize("offset", [0, -1, "data"])
def test_one_altered_record_byte_is_named(
    log_engine: Engine, ca_cert: x509.Certificate, k: int, offset: int | str
) -> None:
    raw, _ = stored(log_engine, k)
    at = raw.index(log_pb2.LogRecord.FromString(raw).data) + 40 if offset == "data" else offset
    assert isinstance(at, int)
    set_column(log_engine, k, record=flip(raw, at))
    err = refused(log_engine, ca_cert)
    assert err.seq == k
    assert f"record {k}:" in str(err)


@pytest.mark.parametrize("k", [1, 5, 8])
def test_altered_stored_hash_is_named(
    log_engine: Engine, ca_cert: x509.Certificate, k: int
) -> None:
    _, h = stored(log_engine, k)
    set_column(log_engine, k, record_hash=flip(h, 7))
    err = refused(log_engine, ca_cert)
    assert err.seq == k
    assert "stored hash" in str(err)


def test_rewritten_record_with_recomputed_hash_breaks_the_next_link(
    log_engine: Engine, ca_cert: x509.Certificate
) -> None:
    """A forger who also fixes the stored hash is caught by the next record's prev_hash."""
    raw, _ = stored(log_engine, 4)
    rec = log_pb2.LogRecord.FromString(raw)
    rec.peer_node = "330000"
    forged = rec.SerializeToString(deterministic=True)
    set_column(log_engine, 4, record=forged, record_hash=mlog.record_hash(forged))
    err = refused(log_engine, ca_cert)
    assert err.seq == 5  # the envelope inside still verifies; the next link does not
    assert "chain broken" in str(err)
    # Change nothing checkable inside but the time: the signature still verifies, the link fails.
    set_column(log_engine, 4, record=raw, record_hash=mlog.record_hash(raw))
    rec = log_pb2.LogRecord.FromString(raw)
    rec.recorded_at.FromSeconds(rec.recorded_at.seconds + 1)
    forged = rec.SerializeToString(deterministic=True)
    set_column(log_engine, 4, record=forged, record_hash=mlog.record_hash(forged))
    err = refused(log_engine, ca_cert)
    assert err.seq == 5
    assert "chain broken" in str(err)


def test_rewritten_last_record_with_recomputed_hash_fails_the_head(
    log_engine: Engine, ca_cert: x509.Certificate
) -> None:
    raw, _ = stored(log_engine, 8)
    rec = log_pb2.LogRecord.FromString(raw)
    rec.recorded_at.FromSeconds(rec.recorded_at.seconds + 1)
    forged = rec.SerializeToString(deterministic=True)
    set_column(log_engine, 8, record=forged, record_hash=mlog.record_hash(forged))
    err = refused(log_engine, ca_cert)
    assert err.seq == 8
    assert "head" in str(err)


def test_deleted_last_record_fails_the_head(log_engine: Engine, ca_cert: x509.Certificate) -> None:
    with log_engine.begin() as conn:
        conn.execute(delete(LOG).where(LOG.c.seq == 8))
    err = refused(log_engine, ca_cert)
    assert err.seq == 8
    assert "head does not match" in str(err)


def test_deleted_middle_record_names_the_gap(log_engine: Engine, ca_cert: x509.Certificate) -> None:
    with log_engine.begin() as conn:
        conn.execute(delete(LOG).where(LOG.c.seq == 3))
    err = refused(log_engine, ca_cert)
    assert err.seq == 4
    assert "expected record 3" in str(err)
    assert "missing" in str(err)


def test_swapped_records_are_named(log_engine: Engine, ca_cert: x509.Certificate) -> None:
    raw2, h2 = stored(log_engine, 2)
    raw3, h3 = stored(log_engine, 3)
    set_column(log_engine, 2, record=raw3, record_hash=h3)
    set_column(log_engine, 3, record=raw2, record_hash=h2)
    err = refused(log_engine, ca_cert)
    assert err.seq == 2


def test_log_without_its_manifests_fails(log_engine: Engine, ca_cert: x509.Certificate) -> None:
    """Signatures are checked against the manifests kept in the store, not taken on trust."""
    from node.store.ops import MANIFESTS

    with log_engine.begin() as conn:
        conn.execute(delete(MANIFESTS))
    err = refused(log_engine, ca_cert)
    assert err.seq == 1
    assert "UNKNOWN_KEY" in str(err)


# --- bundles -----------------------------------------------------------------------------------


def rewrite(src: Path, dst: Path, changes: dict[str, bytes | None]) -> None:
    """Copy a zip, replacing (bytes) or dropping (None) the named members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename in changes:
                data = changes[info.filename]
                if data is not None:
                    zout.writestr(info.filename, data)
            else:
                zout.writestr(info, zin.read(info.filename))


@pytest.fixture
def bundle(log_engine: Engine, parties: Parties, tmp_path: Path) -> Path:
    out = tmp_path / "export" / "log.zip"
    index = export_bundle(
        log_engine, ca_pem_of(parties.ca), parties.sh, SH, out, since=None, until=None
    )
    assert (index["first_seq"], index["last_seq"], index["records"]) == (1, 8, 8)
    return out


def test_bundle_verifies(bundle: Path, log_engine: Engine, ca_cert: x509.Certificate) -> None:
    index, result = verify_bundle(bundle)
    assert index["node"] == SH
    assert result == verify_store(log_engine, ca_cert, SH)
    with zipfile.ZipFile(bundle) as z:
        names = set(z.namelist())
        assert z.read("records/5.bin") == stored(log_engine, 5)[0]
    assert {"bundle.json", "bundle.sig", "ca.crt", "hashes.txt", "manifests/1.bin"} <= names
    assert {f"records/{k}.bin" for k in range(1, 9)} <= names


def test_partial_bundle_is_anchored(
    log_engine: Engine, parties: Parties, now: datetime, tmp_path: Path
) -> None:
    out = tmp_path / "part.zip"
    index = export_bundle(
        log_engine,
        ca_pem_of(parties.ca),
        parties.sh,
        SH,
        out,
        since=now + STEP * 3,
        until=now + STEP * 5,
    )
    assert (index["first_seq"], index["last_seq"]) == (4, 5)
    assert bytes.fromhex(index["prev_hash"]) == stored(log_engine, 3)[1]
    _, result = verify_bundle(out)
    assert (result.records, result.last_seq) == (2, 5)


@pytest.mark.parametrize("k", [1, 6, 8])
def test_bundle_with_an_altered_record_names_it(bundle: Path, tmp_path: Path, k: int) -> None:
    with zipfile.ZipFile(bundle) as z:
        raw = z.read(f"records/{k}.bin")
    bad = tmp_path / "bad.zip"
    rewrite(bundle, bad, {f"records/{k}.bin": flip(raw, len(raw) // 2)})
    with pytest.raises(mlog.LogVerificationError) as ei:
        verify_bundle(bad)
    assert ei.value.seq == k


def test_bundle_with_an_altered_index_fails_its_signature(bundle: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(bundle) as z:
        index = z.read("bundle.json")
    assert b'"records": 8' in index
    bad = tmp_path / "bad.zip"
    rewrite(bundle, bad, {"bundle.json": index.replace(b'"records": 8', b'"records": 9')})
    with pytest.raises(VerificationError) as ei:
        verify_bundle(bad)
    assert ei.value.reason == "BUNDLE_SIGNATURE"


def test_bundle_shortened_consistently_fails_its_signature(bundle: Path, tmp_path: Path) -> None:
    """Dropping the last record and editing the index to match is caught by the signature."""
    import json

    with zipfile.ZipFile(bundle) as z:
        index = json.loads(z.read("bundle.json"))
        hashes = z.read("hashes.txt").decode().splitlines()
    index.update(last_seq=7, records=7, last_hash=hashes[6].split()[1])
    bad = tmp_path / "bad.zip"
    rewrite(
        bundle,
        bad,
        {
            "bundle.json": json.dumps(index, ensure_ascii=False, indent=2).encode(),
            "records/8.bin": None,
            "hashes.txt": ("\n".join(hashes[:7]) + "\n").encode(),
        },
    )
    with pytest.raises(VerificationError) as ei:
        verify_bundle(bad)
    assert ei.value.reason == "BUNDLE_SIGNATURE"


@pytest.mark.parametrize(
    "missing",
    ["records/3.bin", "bundle.sig", "bundle.json", "hashes.txt", "ca.crt", "manifests/1.bin"],
)
def test_bundle_with_a_missing_file_is_malformed(
    bundle: Path, tmp_path: Path, missing: str
) -> None:
    bad = tmp_path / "bad.zip"
    rewrite(bundle, bad, {missing: None})
    with pytest.raises(VerificationError) as ei:
        verify_bundle(bad)
    assert ei.value.reason == "BUNDLE_MALFORMED"


def test_not_a_zip_is_malformed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(VerificationError) as ei:
        verify_bundle(bad)
    assert ei.value.reason == "BUNDLE_MALFORMED"


def test_bundle_corrupted_on_disk_is_refused_cleanly(bundle: Path, tmp_path: Path) -> None:
    data = bundle.read_bytes()
    with zipfile.ZipFile(bundle) as z:
        info = z.getinfo("records/4.bin")
    # Flip a byte inside the member's compressed data (after its local header).
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(flip(data, start + info.compress_size // 2))
    with pytest.raises(VerificationError):
        verify_bundle(bad)


# --- revocation is judged at the time of recording ----------------------------------------------


def test_key_revoked_before_recording_fails_while_earlier_records_pass(
    bare_engine: Engine,
    federation_dir: Path,
    signer_for: Callable[..., Signer],
    tmp_path: Path,
    now: datetime,
) -> None:
    root = tmp_path / "fed"
    shutil.copytree(federation_dir, root)
    ca = x509.load_pem_x509_certificate((root / "ca" / "ca.crt").read_bytes())
    m1_bytes = (root / "manifest.bin").read_bytes()
    m1 = load_manifest(m1_bytes, ca, now=now)
    p = Parties(signer_for(SH, root), signer_for(JS, root), m1, ca)
    engine = bare_engine
    migrate(engine)
    with transaction(engine) as s:
        record_manifest(s, serial=1, signed=m1_bytes, now=now)

    t1, t2, t3 = now + timedelta(minutes=1), now + timedelta(hours=1), now + timedelta(hours=2)
    receive(engine, p, t1)  # records 1, 2: Jiangsu's envelope, our receipt

    js_cert = x509.load_pem_x509_certificate((root / "nodes" / JS / "sign.crt").read_bytes())
    assert pki.revoke(root, serial_hex(js_cert), reason="key compromise", now=t2) == 2
    with transaction(engine) as s:
        record_manifest(s, serial=2, signed=(root / "manifest.bin").read_bytes(), now=t2)

    # The record written before the revocation still verifies with the revocation known.
    assert verify_store(engine, ca, SH).records == 2

    # A node still holding manifest 1 accepts a message signed with the revoked key.
    receive(engine, p, t3)  # records 3, 4
    err = refused(engine, ca)
    assert err.seq == 3
    assert "REVOKED_KEY" in str(err)
    assert isinstance(err.__cause__, VerificationError)
    assert err.__cause__.reason == "REVOKED_KEY"

    out = tmp_path / "log.zip"
    export_bundle(engine, ca_pem_of(ca), p.sh, SH, out, since=None, until=None)
    with pytest.raises(mlog.LogVerificationError) as ei:
        verify_bundle(out)
    assert ei.value.seq == 3
    assert "REVOKED_KEY" in str(ei.value)
    out2 = tmp_path / "early.zip"
    export_bundle(engine, ca_pem_of(ca), p.sh, SH, out2, since=None, until=t2)
    assert verify_bundle(out2)[1].records == 2


# --- the command line --------------------------------------------------------------------------


def test_cli_log_verify(
    tmp_path: Path,
    signer_for: Callable[..., Signer],
    now: datetime,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "fed"
    pki.init_federation(root, [SH, JS], base_port=47300, now=now)
    db = tmp_path / "cli-store.db"
    cfg = root / "nodes" / SH / "node.toml"
    text = cfg.read_text()
    assert 'store_url = "sqlite:///store.db"' in text
    cfg.write_text(text.replace("sqlite:///store.db", f"sqlite:///{db}"))

    ca = x509.load_pem_x509_certificate((root / "ca" / "ca.crt").read_bytes())
    m_bytes = (root / "manifest.bin").read_bytes()
    p = Parties(signer_for(SH, root), signer_for(JS, root), load_manifest(m_bytes, ca, now=now), ca)
    engine = make_engine(f"sqlite:///{db}")
    try:
        migrate(engine)
        assert build_log(engine, p, m_bytes, now) == 8

        assert cli.main(["log", "verify", "--config", str(cfg)]) == 0
        out, err = capsys.readouterr()
        assert out.startswith("message log OK: 8 records (4 envelopes, 4 receipts)")
        assert err == ""

        bundle = tmp_path / "cli.zip"
        assert cli.main(["log", "export", "--config", str(cfg), str(bundle)]) == 0
        assert cli.main(["log", "verify-bundle", str(bundle)]) == 0
        capsys.readouterr()

        raw, _ = stored(engine, 6)
        set_column(engine, 6, record=flip(raw, len(raw) - 3))
        assert cli.main(["log", "verify", "--config", str(cfg)]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        lines = err.splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("cccfed: error: record 6:")
        assert "[LOG_INVALID]" in lines[0]

        assert cli.main(["log", "verify", "--json", "--config", str(cfg)]) == 1
        assert capsys.readouterr().err.count("\n") == 1
    finally:
        engine.dispose()


def test_cli_verify_bundle_names_the_record(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with zipfile.ZipFile(bundle) as z:
        raw = z.read("records/2.bin")
    bad = tmp_path / "bad.zip"
    rewrite(bundle, bad, {"records/2.bin": flip(raw, 5)})
    assert cli.main(["log", "verify-bundle", str(bad)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cccfed: error: record 2:")
