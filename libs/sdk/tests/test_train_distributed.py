"""``esper train`` with two ranks (gloo, CPU), as separate processes: a rank killed mid-run stops the other at
once and ``--resume`` continues both from the last checkpoint; ranks given different configs stop at start.

Each rank is a fresh interpreter, so these take a while (interpreter start-up dominates): marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esper.launch import free_port, rank_environments
from esper.train import EXIT_BAD_CONFIG, EXIT_OK, EXIT_RANK_FAILED

pytestmark = pytest.mark.slow

CONFIG = """
tolaria:
  epochs: {epochs}
  task: spirals
  run_dir: {run_dir}
  run_id: ddp-run
  learning_rate: {lr}
  batch_size: 16
  progress_bar: false
  collective_timeout_s: 60
kasmina:
  chunks_per_layer: 2
tamiyo:
  warmup_epochs: 1
  plateau_patience_epochs: 1
  plateau_min_delta: 10.0
"""
RANK = [sys.executable, "-m", "esper.cli"]
ESPER = str(Path(sys.executable).with_name("esper"))


def write_config(path: Path, run_dir: Path, epochs: int, lr: float = 0.01) -> Path:
    path.write_text(CONFIG.format(epochs=epochs, run_dir=run_dir, lr=lr))
    return path


def start_ranks(configs: list[Path], *extra: str) -> list[subprocess.Popen[str]]:
    """One ``python -m esper.cli CONFIG`` per rank, with the environment torchrun would give it."""
    envs = rank_environments(len(configs), free_port())
    return [subprocess.Popen([*RANK, str(c), "--kernels", "eager", *extra], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for c, env in zip(configs, envs, strict=True)]


def wait_for(path: Path, procs: list[subprocess.Popen[str]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout_s} s"
        time.sleep(0.1)


def test_a_killed_rank_stops_the_other_at_once_and_resume_continues_both_from_the_last_checkpoint(
        tmp_path: Path) -> None:
    run = tmp_path / "runs" / "ddp-run"
    config = write_config(tmp_path / "run.yaml", tmp_path / "runs", epochs=500)  # far more than it gets to run
    zero, one = start_ranks([config, config])
    try:
        wait_for(run / "checkpoints" / "epoch-00002.pt.sha256", [zero, one], timeout_s=240)
        one.kill()
        killed = time.monotonic()
        output, _ = zero.communicate(timeout=120)
        stopped_after = time.monotonic() - killed
    finally:
        for p in (zero, one):
            p.kill()
    assert zero.returncode == EXIT_RANK_FAILED, output
    assert stopped_after < 20, f"rank 0 took {stopped_after:.1f} s to notice"  # a dead peer: the next collective
    assert f"--resume {run}" in " ".join(output.split())
    saved = sorted(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("epoch-*.pt"))
    last = saved[-1]

    # Both ranks again, through esper's own launcher: every rank restores the checkpoint rank 0 chose.
    resumed = subprocess.run([ESPER, "train", "--resume", str(run), "--kernels", "eager", "--epochs", str(last + 2),
                              "--nproc-per-node", "2"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == EXIT_OK, resumed.stdout + resumed.stderr
    assert f"after epoch {last}" in " ".join(resumed.stdout.split())  # rich wraps long paths at 80 columns
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-2:] == [last + 1, last + 2]  # went on from the checkpoint: nothing after it was kept
    assert json.loads((run / "summary.json").read_text())["esper_parameters"] > 0


def test_ranks_given_different_configs_stop_at_start_naming_the_key(tmp_path: Path) -> None:
    configs = [write_config(tmp_path / f"rank{r}.yaml", tmp_path / "runs", epochs=2, lr=0.01 * (r + 1))
               for r in range(2)]
    procs = start_ranks(configs, "--quiet")
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == EXIT_BAD_CONFIG, out
        assert "tolaria.learning_rate: 0.01 / 0.02" in " ".join(out.split())
    assert not (tmp_path / "runs").exists()  # nothing was written
