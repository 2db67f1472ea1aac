"""Every run records its episode (episode.jsonl), and ``policy: learned`` runs in process with its veto count."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from esper.tasks import TaskData
from esper.train import EXIT_OK, main
from esper_policy.network import random_network
from esper_policy.observation import N_ACTIONS, OBSERVATION_SIZE, OBSERVATION_VERSION, decode

CONFIG = """
model: {model}
tolaria:
  epochs: 8
  task: spirals
  run_dir: {run_dir}
  run_id: {run_id}
  learning_rate: 0.01
  progress_bar: false
kasmina:
  chunks_per_layer: 1
  alpha_ramp_steps: 4
  training_max_steps: 4
  stabilization_steps: 2
  evaluation_steps: 2
  fine_tuning_steps: 4
tamiyo:
  policy: {policy}
  warmup_epochs: 1
  plateau_patience_epochs: 1
  plateau_min_delta: 10.0
  fine_tuning_epochs: 1
{extra}
"""


def small_host(task: TaskData) -> nn.Module:
    """Two hidden layers, so two seed slots."""
    return nn.Sequential(nn.Linear(task.num_features, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, task.num_classes))


def _run(tmp_path: Path, policy: str, extra: str = "") -> Path:
    path = tmp_path / f"{policy}.yaml"
    path.write_text(CONFIG.format(model=f"{__name__}:small_host", run_dir=tmp_path / "runs", run_id=policy,
                                  policy=policy, extra=extra))
    assert main(path, kernels="eager", quiet=True) == EXIT_OK
    return tmp_path / "runs" / policy


def _steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "episode.jsonl").read_text().splitlines()]


def test_a_heuristic_run_records_one_step_per_boundary_with_observation_action_and_outcomes(tmp_path: Path) -> None:
    steps = _steps(_run(tmp_path, "heuristic"))
    assert [s["epoch"] for s in steps] == list(range(1, 9))
    for s in steps:
        assert s["observation_version"] == OBSERVATION_VERSION
        assert len(s["observation"]) == OBSERVATION_SIZE
        assert 0 <= s["action"] < N_ACTIONS and decode(s["action"]).describe() == s["action_name"]
        assert 0.0 <= s["outcomes"]["val_accuracy"] <= 1.0
    # The plateau rule (min_delta 10) fires right after the warm-up: a germination is recorded as such,
    # into a slot with a blueprint, and the slot's "occupied" feature is set at the next boundary.
    germinations = [s for s in steps if s["action_name"].startswith("GERMINATE")]
    assert germinations, [s["action_name"] for s in steps]
    first = germinations[0]
    assert first["observation"][0] == first["epoch"] / 50.0
    later = next(s for s in steps if s["epoch"] == first["epoch"] + 1)
    slot = decode(first["action"]).slot
    assert slot is not None
    from esper_policy.observation import GLOBAL_FEATURES, SLOT_FEATURES
    assert later["observation"][GLOBAL_FEATURES + slot * SLOT_FEATURES] == 1.0
    # Outcomes: every field report the controller wrote at a boundary is in that step.
    reported = [r for s in steps for r in s["outcomes"]["reports"]]
    events = [json.loads(line) for line in (tmp_path / "runs" / "heuristic" / "events.jsonl").read_text().splitlines()]
    from_controller = [e for e in events if e["kind"] == "field_report"]
    assert len(reported) == len(from_controller)


def test_policy_learned_runs_in_process_from_an_artifact_and_reports_its_vetoes(tmp_path: Path) -> None:
    artifact = random_network("test-v1", hidden=(16,), seed=3).to_artifact()
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(artifact))
    run = _run(tmp_path, "learned", extra=f"  learned_policy_path: {path}\n  warmup_epochs: 4")
    steps = _steps(run)
    assert len(steps) == 8
    summary = json.loads((run / "summary.json").read_text())
    stats = summary["controller"]
    assert stats["policy"] == "learned" and stats["version"] == "test-v1"
    assert stats["invalid_actions"] == 0  # the network acts only among the masked-in actions
    assert stats["vetoes"] == sum(1 for line in stats["veto_log"] if "vetoed" in line) or stats["vetoes"] > 10
    assert all(s["controller"]["policy"] == "learned" for s in steps)
    # Nothing germinated during the warm-up (vetoed if the network tried).
    assert not any(s["action_name"].startswith("GERMINATE") for s in steps if s["epoch"] < 4)
