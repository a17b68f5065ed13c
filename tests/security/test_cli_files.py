"""Hostile files given to the ``cccfed`` command line: paths, devices, size, encoding, nesting.

The command line is run in-process (``node.cli.main``) against a real node configuration and its
real SQLite store. Files may come from elsewhere (a city bureau's request file, a schedule
downloaded from a website, an expert registry exported from a spreadsheet), so each refusal must
be a one-line error with its reason code, exit status 1, and no change to any table of the store.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from cccfed.v1 import assistance_pb2 as pb
from federation.experts import MAX_REGISTRY_BYTES
from federation.holidays import MAX_SCHEDULE_BYTES
from node import cli
from node.assistance import REQUESTS
from node.cli_requests import MAX_INPUT_FILE_BYTES
from node.runtime import Node
from node.store.db import make_engine
from tests.assistance_harness import (
    EXAMPLE_REQUEST,
    HOLIDAYS_2027,
    ROOT,
    accept,
    act,
    deliver_all,
    new_request,
)
from tests.grpc.conftest import JS, SH, Federation
from tests.security.conftest import snapshot

EXAMPLE_RESULT = ROOT / "docs" / "examples" / "inspection-result.toml"
EXPERTS_CSV = ROOT / "docs" / "examples" / "experts.csv"

#: 64 GiB: a sparse file that costs no disk, and that no command may try to read.
HUGE = 64 << 30


@pytest.fixture(scope="module")
def fed(new_federation: Callable[..., Federation]) -> Federation:
    return new_federation((SH, JS))


@pytest.fixture(scope="module")
def config(fed: Federation) -> Path:
    """310000's node.toml; its store is created (migrated) once, then only compared."""
    path = fed.node_dir(SH) / "node.toml"
    Node(fed.config(SH)).close()
    return path


@pytest.fixture(scope="module")
def engine(fed: Federation, config: Path) -> Iterator[Engine]:
    e = make_engine(fed.config(SH).store_url)
    yield e
    e.dispose()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def refused(
    capsys: pytest.CaptureFixture[str], engine: Engine, argv: list[str], reason: str
) -> str:
    """Exit 1 with one error line ending in ``[reason]``; every table of the store unchanged."""
    before = snapshot(engine)
    rc, out, err = run(capsys, *argv)
    assert (rc, out) == (1, ""), err
    assert err.startswith("cccfed: error: ") and err.count("\n") == 1, err
    assert err.rstrip().endswith(f"[{reason}]"), err
    after = snapshot(engine)
    assert before.changed_tables(after) == [] and before.head == after.head
    return err


def request_file(directory: Path, attachments: list[dict[str, str]] | None = None) -> Path:
    """The example request file in ``directory``, with attachments given by path."""
    directory.mkdir(parents=True, exist_ok=True)
    text = EXAMPLE_REQUEST.read_text(encoding="utf-8")
    for a in attachments or []:
        text += "\n[[attachments]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in a.items())
    path = directory / "request.toml"
    path.write_text(text, encoding="utf-8")
    return path


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


# --- attachments named by a request file -------------------------------------------------------


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink", "symlink-dir"])
def test_request_file_attachment_outside_its_directory_is_refused(
    capsys: pytest.CaptureFixture[str], engine: Engine, config: Path, tmp_path: Path, how: str
) -> None:
    """A request file from elsewhere must not make the node send its own files (its signing
    key, here) to another province."""
    secret = tmp_path / "node" / "sign.key"
    secret.parent.mkdir()
    secret.write_bytes(b"-----BEGIN PRIVATE KEY----- not for export")
    req_dir = tmp_path / "req"
    req_dir.mkdir()
    if how == "parent":
        path = "../node/sign.key"
    elif how == "absolute":
        path = str(secret)
    elif how == "symlink":
        (req_dir / "evidence.pdf").symlink_to(secret)
        path = "evidence.pdf"
    else:
        (req_dir / "photos").symlink_to(secret.parent, target_is_directory=True)
        path = "photos/sign.key"
    file = request_file(req_dir, [{"path": path, "media_type": "application/pdf"}])
    err = refused(
        capsys, engine, ["request", "new", str(file), "--config", str(config)], "ATTACHMENT_PATH"
    )
    assert "not for export" not in err


