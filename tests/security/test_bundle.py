"""Hostile log bundles given to ``cccfed log verify-bundle``.

A bundle is a ZIP file that anyone may hand to an auditor. The real one here is exported from a
real node's store after a real signed Ping over mutual TLS; the hostile ones are that bundle with
entries added or replaced, or bundles made from scratch under the attacker's own CA (which is
all a bundle without ``--ca`` can prove, see PROTOCOL.md §15 item 10). Verification never
extracts anything and must end in a clear refusal, never in another exception.
"""

from __future__ import annotations

import io
import json
import stat
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cccfed.v1 import log_pb2, manifest_pb2
from federation import message_log as mlog
from federation.crypto import Signer
from federation.errors import VerificationError
from node import cli, pki
from node.logbundle import CTX_BUNDLE, MAX_RECORD_BYTES, export_bundle, verify_bundle
from tests.grpc.conftest import JS, SH, Cluster, Federation, LoopRunner

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def fed(new_federation: Callable[..., Federation]) -> Federation:
    return new_federation((SH, JS))


@pytest.fixture(scope="module")
def real_bundle(
    fed: Federation, runner: LoopRunner, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """310000's log (a Ping to 320000 and its receipt), exported as a bundle."""
    out = tmp_path_factory.mktemp("bundle") / "log.zip"
    with Cluster(fed, runner, [SH, JS]) as c:
        sh = c[SH]
        c.run(sh.ping(JS))
        export_bundle(sh.engine, fed.ca_pem, sh.signer, SH, out, since=None, until=None)
    index, result = verify_bundle(out)
    assert result.records == 2 and index["node"] == SH
    yield out


def rewrite(src: Path, dst: Path, changes: dict[str, bytes | None]) -> Path:
    """A copy of a ZIP with the named entries replaced (bytes), dropped (None) or added."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename not in changes:
                zout.writestr(info, zin.read(info.filename))
        for name, data in changes.items():
            if data is not None:
                zout.writestr(name, data)
    return dst


def refused(path: Path, reason: str, **kw: Any) -> VerificationError:
    with pytest.raises(VerificationError) as ei:
        verify_bundle(path, **kw)
    assert ei.value.reason == reason, ei.value
    return ei.value


# --- entries are read, never extracted ---------------------------------------------------------


def _symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, so that the mode bits below mean a symbolic link
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


@pytest.mark.parametrize("entry", ["zip-slip", "absolute", "symlink", "symlink-over-record"])
def test_hostile_entry_names_are_never_extracted(
    real_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    entry: str,
) -> None:
    """Extra entries are ignored and nothing is written: ``verify-bundle`` reads by name."""
    work = tmp_path / "work"
    work.mkdir()
    target = tmp_path / "escaped.txt"
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(real_bundle) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            if entry == "symlink-over-record" and info.filename == "records/1.bin":
                continue
            zout.writestr(info, zin.read(info.filename))
        if entry == "zip-slip":
            zout.writestr("../escaped.txt", b"written outside")
        elif entry == "absolute":
            zout.writestr(str(target), b"written outside")
        elif entry == "symlink":
            zout.writestr(*_symlink_entry("records/../../escaped.txt", "/etc/passwd"))
        else:
            zout.writestr(*_symlink_entry("records/1.bin", "/etc/passwd"))
    monkeypatch.chdir(work)
    rc = cli.main(["log", "verify-bundle", str(bad)])
    out, err = capsys.readouterr()
    if entry == "symlink-over-record":
        # The record's bytes are now a path: the chain no longer verifies.
        assert rc == 1 and err.rstrip().endswith("[LOG_INVALID]"), err
    else:
        assert rc == 0 and "bundle OK" in out, err
    assert not target.exists()
    assert list(work.iterdir()) == []


def test_decompression_bomb_entry_is_refused_before_it_is_read(
    real_bundle: Path, tmp_path: Path
) -> None:
    """A record entry that inflates to more than the record limit (a few hundred KB on disk)."""
    bomb = b"\0" * (MAX_RECORD_BYTES + 1)
    bad = rewrite(real_bundle, tmp_path / "bomb.zip", {"records/1.bin": bomb})
    assert bad.stat().st_size < 1 << 20
    err = refused(bad, "BUNDLE_MALFORMED")
    assert "records/1.bin" in str(err)


def test_bundle_of_another_ca_is_refused_when_the_ca_is_given(
    real_bundle: Path, fed: Federation, forged: Forger, tmp_path: Path
) -> None:
    """A well-formed bundle made under the attacker's own CA verifies only against that CA:
    the fingerprint printed differs, and ``--ca`` with the federation's CA refuses it."""
    bad = forged.bundle(tmp_path / "forged.zip", forged.index())
    index, _ = verify_bundle(bad)
    real_index, _ = verify_bundle(real_bundle)
    assert index["ca_sha256"] != real_index["ca_sha256"]
    refused(bad, "BUNDLE_CA", expected_ca=fed.ca_cert)
    rc = cli.main(["log", "verify-bundle", str(bad), "--ca", str(fed.ca_path)])
    assert rc == 1


# --- crafted under the attacker's own CA -------------------------------------------------------


class Forger:
    """Makes bundles signed by a node of a federation the attacker created (its own CA)."""

    def __init__(self, root: Path) -> None:
        pki.init_federation(root, [SH, JS], base_port=47900)
        self.fed_dir = pki.FederationDir(root)
        d = self.fed_dir.node_dir(SH)
        self.signer = Signer.from_pem((d / "sign.key").read_bytes(), (d / "sign.crt").read_bytes())
        self.ca_pem = (root / "ca" / "ca.crt").read_bytes()
        self.manifest = (root / "manifest.bin").read_bytes()

    def index(self, **changes: Any) -> dict[str, Any]:
        index: dict[str, Any] = {
            "format": "cccfed-log-bundle/1",
            "node": SH,
            "since": None,
            "until": None,
            "first_seq": None,
            "last_seq": None,
            "records": 0,
            "prev_hash": mlog.GENESIS.hex(),
            "last_hash": mlog.GENESIS.hex(),
            "manifests": [1],
            "signing_key_id": self.signer.key_id,
            "exported_at": NOW.isoformat(),
        }
        index.update(changes)
        return index

    def manifest_with_revocation_at(self, seconds: int) -> bytes:
        """The attacker's manifest with a revocation whose time is out of range, CA-signed."""
        outer = manifest_pb2.SignedManifest.FromString(self.manifest)
        body = manifest_pb2.Manifest.FromString(outer.manifest)
        revoked = body.revoked.add(serial="1", reason="crafted")
        revoked.revoked_at.seconds = seconds
        return pki.sign_manifest(self.fed_dir.ca()[0], body)

    def bundle(
        self,
        out: Path,
        index: object,
        records: dict[int, bytes] | None = None,
        manifest: bytes | None = None,
    ) -> Path:
        """A bundle whose bundle.json (``index``, or raw bytes) is properly signed."""
        raw = index if isinstance(index, bytes) else json.dumps(index).encode()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("bundle.json", raw)
            z.writestr("bundle.sig", self.signer.sign(CTX_BUNDLE, raw))
            z.writestr("ca.crt", self.ca_pem)
            z.writestr("manifests/1.bin", manifest or self.manifest)
            lines = []
            for seq, data in (records or {}).items():
                z.writestr(f"records/{seq}.bin", data)
                lines.append(f"{seq} {mlog.record_hash(data).hex()}")
            z.writestr("hashes.txt", "\n".join(lines) + "\n")
        out.write_bytes(buf.getvalue())
        return out


@pytest.fixture(scope="module")
def forged(tmp_path_factory: pytest.TempPathFactory) -> Forger:
    return Forger(tmp_path_factory.mktemp("attacker") / "fed")


@pytest.mark.parametrize(
    ("index", "reason"),
    [
        ([1, 2, 3], "BUNDLE_MALFORMED"),
        ("a string", "BUNDLE_MALFORMED"),
        (b"[" * 100_000, "BUNDLE_MALFORMED"),
        (b"\xff\xfe", "BUNDLE_MALFORMED"),
        ({"prev_hash": None}, "BUNDLE_MALFORMED"),
        ({"prev_hash": "zz" * 32}, "BUNDLE_MALFORMED"),
        ({"last_hash": 5}, "BUNDLE_MALFORMED"),
        ({"node": None}, "BUNDLE_MALFORMED"),
        ({"first_seq": 1}, "BUNDLE_MALFORMED"),
        ({"first_seq": True, "last_seq": True}, "BUNDLE_MALFORMED"),
        ({"first_seq": 0, "last_seq": 10**12}, "BUNDLE_MALFORMED"),
        ({"manifests": ["../../etc/passwd"]}, "BUNDLE_MALFORMED"),
        ({"manifests": 7}, "BUNDLE_MALFORMED"),
        ({"first_seq": 1, "last_seq": 10**12}, "BUNDLE_MALFORMED"),
        ({"signing_key_id": "00" * 32}, "BUNDLE_SIGNATURE"),
        ({"node": JS}, "BUNDLE_SIGNATURE"),
    ],
    ids=[
        "list",
        "string",
        "nested",
        "not-utf8",
        "prev-hash-null",
        "prev-hash-not-hex",
        "last-hash-number",
        "node-null",
        "first-without-last",
        "booleans",
        "seq-zero",
        "manifest-path",
        "manifests-number",
        "records-missing",
        "unknown-key",
        "other-node",
    ],
)
def test_crafted_index_is_refused_not_a_crash(
    forged: Forger, tmp_path: Path, index: object, reason: str
) -> None:
    if isinstance(index, dict):
        index = forged.index(**index)
    refused(forged.bundle(tmp_path / "b.zip", index), reason)


def _record(seq: int, prev: bytes, *, seconds: int, data: bytes = b"") -> bytes:
    rec = log_pb2.LogRecord(
        seq=seq,
        prev_hash=prev,
        direction=mlog.SENT,
        type=mlog.ENVELOPE,
        message_id="m",
        peer_node=JS,
        data=data,
    )
    rec.recorded_at.seconds = seconds
    return rec.SerializeToString(deterministic=True)


@pytest.mark.parametrize("seconds", [2**62, -(2**62)], ids=["time-after-9999", "time-before-0001"])
def test_crafted_record_with_an_impossible_time_is_log_invalid(
    forged: Forger, tmp_path: Path, seconds: int
) -> None:
    raw = _record(1, mlog.GENESIS, seconds=seconds)
    index = forged.index(first_seq=1, last_seq=1, last_hash=mlog.record_hash(raw).hex())
    err = refused(forged.bundle(tmp_path / "b.zip", index, {1: raw}), "LOG_INVALID")
    assert "recorded_at" in str(err)


def test_crafted_record_that_is_not_a_record_is_log_invalid(forged: Forger, tmp_path: Path) -> None:
    raw = b"\xff\xff\xff not a LogRecord"
    index = forged.index(first_seq=1, last_seq=1, last_hash=mlog.record_hash(raw).hex())
    refused(forged.bundle(tmp_path / "b.zip", index, {1: raw}), "LOG_INVALID")


def test_crafted_manifest_with_an_impossible_revocation_time_is_malformed(
    forged: Forger, tmp_path: Path
) -> None:
    """A bundle carries its manifests; one signed by the bundle's CA with a revocation time
    outside years 1-9999 is refused, not a ValueError."""
    manifest = forged.manifest_with_revocation_at(2**62)
    bad = forged.bundle(tmp_path / "b.zip", forged.index(), manifest=manifest)
    refused(bad, "MANIFEST_MALFORMED")
