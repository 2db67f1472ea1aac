"""``python -m esper_simic.train`` (``make simic-train``): imitation of the heuristic, then MaskablePPO.

1. **Record**: the heuristic Tamiyo trains ``--bc-runs`` runs on the training tasks (training seeds only);
   each run writes its ``episode.jsonl`` as every Esper run does.
2. **Behaviour cloning**: the recorded (observation, action) pairs train the PPO policy's actor by
   class-weighted cross-entropy with label smoothing, so the warm start imitates the heuristic's choices
   without becoming deterministic (the entropy a PPO run needs to keep exploring).
3. **PPO**: sb3-contrib's MaskablePPO on :class:`~esper_simic.env.EsperEnv`, entropy coefficient
   ``--ent-coef``; after every rollout the policy's entropy (SB3's, over the rollout, and ours over a fixed
   probe set of recorded observations, for the whole action and for the operation head alone), the value
   loss and the episode rewards are logged.
4. **Export**: the actor as a torch-free policy artifact (``policy.json``, JSON + float32), with
   ``curves.json`` and ``curves.png`` (entropy, value loss, reward) beside it in ``--out``.

The known failure this guards against — every head's entropy collapsing to zero — is visible in the
curves, and the run prints the final entropies as its last lines.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from sb3_contrib import MaskablePPO
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from esper_policy.network import PolicyNetwork, artifact_sha256
from esper_policy.observation import BLUEPRINTS, MAX_SLOTS, N_ACTIONS, decode

from .env import EsperEnv
from .runs import EPOCHS, TRAIN_TASKS, TRAINING_SEED_BASE, prepare_run

HIDDEN = (64, 64)


# ----------------------------------------------------------------------------------------- recording


def record_heuristic_episodes(out: Path, runs: int, *, epochs: int = EPOCHS, first_seed: int = TRAINING_SEED_BASE
                              ) -> list[Path]:
    """Train ``runs`` heuristic runs (tasks in turn, training seeds); returns their episode.jsonl paths."""
    paths = []
    for i in range(runs):
        task = TRAIN_TASKS[i % len(TRAIN_TASKS)]
        run_dir = out / f"{task}-{first_seed + i}"
        run = prepare_run(task, first_seed + i, "heuristic", epochs=epochs, run_dir=run_dir)
        run.trainer.train()
        paths.append(run_dir / "episode.jsonl")
    return paths


def load_episodes(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(observations, actions) of every decision step in the episode files (rollback lines skipped)."""
    xs, ys = [], []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            step = json.loads(line)
            if "observation" in step:
                xs.append(step["observation"])
                ys.append(step["action"])
    return np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.int64)


# ----------------------------------------------------------------------------------------- cloning


def actor_logits(model: MaskablePPO, obs: torch.Tensor) -> torch.Tensor:
    """The actor's action logits for a batch of observations (before any mask)."""
    policy = model.policy
    features = policy.extract_features(obs)
    assert isinstance(features, torch.Tensor)  # one shared extractor (share_features_extractor)
    logits: torch.Tensor = policy.action_net(policy.mlp_extractor.forward_actor(features))
    return logits


