"""make proof-scaffold, shortened: both arms run on one seed through the crisis, every scaffold leaves, the figures
are the last lines and the results and plot are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper_recipes import proof_scaffold


def test_one_seed_through_the_crisis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert proof_scaffold.main(["--seeds", "1", "--seed-base", "1000", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("scaffold_rollbacks_ratio: ") and lines[-1].startswith("scaffold_retained_gain: ")
    doc = json.loads((tmp_path / "results.json").read_text())
    arms = {r["arm"]: r for r in doc["runs"]}
    assert set(arms) == {"with", "without"}
    assert arms["without"]["rollbacks"] > 0  # the crisis is real
    assert arms["with"]["requests"] >= 1 and arms["with"]["sunsets"]  # a scaffold came and left
    assert doc["summary"]["all_left"]  # parameters back to the host's
    assert max(c["alpha"] for c in arms["with"]["curve"]) == 1.0
    assert (tmp_path / "scaffold.png").stat().st_size > 0
