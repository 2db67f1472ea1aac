"""The proof harness: its statistics against known values, and a quick two-seed run end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from esper_recipes import proof


def test_student_t_and_welch_match_reference_values() -> None:
    assert proof.t_sf_two_sided(2.0, 10) == pytest.approx(0.07339, abs=1e-5)
    assert proof.t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert proof.t_quantile(0.975, 1000) == pytest.approx(1.9623, abs=1e-4)
    t, p = proof.welch([1, 2, 3, 4, 5], [2, 3, 4, 5, 9])  # scipy.stats.ttest_ind(..., equal_var=False)
    assert t == pytest.approx(-1.142857, abs=1e-6) and p == pytest.approx(0.293725, abs=1e-6)
    assert proof.welch([1, 1], [1, 1]) == (0.0, 1.0)
    mean, ci = proof.mean_ci95([0.9, 0.92, 0.94])
    assert mean == pytest.approx(0.92) and ci == pytest.approx(4.3027 * 0.02 / math.sqrt(3), rel=1e-4)


def test_quick_proof_runs_every_arm_and_writes_results(tmp_path: Path) -> None:
    # One worker: in-process, so the test does not pay for starting a pool (make proof uses two).
    assert proof.main(["--seeds", "2", "--quick", "--out", str(tmp_path), "--workers", "1"]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    assert {(r["task"], r["arm"]) for r in doc["runs"]} == {(t, a) for t in proof.TASKS for a in proof.ARMS}
    assert len(doc["runs"]) == 2 * len(proof.TASKS) * len(proof.ARMS)
    for task in proof.TASKS:
        arms = doc["summary"][task]
        assert set(arms) == set(proof.ARMS)
        assert "p_value_vs_esper" in arms["host"] and "p_value_vs_esper" in arms["random"]
        esper_runs = [r for r in doc["runs"] if r["task"] == task and r["arm"] == "esper"]
        static_runs = [r for r in doc["runs"] if r["task"] == task and r["arm"] == "static"]
        # The static twin has exactly the parameters of the host plus the kernels Esper fossilized.
        host_params = next(r["parameters"] for r in doc["runs"] if r["task"] == task and r["arm"] == "host")
        assert all(s["parameters"] >= host_params for s in static_runs) and esper_runs
    assert (tmp_path / "proof.png").read_bytes()[:4] == b"\x89PNG"


def test_quick_proof_on_compiled_kernels_uses_them_in_every_growing_and_static_arm(tmp_path: Path) -> None:
    assert proof.main(["--seeds", "1", "--quick", "--tasks", "spirals", "--out", str(tmp_path / "proof"),
                       "--workers", "1", "--kernels", "compiled", "--pipeline", "fast",
                       "--platform-dir", str(tmp_path / "platform")]) == 0
    doc = json.loads((tmp_path / "proof" / "results.json").read_text())
    assert doc["kernels"] == "compiled" and doc["pipeline"] == "fast"
    grown = [aid for r in doc["runs"] for _layer, _index, aid in r["fossilized"]]
    assert grown and all("-fast-" in aid for aid in grown)  # compiled artifacts from the platform's Urza
    static = next(r for r in doc["runs"] if r["arm"] == "static")
    host = next(r for r in doc["runs"] if r["arm"] == "host")
    assert static["parameters"] > host["parameters"]  # the static twin carries the compiled kernels' weights