def behaviour_clone(model: MaskablePPO, x: np.ndarray, y: np.ndarray, *, epochs: int = 200,
                    label_smoothing: float = 0.1, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Fit the actor to the recorded actions; returns the loss per epoch.

    Rare actions (germinations, culls) are weighted up to the inverse of their frequency (at most 20×) so
    the mostly-WAIT episodes do not teach WAIT alone; label smoothing keeps every action's probability
    above zero.
    """
    policy = model.policy
    torch.manual_seed(seed)
    counts = np.bincount(y, minlength=N_ACTIONS).astype(np.float64)
    weights = np.where(counts > 0, np.minimum(counts.max() / np.maximum(counts, 1.0), 20.0), 1.0)
    weight = torch.as_tensor(weights, dtype=torch.float32)
    params = [*policy.mlp_extractor.policy_net.parameters(), *policy.action_net.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    obs, target = torch.as_tensor(x), torch.as_tensor(y)
    losses = []
    for _ in range(epochs):
        logits = actor_logits(model, obs)
        loss = F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def probe_entropies(model: MaskablePPO, probe: np.ndarray) -> tuple[float, float]:
    """Mean entropy (nats) of the whole action and of the operation head alone, over fixed observations."""
    with torch.no_grad():
        logits = actor_logits(model, torch.as_tensor(probe))
        probs = torch.softmax(logits, dim=-1)
        full = float(-(probs * torch.log(probs + 1e-12)).sum(-1).mean())
        op_of = torch.as_tensor([int(decode(i).op) for i in range(N_ACTIONS)])
        op_probs = torch.zeros(len(probe), 4).index_add_(1, op_of, probs)
        ops = float(-(op_probs * torch.log(op_probs + 1e-12)).sum(-1).mean())
    return full, ops


# ----------------------------------------------------------------------------------------- PPO


class CurveLogger(BaseCallback):
    """Per-rollout entropy, value loss and episode reward (the curves ``curves.png`` draws)."""

    def __init__(self, probe: np.ndarray) -> None:
        super().__init__()
        self.probe = probe
        self.rows: list[dict[str, Any]] = []
        self._episode_reward = 0.0
        self._episode_rewards: list[float] = []
        self._test_accuracies: list[float] = []

    def _on_step(self) -> bool:
        self._episode_reward += float(self.locals["rewards"][0])
        if self.locals["dones"][0]:
            self._episode_rewards.append(self._episode_reward)
            self._episode_reward = 0.0
            log = self.locals["infos"][0].get("episode_log")
            if log is not None and log.test_accuracy is not None:
                self._test_accuracies.append(log.test_accuracy)
        return True

    def _on_rollout_end(self) -> None:
        values = self.model.logger.name_to_value  # the previous update's losses, not yet dumped
        full, ops = probe_entropies(self.model, self.probe)  # type: ignore[arg-type]
        self.rows.append({
            "timesteps": self.num_timesteps,
            "entropy_rollout": -float(values["train/entropy_loss"]) if "train/entropy_loss" in values else None,
            "value_loss": float(values["train/value_loss"]) if "train/value_loss" in values else None,
            "entropy_probe": full, "entropy_probe_op": ops,
            "episode_reward": float(np.mean(self._episode_rewards)) if self._episode_rewards else None,
            "episodes": len(self._episode_rewards),
            "test_accuracy": float(np.mean(self._test_accuracies)) if self._test_accuracies else None,
        })
        self._episode_rewards, self._test_accuracies = [], []


def make_agent(env: EsperEnv, *, ent_coef: float, n_steps: int, seed: int) -> MaskablePPO:
    """MaskablePPO with a tanh MLP actor the artifact format can hold."""
    return MaskablePPO("MlpPolicy", env, n_steps=n_steps, batch_size=min(64, n_steps), n_epochs=4, gamma=0.95,
                       gae_lambda=0.9, learning_rate=3e-4, ent_coef=ent_coef, clip_range=0.2, seed=seed, verbose=0,
                       device="cpu",
                       policy_kwargs={"net_arch": {"pi": list(HIDDEN), "vf": list(HIDDEN)}, "activation_fn": nn.Tanh})


def export_network(model: MaskablePPO, version: str, metadata: dict[str, Any]) -> PolicyNetwork:
    """The agent's actor as a NumPy network (the same logits, without torch)."""
    layers = [m for m in model.policy.mlp_extractor.policy_net if isinstance(m, nn.Linear)]
    head = model.policy.action_net
    assert isinstance(head, nn.Linear)
    layers.append(head)
    weights: dict[str, np.ndarray] = {}
    for i, layer in enumerate(layers):
        weights[f"{i}.weight"] = layer.weight.detach().numpy().astype(np.float32)
        weights[f"{i}.bias"] = layer.bias.detach().numpy().astype(np.float32)
    return PolicyNetwork(version=version, hidden=list(HIDDEN), activation="tanh", weights=weights, metadata=metadata)


# ----------------------------------------------------------------------------------------- the whole run


def train(out: Path, *, bc_runs: int, ppo_steps: int, n_steps: int = 128, ent_coef: float = 0.02, epochs: int = EPOCHS,
          bc_epochs: int = 200, seed: int = 0, version: str | None = None) -> dict[str, Any]:
    """Record, clone, PPO, export; returns the summary (also written to ``out/summary.json``)."""
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    paths = record_heuristic_episodes(out / "episodes", bc_runs, epochs=epochs)
    x, y = load_episodes(paths)
    recorded_s = time.perf_counter() - start
    env = EsperEnv(TRAIN_TASKS, epochs=epochs, seed=seed)
    model = make_agent(env, ent_coef=ent_coef, n_steps=n_steps, seed=seed)
    before = probe_entropies(model, x)
    bc_losses = behaviour_clone(model, x, y, epochs=bc_epochs, seed=seed)
    after_bc = probe_entropies(model, x)
    bc_agreement = _agreement(model, x, y)
    logger = CurveLogger(x)
    if ppo_steps > 0:
        model.learn(total_timesteps=ppo_steps, callback=logger)
    env.close()
    final = probe_entropies(model, x)
    seconds = time.perf_counter() - start
    version = version or f"simic-{time.strftime('%Y%m%d-%H%M%S')}"
    summary: dict[str, Any] = {
        "version": version, "bc_runs": bc_runs, "bc_steps": len(y), "bc_epochs": bc_epochs,
        "bc_action_counts": {decode(int(a)).describe(): int(c) for a, c in zip(*np.unique(y, return_counts=True),
                                                                                 strict=True)},
        "bc_loss_first_last": [bc_losses[0], bc_losses[-1]], "bc_agreement": bc_agreement,
        "ppo_steps": ppo_steps, "n_steps": n_steps, "ent_coef": ent_coef, "epochs_per_run": epochs,
        "entropy_probe": {"init": before[0], "after_bc": after_bc[0], "final": final[0]},
        "entropy_probe_op": {"init": before[1], "after_bc": after_bc[1], "final": final[1]},
        "final_agreement_with_heuristic": _agreement(model, x, y), "recorded_s": recorded_s, "seconds": seconds,
        "tasks": list(TRAIN_TASKS), "blueprints": list(BLUEPRINTS), "max_slots": MAX_SLOTS,
    }
    network = export_network(model, version, {k: summary[k] for k in ("bc_runs", "ppo_steps", "ent_coef", "tasks")})
    artifact = network.to_artifact()
    (out / "policy.json").write_text(json.dumps(artifact))
    summary["sha256"] = artifact_sha256(artifact)
    (out / "curves.json").write_text(json.dumps({"bc_loss": bc_losses, "ppo": logger.rows}, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_curves(out / "curves.png", bc_losses, logger.rows)
    return summary


def _agreement(model: MaskablePPO, x: np.ndarray, y: np.ndarray) -> float:
    """Share of recorded steps where the actor's most likely action is the heuristic's."""
    with torch.no_grad():
        logits = actor_logits(model, torch.as_tensor(x))
    return float((logits.argmax(-1).numpy() == y).mean())


def plot_curves(path: Path, bc_losses: list[float], rows: list[dict[str, Any]]) -> None:
    """Four panels: behaviour-cloning loss, entropies, value loss, mean episode reward per rollout."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    axes[0].plot(bc_losses)
    axes[0].set(title="behaviour cloning loss", xlabel="epoch")
    steps = [r["timesteps"] for r in rows]

    def series(key: str) -> list[float]:
        return [math.nan if r[key] is None else r[key] for r in rows]

    axes[1].plot(steps, series("entropy_probe"), label="probe: whole action")
    axes[1].plot(steps, series("entropy_probe_op"), label="probe: operation head")
    axes[1].plot(steps, series("entropy_rollout"), label="rollout (masked)")
    axes[1].set(title="policy entropy (nats)", xlabel="env steps")
    axes[1].legend()
    axes[2].plot(steps, series("value_loss"))
    axes[2].set(title="value loss", xlabel="env steps")
    axes[3].plot(steps, series("episode_reward"), marker="o")
    axes[3].set(title="mean episode reward", xlabel="env steps")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("runs/simic"))
    parser.add_argument("--bc-runs", type=int, default=24)
    parser.add_argument("--bc-epochs", type=int, default=200)
    parser.add_argument("--ppo-steps", type=int, default=2048)
    parser.add_argument("--n-steps", type=int, default=128)
    parser.add_argument("--ent-coef", type=float, default=0.02)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", default=None)
    args = parser.parse_args(argv)
    s = train(args.out, bc_runs=args.bc_runs, ppo_steps=args.ppo_steps, n_steps=args.n_steps, ent_coef=args.ent_coef,
              epochs=args.epochs, bc_epochs=args.bc_epochs, seed=args.seed, version=args.version)
    print(f"policy {s['version']} -> {args.out / 'policy.json'} (sha256 {s['sha256'][:12]}); curves: "
          f"{args.out / 'curves.png'}")
    print(f"bc: {s['bc_steps']} steps from {s['bc_runs']} heuristic runs, agreement {s['bc_agreement']:.3f}; "
          f"after PPO {s['final_agreement_with_heuristic']:.3f}")
    print(f"wall_time_s: {s['seconds']:.0f} (recording {s['recorded_s']:.0f})")
    print(f"entropy_whole_action: init {s['entropy_probe']['init']:.3f} after_bc {s['entropy_probe']['after_bc']:.3f} "
          f"final {s['entropy_probe']['final']:.3f}")
    print(f"entropy_operation_head: init {s['entropy_probe_op']['init']:.3f} "
          f"after_bc {s['entropy_probe_op']['after_bc']:.3f} final {s['entropy_probe_op']['final']:.3f}")


if __name__ == "__main__":
    main()
