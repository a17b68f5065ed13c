"""`result publish` hands the operator a ready assistance request for use in another province."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from node import pki
from node.cli import main
from node.local import free_ports

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "inspection-result.toml"


def test_publish_writes_a_draft_request_that_request_new_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    codes = ["310000", "320000", "330000"]
    pki.init_federation(tmp_path / "fed", codes, ports=dict(zip(codes, free_ports(3), strict=True)))
    cfg = str(tmp_path / "fed" / "nodes" / "310000" / "node.toml")
    result_file = tmp_path / "result.toml"
    shutil.copy(EXAMPLE, result_file)

    assert main(["result", "publish", str(result_file), "--config", cfg, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    [draft] = out["draft_requests"]
    data = json.loads(Path(draft).read_text(encoding="utf-8"))
    assert data["kind"] == "assistance" and data["target_bureau"] == "320500"
    assert data["requesting_bureau"] == "310115"

    # the draft is a valid request file as it stands
    assert main(["request", "new", draft, "--config", cfg, "--draft", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["status"] == "draft" and created["target_bureau"] == "320500"
