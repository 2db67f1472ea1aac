"""Simic: the environment steps real runs, behaviour cloning + MaskablePPO train (a smoke run), export is exact."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from esper_policy import LearnedPolicy, TamiyoConfig, build_policy
from esper_policy.network import load_artifact, random_network
from esper_policy.observation import N_ACTIONS, OBSERVATION_SIZE, Op, decode, encode
from esper_simic.env import EsperEnv
from esper_simic.publish import publish_policy
from esper_simic.runs import host_shape, load_task
from esper_simic.train import actor_logits, export_network, load_episodes, make_agent, train
from esper_tamiyo.service import create_service as create_tamiyo
from esper_urza.service import create_service as create_urza
from esper_urza_client import UrzaClient


def test_tasks_are_generated_or_bundled_and_hosts_vary_with_the_seed() -> None:
    for name, classes in (("spirals", 2), ("digits", 10), ("moons", 2), ("circles", 2)):
        task = load_task(name, 3)
        assert task.num_classes == classes and len(task.test.x) > 100
    assert len({host_shape(s) for s in range(30)}) > 3
    with pytest.raises(ValueError, match="unknown task"):
        load_task("imagenet", 0)


def test_the_environment_steps_a_real_run_with_masks_vetoes_and_invalid_actions() -> None:
    env = EsperEnv(["moons"], epochs=10, seed=5)  # germination allowed from epoch 3 to 4 (last = epochs - 6)
    obs, info = env.reset(options={"task": "moons", "run_seed": 123})
    assert obs.shape == (OBSERVATION_SIZE,) and info == {"task": "moons", "run_seed": 123}
    mask = env.action_masks()
    assert mask.shape == (N_ACTIONS,) and mask[0]
    germinate = next(i for i in range(N_ACTIONS) if mask[i] and decode(i).op is Op.GERMINATE)
    # Epoch 1 is in the warm-up: the heuristic vetoes the germination.
    obs, reward, done, _, info = env.step(germinate)
    assert not done and info["vetoes"] == 1 and env.log.actions == ["WAIT"]
    # An action outside the mask (culling an empty slot) is a no-op, counted.
    obs, reward, done, _, info = env.step(encode(Op.CULL, 0))
    assert info["invalid_action"] and env.log.invalid == 1 and env.log.actions[-1] == "WAIT"
    steps = 2
    while not done:
        mask = env.action_masks()
        allowed = [i for i in range(N_ACTIONS) if mask[i] and decode(i).op is Op.GERMINATE]
        obs, reward, done, _, info = env.step(allowed[0] if allowed else 0)
        assert np.isfinite(reward)
        steps += 1
    assert steps == 10
    log = info["episode_log"]
    assert any(a.startswith("GERMINATE") for a in log.actions) and 0.0 < log.test_accuracy <= 1.0
    env.close()


def test_a_tiny_behaviour_cloning_and_ppo_run_writes_a_servable_policy_and_its_curves(tmp_path: Path) -> None:
    summary = train(tmp_path, bc_runs=2, ppo_steps=16, n_steps=8, epochs=6, bc_epochs=20, version="smoke-1")
    assert summary["bc_steps"] == 12 and summary["bc_loss_first_last"][1] < summary["bc_loss_first_last"][0]
    assert summary["entropy_probe"]["final"] > 0.1  # not collapsed
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert len(curves["ppo"]) == 2 and curves["ppo"][-1]["value_loss"] is not None
    assert (tmp_path / "curves.png").stat().st_size > 1000
    artifact = json.loads((tmp_path / "policy.json").read_text())
    network = load_artifact(artifact)
    assert network.version == "smoke-1"
    path = tmp_path / "policy.json"
    policy = build_policy(TamiyoConfig(policy="learned", learned_policy_path=str(path)))
    assert isinstance(policy, LearnedPolicy)
    x, _ = load_episodes(sorted((tmp_path / "episodes").glob("*/episode.jsonl")))
    assert x.shape == (12, OBSERVATION_SIZE)


def test_the_exported_numpy_network_gives_the_agents_logits() -> None:
    env = EsperEnv(["spirals"], epochs=2)
    model = make_agent(env, ent_coef=0.02, n_steps=8, seed=0)
    network = load_artifact(json.loads(json.dumps(export_network(model, "x", {}).to_artifact())))
    obs = np.random.default_rng(0).standard_normal((5, OBSERVATION_SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = actor_logits(model, torch.as_tensor(obs)).numpy()
    got = np.stack([network.logits(o) for o in obs])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    env.close()


def test_publish_stores_the_version_in_urza_and_a_running_tamiyo_serves_it(tmp_path: Path) -> None:



    path = tmp_path / "policy.json"
    path.write_text(json.dumps(random_network("simic-pub", hidden=(8,)).to_artifact()))
    bus_url = f"memory://publish-{uuid.uuid4().hex[:8]}"
    urza = create_urza(data_dir=tmp_path / "urza", bus_url=bus_url, seed_library=False)
    tamiyo = create_tamiyo(bus_url=bus_url)
    with TestClient(urza.app) as urza_http, TestClient(tamiyo.app):
        client = UrzaClient(http=urza_http)  # type: ignore[arg-type]
        tamiyo.controller.policy_fetcher = client.policy
        update = publish_policy(path, bus_url=bus_url, policy_version=5, urza=client)
        assert update.learned_policy is not None and update.learned_policy.version == "simic-pub"
        deadline = time.monotonic() + 10
        while tamiyo.controller.network is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tamiyo.controller.network is not None and tamiyo.controller.network.version == "simic-pub"
        assert client.policy("simic-pub")[1] == update.learned_policy.sha256


def test_the_evaluation_pairs_arms_by_seed_and_prints_its_closing_lines(tmp_path: Path) -> None:
    from rich.console import Console

    from esper_simic.evaluate import evaluate, paired, report

    assert paired([0.5, 0.6], [0.5, 0.6]) == (0.0, 1.0)
    diff, p = paired([0.60, 0.71, 0.80], [0.50, 0.60, 0.71])
    assert diff == pytest.approx(10.0, abs=0.1) and p < 0.05
    with pytest.raises(ValueError, match="evaluation seeds"):
        evaluate(random_network("e", hidden=(4,)), ["moons"], [10_000])
    results = evaluate(random_network("e", hidden=(4,)), ["circles"], [0], epochs=4, say=lambda _: None)
    assert set(results["accuracy"]["circles"]) == {"learned", "heuristic", "random"}
    lines = report(results, tmp_path, Console(file=open(tmp_path / "out.txt", "w")))  # noqa: SIM115
    assert lines[0].startswith("learned_vs_heuristic_pts: ") and lines[1].startswith("learned_vs_heuristic_p: ")
    assert lines[2].startswith("task_circles: ") and "never trained on" in lines[2]
    assert (tmp_path / "eval.png").exists() and (tmp_path / "table.txt").exists()
