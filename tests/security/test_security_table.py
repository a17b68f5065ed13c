"""The threat table of ``docs/SECURITY.md`` cannot rot: every row names a test that exists.

Each row of the table is ``| Tnn | threat | where | reason | `tests/…::test_x[param]` |``. This
test parses the page, requires at least 30 rows numbered T01, T02, … without gaps, and collects
every named node id with pytest in a subprocess (``--collect-only``), so a renamed test, a removed
parameter or a typo fails here. That the named tests *pass* is checked by running them, as the
suite does (``python tests/security/test_security_table.py`` prints the ids to run).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECURITY_MD = ROOT / "docs" / "SECURITY.md"

ROW = re.compile(r"^\|\s*(T\d{2,3})\s*\|(.*)\|\s*$")
NODE_ID = re.compile(r"`(tests/[\w/]+\.py::\w+(?:\[[^\]`]+\])?)`")
MIN_ROWS = 30


def table_rows(text: str) -> list[tuple[str, str]]:
    """(row id, node id) of every row of the threat table, in order."""
    rows = []
    for line in text.splitlines():
        m = ROW.match(line)
        if m is None:
            continue
        cells = [c.strip() for c in m.group(2).split(" | ")]
        ids = NODE_ID.findall(cells[-1])
        assert len(ids) == 1, f"{m.group(1)}: the last cell must name exactly one test: {line}"
        rows.append((m.group(1), ids[0]))
    return rows


def node_ids() -> list[str]:
    return [node for _, node in table_rows(SECURITY_MD.read_text(encoding="utf-8"))]


def test_security_table_names_only_tests_that_exist() -> None:
    rows = table_rows(SECURITY_MD.read_text(encoding="utf-8"))
    assert len(rows) >= MIN_ROWS, f"only {len(rows)} rows; the table needs at least {MIN_ROWS}"
    assert [row for row, _ in rows] == [f"T{n:02d}" for n in range(1, len(rows) + 1)]
    for row, node in rows:
        assert (ROOT / node.split("::")[0]).is_file(), f"{row}: no file for {node}"

    wanted = sorted({node for _, node in rows})
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *wanted],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    collected = {line.strip() for line in done.stdout.splitlines()}
    missing = [node for node in wanted if node not in collected]
    assert done.returncode == 0 and not missing, (
        f"not collected: {missing}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    )


if __name__ == "__main__":
    print("\n".join(node_ids()))
