"""A bench run never overwrites an earlier run's results (``bench.run.result_path``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.run import result_path


def test_a_second_run_of_the_day_writes_beside_the_first(tmp_path: Path) -> None:
    first = result_path(tmp_path, "2026-11-27", "small")
    assert first.name == "2026-11-27-small.json"
    first.write_text("{}")
    (tmp_path / "2026-11-27b-full.json").write_text("{}")  # another size's name does not count
    second = result_path(tmp_path, "2026-11-27", "small")
    assert second.name == "2026-11-27b-small.json"
    second.write_text("{}")
    assert result_path(tmp_path, "2026-11-27", "small").name == "2026-11-27c-small.json"
    assert result_path(tmp_path, "2026-11-27", "full").name == "2026-11-27-full.json"


def test_a_day_with_every_name_taken_is_refused_by_name(tmp_path: Path) -> None:
    for tag in ["", *"bcdefghijklmnopqrstuvwxyz"]:
        (tmp_path / f"2026-11-27{tag}-tiny.json").write_text("{}")
    with pytest.raises(SystemExit, match="RESULTS_FULL"):
        result_path(tmp_path, "2026-11-27", "tiny")
