"""The on-policy meta-RL agents, rl2 and maml, in the project's harness: the agent module, advantage
estimation, the meta-test protocol and the training loop with checkpoints and resume.

- `rl2` (Duan et al. 2016, `rl2.py`): a GRU policy reading (obs, previous action, previous reward,
  done flag); its hidden state runs through all episodes of a trial and starts from zeros at every
  trial. Trained by PPO with GAE over whole trials, a meta-batch of goal variations per iteration.
- `maml` (Finn et al. 2017, `maml.py`): a Gaussian MLP policy; the inner loop is vanilla
  policy-gradient steps on the task's own episodes, the outer loop PPO over the adapted policy's
  episodes, differentiated through the inner step (or first-order, `onpolicy.first_order`).

Both follow the project's evaluator (`evaluation.py`): per goal variation a zero-shot episode
(deterministic, nothing kept: rl2 with a fresh hidden state, maml with the meta-learned weights),
then the adaptation episodes (stochastic actions: rl2 carries its hidden state, maml collects them)
and the evaluation episodes (deterministic: rl2 still carrying the hidden state, maml with the
weights its inner steps produced from the adaptation episodes). Results have the same JSON layout
as `evaluation.evaluate`, so reports, sweeps and the app read them alike. The evaluation runs in
this process (the variations of a task stepped in lockstep), not over `parallel_eval`'s workers.

A `Trial` (`agent.trial(n)`) is the per-env adaptation state for n envs in lockstep, used by the
evaluator, by training (rl2), by the app's rollouts and by the Meta-World adapter:
`act(obs, deterministic)`, `observe(env_actions, rewards, dones)` after every step, `adapt()`
between the adaptation and the evaluation episodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..agent_kinds import AgentKind, agent_kind
from ..config import ConfigError, RunConfig
from ..envs.metaworld_env import TaskPool
from ..envs.tasks import goal_texts, resolve_benchmark
from ..nets.onpolicy_nets import GaussianMLPPolicy, RL2Policy
from ..runs import checkpoint as ckpt
from ..runs.logger import (CallbackWriter, JsonlWriter, MetricsLogger, ProgressWriter,
                           TensorBoardWriter, eval_record)
from ..runs.run_status import RunStatus, StatusWriter
from .evaluation import (ZERO_SHOT_RESET, chosen_variations, episode_phases, task_result,
                         variation_generators)


# -- the agent ---------------------------------------------------------------------------------------
class OnPolicyAgent(nn.Module):
    """An rl2 or maml agent: its policy, and the capabilities code asks about (`agent_kinds.py`)."""

    def __init__(self, config: RunConfig, obs_dim: int, act_dim: int,
                 train_tasks: list[str] | tuple[str, ...]):
        super().__init__()
        self.config = config
        self.kind = config.train.agent
        self.spec: AgentKind = agent_kind(self.kind)
        if not self.spec.on_policy:
            raise ConfigError(f"{self.kind} is not an on-policy agent")
        self.obs_dim, self.act_dim, self.text_dim = obs_dim, act_dim, 0
        self.train_tasks = tuple(train_tasks)
        o = config.onpolicy
        if self.spec.adapts_by == "hidden_state":
            self.policy = RL2Policy(obs_dim, act_dim, o.rl2_embed, o.rl2_hidden, o.init_std)
        else:
            self.policy = GaussianMLPPolicy(obs_dim, act_dim, list(o.policy_hidden), o.init_std)

    uses_text = property(lambda self: self.spec.uses_text)
    uses_context = property(lambda self: self.spec.uses_context)
    has_routing = property(lambda self: self.spec.has_routing)
    uses_task_id = property(lambda self: self.spec.uses_task_id)
    adapts_by = property(lambda self: self.spec.adapts_by)

    @property
    def device(self) -> torch.device:
        return self.policy.log_std.device

    def task_id(self, task: str) -> int:
        return -1  # no task ids: it learns the task from its own episodes

    def trial(self, n: int, generators: list[torch.Generator] | None = None):
        """The adaptation state of n envs at the start of a trial (see the module docstring)."""
        if self.adapts_by == "hidden_state":
            from .rl2 import RL2Trial

            return RL2Trial(self, n, generators)
        from .maml import MAMLTrial

        return MAMLTrial(self, n, generators)


def sample_actions(mean: torch.Tensor, log_std: torch.Tensor, deterministic: bool,
                   generators: list[torch.Generator] | None) -> torch.Tensor:
    """mean [n, A] (+ std noise unless deterministic); row i's noise from generators[i] when given,
    so a variation's draws do not depend on the rows beside it."""
    if deterministic:
        return mean
    if generators is None:
        noise = torch.randn_like(mean)
    else:
        noise = torch.stack([torch.randn(mean.shape[-1], generator=g, device=mean.device)
                             for g in generators])
    return mean + log_std.exp() * noise