def test_request_file_attachment_inside_its_directory_is_read(
    capsys: pytest.CaptureFixture[str], engine: Engine, config: Path, tmp_path: Path
) -> None:
    """The control: a file under the request's directory, and one named with --attach."""
    req_dir = tmp_path / "req"
    (req_dir / "photos").mkdir(parents=True)
    (req_dir / "photos" / "site.jpg").write_bytes(b"\xff\xd8 a photo")
    elsewhere = tmp_path / "elsewhere.pdf"
    elsewhere.write_bytes(b"%PDF named by the operator")
    file = request_file(req_dir, [{"path": "photos/site.jpg", "media_type": "image/jpeg"}])
    argv = ["request", "new", str(file), "--attach", str(elsewhere), "--draft"]
    rc, out, err = run(capsys, *argv, "--json", "--config", str(config))
    assert rc == 0, err
    rid = json.loads(out)["request_id"]
    with engine.connect() as conn:
        raw = conn.execute(select(REQUESTS.c.request).where(REQUESTS.c.request_id == rid)).one()
    sent = pb.Request.FromString(bytes(raw.request))
    assert [(a.name, a.content) for a in sent.attachments] == [
        ("site.jpg", b"\xff\xd8 a photo"),
        ("elsewhere.pdf", b"%PDF named by the operator"),
    ]


@pytest.mark.parametrize("what", ["fifo", "directory"])
def test_request_file_attachment_that_is_not_a_regular_file_is_refused(
    capsys: pytest.CaptureFixture[str], engine: Engine, config: Path, tmp_path: Path, what: str
) -> None:
    """A FIFO would block the command for ever; a directory is no attachment."""
    req_dir = tmp_path / "req"
    req_dir.mkdir()
    if what == "fifo":
        os.mkfifo(req_dir / "scan.pdf")
    else:
        (req_dir / "scan.pdf").mkdir()
    file = request_file(req_dir, [{"path": "scan.pdf", "media_type": "application/pdf"}])
    refused(capsys, engine, ["request", "new", str(file), "--config", str(config)], "NOT_A_FILE")


def test_attachment_over_the_limit_is_refused_before_it_is_read(
    capsys: pytest.CaptureFixture[str], engine: Engine, config: Path, tmp_path: Path
) -> None:
    req_dir = tmp_path / "req"
    req_dir.mkdir()
    sparse(req_dir / "video.mp4", HUGE)
    file = request_file(req_dir, [{"path": "video.mp4", "media_type": "video/mp4"}])
    argv = ["request", "new", str(file), "--config", str(config)]
    refused(capsys, engine, argv, "ATTACHMENT_TOO_LARGE")


# --- the files themselves ------------------------------------------------------------------------

#: command, file name, reason when too large, reason when not UTF-8, reason when nested deeply
COMMANDS: dict[str, tuple[list[str], str, str, str, str]] = {
    "request": (["request", "new"], "request.toml", "FILE_TOO_LARGE", "INVALID", "INVALID"),
    "request-json": (["request", "new"], "request.json", "FILE_TOO_LARGE", "INVALID", "INVALID"),
    "result": (["result", "publish"], "result.toml", "FILE_TOO_LARGE", "INVALID", "INVALID"),
    "experts-csv": (
        ["experts", "import"],
        "experts.csv",
        "REGISTRY_TOO_LARGE",
        "REGISTRY_ENCODING",
        "REGISTRY_SYNTAX",
    ),
    "experts-json": (
        ["experts", "import"],
        "experts.json",
        "REGISTRY_TOO_LARGE",
        "REGISTRY_ENCODING",
        "REGISTRY_SYNTAX",
    ),
    "calendar": (["calendar", "import"], "holidays.json", "CALENDAR", "CALENDAR", "CALENDAR"),
    "calendar-toml": (
        ["calendar", "import"],
        "holidays.toml",
        "CALENDAR",
        "CALENDAR",
        "CALENDAR",
    ),
}
LIMITS = {
    "request": MAX_INPUT_FILE_BYTES,
    "request-json": MAX_INPUT_FILE_BYTES,
    "result": MAX_INPUT_FILE_BYTES,
    "experts-csv": MAX_REGISTRY_BYTES,
    "experts-json": MAX_REGISTRY_BYTES,
    "calendar": MAX_SCHEDULE_BYTES,
    "calendar-toml": MAX_SCHEDULE_BYTES,
}


