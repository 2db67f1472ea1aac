"""``EsperEnv``: a Gymnasium environment whose episodes are real Tolaria runs.

* **Episode**: one small training run (:mod:`esper_simic.runs`) on a task drawn from ``tasks`` with a
  fresh seed (so a fresh split, host shape and initialisation) from the environment's own generator.
* **Step**: one epoch boundary. The trainer runs in a worker thread; at each boundary its controller, a
  :class:`~esper_policy.LearnedPolicy` whose actor is this environment, hands over the observation and the
  action mask and waits for :meth:`step`'s action. The heuristic keeps steering live seeds and vetoes
  dangerous actions, exactly as when the policy is served.
* **Action**: ``Discrete(N_ACTIONS)``, op × slot × blueprint flattened; :meth:`action_masks` is what
  sb3-contrib's MaskablePPO reads. An action outside the mask is a no-op, counted and logged (``info``).
* **Reward** (seed 003 C.4.1, adapted): ``ACC_SCALE`` × the change in validation accuracy since the last
  step, + 1.0 per seed fossilized, − 0.5 per seed culled, − 1.0 per seed rolled back, − kernel cost at
  germination: 0.05 × latency (ms) + 0.01 × peak memory (MB) from the kernel's Urabrask report when it
  has one; eager kernels carry no report, so their cost is ``PARAM_COST`` × kernel parameters / host
  parameters instead.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

import esper
from esper_kernels import LocalKernelLibrary
from esper_policy import LearnedPolicy, TamiyoConfig
from esper_policy.observation import N_ACTIONS, OBSERVATION_SIZE, Op

from .runs import EPOCHS, TRAIN_TASKS, TRAINING_SEED_BASE, Run, prepare_run

ACC_SCALE = 10.0
OUTCOME_REWARD = {"FOSSILIZED": 1.0, "CULLED": -0.5, "ROLLED_BACK": -1.0, "CANCELLED": -0.1}
PARAM_COST = 0.2
STEP_TIMEOUT_S = 300.0
VAL_ACC_FEATURE = 3  # where the observation vector holds the validation accuracy


@dataclass
class _Boundary:
    """What the trainer thread hands over: an observation and mask, or the end of the run."""

    observation: list[float] | None = None
    mask: list[bool] | None = None
    done: bool = False
    error: BaseException | None = None


@dataclass
class EpisodeLog:
    """What happened in the current episode (returned in ``info`` at its end)."""

    task: str = ""
    seed: int = 0
    actions: list[str] = field(default_factory=list)
    invalid: int = 0
    vetoes: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    test_accuracy: float | None = None


class EsperEnv(gym.Env[np.ndarray, np.int64]):
    """Real Esper runs as an RL environment (see the module docstring)."""

    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium's convention)

    def __init__(self, tasks: Sequence[str] = TRAIN_TASKS, *, epochs: int = EPOCHS, seed: int = 0,
                 seed_base: int = TRAINING_SEED_BASE) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.epochs = epochs
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBSERVATION_SIZE,), np.float32)
        self.action_space = gym.spaces.Discrete(N_ACTIONS)
        self._rng = random.Random(seed)
        self._seed_base = seed_base
        self._run: Run | None = None
        self._policy: LearnedPolicy | None = None
        self._thread: threading.Thread | None = None
        self._boundaries: queue.Queue[_Boundary] = queue.Queue()
        self._actions: queue.Queue[int | None] = queue.Queue()
        self._mask = np.ones(N_ACTIONS, dtype=bool)
        self._last_acc = 0.0
        self._reports_seen = 0
        self._rollbacks_seen = 0
        self.log = EpisodeLog()

    # ------------------------------------------------------------------------------------------ gymnasium

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a fresh run (``options`` may fix ``task`` and ``run_seed``) and return its first observation."""
        super().reset(seed=seed)
        if seed is not None:
            self._rng.seed(seed)
        self._stop()
        options = options or {}
        task = str(options.get("task") or self._rng.choice(self.tasks))
        run_seed = int(options.get("run_seed", self._seed_base + self._rng.randrange(1_000_000)))
        self.log = EpisodeLog(task=task, seed=run_seed)
        self._boundaries, self._actions = queue.Queue(), queue.Queue()
        self._run = prepare_run(task, run_seed, self._controller, epochs=self.epochs)
        self._last_acc, self._reports_seen, self._rollbacks_seen = 0.0, 0, 0
        self._thread = threading.Thread(target=self._train, name=f"simic-{task}-{run_seed}", daemon=True)
        self._thread.start()
        boundary = self._next_boundary()
        if boundary.done:  # a run with no boundary at all cannot happen with epochs >= 1
            raise RuntimeError("the run ended before its first boundary")
        observation = self._observe(boundary)
        self._last_acc = float(observation[VAL_ACC_FEATURE])
        return observation, {"task": task, "run_seed": run_seed}

    def step(self, action: int | np.integer) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply ``action`` at the waiting boundary, train to the next one, and score what happened."""
        if self._run is None or self._policy is None:
            raise RuntimeError("call reset() first")
        index = int(action)
        if not self._mask[index]:
            self.log.invalid += 1
        self._actions.put(index)
        boundary = self._next_boundary()
        policy = self._policy
        self.log.actions.append(policy.last_applied.describe())  # after the mask and the veto
        acc = self._val_acc() if boundary.done else float(boundary.observation[VAL_ACC_FEATURE])  # type: ignore[index]
        reward = self._reward(acc)
        info: dict[str, Any] = {"invalid_action": not self._mask[index], "vetoes": policy.vetoes}
        if boundary.done:
            self.log.vetoes = policy.vetoes
            self.log.test_accuracy = self._run.test_accuracy()
            info["episode_log"] = self.log
            observation = np.zeros(OBSERVATION_SIZE, dtype=np.float32)
            self._finish()
            return observation, reward, True, False, info
        return self._observe(boundary), reward, False, False, info

    def action_masks(self) -> np.ndarray:
        """The actions allowed at the waiting boundary (MaskablePPO calls this)."""
        return self._mask.copy()

    def close(self) -> None:
        """Stop a run still in progress."""
        self._stop()

    # ------------------------------------------------------------------------------------------ the run

    def _controller(self, config: TamiyoConfig, library: LocalKernelLibrary) -> LearnedPolicy:
        self._policy = LearnedPolicy(config, library, actor=self._actor)
        return self._policy

    def _actor(self, observation: list[float], mask: list[bool]) -> int:
        """Called by the trainer thread at each boundary: hand over, then wait for the agent's action."""
        self._boundaries.put(_Boundary(observation=observation, mask=mask))
        action = self._actions.get(timeout=STEP_TIMEOUT_S)
        if action is None:
            raise _Stopped()
        return action

    def _train(self) -> None:
        assert self._run is not None
        try:
            self._run.trainer.train()
        except _Stopped:
            return
        except esper.tolaria.TrainingDivergedError:
            pass  # too many rollbacks: the episode ends here, the rollbacks already cost their reward
        except BaseException as exc:  # surfaced in the agent's thread by _next_boundary
            self._boundaries.put(_Boundary(done=True, error=exc))
            return
        self._boundaries.put(_Boundary(done=True))

    def _next_boundary(self) -> _Boundary:
        boundary = self._boundaries.get(timeout=STEP_TIMEOUT_S)
        if boundary.error is not None:
            raise RuntimeError(f"the run failed: {boundary.error}") from boundary.error
        return boundary

    def _observe(self, boundary: _Boundary) -> np.ndarray:
        assert boundary.observation is not None and boundary.mask is not None
        self._mask = np.asarray(boundary.mask, dtype=bool)
        return np.asarray(boundary.observation, dtype=np.float32)

    def _val_acc(self) -> float:
        assert self._run is not None
        epochs = self._run.trainer.history.epochs
        return float(epochs[-1]["val_accuracy"]) if epochs else 0.0

    def _reward(self, acc: float) -> float:
        """Accuracy gain since the last step, lifecycle outcomes since then, and the cost of new kernels."""
        assert self._run is not None and self._policy is not None
        history = self._run.trainer.history
        reward = ACC_SCALE * (acc - self._last_acc)
        self._last_acc = acc
        for report in history.field_reports[self._reports_seen:]:
            outcome = str(report["outcome"])
            reward += OUTCOME_REWARD.get(outcome, 0.0)
            self.log.outcomes[outcome] = self.log.outcomes.get(outcome, 0) + 1
        self._reports_seen = len(history.field_reports)
        applied = self._policy.last_applied
        if applied.op is Op.GERMINATE:
            reward -= self._kernel_cost()
        return float(reward)

    def _kernel_cost(self) -> float:
        """The cost of the kernel germinated at this step (Urabrask's report, else a parameter proxy)."""
        assert self._run is not None
        lineage = self._run.trainer.lineage
        if not lineage.germinations:
            return 0.0
        kernel = lineage.germinations[-1].kernel_artifact_id
        if kernel is None:
            return 0.0
        report = self._run.library.metadata(kernel).validation
        if report is not None:
            return 0.05 * report.latency_ms_mean + 0.01 * report.memory_mb_peak
        host = max(1, sum(p.numel() for p in self._run.trainer.host_params))
        return PARAM_COST * self._run.library.parameter_count(kernel) / host

    def _stop(self) -> None:
        """End a run still waiting at a boundary (its thread exits) and drop its files."""
        if self._thread is not None and self._thread.is_alive():
            self._actions.put(None)
            self._thread.join(timeout=30)
        self._finish()

    def _finish(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._run is not None:
            self._run.cleanup()
        self._run, self._thread = None, None


class _Stopped(Exception):
    """Raised in the trainer thread to end a run the environment abandoned."""

