"""The public face of a trained agent: `load_agent(run_dir)` -> `TrainedAgent`.

Everything the app and outside scripts need goes through here: encoding goal texts with the encoder the
agent was trained with, step-by-step rollouts on any Meta-World v3 scene, the evaluator, and the
adapter to Meta-World's own `metalearning_evaluation`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..runs import checkpoint as ckpt
from ..runs.goal_probe import load_goal_probe
from .agent import MetaAgent
from ..agent_kinds import agent_kind
from ..config import ConfigError, RunConfig, check_bounds
from ..envs.metaworld_env import TaskEnv, TaskPool, make_scene
from .evaluation import StepRecord, evaluate, rollout
from ..envs.tasks import canonical_goal_text, resolve_benchmark
from ..nets.goal_text import embed_goals
from ..nets.text_encoders import encoder_for_checkpoint, validate_goal_text


class TrainedAgent:
    def __init__(self, agent: MetaAgent, info: dict, run_dir: Path):
        self.agent, self.info, self.run_dir = agent, info, run_dir
        self.kind = agent.kind
        self.config = agent.config
        self._encoder = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"TrainedAgent({self.kind}, {self.run_dir}, env_steps={self.info.get('env_steps')}, "
                f"grad_steps={self.info.get('grad_steps')})")

    # What the agent reads and can do (cmrl/agent_kinds.py): ask these, not `kind`.
    @property
    def uses_text(self) -> bool:
        """It reads the goal text (cmrl, care): a typed goal changes what it does."""
        return self.agent.uses_text

    @property
    def uses_context(self) -> bool:
        """It infers z from transitions (cmrl, pearl): it adapts, and has a posterior to show."""
        return self.agent.uses_context

    @property
    def has_routing(self) -> bool:
        """Its actor has soft-modular routing to show (cmrl, sm)."""
        return self.agent.has_routing

    @property
    def text_encoder(self):
        """The goal-text encoder this agent was trained with (None for agents that read no text:
        pearl, sm)."""
        if not self.agent.uses_text:
            return None
        with self._lock:
            if self._encoder is None:
                self._encoder = encoder_for_checkpoint(self.info["text_encoder"])
            return self._encoder

    def encode_goal(self, text: str) -> np.ndarray | None:
        """Embedding of a goal description (validated: non-empty, not too long)."""
        text = validate_goal_text(text)
        if not self.agent.uses_text:
            return None
        return embed_goals(self.text_encoder, text, self.agent.config.net.goal_encoding)

    def task_pool(self) -> TaskPool:
        return TaskPool(resolve_benchmark(self.config.benchmark))

    def rollout(self, task: str, goal_text: str | None = None, variation: int = 0,
                adaptation_episodes: int = 3, eval_episodes: int = 0, render: bool = False,
                camera: str = "corner", size: int = 224, seed: int = 0, horizon: int | None = None,
                stop: threading.Event | None = None) -> Iterator[StepRecord]:
        """Adapt to `task` (any Meta-World v3 env) on goal variation `variation` (0..49), yielding
        every step. The env is built, rendered and closed in the calling thread."""
        goal_text = validate_goal_text(goal_text if goal_text is not None else canonical_goal_text(task))
        horizon = horizon or resolve_benchmark(self.config.benchmark).horizon
        env, variations = make_scene(task, horizon=horizon, seed=self.config.benchmark.seed,
                                     render=render, camera=camera, size=size)
        if not 0 <= variation < len(variations):
            env.close()
            raise ValueError(f"goal variation must be in 0..{len(variations) - 1}, got {variation}")
        if (env.obs_dim, env.act_dim) != (self.agent.obs_dim, self.agent.act_dim):
            env.close()
            raise ValueError(f"{task} has {env.obs_dim}-d observations and {env.act_dim}-d actions; "
                             f"this agent was trained on {self.agent.obs_dim} and "
                             f"{self.agent.act_dim} ({', '.join(self.agent.train_tasks)})")
        task_id = self.agent.task_id(task)
        try:
            yield from rollout(self.agent, env, variations[variation], self.encode_goal(goal_text),
                               task_id, adaptation_episodes, eval_episodes, render, seed, stop,
                               goal_probe=self.goal_probe() if render else None)
        finally:
            env.close()

    def goal_probe(self):
        """z -> where the agent believes the goal is, when a probe was saved with the checkpoint
        (`cmrl diagnose --save-probe`); None otherwise."""
        if not self.agent.uses_context:
            return None
        return load_goal_probe(self.run_dir, self.agent.config.net.latent_dim)

    def evaluate(self, splits=("train", "test"), num_variations: int = 5,
                 adaptation_episodes: int = 3, eval_episodes: int = 1, seed: int = 0,
                 goal_texts: dict[str, str] | None = None, workers: int | None = None,
                 progress: bool = False) -> dict:
        """The meta-test protocol (`evaluation.evaluate`) over `workers` processes (None: the
        cores); the numbers do not depend on how many."""
        res = evaluate(self.agent, self.task_pool(), tuple(splits), self.text_encoder,
                       num_variations, adaptation_episodes, eval_episodes, seed, goal_texts,
                       workers=workers, progress=progress)
        res["checkpoint"] = self.checkpoint_summary()
        return res

    def checkpoint_summary(self) -> dict:
        """Which checkpoint an evaluation ran: what its results JSON records."""
        return {"run_dir": str(self.run_dir), "env_steps": self.info.get("env_steps"),
                "grad_steps": self.info.get("grad_steps"), "mode": self.info.get("mode"),
                "prior_data": self.info.get("prior_data"),
                "text_encoder": self.info.get("text_encoder")}

    def as_metaworld_agent(self, goal_texts: dict[str, str] | None = None,
                           env_tasks: list[str] | None = None):
        """An object implementing `metaworld.evaluation.MetaLearningAgent` (see metaworld_adapter)."""
        from .metaworld_adapter import MetaWorldAgent

        return MetaWorldAgent(self, goal_texts or {}, env_tasks)


def load_agent(run_dir: str | Path, device: str = "cpu",
               max_bytes: int | None = ckpt.MAX_MODEL_BYTES) -> TrainedAgent:
    """Load a run directory (config.json + model.safetensors). Raises CheckpointError naming the
    file for anything missing, truncated, tampered with or inconsistent, and for networks bigger
    than `max_bytes` (None: no budget); sizes are checked before the networks are built."""
    run_dir = Path(run_dir)
    info = ckpt.read_run_info(run_dir)
    path = run_dir / ckpt.CONFIG_FILE
    try:
        config = RunConfig.from_dict(info["config"])
        check_bounds(config)
    except ConfigError as e:
        raise ckpt.CheckpointError(f"{path}: invalid run config ({e})") from e
    obs_dim, act_dim = int(info["obs_dim"]), int(info["act_dim"])
    tasks = [str(t) for t in info["train_tasks"]]
    if agent_kind(config.train.agent).on_policy:  # rl2, maml: their own module and protocol
        from .onpolicy import OnPolicyAgent
        from .onpolicy_agent import TrainedOnPolicyAgent

        agent = load_module(run_dir, lambda: OnPolicyAgent(config, obs_dim, act_dim, tasks),
                            max_bytes, device)
        return TrainedOnPolicyAgent(agent, info, run_dir)
    text_dim = 0
    if agent_kind(config.train.agent).uses_text:
        try:
            text_dim = int(info["text_encoder"].get("dim", 0))
        except (ValueError, TypeError) as e:
            raise ckpt.CheckpointError(f"{path}: bad text encoder dim ({e})") from e
    agent = load_module(run_dir, lambda: MetaAgent(config, obs_dim, act_dim, text_dim, tasks),
                        max_bytes, device)
    return TrainedAgent(agent, info, run_dir)


def load_module(run_dir: Path, build, max_bytes: int | None, device: str) -> torch.nn.Module:
    """The module `build()` makes, holding run_dir's weights: its size and every tensor's shape
    are checked against the model file's header (built on the meta device, nothing read) before it
    is built and a weight is read. CheckpointError naming the file for anything wrong."""
    path = run_dir / ckpt.CONFIG_FILE
    try:
        expected = ckpt.expected_tensors(build)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ckpt.CheckpointError(f"{path}: cannot build the agent it describes ({e})") from e
    ckpt.check_model_file(run_dir / ckpt.MODEL_FILE, expected, max_bytes)
    try:
        module = build()
    except (ValueError, TypeError, RuntimeError) as e:
        raise ckpt.CheckpointError(f"{path}: cannot build the agent it describes ({e})") from e
    tensors, meta = ckpt.read_tensors(run_dir / ckpt.MODEL_FILE)
    if meta.get("format") != ckpt.FORMAT:
        raise ckpt.CheckpointError(f"{run_dir / ckpt.MODEL_FILE}: not a CMRL model file")
    ckpt.load_state_into(module, tensors, run_dir / ckpt.MODEL_FILE)
    return module.to(torch.device(device)).eval()
