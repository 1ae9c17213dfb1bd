"""The public face of a trained rl2 or maml agent (`load_agent` returns one for their run
directories): the project's evaluator, step-by-step rollouts for the app, and the adapter to
Meta-World's own `metalearning_evaluation`. Neither reads goal text: a typed goal is validated and
then not read (`agent_kinds.AgentKind.goal_text_note`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..envs.metaworld_env import make_scene
from ..envs.tasks import canonical_goal_text, resolve_benchmark
from ..nets.text_encoders import validate_goal_text
from .evaluation import StepRecord
from .onpolicy import evaluate_onpolicy
from .trained_agent import TrainedAgent

NO_Z = np.zeros(0, np.float32)


@dataclass
class AdaptationStep(StepRecord):
    """A rollout step of rl2 or maml, with what its adaptation moved at this step (the app shows
    it where a context agent's posterior goes)."""

    adaptation: float = 0.0
    """rl2: mean |change| of the GRU's hidden state at this step; maml: mean |adapted - meta-learned
    mean action| at this state (0 before the inner steps)."""


class TrainedOnPolicyAgent(TrainedAgent):
    """`TrainedAgent` for rl2 and maml: same methods, their own protocol underneath."""

    @property
    def adapts_by(self) -> str:
        return self.agent.adapts_by

    def rollout(self, task: str, goal_text: str | None = None, variation: int = 0,
                adaptation_episodes: int = 3, eval_episodes: int = 0, render: bool = False,
                camera: str = "corner", size: int = 224, seed: int = 0, horizon: int | None = None,
                stop: threading.Event | None = None) -> Iterator[StepRecord]:
        """As `TrainedAgent.rollout`: adaptation episodes (stochastic; rl2 carries its hidden
        state, maml collects them), then maml's inner steps, then evaluation episodes
        (deterministic). The goal text is validated and not read."""
        validate_goal_text(goal_text if goal_text is not None else canonical_goal_text(task))
        horizon = horizon or resolve_benchmark(self.config.benchmark).horizon
        env, variations = make_scene(task, horizon=horizon, seed=self.config.benchmark.seed,
                                     render=render, camera=camera, size=size)
        if not 0 <= variation < len(variations):
            env.close()
            raise ValueError(f"goal variation must be in 0..{len(variations) - 1}, got {variation}")
        gen = torch.Generator(device=self.agent.device).manual_seed(seed)
        trial = self.agent.trial(1, [gen])
        seen = 0
        try:
            for episode in range(adaptation_episodes + eval_episodes):
                phase = "adapt" if episode < adaptation_episodes else "eval"
                if episode == adaptation_episodes:
                    trial.adapt()
                obs = env.reset(variations[variation], seed=seed + episode)
                ep_success, ep_return, done = False, 0.0, False
                while not done:
                    if stop is not None and stop.is_set():
                        return
                    out = trial.act(obs[None], deterministic=phase == "eval")
                    next_obs, reward, success, done = env.step(out.env_action[0])
                    trial.observe(out.env_action, np.array([reward]), np.array([done]))
                    seen += phase == "adapt"
                    ep_success |= success
                    ep_return += reward
                    yield AdaptationStep(episode, phase, env.t, obs, out.env_action[0], reward,
                                         success, ep_success, ep_return, done, NO_Z, NO_Z, None,
                                         seen, env.render() if render else None,
                                         adaptation=trial.step_signal[0])
                    obs = next_obs
        finally:
            env.close()

    def evaluate(self, splits=("train", "test"), num_variations: int = 5,
                 adaptation_episodes: int = 3, eval_episodes: int = 1, seed: int = 0,
                 goal_texts: dict[str, str] | None = None, workers: int | None = None,
                 progress: bool = False) -> dict:
        """The project's protocol (`onpolicy.evaluate_onpolicy`), in this process: `workers`,
        `progress` and goal texts have nothing to change for these agents."""
        res = evaluate_onpolicy(self.agent, self.task_pool(), tuple(splits), num_variations,
                                adaptation_episodes, eval_episodes, seed)
        res["checkpoint"] = self.checkpoint_summary()
        return res

    def as_metaworld_agent(self, goal_texts: dict[str, str] | None = None,
                           env_tasks: list[str] | None = None):
        return OnPolicyMetaWorldAgent(self)


class OnPolicyMetaWorldAgent:
    """`metaworld.evaluation.MetaLearningAgent` for rl2 and maml over a vector env of n sub-envs.

    `init` starts a trial; `adapt_action` acts stochastically and `step` feeds each transition to
    the trial (rl2: its next input; maml: its adaptation episodes); `adapt` runs maml's inner steps
    (rl2: nothing); `eval_action` acts deterministically. Meta-World's evaluation episodes hand the
    agent observations only, but rl2 reads the previous reward and done flag: `wrap_envs` puts a
    thin vector-env wrapper around the evaluator's envs that hands each step's rewards and ends to
    the trial during evaluation (`metaworld_adapter.metaworld_protocol` calls it)."""

    def __init__(self, trained: TrainedOnPolicyAgent):
        self.trained = trained
        self.trial = None
        self.evaluating = False
        self._last_env_action = None

    def wrap_envs(self, envs):
        return _StepTap(envs, self)

    def init(self) -> None:
        self.trial, self.evaluating = None, False

    def _ensure(self, n: int):
        if self.trial is None:
            self.trial = self.trained.agent.trial(n)
        return self.trial

    def adapt_action(self, observations: np.ndarray):
        out = self._ensure(len(observations)).act(np.asarray(observations, np.float32))
        return out.env_action.astype(np.float64), {}

    def step(self, timestep) -> None:
        ended = np.logical_or(timestep.terminated, timestep.truncated)
        self._ensure(len(ended)).observe(np.asarray(timestep.action, np.float32),
                                         np.asarray(timestep.reward, np.float32), ended)

    def adapt(self) -> None:
        if self.trial is not None:
            self.trial.adapt()
        self.evaluating = True

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        out = self._ensure(len(observations)).act(np.asarray(observations, np.float32),
                                                  deterministic=True)
        self._last_env_action = out.env_action
        return out.env_action.astype(np.float64)

    def after_eval_step(self, rewards: np.ndarray, ended: np.ndarray) -> None:
        if self.evaluating and self.trial is not None and self._last_env_action is not None:
            self.trial.observe(self._last_env_action, np.asarray(rewards, np.float32),
                               np.asarray(ended))

    def reset(self, env_mask: np.ndarray) -> None:
        pass  # a new evaluation episode keeps the trial's hidden state / adapted weights


def _StepTap(envs, agent: OnPolicyMetaWorldAgent):
    """A vector-env wrapper that reports every step's rewards and episode ends to `agent`."""
    import gymnasium as gym

    class StepTap(gym.vector.VectorWrapper):
        def step(self, actions):
            obs, rew, term, trunc, info = self.env.step(actions)
            agent.after_eval_step(rew, np.logical_or(term, trunc))
            return obs, rew, term, trunc, info

        def call(self, name, *args, **kwargs):
            return self.env.call(name, *args, **kwargs)

        def get_attr(self, name):
            return self.env.get_attr(name)

        def set_attr(self, name, values):
            return self.env.set_attr(name, values)

    return StepTap(envs)
