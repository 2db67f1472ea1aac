"""``esper train``: one run from one YAML file, its exit codes, --resume, and the design's researcher journey."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import esper
from esper.tasks import TaskData
from esper.train import EXIT_BAD_CONFIG, EXIT_OK, EXIT_UNREACHABLE, main

FAST = """
model: {model}
tolaria:
  epochs: {epochs}
  task: spirals
  run_dir: {run_dir}
  run_id: spirals-run
  learning_rate: 0.01
  progress_bar: false
kasmina:
  chunks_per_layer: 2
tamiyo:
  warmup_epochs: 1
  plateau_patience_epochs: 1
  plateau_min_delta: 10.0
"""


def small_host(task: TaskData) -> nn.Module:
    """The host factory the configs below name by import path."""
    return nn.Sequential(nn.Linear(task.num_features, 8), nn.ReLU(), nn.Linear(8, task.num_classes))


def write_config(tmp_path: Path, epochs: int = 3, model: str = "null", extra: str = "") -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(FAST.format(model=model, epochs=epochs, run_dir=tmp_path / "runs") + extra)
    return path


def test_a_standalone_run_writes_its_directory_and_resumes_where_it_stopped(tmp_path: Path) -> None:
    config = write_config(tmp_path, epochs=3, model=f"{__name__}:small_host")
    assert main(config, kernels="eager", quiet=True) == EXIT_OK
    run = tmp_path / "runs" / "spirals-run"
    for name in ("config.yaml", "model.pt", "lineage.json", "metrics.jsonl", "report.html", "summary.json"):
        assert (run / name).exists(), name
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3

    # A kill in the middle of epoch 4 left its metrics line and an event behind the last checkpoint (epoch 3).
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 4, "val_accuracy": 0.0}) + "\n")
    with (run / "events.jsonl").open("a") as f:
        f.write(json.dumps({"kind": "transition", "epoch": 4, "seed": "0[0]", "new": "GERMINATED"}) + '\n{"epo')
    assert main(None, resume=run, kernels="eager", epochs=5, quiet=True) == EXIT_OK
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert not any(e.get("seed") == "0[0]" and e["epoch"] == 4 and e.get("val_accuracy") is None
                   for e in events if e.get("new") == "GERMINATED" and "blueprint" not in e)
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5]  # the resumed run went on from epoch 3: nothing trained twice
    assert json.loads((run / "summary.json").read_text())["esper_parameters"] > 0


def test_a_run_with_growth_germinates_on_the_spirals_task(tmp_path: Path) -> None:
    config = write_config(tmp_path, epochs=6, model=f"{__name__}:small_host")
    assert main(config, kernels="eager", quiet=True) == EXIT_OK
    lineage = json.loads((tmp_path / "runs" / "spirals-run" / "lineage.json").read_text())
    assert lineage["germinations"], "a plateau of one epoch with min delta 10 must germinate"


@pytest.mark.parametrize(("model", "extra", "message"), [
    ("nowhere.at_all:factory", "", "cannot import 'nowhere.at_all'"),
    (f"{__name__}:no_such_factory", "", "has no attribute 'no_such_factory'"),
    ("null", "tolaria_typo: 1\n", "tolaria_typo: unknown key"),
])
def test_a_bad_config_exits_2_naming_what_is_wrong_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, extra: str, message: str) -> None:
    assert main(write_config(tmp_path, model=model, extra=extra), kernels="eager", quiet=True) == EXIT_BAD_CONFIG
    assert message in " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_platform_exits_3_within_its_timeout_naming_the_url(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra="platform:\n  bus_url: memory://nowhere\n  urza_url: http://127.0.0.1:9\n"
                                         "  coordinator_url: http://127.0.0.1:9\n  connect_timeout_s: 2\n")
    start = time.monotonic()
    esper_command = Path(sys.executable).with_name("esper")
    result = subprocess.run([str(esper_command), "train", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_UNREACHABLE, result.stdout + result.stderr
    assert "http://127.0.0.1:9" in "".join(result.stdout.split()) and time.monotonic() - start < 60
    assert not (tmp_path / "runs").exists()


def test_the_researcher_journey_of_the_design_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 003, F.2.2, verbatim but for the config path and the model class."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "phase1_mnist.yaml").write_text(FAST.format(
        model="null", epochs=2, run_dir=tmp_path / "outputs" / "runs"))
    monkeypatch.chdir(tmp_path)

    def MySimpleCNN() -> nn.Module:
        return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))

    torch.manual_seed(0)
    # --- the journey ---
    config = esper.load_config("./configs/phase1_mnist.yaml")
    model = MySimpleCNN()
    morphable_model = esper.wrap(model, config.kasmina)
    tamiyo_controller = esper.TamiyoController(morphable_model, config.tamiyo)
    tolaria_trainer = esper.TolariaTrainer(
        model=morphable_model,
        controller=tamiyo_controller,
        config=config.tolaria
    )
    print("Starting morphogenetic training...")
    final_model, training_history = tolaria_trainer.train()
    esper.save_model(final_model, "./outputs/evolved_cnn")
    print("Training complete. Evolved model saved.")
    # --- what it left ---
    assert len(training_history.epochs) == 2
    assert (tmp_path / "outputs" / "evolved_cnn" / "model.pt").exists()
    assert (tmp_path / "outputs" / "evolved_cnn" / "lineage.json").exists()


def test_the_trainer_without_data_or_task_says_what_it_needs() -> None:
    model = esper.wrap(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)), esper.KasminaConfig())
    with pytest.raises(esper.ConfigError, match=r"tolaria\.task"):
        esper.TolariaTrainer(model, esper.TamiyoController(model), esper.TolariaConfig())
