"""Message-log verification from the store, and self-contained export bundles.

A bundle is a ZIP file that a person can open with ordinary tools and that
``cccfed log verify-bundle`` checks on a machine with no node and no database::

    bundle.json          what the bundle holds: node, time range, seq range, anchor hashes
    bundle.sig           the node's signature over bundle.json ("cccfed.v1.log-bundle\\0" ‖ bytes)
    ca.crt               the federation CA certificate (the one trust anchor)
    manifests/<n>.bin    every signed manifest the node accepted (keys of every era)
    records/<seq>.bin    the LogRecord bytes, exactly as stored
    hashes.txt           "<seq> <hex record hash>" per record, as stored

The chain inside is verified from ``prev_hash`` (the hash of the record before the range) to
``last_hash``; bundle.json is signed, so neither end can be moved unnoticed.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.engine import Engine

from federation import message_log as mlog
from federation.crypto import Signer, ec_public_key, fingerprint, verify
from federation.errors import VerificationError
from node.store.ops import HEAD, LOG, MANIFESTS

CTX_BUNDLE = b"cccfed.v1.log-bundle\x00"
BUNDLE_FORMAT = "cccfed-log-bundle/1"

#: Largest uncompressed size read from a bundle entry, by entry (a ZIP entry states its size, and
#: nothing beyond it is decompressed): a small file cannot expand into gigabytes of memory.
MAX_INDEX_BYTES = 1 << 20
MAX_SMALL_ENTRY_BYTES = 64 * 1024  # bundle.sig, ca.crt
MAX_MANIFEST_BYTES = 16 << 20
MAX_RECORD_BYTES = 64 << 20  # one LogRecord: an envelope or a receipt, with its framing
#: hashes.txt: one "<seq> <64 hex>\n" line per record, plus slack.
HASH_LINE_BYTES = 96

_HEX64 = re.compile(r"[0-9a-f]{64}")

#: What reading a damaged or hostile ZIP can raise besides BadZipFile (zipfile's own surface).
_ZIP_ERRORS = (
    KeyError,
    ValueError,
    TypeError,
    OSError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    RecursionError,
    struct.error,
    zipfile.BadZipFile,
    zlib.error,
)


@dataclass(frozen=True)
class VerifyResult:
    records: int
    envelopes: int
    receipts: int
    last_seq: int
    last_hash: str

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _keyring(engine: Engine, ca: x509.Certificate) -> mlog.Keyring:
    with engine.connect() as conn:
        manifests = [
            bytes(r.signed)
            for r in conn.execute(select(MANIFESTS.c.signed).order_by(MANIFESTS.c.serial))
        ]
    return mlog.Keyring.from_manifests(manifests, ca)


def verify_store(engine: Engine, ca: x509.Certificate, self_node: str) -> VerifyResult:
    """Re-check the whole chain and every signature; raises LogVerificationError."""
    ring = _keyring(engine, ca)
    with engine.connect() as conn:
        rows = conn.execute(select(LOG.c.seq, LOG.c.record, LOG.c.record_hash).order_by(LOG.c.seq))
        report = mlog.verify_chain(
            ((int(r.seq), bytes(r.record), bytes(r.record_hash)) for r in rows),
            ring,
            self_node=self_node,
        )
        head = conn.execute(select(HEAD.c.seq, HEAD.c.record_hash)).first()
    if head is not None and (
        int(head.seq) != report.last_seq or bytes(head.record_hash) != report.last_hash
    ):
        raise mlog.LogVerificationError(
            int(head.seq), "log head does not match the last record (records removed from the end)"
        )
    return VerifyResult(
        report.records, report.envelopes, report.receipts, report.last_seq, report.last_hash.hex()
    )


def export_bundle(
    engine: Engine,
    ca_pem: bytes,
    signer: Signer,
    self_node: str,
    out: Path,
    *,
    since: datetime | None,
    until: datetime | None,
) -> dict[str, Any]:
    with engine.connect() as conn:
        q = select(LOG.c.seq, LOG.c.record, LOG.c.record_hash, LOG.c.recorded_at).order_by(
            LOG.c.seq
        )
        if since is not None:
            q = q.where(LOG.c.recorded_at >= since)
        if until is not None:
            q = q.where(LOG.c.recorded_at < until)
        rows = conn.execute(q).all()
        manifests = conn.execute(select(MANIFESTS.c.serial, MANIFESTS.c.signed)).all()
        prev_hash = mlog.GENESIS
        if rows and rows[0].seq > 1:
            prev = conn.execute(
                select(LOG.c.record_hash).where(LOG.c.seq == rows[0].seq - 1)
            ).first()
            assert prev is not None
            prev_hash = bytes(prev.record_hash)
    # Records between since/until are contiguous by construction (seq and time grow together).
    index = {
        "format": BUNDLE_FORMAT,
        "node": self_node,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "first_seq": int(rows[0].seq) if rows else None,
        "last_seq": int(rows[-1].seq) if rows else None,
        "records": len(rows),
        "prev_hash": prev_hash.hex(),
        "last_hash": bytes(rows[-1].record_hash).hex() if rows else prev_hash.hex(),
        "manifests": sorted(int(m.serial) for m in manifests),
        "signing_key_id": signer.key_id,
        "exported_at": datetime.now(UTC).isoformat(),
    }
    index_bytes = json.dumps(index, ensure_ascii=False, indent=2).encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("bundle.json", index_bytes)
        z.writestr("bundle.sig", signer.sign(CTX_BUNDLE, index_bytes))
        z.writestr("ca.crt", ca_pem)
        for m in manifests:
            z.writestr(f"manifests/{int(m.serial)}.bin", bytes(m.signed))
        lines = []
        for r in rows:
            z.writestr(f"records/{int(r.seq)}.bin", bytes(r.record))
            lines.append(f"{int(r.seq)} {bytes(r.record_hash).hex()}")
        z.writestr("hashes.txt", "\n".join(lines) + "\n")
    tmp.replace(out)
    return index


def _entry(z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """One entry's bytes, refused before decompression if it states more than ``limit``."""
    info = z.getinfo(name)  # KeyError: a missing entry
    if info.file_size > limit:
        raise VerificationError(
            f"bundle entry {name} states {info.file_size} bytes; at most {limit} are read",
            reason="BUNDLE_MALFORMED",
        )
    return z.read(info)


