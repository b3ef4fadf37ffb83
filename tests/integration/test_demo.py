"""`syncd demo --once` on a fresh embedded PostgreSQL: the README's first command must work (issue 7)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(400)
def test_demo_once_passes_on_fresh_embedded_postgres(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "syncd.cli", "demo", "--once", "--data-dir", str(tmp_path / "demo")],
                       capture_output=True, text=True, env=env, timeout=380)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "all checks passed" in r.stdout
    assert r.stdout.count("[ok]") >= 8 and "[FAIL]" not in r.stdout
    assert "one value at county, city and province" in r.stdout