def env_actions(actions: torch.Tensor) -> np.ndarray:
    """What goes to the env: the drawn actions clipped to the action box."""
    return actions.clamp(-1.0, 1.0).cpu().numpy()


# -- advantages --------------------------------------------------------------------------------------
def gae(rewards: np.ndarray, values: np.ndarray, discount: float, lam: float) -> np.ndarray:
    """GAE(lambda) advantages of sequences [N, T] that end at T (the value after T is 0)."""
    adv = np.zeros_like(rewards, dtype=np.float64)
    last = np.zeros(rewards.shape[0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        next_v = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        last = rewards[:, t] + discount * next_v - values[:, t] + discount * lam * last
        adv[:, t] = last
    return adv


def discounted_returns(rewards: np.ndarray, discount: float) -> np.ndarray:
    return gae(rewards, np.zeros_like(rewards), discount, 1.0)


def linear_baseline(obs: np.ndarray, returns: np.ndarray) -> np.ndarray:
    """garage's linear feature baseline, fitted to these episodes: returns [N, T] regressed on
    (obs, obs^2, t, t^2, t^3, 1) per step by ridge regression; the fitted values [N, T]."""
    N, T = returns.shape
    o = np.clip(obs.reshape(N, T, -1), -10, 10).astype(np.float64)
    al = np.broadcast_to((np.arange(T) / 100.0)[None, :, None], (N, T, 1))
    feats = np.concatenate([o, o ** 2, al, al ** 2, al ** 3, np.ones((N, T, 1))], -1)
    F = feats.reshape(N * T, -1)
    y = returns.reshape(-1).astype(np.float64)
    reg = 1e-5
    for _ in range(5):
        w = np.linalg.solve(F.T @ F + reg * np.eye(F.shape[1]), F.T @ y)
        if np.isfinite(w).all():
            break
        reg *= 10
    return (F @ w).reshape(N, T)


def baseline_advantages(obs: np.ndarray, rewards: np.ndarray, discount: float, lam: float,
                        normalize: bool = True) -> np.ndarray:
    """Advantages [N, T] of whole episodes from the linear feature baseline (maml), standardised."""
    values = linear_baseline(obs, discounted_returns(rewards, discount))
    adv = gae(rewards, values, discount, lam)
    if normalize:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv


# -- episodes in lockstep ----------------------------------------------------------------------------
@dataclass
class Episodes:
    """One episode in each of n envs, stepped in lockstep."""

    obs: np.ndarray          # [n, T, obs_dim]
    actions: np.ndarray      # [n, T, act_dim] as drawn (the log-probabilities are of these)
    rewards: np.ndarray      # [n, T] as the env gave them
    success: np.ndarray      # [n] success at any step
    extras: dict             # per-step arrays the trial returned ([n, T, ...])


def run_episode(envs: list, variations: list, trial, deterministic: bool,
                reset_seeds: list[int | None]) -> Episodes:
    """One episode in each env (their own goal variations) with `trial` acting and observing."""
    obs = np.stack([env.reset(v, seed=s) for env, v, s in zip(envs, variations, reset_seeds)])
    all_obs, acts, rews, extras = [], [], [], {}
    success = np.zeros(len(envs), bool)
    done = False
    while not done:
        out = trial.act(obs, deterministic)
        steps = [env.step(a) for env, a in zip(envs, out.env_action)]
        rewards = np.array([s[1] for s in steps], np.float32)
        dones = np.array([s[3] for s in steps])
        success |= np.array([s[2] for s in steps])
        trial.observe(out.env_action, rewards, dones)
        all_obs.append(obs)
        acts.append(out.action)
        rews.append(rewards)
        for k, v in out.extras.items():
            extras.setdefault(k, []).append(v)
        obs = np.stack([s[0] for s in steps])
        done = bool(dones.all())
    return Episodes(np.stack(all_obs, 1), np.stack(acts, 1), np.stack(rews, 1), success,
                    {k: np.stack(v, 1) for k, v in extras.items()})


@dataclass
class ActOut:
    action: np.ndarray       # [n, A] as drawn
    env_action: np.ndarray   # [n, A] clipped
    extras: dict             # e.g. log-probabilities and values for training


# -- the meta-test protocol ----------------------------------------------------------------------------
def run_trials(agent: OnPolicyAgent, pool: TaskPool, task: str, split: str, num_variations: int,
               phases: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Success (any step) and return of every episode of `phases`, [variations, episodes], on the
    task's chosen variations (`evaluation.chosen_variations`), reset seeds as `run_variations`."""
    chosen = chosen_variations(pool, task, split, num_variations, seed)
    E = len(chosen)
    envs = [pool.make_env(task, split) for _ in range(E)]
    succ = np.zeros((E, len(phases)), bool)
    ret = np.zeros((E, len(phases)))
    try:
        trial = agent.trial(E, variation_generators(agent.device, seed, E))
        episode, adapted = 0, False
        for k, phase in enumerate(phases):
            if phase == "eval" and not adapted:
                trial.adapt()
                adapted = True
            # The zero-shot episode is a trial of its own (fresh hidden state / unadapted weights),
            # deterministic, and forgotten: the protocol's trial starts afterwards from scratch.
            acting = agent.trial(E) if phase == "zero-shot" else trial
            reset_seed = seed * 1000 + (ZERO_SHOT_RESET if phase == "zero-shot" else episode)
            ep = run_episode(envs, chosen, acting, phase != "adapt", [reset_seed] * E)
            succ[:, k], ret[:, k] = ep.success, ep.rewards.sum(1)
            episode += phase != "zero-shot"
    finally:
        for env in envs:
            env.close()
    return succ, ret


@torch.no_grad()
def evaluate_onpolicy(agent: OnPolicyAgent, pool: TaskPool, splits=("train", "test"),
                      num_variations: int = 5, adaptation_episodes: int = 3,
                      eval_episodes: int = 1, seed: int = 0, zero_shot: bool = True) -> dict:
    """`evaluation.evaluate`'s protocol and JSON layout for an rl2 or maml agent."""
    start = time.time()
    phases = episode_phases(adaptation_episodes, eval_episodes, zero_shot)
    out: dict = {"protocol": {"adaptation_episodes": adaptation_episodes,
                              "eval_episodes": eval_episodes, "variations_per_task": num_variations,
                              "zero_shot_episode": zero_shot, "horizon": pool.benchmark.horizon,
                              "seed": seed,
                              "success": "info['success'] at any step of an evaluation episode",
                              "train_variations": "fresh (not the ones trained on)",
                              "adaptation": _ADAPTATION[agent.adapts_by]},
                 "agent": agent.kind, "splits": {}, "workers": 1}
    for split in splits:
        results = []
        for task in pool.benchmark.tasks(split):
            succ, ret = run_trials(agent, pool, task, split, num_variations, phases, seed)
            results.append(task_result(task, split, None, phases, succ, ret))
        out["splits"][split] = {
            "tasks": {r.task: r.__dict__ for r in results},
            "mean_success": float(np.mean([r.success_rate for r in results])) if results else None,
            "mean_zero_shot_success": (float(np.mean([r.zero_shot_success for r in results]))
                                       if results and zero_shot else None)}
    out["wall_time_s"] = round(time.time() - start, 2)
    return out


_ADAPTATION = {
    "hidden_state": "rl2: one trial per variation, the GRU's hidden state carried from the first "
                    "adaptation episode through the evaluation episodes (the zero-shot episode is "
                    "a trial of its own)",
    "gradient": "maml: the adaptation episodes with the meta-learned weights, then the inner "
                "policy-gradient steps on them; evaluation episodes with the adapted weights"}


# -- training ------------------------------------------------------------------------------------------
class OnPolicyTrainer:
    """Meta-training of an rl2 or maml agent: per iteration a meta-batch of goal variations of the
    meta-train tasks (round-robin over tasks, variations drawn at random), the learner's rollouts
    and update; evaluation, checkpoints and resume as the SAC `Trainer` does them (same files, same
    metric keys). Held-out tasks are never built or trained on."""

    def __init__(self, config: RunConfig, run_dir: str | Path, resume: bool = False,
                 progress: bool = True, on_log: Callable[[dict], None] | None = None,
                 status: RunStatus | None = None, goal_variations: dict | None = None):
        """`goal_variations`: {meta-train task: goal variations} to train on instead of the
        benchmark's train split (a smaller task family, e.g. for a quick learning check)."""
        from .trainer import resolve_device, versions

        config.validate()
        self.config, self.run_dir = config, Path(run_dir)
        t = config.train
        if not agent_kind(t.agent).on_policy:
            raise ConfigError(f"{t.agent} is trained by the SAC trainer, not the on-policy one")
        if t.mode != "online" or t.offline:
            raise ConfigError(f"{t.agent} trains online from its own rollouts only (no offline "
                              "data)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(t.device)
        self._versions = versions
        torch.manual_seed(t.seed)
        self.rng = np.random.default_rng(t.seed)
        self.benchmark = resolve_benchmark(config.benchmark)
        self.tasks = self.benchmark.train_tasks
        self.pool = TaskPool(self.benchmark)
        self.agent = OnPolicyAgent(config, self.pool.obs_dim, self.pool.act_dim,
                                   self.tasks).to(self.device)
        if self.agent.adapts_by == "hidden_state":
            from .rl2 import RL2Learner as Learner
        else:
            from .maml import MAMLLearner as Learner
        self.trained_before: dict | None = None  # the training behind init_from's weights
        if t.init_from and not resume:
            self._init_from(t.init_from)
        self.learner = Learner(self.agent)
        self._variations = {task: self.pool.variations(task, "train") for task in self.tasks}
        self._variations.update(goal_variations or {})
        self._envs: dict[str, list] = {}
        self.env_steps = self.grad_steps = self.iteration = 0
        self.wall_time = 0.0
        if resume:
            self._restore()
        elif (self.run_dir / ckpt.STATE_DIR).exists():
            raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume to continue "
                                  "it, or choose another --run-dir")
        writers = [JsonlWriter(self.run_dir / "metrics.jsonl",
                               truncate_after={"env_steps": self.env_steps} if resume else None),
                   ProgressWriter(t.steps, self.env_steps, "env", enabled=progress)]
        if t.tensorboard:
            writers.append(TensorBoardWriter(self.run_dir / "tb",
                                             purge_step=self.env_steps if resume else None))
        self._own_status = status is None
        self.status = status or RunStatus(self.run_dir, ["online"], str(self.device))
        self.status.phase("online", t.steps, "env steps", self.env_steps, device=str(self.device))
        writers.append(StatusWriter(self.status))
        if on_log is not None:
            writers.append(CallbackWriter(on_log))
        self.logger = MetricsLogger(*writers)

    def _slots(self) -> tuple[list, list, list[str]]:
        """This iteration's meta-batch: (envs, variations, task names), one env per slot."""
        n = self.config.onpolicy.tasks_per_iteration
        names = [self.tasks[(self.iteration * n + i) % len(self.tasks)] for i in range(n)]
        envs, variations, used = [], [], {}
        for task in names:
            k = used.get(task, 0)
            used[task] = k + 1
            pool = self._envs.setdefault(task, [])
            if len(pool) <= k:
                pool.append(self.pool.make_env(task, "train"))
            envs.append(pool[k])
            vs = self._variations[task]
            variations.append(vs[int(self.rng.integers(len(vs)))])
        return envs, variations, names

    def reset_seeds(self, n: int) -> list[int]:
        return [int(s) for s in self.rng.integers(0, 2**31 - 1, size=n)]

    def train(self) -> dict:
        t = self.config.train
        try:
            with self.status.ending(self._own_status):
                if t.eval_at_start and self.env_steps == 0 and t.eval_every:
                    self.logger.log({"step": 0, "env_steps": 0, "grad_steps": 0, "iteration": 0,
                                     "wall_time": 0.0, **self._eval_metrics()})
                while self.env_steps < t.steps:
                    self._iteration()
        finally:
            self.logger.close()
            for envs in self._envs.values():
                for env in envs:
                    env.close()
        return {"env_steps": self.env_steps, "grad_steps": self.grad_steps,
                "wall_time_s": round(self.wall_time, 1)}

    def _iteration(self) -> None:
        t = self.config.train
        start = time.time()
        before = self.env_steps
        envs, variations, names = self._slots()
        steps, stats = self.learner.iterate(envs, variations, names, self)
        self.env_steps += steps
        self.grad_steps += stats.pop("grad_steps")
        self.iteration += 1
        self.wall_time += time.time() - start
        record = {"step": self.env_steps, "env_steps": self.env_steps,
                  "grad_steps": self.grad_steps, "iteration": self.iteration,
                  "wall_time": round(self.wall_time, 2), **stats}
        if t.eval_every and (self.env_steps // t.eval_every > before // t.eval_every
                             or self.env_steps >= t.steps):
            record.update(self._eval_metrics())
        self.logger.log(record)
        if (self.env_steps // t.checkpoint_every > before // t.checkpoint_every
                or self.env_steps >= t.steps):
            self.save()

    def _eval_metrics(self) -> dict:
        t = self.config.train
        self.agent.eval()
        res = evaluate_onpolicy(self.agent, self.pool, ("train", "test"), t.eval_variations,
                                adaptation_episodes=1 if self.agent.adapts_by == "hidden_state"
                                else self.config.onpolicy.adapt_episodes,
                                eval_episodes=1, seed=t.seed + 12345)
        self.agent.train()
        return eval_record(res)

    # -- checkpoints -----------------------------------------------------------------------------
    def run_info(self) -> dict:
        return {"config": self.config.to_dict(), "agent": self.agent.kind,
                "obs_dim": self.pool.obs_dim, "act_dim": self.pool.act_dim,
                "text_encoder": {"name": "none", "dim": 0}, "train_tasks": list(self.tasks),
                "test_tasks": list(self.benchmark.test_tasks),
                "goal_texts": {task: list(goal_texts(task)) for task in
                               self.tasks + self.benchmark.test_tasks},
                "env_steps": self.env_steps, "grad_steps": self.grad_steps,
                "iteration": self.iteration, "wall_time_s": round(self.wall_time, 1),
                "mode": "online", "offline_data_mixed_online": False, "prior_data": "none",
                "offline_data": None, "device": str(self.device), "versions": self._versions(),
                **({"trained_before": self.trained_before} if self.trained_before else {})}

    def save(self) -> None:
        tensors = {f"agent.{k}": v for k, v in self.agent.state_dict().items()}
        opt = ckpt.flatten_state(self.learner.optimizer.state_dict(), "optimizer", tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        state = {"optimizer": opt, "numpy_rng": self.rng.bit_generator.state,
                 "env_steps": self.env_steps, "grad_steps": self.grad_steps,
                 "iteration": self.iteration, "wall_time": self.wall_time,
                 "trained_before": self.trained_before, "config": self.config.to_dict()}
        ckpt.save_training_state(self.run_dir, tensors, state)
        ckpt.save_model(self.run_dir, self.agent, self.run_info())

    def _init_from(self, source: str) -> None:
        """Start from another run's weights (a longer training of a finished run, fine-tuning); the
        optimiser starts fresh. Same agent kind and architecture, or an error."""
        from .trained_agent import load_agent

        src = load_agent(source, device=str(self.device))
        if src.kind != self.agent.kind:
            raise ckpt.CheckpointError(f"{source}: a {src.kind} cannot initialise this "
                                       f"{self.agent.kind} run")
        mine = {k: tuple(v.shape) for k, v in self.agent.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in src.agent.state_dict().items()}
        if mine != theirs:
            raise ckpt.CheckpointError(f"{source}: its weights do not fit this run (another "
                                       "architecture or observation size)")
        self.agent.load_state_dict(src.agent.state_dict())
        # env and gradient steps behind the starting weights, the source's own included
        before = src.info.get("trained_before")
        before = before if isinstance(before, dict) else {}
        steps = {k: src.info.get(k) for k in ("env_steps", "grad_steps")}
        if all(isinstance(v, int) for v in steps.values()):
            self.trained_before = {"init_from": source, **{
                k: v + (before[k] if isinstance(before.get(k), int) else 0)
                for k, v in steps.items()}}

    def _restore(self) -> None:
        tensors, state = ckpt.load_training_state(self.run_dir)
        where = self.run_dir / ckpt.STATE_DIR
        agent_state = {k[len("agent."):]: v for k, v in tensors.items() if k.startswith("agent.")}
        ckpt.load_state_into(self.agent, agent_state, where / "state.safetensors")
        try:
            self.learner.optimizer.load_state_dict(
                ckpt.unflatten_state(state["optimizer"], tensors, str(where)))
            torch.set_rng_state(tensors["rng.torch"])
            self.rng.bit_generator.state = state["numpy_rng"]
            self.env_steps, self.grad_steps = int(state["env_steps"]), int(state["grad_steps"])
            self.iteration, self.wall_time = int(state["iteration"]), float(state["wall_time"])
            self.trained_before = state.get("trained_before")
        except (KeyError, ValueError, TypeError) as e:
            raise ckpt.CheckpointError(f"{where}: training state is incomplete ({e})") from e


def make_trainer(config: RunConfig, run_dir: str | Path, resume: bool = False,
                 progress: bool = True, on_log: Callable[[dict], None] | None = None,
                 status: RunStatus | None = None):
    """The trainer of the config's agent kind: `OnPolicyTrainer` for rl2 and maml, the SAC
    `Trainer` for the others. What the command line, sweeps and `cmrl.train` build."""
    if agent_kind(config.train.agent).on_policy:
        return OnPolicyTrainer(config, run_dir, resume, progress, on_log, status)
    from .trainer import Trainer

    return Trainer(config, run_dir, resume=resume, progress=progress, on_log=on_log, status=status)


def train(config: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
          on_log: Callable[[dict], None] | None = None) -> dict:
    """Train (or resume) a run of any agent kind; returns counters (`cmrl.train`)."""
    return make_trainer(config, run_dir, resume, progress, on_log).train()
