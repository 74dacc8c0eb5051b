"""Every stage script answers --help with its usage and exits 0 without reading or writing anything."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "stages").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_help_prints_usage_and_touches_nothing(tmp_path: Path, script: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script.name}"), done.stdout
    summary = ast.get_docstring(ast.parse(script.read_text())).splitlines()[0]
    assert summary in done.stdout                                  # the module docstring is the description
    assert list(tmp_path.iterdir()) == []                          # no params read, no data/ written
