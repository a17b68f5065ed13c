"""``cccfed calendar due|show|import``, called in-process through ``node.cli.main``.

Every test runs in an empty working directory without ``$CCCFED_CONFIG``, so "no node
configuration" is the default; the node tests create a two-node federation and point at one
node's ``node.toml``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from node import pki
from node.calendar_store import stored_schedule, stored_years
from node.cli import main
from node.config import load_config
from node.local import config_path, free_ports
from node.store.db import make_engine

FIXTURE_2027 = Path(__file__).resolve().parents[1] / "data" / "holidays-2027.json"


@pytest.fixture(autouse=True)
def no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every command in an empty directory, without ``$CCCFED_CONFIG``."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("CCCFED_CONFIG", raising=False)
    return cwd


@pytest.fixture
def node_config(tmp_path: Path) -> Path:
    """The node.toml of Shanghai in a new two-node federation (its store not created yet)."""
    root = tmp_path / "fed"
    codes = ["310000", "320000"]
    pki.init_federation(root, codes, ports=dict(zip(codes, free_ports(2), strict=True)))
    return config_path(root, "310000")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    rc, out, err = run(capsys, *argv, "--json")
    assert (rc, err) == (0, ""), err
    return json.loads(out)


def field(out: str, key: str) -> str:
    """The value of a ``key: value`` line of ``calendar due``."""
    for line in out.splitlines():
        if line.startswith(f"{key}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {key!r} line in:\n{out}")


def stored(cfg_path: Path) -> tuple[int, ...]:
    engine = make_engine(load_config(cfg_path).store_url)
    try:
        return stored_years(engine)
    finally:
        engine.dispose()


def store_file(cfg_path: Path) -> Path:
    return cfg_path.parent / "store.db"


# --- calendar due -----------------------------------------------------------------------------


def test_due_ordinary_date(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "calendar", "due", "--from", "2026-11-02", "--days", "15")

    assert (rc, err) == (0, "")
    assert field(out, "due date").startswith("2026-11-17 (Tuesday)")
    assert "24:00 Asia/Shanghai" in field(out, "due date")
    assert field(out, "ends at") == "2026-11-17 16:00:00 UTC (exclusive)"
    assert field(out, "start date").startswith("2026-11-02")
    assert field(out, "period") == "15 calendar days"
    assert "Civil Code arts. 201–203" in field(out, "rule")
    assert field(out, "status") == "official calendar data"
    assert not any(line.startswith("PROVISIONAL") for line in out.splitlines())


def test_due_rolls_past_national_day_2026(capsys: pytest.CaptureFixture[str]) -> None:
    # 2026-09-16 + 15 days = Thursday 2026-10-01, a holiday until 10-07: the period ends on
    # the first working day after the holiday.
    data = run_json(capsys, "calendar", "due", "--from", "2026-09-16T15:00", "--days", "15")

    assert data["start_date"] == "2026-09-16"
    assert data["due_date"] == "2026-10-08"
    assert data["due_weekday"] == "Thursday"
    assert data["ends_at"] == "2026-10-08T16:00:00+00:00"
    assert data["ends_at_shanghai"] == "2026-10-09T00:00:00+08:00"
    assert data["kind"] == "days"
    assert data["days"] == 15
    assert data["provisional"] is False
    assert data["provisional_years"] == []
    assert data["provisional_message"] is None
    assert data["calendar"] == [
        {"year": 2026, "origin": "package", "source": data["calendar"][0]["source"]}
    ]
    assert data["calendar"][0]["source"].startswith("chinesecalendar")
    assert data["node"] is None


@pytest.mark.parametrize(
    ("instant", "start", "due"),
    [
        # 00:30 Shanghai on Oct 1 is still Sep 30 in UTC: the event is on the Shanghai date.
        ("2026-09-30T16:30:00Z", "2026-10-01", "2026-10-16"),
        ("2026-10-01T00:30", "2026-10-01", "2026-10-16"),  # naive = Asia/Shanghai
        ("2026-10-01T00:30+08:00", "2026-10-01", "2026-10-16"),
        ("2026-09-30T12:30-04:00", "2026-10-01", "2026-10-16"),  # New York evening
        ("2026-09-30T15:59:59Z", "2026-09-30", "2026-10-15"),  # 23:59:59 Shanghai
    ],
)
def test_due_receipt_after_midnight_shanghai(
    capsys: pytest.CaptureFixture[str], instant: str, start: str, due: str
) -> None:
    data = run_json(capsys, "calendar", "due", "--from", instant, "--days", "15")

    assert (data["start_date"], data["due_date"]) == (start, due)


def test_due_working_days(capsys: pytest.CaptureFixture[str]) -> None:
    # Mon 2026-09-28: Tue 29, Wed 30, (Oct 1-7 National Day), Thu 8, Fri 9 and the make-up
    # Saturday Oct 10 (国庆节调休) are the five working days.
    argv = ("calendar", "due", "--from", "2026-09-28T10:00", "--days", "5", "--working")
    rc, out, err = run(capsys, *argv)
    data = run_json(capsys, *argv)

    assert (rc, err) == (0, "")
    assert field(out, "due date").startswith("2026-10-10 (Saturday)")
    assert field(out, "period") == "5 working days"
    assert "Administrative Licensing Law art. 82" in field(out, "rule")
    assert data["kind"] == "working_days"
    assert data["due_date"] == "2026-10-10"
    assert data["provisional"] is False


def test_due_in_2027_is_provisional_without_node(capsys: pytest.CaptureFixture[str]) -> None:
    # 2026-12-17 + 15 days = Friday 2027-01-01: a working day by the weekday rule.
    rc, out, err = run(capsys, "calendar", "due", "--from", "2026-12-17", "--days", "15")

    assert (rc, err) == (0, "")
    first = out.splitlines()[0]
    assert first.startswith("PROVISIONAL: no official holiday schedule for 2027")
    assert "weekends only" in first
    assert "recomputed" in first
    assert "cccfed calendar import" in first
    assert field(out, "due date").startswith("2027-01-01 (Friday)")
    assert field(out, "status").startswith("PROVISIONAL")


def test_provisional_2027_then_official_after_import(
    capsys: pytest.CaptureFixture[str], node_config: Path
) -> None:
    due = ("calendar", "due", "--config", str(node_config), "--from", "2026-12-17", "--days", "15")
    before = run_json(capsys, *due)
    assert before["provisional"] is True
    assert before["provisional_years"] == [2027]
    assert before["due_date"] == "2027-01-01"
    assert before["provisional_message"].startswith("PROVISIONAL:")
    assert before["node"] == "310000"
    assert not store_file(node_config).exists()  # reading did not create the store

    rc, out, err = run(
        capsys, "calendar", "import", str(FIXTURE_2027), "--config", str(node_config)
    )
    assert (rc, err) == (0, "")
    assert "2027 holiday schedule imported in node 310000's store" in out
    assert "7 holidays (29 days), 5 make-up working days" in out
    assert "source: HYPOTHETICAL TEST FIXTURE" in out
    assert "note: HYPOTHETICAL TEST DATA" in out
    assert stored(node_config) == (2027,)

    rc, out, err = run(capsys, *due)
    assert (rc, err) == (0, "")
    assert not any(line.startswith("PROVISIONAL") for line in out.splitlines())
    assert field(out, "due date").startswith("2027-01-04 (Monday)")  # after 元旦 Jan 1-3
    assert "2027: imported schedule (HYPOTHETICAL TEST FIXTURE" in field(out, "calendar")
    after = run_json(capsys, *due)
    assert after["provisional"] is False
    assert after["provisional_years"] == []
    assert after["due_date"] == "2027-01-04"
    assert after["ends_at"] == "2027-01-04T16:00:00+00:00"
    assert after["calendar"][0]["origin"] == "schedule"

    # Without the node configuration only the package is consulted: still provisional.
    assert run_json(capsys, *due[:2], *due[4:])["provisional"] is True


def test_config_found_through_env_and_working_directory(
    capsys: pytest.CaptureFixture[str], node_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (
        run(capsys, "calendar", "import", str(FIXTURE_2027), "--config", str(node_config))[0] == 0
    )
    due = ("calendar", "due", "--from", "2026-12-17", "--days", "15")

    monkeypatch.setenv("CCCFED_CONFIG", str(node_config))
    assert run_json(capsys, *due)["due_date"] == "2027-01-04"

    monkeypatch.delenv("CCCFED_CONFIG")
    monkeypatch.chdir(node_config.parent)  # ./node.toml
    data = run_json(capsys, *due)
    assert (data["due_date"], data["node"]) == ("2027-01-04", "310000")


def test_named_config_must_exist(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    rc, out, err = run(
        capsys, "calendar", "due", "--config", str(missing), "--from", "2026-11-02", "--days", "3"
    )
    assert (rc, out) == (1, "")
    assert err.startswith("cccfed: error: ")
    assert "nowhere.toml" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--from", "2026-11-02", "--days", "0"), "days must be between 1 and 3650"),
        (("--from", "2026-11-02", "--days", "3651"), "days must be between 1 and 3650"),
        (("--from", "next monday", "--days", "3"), "is not an ISO 8601 date or instant"),
    ],
)
def test_due_refuses_bad_input(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    rc, out, err = run(capsys, "calendar", "due", *argv)
    assert (rc, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("cccfed: error: ")
    assert message in err


# --- calendar show ----------------------------------------------------------------------------


def test_show_2026_from_package(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "calendar", "show", "2026")

    assert (rc, err) == (0, "")
    assert out.startswith("2026: official schedule from the chinesecalendar package")
    assert "春节" in out
    assert "国庆节" in out
    assert "National Day" in out
    assert "2026-10-01 – 2026-10-07" in out
    assert "调休上班" in out
    assert "2026-10-10  Saturday  国庆节调休" in out
    assert "PROVISIONAL" not in out


def test_show_year_without_data_is_provisional(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "calendar", "show", "2028")

    assert (rc, err) == (0, "")
    assert out.startswith("PROVISIONAL: no official holiday schedule for 2028")
    assert "weekends only" in out
    data = run_json(capsys, "calendar", "show", "2028")
    assert data["origin"] == "none"
    assert data["provisional"] is True
    assert data["holidays"] == []
    assert data["workdays"] == []


def test_show_imported_year(capsys: pytest.CaptureFixture[str], node_config: Path) -> None:
    assert (
        run(capsys, "calendar", "import", str(FIXTURE_2027), "--config", str(node_config))[0] == 0
    )

    rc, out, err = run(capsys, "calendar", "show", "2027", "--config", str(node_config))
    assert (rc, err) == (0, "")
    assert out.startswith("2027: official schedule imported into node 310000's store on ")
    assert "source: HYPOTHETICAL TEST FIXTURE" in out
    assert "春节" in out
    assert "2027-10-09  Saturday  国庆节调休" in out
    data = run_json(capsys, "calendar", "show", "2027", "--config", str(node_config))
    assert data["origin"] == "schedule"
    assert data["known"] is True
    assert data["provisional"] is False
    assert data["source"].startswith("HYPOTHETICAL")
    assert data["note"].startswith("HYPOTHETICAL")
    assert data["node"] == "310000"
    assert data["imported_at"] is not None
    assert data["overrides_package"] is False
    assert len(data["holidays"]) == 7
    assert len(data["workdays"]) == 5


def test_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "calendar", "show", "2026")

    assert data["year"] == 2026
    assert data["origin"] == "package"
    assert data["provisional"] is False
    assert {h["name_zh"] for h in data["holidays"]} >= {"春节", "国庆节"}
    assert data["imported_at"] is None


def test_show_refuses_absurd_year(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "calendar", "show", "99999")
    assert (rc, out) == (1, "")
    assert err.startswith("cccfed: error: YEAR must be between")


# --- calendar import --------------------------------------------------------------------------


def test_import_twice_is_idempotent(capsys: pytest.CaptureFixture[str], node_config: Path) -> None:
    argv = ("calendar", "import", str(FIXTURE_2027), "--config", str(node_config))
    first = run_json(capsys, *argv)
    second = run_json(capsys, *argv)
    rc, out, _ = run(capsys, *argv)

    assert first["outcome"] == "added"
    assert (first["year"], first["holidays"], first["workdays"]) == (2027, 7, 5)
    assert first["holiday_days"] == 29
    assert first["node"] == "310000"
    assert second["outcome"] == "unchanged"
    assert second["imported_at"] == first["imported_at"]
    assert rc == 0
    assert "2027 holiday schedule unchanged" in out
    assert stored(node_config) == (2027,)


def test_import_replaces_a_corrected_schedule(
    capsys: pytest.CaptureFixture[str], node_config: Path, tmp_path: Path
) -> None:
    doc = json.loads(FIXTURE_2027.read_text(encoding="utf-8"))
    doc["source"] = "corrected fixture"
    doc["workdays"] = doc["workdays"][:-1]
    corrected = tmp_path / "corrected-2027.json"
    corrected.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")

    run_json(capsys, "calendar", "import", str(FIXTURE_2027), "--config", str(node_config))
    data = run_json(capsys, "calendar", "import", str(corrected), "--config", str(node_config))

    assert data["outcome"] == "replaced"
    assert data["replaced_source"].startswith("HYPOTHETICAL")
    assert (data["source"], data["workdays"]) == ("corrected fixture", 4)
    engine = make_engine(load_config(node_config).store_url)
    try:
        row = stored_schedule(engine, 2027)
    finally:
        engine.dispose()
    assert row is not None
    assert row.source == "corrected fixture"
    assert len(row.schedule.workdays) == 4


def test_import_toml_schedule(
    capsys: pytest.CaptureFixture[str], node_config: Path, tmp_path: Path
) -> None:
    toml = tmp_path / "2027.toml"
    toml.write_text(
        'year = 2027\nsource = "toml fixture"\nworkdays = []\n'
        '[[holidays]]\nname = "National Day"\nname_zh = "国庆节"\n'
        'dates = ["2027-10-01", "2027-10-04"]\n',
        encoding="utf-8",
    )
    # Dates 1 and 4 are not consecutive: refused, naming the key.
    rc, _, err = run(capsys, "calendar", "import", str(toml), "--config", str(node_config))
    assert rc == 1
    assert "2027.toml: holidays[0].dates" in err

    toml.write_text(
        'year = 2027\nsource = "toml fixture"\nworkdays = []\n'
        '[[holidays]]\nname = "National Day"\nname_zh = "国庆节"\n'
        'dates = ["2027-10-01", "2027-10-02", "2027-10-03", "2027-10-04"]\n',
        encoding="utf-8",
    )
    data = run_json(capsys, "calendar", "import", str(toml), "--config", str(node_config))
    assert (data["year"], data["holidays"], data["holiday_days"]) == (2027, 1, 4)


def test_bad_schedule_is_refused_and_nothing_stored(
    capsys: pytest.CaptureFixture[str], node_config: Path, tmp_path: Path
) -> None:
    doc = json.loads(FIXTURE_2027.read_text(encoding="utf-8"))
    doc["workdays"][1]["date"] = "2027-04-26"  # a Monday
    bad = tmp_path / "bad-2027.json"
    bad.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")

    rc, out, err = run(capsys, "calendar", "import", str(bad), "--config", str(node_config))

    assert (rc, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("cccfed: error: ")
    assert f"{bad}: workdays[1].date: " in err
    assert "weekday" in err
    assert not store_file(node_config).exists()  # the store was not even opened


def test_bad_schedule_leaves_the_imported_one(
    capsys: pytest.CaptureFixture[str], node_config: Path, tmp_path: Path
) -> None:
    first = run_json(capsys, "calendar", "import", str(FIXTURE_2027), "--config", str(node_config))
    bad = tmp_path / "holidays-2027.json"
    text = FIXTURE_2027.read_text(encoding="utf-8").replace('"year": 2027', '"year": "2027"')
    bad.write_text(text, encoding="utf-8")

    rc, out, err = run(capsys, "calendar", "import", str(bad), "--config", str(node_config))

    assert (rc, out) == (1, "")
    assert err.startswith("cccfed: error: ")
    assert f"{bad}: year: expected an integer year" in err
    assert stored(node_config) == (2027,)
    show = run_json(capsys, "calendar", "show", "2027", "--config", str(node_config))
    assert show["imported_at"] == first["imported_at"]
    assert show["source"].startswith("HYPOTHETICAL")


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"{", "s.json", "s.json: invalid JSON at line 1"),
        (b"", "s.json", "s.json: file is empty"),
        (b"year: 2027", "s.yaml", "s.yaml: file name must end in .json or .toml"),
    ],
)
def test_unreadable_schedule_files(
    capsys: pytest.CaptureFixture[str],
    node_config: Path,
    tmp_path: Path,
    content: bytes,
    name: str,
    message: str,
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    rc, out, err = run(capsys, "calendar", "import", str(path), "--config", str(node_config))
    assert (rc, out) == (1, "")
    assert err.startswith("cccfed: error: ")
    assert message in err
    assert not store_file(node_config).exists()


def test_import_missing_file(capsys: pytest.CaptureFixture[str], node_config: Path) -> None:
    rc, out, err = run(
        capsys, "calendar", "import", "no-such-2027.json", "--config", str(node_config)
    )
    assert (rc, out) == (1, "")
    assert err.startswith("cccfed: error: no-such-2027.json")


def test_import_needs_a_node_config(capsys: pytest.CaptureFixture[str], no_config: Path) -> None:
    shutil.copy(FIXTURE_2027, no_config / "holidays-2027.json")
    rc, out, err = run(capsys, "calendar", "import", "holidays-2027.json")
    assert (rc, out) == (1, "")
    assert err.startswith("cccfed: error: node.toml: no such configuration file")