def _check_index(index: object) -> dict[str, Any]:
    """The signed index must have the form export_bundle writes (before any value is used)."""
    if not isinstance(index, dict):
        raise ValueError(f"bundle.json holds a JSON {type(index).__name__}, not an object")
    for key in ("prev_hash", "last_hash"):
        if not isinstance(index.get(key), str) or _HEX64.fullmatch(index[key]) is None:
            raise ValueError(f"{key} must be 64 lowercase hex digits")
    for key in ("node", "signing_key_id"):
        if not isinstance(index.get(key), str):
            raise ValueError(f"{key} must be a string")
    first, last = index.get("first_seq"), index.get("last_seq")
    if (first is None) != (last is None):
        raise ValueError("first_seq and last_seq must both be given or both be null")
    for value in (first, last):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError("first_seq and last_seq must be whole numbers")
    if first is not None and last is not None and not 1 <= first <= last:
        raise ValueError("first_seq must be at least 1 and at most last_seq")
    serials = index.get("manifests")
    if not isinstance(serials, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in serials
    ):
        raise ValueError("manifests must be a list of manifest serials")
    return index


def verify_bundle(
    path: Path, *, expected_ca: x509.Certificate | None = None
) -> tuple[dict[str, Any], VerifyResult]:
    """Check a bundle with nothing but its own contents. Raises VerificationError.

    The bundle carries its CA certificate; a verifier who has the federation CA from elsewhere
    passes it as ``expected_ca`` so that a bundle re-made under another CA is refused. The CA
    fingerprint is returned in the index (``ca_sha256``) for comparison by eye otherwise.

    Entries are read by name and never extracted, so entry names (``../x``, absolute paths,
    symbolic links) cannot reach the file system; entries the index does not name are ignored.
    Records are read one at a time while the chain is verified. A damaged or hostile ZIP (bad
    headers, unsupported methods, an entry stating more bytes than its limit) or an index of the
    wrong form is ``BUNDLE_MALFORMED``.
    """
    try:
        z = zipfile.ZipFile(path)
    except _ZIP_ERRORS as e:
        raise VerificationError(
            f"{path}: not a readable bundle: {e}", reason="BUNDLE_MALFORMED"
        ) from e
    with z:
        try:
            index_bytes = _entry(z, "bundle.json", MAX_INDEX_BYTES)
            sig = _entry(z, "bundle.sig", MAX_SMALL_ENTRY_BYTES)
            ca = x509.load_pem_x509_certificate(_entry(z, "ca.crt", MAX_SMALL_ENTRY_BYTES))
            index = json.loads(index_bytes)
            if not isinstance(index, dict) or index.get("format") != BUNDLE_FORMAT:
                got = index.get("format") if isinstance(index, dict) else None
                raise VerificationError(f"unknown bundle format {got!r}", reason="BUNDLE_MALFORMED")
            index = _check_index(index)
            manifests = [
                _entry(z, f"manifests/{n}.bin", MAX_MANIFEST_BYTES) for n in index["manifests"]
            ]
            first, last = index["first_seq"], index["last_seq"]
            seqs = range(first, last + 1) if first is not None else range(0)
            hashes = {}
            hashes_limit = HASH_LINE_BYTES * (len(seqs) + 1) + MAX_SMALL_ENTRY_BYTES
            for line in _entry(z, "hashes.txt", hashes_limit).decode().split("\n"):
                if line.strip():
                    seq, h = line.split()
                    hashes[int(seq)] = bytes.fromhex(h)
        except VerificationError:
            raise
        except _ZIP_ERRORS as e:
            raise VerificationError(
                f"{path}: bundle is incomplete or malformed: {e}", reason="BUNDLE_MALFORMED"
            ) from e
        if expected_ca is not None and expected_ca != ca:
            raise VerificationError(
                "bundle was made under another federation CA than the one given",
                reason="BUNDLE_CA",
            )
        index["ca_sha256"] = fingerprint(ca.public_bytes(serialization.Encoding.DER))
        ring = mlog.Keyring.from_manifests(manifests, ca)
        key = ring.keys.get(index["signing_key_id"])
        if key is None or key.member != index["node"]:
            raise VerificationError(
                "bundle is not signed by a key of its node", reason="BUNDLE_SIGNATURE"
            )
        verify(
            ec_public_key(key.cert),
            sig,
            CTX_BUNDLE,
            index_bytes,
            reason="BUNDLE_SIGNATURE",
            what="bundle signature",
        )

        def records() -> Iterator[tuple[int, bytes, bytes]]:
            for seq in seqs:
                try:
                    data = _entry(z, f"records/{seq}.bin", MAX_RECORD_BYTES)
                except VerificationError:
                    raise
                except _ZIP_ERRORS as e:
                    raise VerificationError(
                        f"{path}: record {seq} is missing or unreadable: {e}",
                        reason="BUNDLE_MALFORMED",
                    ) from e
                yield seq, data, hashes.get(seq, b"")

        report = mlog.verify_chain(
            records(),
            ring,
            self_node=index["node"],
            prev_hash=bytes.fromhex(index["prev_hash"]),
            first_seq=first if first is not None else 1,
        )
    if report.last_hash.hex() != index["last_hash"]:
        raise mlog.LogVerificationError(
            report.last_seq, "last record hash differs from the signed bundle index"
        )
    return index, VerifyResult(
        report.records, report.envelopes, report.receipts, report.last_seq, report.last_hash.hex()
    )


def ca_pem_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
