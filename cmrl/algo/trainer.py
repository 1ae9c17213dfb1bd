"""The meta-training loop (Algorithm 1 of the seed report), online or from an offline dataset.

Online, each iteration:
  1. for every meta-train task (all at once, `envs_per_task` envs each): clear the task's recent-context
     buffer; collect `prior_rounds` episodes with z from the prior into the RL and context buffers, then
     `posterior_rounds` episodes with z from the posterior of that context into the RL buffer;
  2. `updates_per_step` x (env steps collected) gradient steps, each over all tasks in one batched
     pass: context from the recent-context buffer, RL batch from the RL buffer, a goal paraphrase per
     task, SAC + KL losses (`sac.py`).
Offline (`train.offline` set), only step 2 runs, with context and RL batches drawn from the task's own
dataset episodes, and the actor's behaviour-regularisation term on.

Held-out tasks are never trained on: the trainer only builds envs, buffers and goal texts for
`benchmark.train_tasks` and refuses offline data that contains anything else.

Checkpoints (`checkpoint.py`) are written every `checkpoint_every` steps and at the end; `resume=True`
restores weights, optimisers, temperatures, counters, RNG states and replay contents.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..runs import checkpoint as ckpt
from .agent import MetaAgent
from ..agent_kinds import agent_kind
from .collector import Collector, add_round
from ..config import ConfigError, RunConfig
from ..envs.metaworld_env import TaskPool
from ..envs.relabel import reward_relabeller
from .evaluation import evaluate
from ..runs.logger import (CallbackWriter, JsonlWriter, MetricsLogger, ProgressWriter,
                           TensorBoardWriter, eval_record)
from ..nets.goal_text import embed_goals
from ..nets.normalizer import observation_stats
from .replay import MultiTaskReplay
from ..runs.run_status import RunStatus, StatusWriter
from .sac import SACLearner
from .variation_batches import VariationBatches
from ..envs.tasks import HeldOutTaskError, goal_texts, resolve_benchmark
from ..nets.text_encoders import encoder_info, get_text_encoder


UNKNOWN_GROUP = 1_000_000
"""Group ids from here on: dataset episodes whose goal variation was not recorded (one each)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for, but torch sees no CUDA device on this "
                          "machine: use auto or cpu")
    return torch.device(name)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("cmrl", "torch", "metaworld", "mujoco", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "unknown"
    from .._version import __version__

    out["cmrl"] = __version__
    return out


def warn_unrelabelled(tasks, relabellers, config: RunConfig) -> None:
    """Relabelling asked for on tasks whose reward cannot be recomputed does nothing there: say so."""
    asked = [name for name, value in (("sac.context_relabel", config.sac.context_relabel),
                                      ("sac.rl_relabel", config.sac.rl_relabel),
                                      ("sac.decoder_relabel", config.sac.decoder_relabel),
                                      ("sac.goal_jitter", config.sac.goal_jitter))
             if value > 0]
    lacking = [task for task, r in zip(tasks, relabellers) if r is None]
    if asked and lacking:
        optional = [task for task in lacking if reward_relabeller(task) is not None]
        hint = (f"; sac.relabel_recorded turns on {', '.join(optional)}'s, which reads the recorded "
                "reward" if optional else "")
        warnings.warn(f"{' and '.join(asked)} will do nothing on {', '.join(lacking)}: no reward "
                      f"relabeller for {'it' if len(lacking) == 1 else 'them'} "
                      f"(cmrl/envs/relabel.py){hint}", RuntimeWarning, stacklevel=3)


class Trainer:
    def __init__(self, config: RunConfig, run_dir: str | Path, resume: bool = False,
                 progress: bool = True, on_log: Callable[[dict], None] | None = None,
                 status: RunStatus | None = None):
        """`status`: the run's status.json keeper when a caller runs several phases in one run
        directory (`recipes.run_recipe`, which then also ends it); by default the trainer keeps its
        own and marks it finished, stopped or failed when `train` returns or raises."""
        config.validate()
        if agent_kind(config.train.agent).on_policy:
            raise ConfigError(f"{config.train.agent} is trained on-policy (`onpolicy.make_trainer`, "
                              "`python -m cmrl train`), not by the SAC trainer: no fine-tuning or "
                              "recipes for it")
        config = config.resolved()
        self.config, self.run_dir = config, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        t = config.train
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(t.device)
        torch.manual_seed(t.seed)
        self.rng = np.random.default_rng(t.seed)
        self.benchmark = resolve_benchmark(config.benchmark)
        self.tasks = self.benchmark.train_tasks
        self.pool = TaskPool(self.benchmark)
        self.offline = t.mode == "offline"
        # Goal texts (agents that read them): every paraphrase of every meta-train task, embedded once.
        self.text_encoder = None
        self.goal_bank = None
        text_dim = 0
        if agent_kind(t.agent).uses_text:
            self.text_encoder = get_text_encoder(t.text_encoder, t.clip_pretrained)
            text_dim = self.text_encoder.dim
            texts = [goal_texts(task) for task in self.tasks]
            P = max(len(x) for x in texts)
            bank = [embed_goals(self.text_encoder, [x[i % len(x)] for i in range(P)],
                                config.net.goal_encoding) for x in texts]
            self.goal_bank = torch.as_tensor(np.stack(bank), device=self.device)
        obs_dim, act_dim = self.pool.obs_dim, self.pool.act_dim
        self.agent = MetaAgent(config, obs_dim, act_dim, text_dim, self.tasks).to(self.device)
        if t.init_from and not resume:
            self._init_from(t.init_from)
        self.task_ids = torch.arange(len(self.tasks), device=self.device)
        self.cond_ids = torch.as_tensor([self.agent.task_id(x) for x in self.tasks],
                                        device=self.device)
        self.learner = SACLearner(self.agent)
        T = len(self.tasks)
        self.replay = MultiTaskReplay(T, t.replay_capacity, obs_dim, act_dim)
        self.context_buffer = MultiTaskReplay(T, max(self.benchmark.horizon * t.envs_per_task
                                                     * t.prior_rounds, 1), obs_dim, act_dim)
        # PEARL's task is a goal variation: contexts and the RL rows they condition share one.
        self.variation_batches = None
        if self.agent.uses_context and config.sac.context_from == "variation":
            relabellers = [reward_relabeller(task, config.sac.relabel_recorded)
                           for task in self.tasks]
            warn_unrelabelled(self.tasks, relabellers, config)
            self.variation_batches = VariationBatches(
                T, config.sac.meta_batch, config.sac.batch_size, config.sac.context_size,
                config.sac.context_relabel, relabellers, config.sac.rl_relabel,
                config.sac.context_window, config.sac.decoder_relabel,
                self.benchmark.goal_position_dim if config.sac.goal_supervision > 0 else 0,
                config.sac.goal_jitter, config.sac.unrelabelled_context_from == "task")
        rows = (self.variation_batches.row_task if self.variation_batches is not None
                else np.arange(T))
        self.row_task = torch.as_tensor(rows, device=self.device)
        self.offline_data = None
        self.data_manifest = None
        if t.offline:
            self._load_offline(t.offline)
        self.env_steps = 0
        self.grad_steps = 0
        self.iteration = 0
        self.wall_time = 0.0
        if resume:
            self._restore()
        elif (self.run_dir / ckpt.STATE_DIR).exists():
            raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume to continue "
                                  "it, or choose another --run-dir")
        self.collector = None
        writers = [JsonlWriter(self.run_dir / "metrics.jsonl",
                               truncate_after={"grad_steps": self.grad_steps,
                                               "env_steps": self.env_steps} if resume else None),
                   ProgressWriter(t.steps, self._step(), "grad" if self.offline else "env",
                                  enabled=progress)]
        if t.tensorboard:
            writers.append(TensorBoardWriter(self.run_dir / "tb",
                                             purge_step=self._step() if resume else None))
        self._own_status = status is None
        self.status = status or RunStatus(self.run_dir, [t.mode], str(self.device))
        self.status.phase(t.mode, t.steps, "gradient steps" if self.offline else "env steps",
                          self._step(), precision=config.sac.precision, device=str(self.device))
        writers.append(StatusWriter(self.status))
        if on_log is not None:
            writers.append(CallbackWriter(on_log))
        self.logger = MetricsLogger(*writers)

    # -- data ----------------------------------------------------------------------------------------
    def _load_offline(self, path: str) -> None:
        from ..data import load_dataset

        data, manifest = load_dataset(path)
        extra = set(data) - set(self.tasks)
        held = extra & set(self.benchmark.test_tasks)
        if held:
            raise HeldOutTaskError(f"offline dataset {path} contains held-out task(s) {sorted(held)}")
        missing = set(self.tasks) - set(data)
        if missing:
            raise ValueError(f"offline dataset {path} has no data for meta-train task(s) {sorted(missing)}")
        size = max(len(data[task].rewards) for task in self.tasks)
        self.offline_data = MultiTaskReplay(len(self.tasks), size, self.pool.obs_dim,
                                            self.pool.act_dim)
        for i, task in enumerate(self.tasks):
            d = data[task]
            for e in range(d.num_episodes):
                rows = d.episode_ids == e
                v = int(d.variations[e]) if len(d.variations) else -1
                goal = d.goals[e] if len(d.goals) and not np.isnan(d.goals[e]).any() else None
                # Episodes of an unrecorded variation are each a group of their own.
                self.offline_data.add(i, d.obs[rows], d.actions[rows], d.rewards[rows],
                                      d.next_obs[rows], groups=v if v >= 0 else UNKNOWN_GROUP + e,
                                      goal=goal)
        self.data_manifest = {"path": str(path), "command": manifest.get("command"),
                              "seed": manifest.get("seed"),
                              "tasks": {k: {kk: vv for kk, vv in v.items() if kk != "goal_texts"}
                                        for k, v in manifest.get("tasks", {}).items()}}

    def _init_from(self, source: str) -> None:
        """Start from another run's weights (fine-tuning). Same kind and architecture, or an error."""
        from .trained_agent import load_agent

        src = load_agent(source, device=str(self.device))
        a, b = dict(vars(self.config.net)), dict(vars(src.config.net))
        a.pop("task_id_names"), b.pop("task_id_names")
        if src.kind != self.agent.kind or a != b:
            raise ckpt.CheckpointError(f"{source}: a {src.kind} with a different architecture cannot "
                                       f"initialise this {self.agent.kind} run")
        if src.agent.text_dim != self.agent.text_dim:
            raise ckpt.CheckpointError(f"{source}: its text encoder ({src.agent.text_dim} dims) differs "
                                       f"from this run's ({self.agent.text_dim})")
        if self.agent.uses_task_id and src.agent.id_tasks != self.agent.id_tasks:
            raise ckpt.CheckpointError(f"{source}: its task ids {src.agent.id_tasks} differ from this "
                                       f"run's {self.agent.id_tasks}")
        state = src.agent.state_dict()
        # Per-task temperatures carry over when this run trains on the source's own tasks (a
        # second phase with another recipe); on other tasks each starts at the source's mean.
        same_tasks = (src.agent.train_tasks == self.agent.train_tasks
                      and src.agent.log_alpha.shape == self.agent.log_alpha.shape)
        if not same_tasks:
            with torch.no_grad():
                state["log_alpha"] = torch.full_like(self.agent.log_alpha,
                                                     float(src.agent.log_alpha.exp().mean().log()))
        # A reward decoder (`sac.reward_decoder`) and a goal head (`sac.goal_supervision`) are the
        # parts either side may lack: they start fresh, or are dropped.
        missing, unexpected = self.agent.load_state_dict(state, strict=False)
        optional = ("encoder.reward_net.", "encoder.goal_head.", "encoder.goal_mean",
                    "encoder.goal_std")
        other = [k for k in missing + unexpected if not k.startswith(optional)]
        if other:
            raise ckpt.CheckpointError(f"{source}: its weights do not fit this run ({other[:3]})")

    def _prefill_expert(self) -> None:
        from ..envs.experts import collect_prior_episodes

        t = self.config.train
        for i, task in enumerate(self.tasks):
            for ep in collect_prior_episodes(self.pool, task, t.prior_episodes, t.prior_noise,
                                             seed=t.seed * 7919 + i):
                self.replay.add(i, ep.obs, ep.actions, ep.rewards, ep.next_obs,
                                groups=ep.variation, goal=ep.goal)
        # Scripted prior data is not counted in the agent's env steps; the run config labels it.

    # -- one gradient step ---------------------------------------------------------------------------
    def _variation_batch(self) -> tuple[dict, torch.Tensor]:
        """A batch whose rows are goal variations (`variation_batches.py`): offline, the dataset
        drives; online, the variations of the recent-context buffer, RL rows from the replay (and
        the dataset's share of them when offline data is mixed in)."""
        vb, cfg = self.variation_batches, self.config
        if self.offline_data is not None and len(self.replay) == 0:
            return vb.sample(self.offline_data, [(self.offline_data, vb.rows)], self.rng,
                             self.device)
        driver = self.context_buffer if len(self.context_buffer) else self.replay
        parts = [(self.replay, vb.rows)]
        if self.offline_data is not None:
            n_off = int(round(vb.rows * cfg.train.offline_ratio))
            parts = [(self.offline_data, n_off), (self.replay, vb.rows - n_off)]
        return vb.sample(driver, parts, self.rng, self.device)

    def _batch(self) -> tuple[dict, torch.Tensor | None]:
        cfg = self.config
        if self.variation_batches is not None:
            return self._variation_batch()
        B = cfg.sac.batch_size
        if self.offline_data is not None and len(self.replay) > 0:
            # Online after offline: mix dataset and online transitions.
            n_off = int(round(B * cfg.train.offline_ratio))
            parts = [self.offline_data.sample(n_off, self.rng, device=self.device)] if n_off else []
            if B - n_off:
                parts.append(self.replay.sample(B - n_off, self.rng, device=self.device))
            batch = {k: torch.cat([p[k] for p in parts], 1) for k in parts[0]}
        elif self.offline_data is not None:
            batch = self.offline_data.sample(B, self.rng, device=self.device)
        else:
            batch = self.replay.sample(B, self.rng, device=self.device)
        context = None
        if self.agent.uses_context:
            source = self.context_buffer if (len(self.context_buffer) and not self.offline) else (
                self.offline_data if self.offline_data is not None else self.replay)
            context = source.sample_context(cfg.sac.context_size, self.rng, device=self.device)
        return batch, context

    def _context_mask(self, context: torch.Tensor | None) -> torch.Tensor | None:
        """Context dropout (`sac.context_dropout`): per task, no transitions with that probability,
        else a uniformly random number of them in 1..N. None when off (every task sees all N)."""
        p = self.config.sac.context_dropout
        if context is None or p <= 0:
            return None
        T, N = context.shape[:2]
        keep = self.rng.integers(1, N + 1, size=T) * (self.rng.random(T) >= p)
        mask = np.arange(N)[None, :] < keep[:, None]
        return torch.as_tensor(mask, device=self.device)

    def _goal(self) -> torch.Tensor | None:
        """A goal paraphrase per batch row (its meta-train task's)."""
        if self.goal_bank is None:
            return None
        rows = self.row_task.cpu()
        pick = torch.as_tensor(self.rng.integers(self.goal_bank.shape[1], size=len(rows)))
        return self.goal_bank[rows, pick]

    def _fix_obs_stats(self) -> None:
        """Before the first gradient step of a fresh run: freeze the observation standardisation
        from the data it trains on first (offline dataset, else the replay: prior data and warm-up).
        Fine-tuned runs keep their source's statistics; resumed runs restore theirs."""
        cfg = self.config
        if (not cfg.net.obs_norm or self.grad_steps > 0 or cfg.train.init_from
                or self.agent.obs_normalized):
            return
        source = self.offline_data if self.offline_data is not None else self.replay
        obs = np.concatenate([source.obs[i, :source.size[i]] for i in range(len(self.tasks))])
        self.agent.set_obs_stats(*observation_stats(obs))

    def _fix_goal_stats(self) -> None:
        """Before the first gradient step of a fresh run with a goal head: standardise its targets
        by the goals of the variations it trains on first (a head initialised from another run
        keeps that run's)."""
        encoder = self.agent.encoder if self.agent.uses_context else None
        if self.grad_steps > 0 or encoder is None or encoder.goal_head is None:
            return
        if encoder.goal_mean.any() or not (encoder.goal_std == 1).all():
            return
        source = self.offline_data if self.offline_data is not None else self.replay
        goals = [g for per_task in source.group_goals for g in per_task.values()
                 if np.size(g) == self.benchmark.goal_position_dim and np.isfinite(g).all()]
        if goals:
            encoder.set_goal_stats(torch.as_tensor(np.stack(goals), device=self.device))

    def _updates(self, n: int) -> dict[str, float]:
        """n gradient steps; their metrics averaged. The learner hands the metrics back as device
        tensors, summed here and read once at the end (no wait for the device per step)."""
        if n:
            self._fix_obs_stats()
            self._fix_goal_stats()
        sums: dict = {}
        captured_before = self.learner.capture_seconds
        for _ in range(n):
            batch, context = self._batch()
            actor = self.grad_steps >= self.config.train.critic_warmup_updates
            m = self.learner.update(batch, context, self._goal(), self.task_ids[self.row_task],
                                    self.cond_ids[self.row_task],
                                    update_actor=actor, context_mask=self._context_mask(context),
                                    read_metrics=False)
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
            self.grad_steps += 1
        out = {k: float(v) / n for k, v in sums.items()} if n else {}
        if (self.learner.capture_seconds or 0.0) > (captured_before or 0.0):
            # CUDA graphs captured in this chunk (`graphed`): their time, apart from the steps'
            out["capture_s"] = round(self.learner.capture_seconds - (captured_before or 0.0), 2)
        return out

    # -- loop ----------------------------------------------------------------------------------------
    def _step(self) -> int:
        """Progress in the unit of `train.steps`: gradient steps offline, env steps online."""
        return self.grad_steps if self.config.train.mode == "offline" else self.env_steps

    def train(self) -> dict:
        try:
            with self.status.ending(self._own_status):
                if (self.config.train.eval_at_start and self._step() == 0
                        and self.config.train.eval_every):
                    self.logger.log({"step": 0, "env_steps": 0, "grad_steps": 0, "iteration": 0,
                                     "wall_time": 0.0, **self._eval_metrics()})
                if self.config.train.mode == "offline":
                    self._train_offline()
                else:
                    self._train_online()
        finally:
            self.logger.close()
            if self.collector is not None:
                self.collector.close()
        return {"env_steps": self.env_steps, "grad_steps": self.grad_steps,
                "wall_time_s": round(self.wall_time, 1)}

    def _train_offline(self) -> None:
        t = self.config.train
        while self.grad_steps < t.steps:
            start = time.time()
            chunk = min(t.checkpoint_every, t.eval_every or t.checkpoint_every, 1000,
                        t.steps - self.grad_steps)
            before = self.grad_steps
            metrics = self._updates(chunk)
            self.wall_time += time.time() - start
            self._after_progress(before, self.grad_steps, metrics, {})

    def _train_online(self) -> None:
        t = self.config.train
        if self.collector is None:
            self.collector = Collector(self.agent, self.pool, self.tasks, t.envs_per_task,
                                       self.goal_bank, self.rng)
        if self.env_steps == 0 and len(self.replay) == 0 and t.prior_data == "expert":
            self._prefill_expert()
        while self.env_steps < t.steps:
            start = time.time()
            before = self.env_steps
            collected, stats = self._collect_iteration()
            n_updates = 0
            if self.env_steps >= t.warmup_steps or self.offline_data is not None:
                n_updates = int(round(t.updates_per_step * collected))
            metrics = self._updates(n_updates)
            self.iteration += 1
            self.wall_time += time.time() - start
            self._after_progress(before, self.env_steps, metrics, stats)

    def _collect_iteration(self) -> tuple[int, dict]:
        t = self.config.train
        self.context_buffer.clear()
        results = []
        for _ in range(t.prior_rounds):
            r = self.collector.run_round()
            add_round(self.replay, r)
            add_round(self.context_buffer, r)
            results.append(r)
        for k in range(t.posterior_rounds):
            # Each env's posterior from its own prior-round transitions, on the same variation.
            source = results[k % len(results)] if results else None
            r = self.collector.run_round(posterior_from=source,
                                         context_size=self.config.sac.context_size)
            add_round(self.replay, r)
            results.append(r)
        steps = sum(r.steps for r in results)
        self.env_steps += steps
        stats = {}
        for i, task in enumerate(self.tasks):
            succ = np.concatenate([r.successes[r.env_task == i] for r in results])
            rets = np.concatenate([r.returns[r.env_task == i] for r in results])
            stats[f"train_success/{task}"] = float(succ.mean())
            stats[f"train_return/{task}"] = float(rets.mean())
        stats["success"] = float(np.mean([stats[f"train_success/{k}"] for k in self.tasks]))
        return steps, stats

    def _after_progress(self, before: int, now: int, metrics: dict, stats: dict) -> None:
        t = self.config.train
        record = {"step": now, "env_steps": self.env_steps, "grad_steps": self.grad_steps,
                  "iteration": self.iteration, "wall_time": round(self.wall_time, 2), **stats,
                  **metrics}
        if t.eval_every and (now // t.eval_every > before // t.eval_every or now >= t.steps):
            record.update(self._eval_metrics())
        self.logger.log(record)
        if now // t.checkpoint_every > before // t.checkpoint_every or now >= t.steps:
            self.save()

    def _eval_metrics(self) -> dict:
        t = self.config.train
        res = evaluate(self.agent, self.pool, ("train", "test"), self.text_encoder,
                       num_variations=t.eval_variations, adaptation_episodes=1, eval_episodes=1,
                       seed=t.seed + 12345)
        return eval_record(res)

    # -- checkpoints ---------------------------------------------------------------------------------
    def run_info(self) -> dict:
        enc = encoder_info(self.text_encoder) if self.text_encoder is not None else {"name": "none",
                                                                                     "dim": 0}
        return {"config": self.config.to_dict(), "agent": self.agent.kind,
                "obs_dim": self.pool.obs_dim, "act_dim": self.pool.act_dim, "text_encoder": enc, "train_tasks": list(self.tasks),
                "test_tasks": list(self.benchmark.test_tasks),
                "goal_texts": {task: list(goal_texts(task)) for task in
                               self.tasks + self.benchmark.test_tasks},
                "env_steps": self.env_steps, "grad_steps": self.grad_steps,
                "iteration": self.iteration, "wall_time_s": round(self.wall_time, 1),
                "mode": self.config.train.mode,
                "offline_data_mixed_online": bool(self.offline_data is not None and
                                                  self.config.train.mode == "online"),
                "prior_data": self.config.train.prior_data, "offline_data": self.data_manifest,
                "device": str(self.device), "versions": versions()}

    def save(self) -> None:
        tensors: dict = {}
        for k, v in self.agent.state_dict().items():
            tensors[f"agent.{k}"] = v
        learner = ckpt.flatten_state(self.learner.state_dict(), "learner", tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors.update(self.replay.state_dict("replay"))
        tensors.update(self.context_buffer.state_dict("context"))
        state = {"learner": learner, "numpy_rng": self.rng.bit_generator.state,
                 "env_steps": self.env_steps, "grad_steps": self.grad_steps,
                 "iteration": self.iteration, "wall_time": self.wall_time,
                 "config": self.config.to_dict()}
        ckpt.save_training_state(self.run_dir, tensors, state)
        ckpt.save_model(self.run_dir, self.agent, self.run_info())

    def _restore(self) -> None:
        tensors, state = ckpt.load_training_state(self.run_dir)
        where = self.run_dir / ckpt.STATE_DIR
        agent_state = {k[len("agent."):]: v for k, v in tensors.items() if k.startswith("agent.")}
        ckpt.load_state_into(self.agent, agent_state, where / "state.safetensors")
        try:
            self.learner.load_state_dict(ckpt.unflatten_state(state["learner"], tensors, str(where)))
            torch.set_rng_state(tensors["rng.torch"])
            self.rng.bit_generator.state = state["numpy_rng"]
            self.replay.load_state_dict({k: v.numpy() for k, v in tensors.items()
                                         if k.startswith("replay.")}, "replay")
            self.context_buffer.load_state_dict({k: v.numpy() for k, v in tensors.items()
                                                 if k.startswith("context.")}, "context")
        except (KeyError, ValueError, TypeError) as e:
            raise ckpt.CheckpointError(f"{where}: training state is incomplete ({e})") from e
        self.env_steps, self.grad_steps = int(state["env_steps"]), int(state["grad_steps"])
        self.iteration, self.wall_time = int(state["iteration"]), float(state["wall_time"])


def config_for_resume(run_dir: str | Path, overrides: dict | None = None) -> RunConfig:
    """The run's saved config, with selected train fields (e.g. steps) overridden."""
    _, state = ckpt.load_training_state(run_dir)
    cfg = RunConfig.from_dict(state["config"])
    for key, value in (overrides or {}).items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    cfg.validate()
    return cfg


def start_or_resume(run_dir: str | Path, resume: bool | None, new: Callable[[], RunConfig],
                    overrides: dict | None = None) -> tuple[RunConfig, bool]:
    """The one rule every entry point (command line, fine-tuning, sweeps) uses to decide between a
    new run and a resumed one: (config to train with, whether it resumes).

    `resume`: True continues the run in `run_dir` (its saved config, with `overrides` such as a
    new step total applied; `CheckpointError` if it has no training state); False starts the
    config `new()` builds (the Trainer refuses a folder that already holds a run); None resumes
    when `run_dir` holds a resumable state and starts anew otherwise (sweeps: a killed trial goes
    on where it stopped)."""
    if resume is None:
        resume = ckpt.has_resumable_state(run_dir)
    if resume:
        return config_for_resume(run_dir, overrides), True
    return new(), False


def train(config: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
          on_log: Callable[[dict], None] | None = None) -> dict:
    """Train (or resume) a run; returns counters. The public entry point the CLI and app use."""
    return Trainer(config, run_dir, resume=resume, progress=progress, on_log=on_log).train()

