"""The bench runs end to end at tiny size (issue 9), so it cannot rot.  No timing is asserted."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]


def test_bench_tiny_writes_every_scenario_with_numbers(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "bench", "--size", "tiny", "--out", str(tmp_path / "out"),
                           "--pg-dir", str(tmp_path / "pg")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = list((tmp_path / "out").glob("*-tiny.json"))
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert set(doc["scenarios"]) == {"ceilings", "capture", "catchup", "latency", "bootstrap", "memory", "scale",
                                     "tree137"}
    for name, info in doc["scenarios"].items():
        assert info["status"] == "ok", (name, info, proc.stderr[-4000:])
    for key in ("fsync", "synchronous_commit", "shared_buffers", "wal_level", "max_wal_size", "work_mem"):
        assert doc["postgresql_settings"][key]
    by_scenario: dict[str, int] = {}
    for row in doc["results"]:
        assert isinstance(row["value"], (int, float)) and math.isfinite(row["value"]), row
        by_scenario[row["scenario"]] = by_scenario.get(row["scenario"], 0) + 1
    assert set(by_scenario) == {"ceilings", "capture", "catchup", "latency", "bootstrap", "memory", "scale",
                                "tree137"}
    assert doc["profile_catchup"]["top_tottime"]
    assert "verdict" in proc.stdout and "bootstrap" in proc.stdout