def _argv(which: str, path: Path, config: Path) -> list[str]:
    return [*COMMANDS[which][0], str(path), "--config", str(config)]


@pytest.mark.parametrize("which", sorted(COMMANDS))
@pytest.mark.parametrize("what", ["fifo", "directory", "dev-zero"])
def test_input_file_that_is_not_a_regular_file_is_refused(
    capsys: pytest.CaptureFixture[str],
    engine: Engine,
    config: Path,
    tmp_path: Path,
    which: str,
    what: str,
) -> None:
    """A FIFO or /dev/zero named as the file would hang the command or fill its memory."""
    path = tmp_path / COMMANDS[which][1]
    if what == "fifo":
        os.mkfifo(path)
    elif what == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    refused(capsys, engine, _argv(which, path, config), "NOT_A_FILE")


@pytest.mark.parametrize("which", sorted(COMMANDS))
@pytest.mark.parametrize("size", ["limit+1", "64GiB"])
def test_input_file_too_large_is_refused_before_it_is_read(
    capsys: pytest.CaptureFixture[str],
    engine: Engine,
    config: Path,
    tmp_path: Path,
    which: str,
    size: str,
) -> None:
    path = sparse(tmp_path / COMMANDS[which][1], LIMITS[which] + 1 if size == "limit+1" else HUGE)
    refused(capsys, engine, _argv(which, path, config), COMMANDS[which][2])


@pytest.mark.parametrize("which", sorted(COMMANDS))
def test_input_file_that_is_not_utf8_is_refused(
    capsys: pytest.CaptureFixture[str], engine: Engine, config: Path, tmp_path: Path, which: str
) -> None:
    """The same content saved as GBK, as some Windows tools still do."""
    source = {
        "request": EXAMPLE_REQUEST,
        "request-json": EXAMPLE_REQUEST,
        "result": EXAMPLE_RESULT,
        "experts-csv": EXPERTS_CSV,
        "experts-json": EXPERTS_CSV,
        "calendar": HOLIDAYS_2027,
        "calendar-toml": HOLIDAYS_2027,
    }[which]
    path = tmp_path / COMMANDS[which][1]
    path.write_bytes(source.read_text(encoding="utf-8").encode("gbk", errors="replace"))
    refused(capsys, engine, _argv(which, path, config), COMMANDS[which][3])


@pytest.mark.parametrize("which", sorted(set(COMMANDS) - {"experts-csv"}))  # CSV cannot nest
def test_input_file_nested_too_deeply_is_refused(
    capsys: pytest.CaptureFixture[str], engine: Engine, config: Path, tmp_path: Path, which: str
) -> None:
    """Arrays nested 50,000 deep: a clear refusal, not a RecursionError traceback."""
    name = COMMANDS[which][1]
    depth = 50_000
    if name.endswith(".toml"):
        text = "x = " + "[" * depth + "]" * depth
    else:
        text = '{"experts": ' + "[" * depth + "]" * depth + "}"
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    refused(capsys, engine, _argv(which, path, config), COMMANDS[which][4])


