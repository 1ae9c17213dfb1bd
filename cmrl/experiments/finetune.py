"""Fine-tuning on one new task: the learning-to-learn experiment.

Starting from a meta-trained run, `finetune_config` builds a run that trains on a single task (e.g. the
held-out window-close) with the online Algorithm 1 loop: each iteration first adapts the context
(episodes with z from the prior, which fill the task's context buffer), then collects with z from the
posterior and takes SAC steps on the task's own data. `scratch=True` gives the comparison arm: the same
network, randomly initialised, on the same task and budget.

The meta-trained run is never modified; the new run directory holds the curve (`metrics.jsonl`: an
evaluation at env step 0, then every `eval_every` env steps, on goal variations not trained on) and
`finetune.json`, the env steps at which success first reached 50% and 90%.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..runs import checkpoint as ckpt
from ..agent_kinds import agent_kind
from ..config import BenchmarkConfig, ConfigError, RunConfig
from ..runs.logger import eval_key, read_metrics
from ..envs.tasks import all_env_names

SUMMARY_FILE = "finetune.json"


def finetune_config(checkpoint: str | Path, task: str, steps: int, seed: int = 0,
                    scratch: bool = False, eval_every: int = 2000, eval_variations: int = 10,
                    envs_per_task: int | None = None, device: str | None = None,
                    threads: int | None = None, critic_warmup: int = 0,
                    bc_weight: float = 0.0) -> RunConfig:
    """The run config of fine-tuning `checkpoint`'s agent on `task` (or of training the same network
    from scratch there, with `scratch=True`)."""
    if task not in all_env_names():
        raise ConfigError(f"unknown task {task!r}: not a Meta-World v3 env")
    info = ckpt.read_run_info(checkpoint)
    src = RunConfig.from_dict(info["config"])
    cfg = RunConfig.from_dict(src.to_dict())
    cfg.benchmark = BenchmarkConfig(name="custom", train_tasks=[task], test_tasks=[],
                                    horizon=src.benchmark.horizon, seed=src.benchmark.seed)
    if agent_kind(cfg.train.agent).uses_task_id:
        # Keep the source's one-hot slots, so a task it was not trained on gets the all-zeros id.
        cfg.net.task_id_names = list(info["train_tasks"])
    t = cfg.train
    t.mode, t.offline, t.prior_data = "online", None, "none"
    t.init_from = None if scratch else str(Path(checkpoint).resolve())
    t.steps, t.seed = steps, seed
    t.eval_every, t.eval_variations, t.eval_at_start = eval_every, eval_variations, True
    t.checkpoint_every = eval_every
    t.critic_warmup_updates = critic_warmup  # the same for both arms
    if envs_per_task:
        t.envs_per_task = envs_per_task
    t.warmup_steps = t.envs_per_task * cfg.benchmark.horizon  # one round, the same for both arms
    if device:
        t.device = device
    if threads is not None:
        t.threads = threads
    if info.get("text_encoder", {}).get("name") not in (None, "none"):
        t.text_encoder = info["text_encoder"]["name"]
    # bc_weight > 0: the TD3+BC term towards the fine-tuning replay's own actions (the agent's
    # earlier behaviour on the new task; there is no expert data for it), Q normalised by |Q|.
    cfg.sac.bc_weight, cfg.sac.bc_only = bc_weight, False
    cfg.validate()
    return cfg


def first_reaching(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """The first env step whose success is >= threshold, or None."""
    for step, success in curve:
        if success >= threshold:
            return step
    return None


def success_curve(run_dir: str | Path, task: str) -> list[tuple[int, float]]:
    """(env steps, evaluation success) pairs of a fine-tuning run, in order."""
    key = eval_key("train", "success", task)
    return [(int(r["env_steps"]), float(r[key])) for r in read_metrics(run_dir) if key in r]


def summarize(run_dir: str | Path, task: str) -> dict:
    """Write and return RUN/finetune.json: steps to 50% and 90% success, the curve, the arm."""
    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / ckpt.CONFIG_FILE).read_text())["config"]
    curve = success_curve(run_dir, task)
    out = {"task": task, "agent": cfg["train"]["agent"],
           "arm": "scratch" if not cfg["train"]["init_from"] else "meta-trained",
           "bc_weight": cfg["sac"]["bc_weight"],
           "critic_warmup_updates": cfg["train"].get("critic_warmup_updates", 0),
           "init_from": cfg["train"]["init_from"], "seed": cfg["train"]["seed"],
           "env_step_budget": cfg["train"]["steps"],
           "eval": f"{cfg['train']['eval_variations']} goal variations not trained on, 1 adaptation "
                   "+ 1 deterministic episode each, success at any step",
           "steps_to_50": first_reaching(curve, 0.5), "steps_to_90": first_reaching(curve, 0.9),
           "final_success": curve[-1][1] if curve else None, "curve": curve}
    (run_dir / SUMMARY_FILE).write_text(json.dumps(out, indent=2))
    return out


def finetune(checkpoint: str | Path, task: str, steps: int, run_dir: str | Path, seed: int = 0,
             scratch: bool = False, resume: bool = False, progress: bool = True, **kw) -> dict:
    """Fine-tune (or, with `scratch`, train afresh) on `task`; returns `finetune.json`'s content."""
    from ..algo.trainer import Trainer, start_or_resume

    cfg, resume = start_or_resume(run_dir, resume,
                                  lambda: finetune_config(checkpoint, task, steps, seed, scratch, **kw),
                                  {"train.steps": steps})
    Trainer(cfg, run_dir, resume=resume, progress=progress).train()
    return summarize(run_dir, task)
