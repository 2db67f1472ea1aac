"""A researcher's own task through the public path: a TaskSpec in their own module (data, host, config beside
it), named by import path to the proof (same arms and statistics) and to the demo, and the `esper` commands."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import esper
from esper.config import ConfigError
from esper_recipes import demo, proof

USER_MODULE = '''
"""A user's task: concentric rings (a tabular task of 2 features, not one the project ships)."""
import numpy as np
from torch import nn

import esper


def rings(seed: int) -> esper.TaskData:
    rng = np.random.default_rng(seed)
    radius = np.concatenate([rng.uniform(0.0, 1.0, 160), rng.uniform(1.4, 2.4, 160)])
    angle = rng.uniform(0.0, 2 * np.pi, 320)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    y = np.repeat([0, 1], 160)
    return esper.TaskData.from_splits("rings", *esper.train_val_test_split(x, y, seed=seed))


def host(task: esper.TaskData) -> nn.Module:
    return nn.Sequential(nn.Linear(task.num_features, 6), nn.ReLU(), nn.Linear(6, task.num_classes))


RINGS = esper.TaskSpec("rings", rings, host, "rings.yaml", "ReLU MLP 2-6-2")
'''

USER_CONFIG = '''
tolaria: {epochs: 6, batch_size: 32, learning_rate: 0.01}
kasmina: {exclude_modules: ["2"], alpha_ramp_epochs: 0.5, stabilization_epochs: 0.2, evaluation_epochs: 0.2,
          fine_tuning_epochs: 0.5, training_max_epochs: 0.5}
tamiyo: {warmup_epochs: 1, plateau_patience_epochs: 1, plateau_min_delta: 10.0, fine_tuning_epochs: 1,
         min_improvement: -1.0, cull_regression_tolerance: 1.0}
'''


@pytest.fixture
def user_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    package = tmp_path / "user_code"
    package.mkdir()
    (package / "my_rings_task.py").write_text(textwrap.dedent(USER_MODULE))
    (package / "rings.yaml").write_text(textwrap.dedent(USER_CONFIG))
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.chdir(tmp_path)  # the config is found beside the module, not in the working directory
    yield "my_rings_task:RINGS"
    sys.modules.pop("my_rings_task", None)
    demo.task_spec.cache_clear()


def test_the_splitter_is_public_stratified_and_standardises_by_the_training_split() -> None:
    x = [[float(i), 1.0] for i in range(100)]
    y = [i % 4 for i in range(100)]
    train, val, test = esper.data.train_val_test_split(x, y, seed=3)
    assert (len(train), len(val), len(test)) == (60, 20, 20)
    assert all(int((s.y == c).sum()) == n for s, n in ((train, 15), (val, 5)) for c in range(4))
    assert abs(float(train.x[:, 0].mean())) < 1e-5 and float(train.x[:, 1].abs().max()) == 0.0  # constant: centred
    assert esper.Batches is esper.data.Batches
    with pytest.raises(ValueError, match="training split"):
        esper.data.train_val_test_split(x, y, val_fraction=0.5, test_fraction=0.5)


def test_load_task_spec_names_what_is_wrong(user_task: str) -> None:
    spec = esper.load_task_spec(user_task)
    assert spec.name == "rings" and Path(spec.config).is_file() and spec.data(0).num_classes == 2
    with pytest.raises(ConfigError, match=r"not an esper\.tasks\.TaskSpec"):
        esper.load_task_spec("my_rings_task:host")
    with pytest.raises(ConfigError, match="cannot import"):
        esper.load_task_spec("no_such_module_xyz:SPEC")


def test_the_proof_takes_a_user_task_by_import_path_with_every_arm(user_task: str, tmp_path: Path) -> None:
    out = tmp_path / "proof"
    assert proof.main(["--task", user_task, "--seeds", "2", "--workers", "1", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert {(r["task"], r["arm"]) for r in doc["runs"]} == {(user_task, a) for a in proof.ARMS}
    arms = doc["summary"][user_task]
    assert set(arms) == set(proof.ARMS)
    assert all("p_value_vs_esper" in arms[a] and "paired_p_value_vs_esper" in arms[a] for a in ("host", "random"))
    assert all(r["epochs"] == 6 for r in doc["runs"])  # the user's config, not a built-in one
    assert proof.main(["--task", "my_rings_task:nothing_here", "--out", str(out)]) == 2


def test_the_esper_cli_runs_the_demo_on_a_user_task(user_task: str, tmp_path: Path) -> None:
    from esper_runtime.cli import app

    runner = CliRunner()
    assert "--task TASK" in runner.invoke(app, ["proof", "--help"]).output
    result = runner.invoke(app, ["demo", "--task", user_task, "--kernels", "eager", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    lineage = json.loads((tmp_path / "runs" / "demo-rings" / "lineage.json").read_text())
    assert lineage["task"] == "rings" and lineage["host"] == "ReLU MLP 2-6-2"


def test_no_headroom_nothing_is_grown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from esper_recipes import headroom

    assert headroom.main(["--seeds", "1", "--epochs", "15", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "germinations 0" in out and "nothing grown" in out