@pytest.mark.parametrize(
    "text",
    ['{"experts": [{"expert_id', '{"experts": [{"expert_id": "JS-0001", "name\\x"}]}'],
    ids=["unterminated-key", "bad-escape-in-key"],
)
def test_experts_json_with_a_broken_property_name_is_refused(
    capsys: pytest.CaptureFixture[str], engine: Engine, config: Path, tmp_path: Path, text: str
) -> None:
    path = tmp_path / "experts.json"
    path.write_text(text, encoding="utf-8")
    argv = ["experts", "import", str(path), "--config", str(config)]
    refused(capsys, engine, argv, "REGISTRY_SYNTAX")


@pytest.mark.parametrize(
    "record_id",
    ["../../../../tmp/evil", "/tmp/evil", "52e24992-bf2f-4c2c-a4a8-b033c54aff97/.."],
    ids=["parent", "absolute", "uuid-then-parent"],
)
def test_result_file_cannot_steer_where_draft_requests_are_written(
    capsys: pytest.CaptureFixture[str],
    engine: Engine,
    config: Path,
    tmp_path: Path,
    record_id: str,
) -> None:
    """Draft file names are built from the record id, which must be a canonical UUID."""
    text = EXAMPLE_RESULT.read_text(encoding="utf-8")
    original = "52e24992-bf2f-4c2c-a4a8-b033c54aff97"
    assert original in text
    path = tmp_path / "result.toml"
    path.write_text(text.replace(f'"{original}"', json.dumps(record_id), 1), encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    refused(capsys, engine, _argv("result", path, config), "INVALID_FIELD")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --- reply files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def accepted_request(fed: Federation, config: Path) -> str:
    """A request from 310000 that 320000 holds and has accepted: 320000 may reply to it.

    The nodes are real (keys, stores, intake); the envelope is moved by the test harness.
    """
    sh, js = Node(fed.config(SH)), Node(fed.config(JS))
    try:
        rid = new_request(sh)
        assert deliver_all(sh, js) == []
        act(js, rid, accept())
        assert deliver_all(sh, js) == []
    finally:
        sh.close()
        js.close()
    return rid


@pytest.fixture(scope="module")
def js_engine(fed: Federation, accepted_request: str) -> Iterator[Engine]:
    e = make_engine(fed.config(JS).store_url)
    yield e
    e.dispose()


#: Findings for both questions of the example request: without the evidence, a valid reply.
FINDINGS = (
    "".join(
        f'[[findings]]\nquestion_id = "{q}"\nconclusion = "confirmed"\nfinding = "属实"\n'
        for q in ("q1", "q2")
    )
    + '[[follow_ups]]\naction = "none"\n'
)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('evidence = ["scan.pdf"]', "INVALID"),
        ('evidence = "scan.pdf"', "INVALID"),
        ('follow_ups = "rectification"', "INVALID"),
        ("findings = 7", "INVALID"),
        (FINDINGS + '[[evidence]]\npath = "../node/sign.key"', "ATTACHMENT_PATH"),
        (FINDINGS + '[[evidence]]\npath = "/etc/hostname"', "ATTACHMENT_PATH"),
    ],
    ids=[
        "evidence-strings",
        "evidence-string",
        "follow-ups-string",
        "findings-number",
        "evidence-parent",
        "evidence-absolute",
    ],
)
def test_reply_file_of_the_wrong_shape_or_with_paths_outside_is_refused(
    capsys: pytest.CaptureFixture[str],
    fed: Federation,
    js_engine: Engine,
    accepted_request: str,
    tmp_path: Path,
    body: str,
    reason: str,
) -> None:
    secret = tmp_path / "node" / "sign.key"
    secret.parent.mkdir()
    secret.write_bytes(b"not for export")
    reply_dir = tmp_path / "reply"
    reply_dir.mkdir()
    (reply_dir / "scan.pdf").write_bytes(b"%PDF")
    path = reply_dir / "reply.toml"
    path.write_text('summary = "已核实。"\n' + body + "\n", encoding="utf-8")
    argv = ["request", "reply", accepted_request, str(path)]
    refused(capsys, js_engine, [*argv, "--config", str(fed.node_dir(JS) / "node.toml")], reason)
