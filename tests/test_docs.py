"""The README is the front door: its settings table and its test command must stay true."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_documented() -> None:
    for field in Settings.model_fields:
        assert f"`TRAINSERVE_{field.upper()}`" in README, field


def test_ci_runs_the_readme_test_command() -> None:
    command = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
    assert command in README
    assert command in (ROOT / ".ci" / "run").read_text()


def test_the_architecture_page_names_files_that_exist() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"`((?:service|worker|tests|docs)/[\w/.]*)`", page))
    assert len(paths) > 20, "the page names the packages"
    missing = sorted(path for path in paths if not (ROOT / path).exists())
    # Files named within their package (`engine.py`, `codecs/v2.py`) exist somewhere in the code.
    files = {
        str(p.relative_to(ROOT))
        for top in ("service", "worker", "trainserve", "tests")
        for p in (ROOT / top).rglob("*.py")
    }
    for name in set(re.findall(r"`([\w/]+\.py)`", page)) - paths:
        if not any(f.endswith("/" + name) for f in files):
            missing.append(name)
    assert not missing, missing
