"""[obligations] reminder_days: loaded, and refused with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.errors import ConfigError
from node.config import load_config


def _config(root: Path, federation_dir: Path, extra: str) -> Path:
    text = (federation_dir / "nodes" / "310000" / "node.toml").read_text()
    text = text.replace("reminder_days = [3, 1]\n", extra)
    cfg = root / "nodes" / "310000" / "node.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(text)
    return cfg


def test_reminder_days_default_and_custom(tmp_path: Path, federation_dir: Path) -> None:
    assert load_config(federation_dir / "nodes" / "310000" / "node.toml").reminder_days == (3, 1)
    cfg = _config(tmp_path, federation_dir, "reminder_days = [7, 3, 0]\n")
    assert load_config(cfg).reminder_days == (7, 3, 0)


@pytest.mark.parametrize("bad", ['"3"', "[-1]", "[true]", "[400]", "3"])
def test_reminder_days_refused(tmp_path: Path, federation_dir: Path, bad: str) -> None:
    cfg = _config(tmp_path, federation_dir, f"reminder_days = {bad}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(cfg)
    assert str(cfg) in str(ei.value) and "reminder_days" in str(ei.value)
