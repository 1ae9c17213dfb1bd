"""Command line: `python -m cmrl {train,eval,data,bench,info} ...`.

Subcommand and flag names are a contract the app, benchmarks and outside scripts rely on.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .config import AGENT_KINDS, ConfigError, RunConfig


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="meta-train an agent (online Algorithm 1, or offline from data)")
    p.add_argument("--run-dir", required=True, help="directory for checkpoints and metrics")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--online", action="store_true",
                   help="with --resume on an offline run: continue online (Algorithm 1), keeping the "
                        "offline data in the replay mix")
    p.add_argument("--config", help="a config.json to start from (flags below override it)")
    p.add_argument("--agent", choices=AGENT_KINDS)
    p.add_argument("--benchmark", help="ml4 (default), ml1:<env>, ml10, ml45, custom")
    p.add_argument("--train-tasks", help="custom benchmark: comma-separated meta-train envs")
    p.add_argument("--test-tasks", help="custom benchmark: comma-separated held-out envs")
    p.add_argument("--horizon", type=int)
    p.add_argument("--steps", type=int,
                   help="total budget: env steps (online) or gradient steps (offline)")
    p.add_argument("--seed", type=int)
    p.add_argument("--text-encoder", choices=("auto", "clip", "minilm"))
    p.add_argument("--clip-pretrained", help="open_clip weights: cache tag, local file, or none")
    p.add_argument("--prior-data", choices=("none", "expert"),
                   help="prefill meta-train buffers with scripted-expert episodes (labelled in config)")
    p.add_argument("--prior-episodes", type=int)
    p.add_argument("--offline", metavar="DIR", help="train offline from a dataset made by `cmrl data`")
    p.add_argument("--bc-weight", type=float, help="behaviour-regularisation weight (offline default 2.5)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", choices=("fp32", "bf16"))
    p.add_argument("--envs-per-task", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--updates-per-step", type=float)
    p.add_argument("--warmup-steps", type=int, help="env steps collected before the first update")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--module-width", type=int)
    p.add_argument("--num-layers", type=int)
    p.add_argument("--num-modules", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


_FLAG_TO_FIELD = {
    "agent": "train.agent", "steps": "train.steps", "seed": "train.seed",
    "text_encoder": "train.text_encoder", "clip_pretrained": "train.clip_pretrained",
    "prior_data": "train.prior_data", "prior_episodes": "train.prior_episodes",
    "device": "train.device", "envs_per_task": "train.envs_per_task",
    "updates_per_step": "train.updates_per_step", "warmup_steps": "train.warmup_steps", "checkpoint_every": "train.checkpoint_every",
    "eval_every": "train.eval_every", "threads": "train.threads", "horizon": "benchmark.horizon",
    "precision": "sac.precision", "batch_size": "sac.batch_size", "bc_weight": "sac.bc_weight",
    "module_width": "net.module_width", "num_layers": "net.num_layers",
    "num_modules": "net.num_modules",
}


def _set(cfg: RunConfig, dotted: str, value) -> None:
    section, name = dotted.split(".")
    setattr(getattr(cfg, section), name, value)


def config_from_args(args) -> RunConfig:
    if args.config:
        data = json.loads(Path(args.config).read_text())
        cfg = RunConfig.from_dict(data.get("config", data))
    else:
        cfg = RunConfig()
    for flag, field in _FLAG_TO_FIELD.items():
        value = getattr(args, flag, None)
        if value is not None:
            _set(cfg, field, value)
    if args.benchmark:
        cfg.benchmark.name = args.benchmark
    if args.train_tasks:
        cfg.benchmark.train_tasks = [t.strip() for t in args.train_tasks.split(",") if t.strip()]
    if args.test_tasks:
        cfg.benchmark.test_tasks = [t.strip() for t in args.test_tasks.split(",") if t.strip()]
    if args.offline:
        cfg.train.offline = str(Path(args.offline).resolve())
        cfg.train.mode = "offline"
        if args.bc_weight is None:
            cfg.sac.bc_weight = 2.5
    cfg.validate()
    return cfg


def cmd_train(args) -> int:
    from .trainer import Trainer, config_for_resume

    if args.resume:
        overrides = {field: getattr(args, flag) for flag, field in _FLAG_TO_FIELD.items()
                     if getattr(args, flag, None) is not None and field in (
                         "train.steps", "train.device", "train.threads", "train.checkpoint_every",
                         "train.eval_every")}
        if args.online:
            overrides["train.mode"] = "online"
        cfg = config_for_resume(args.run_dir, overrides)
    else:
        cfg = config_from_args(args)
    trainer = Trainer(cfg, args.run_dir, resume=args.resume, progress=not args.no_progress)
    print(f"[cmrl] {cfg.train.agent} on {cfg.benchmark.name} ({', '.join(trainer.tasks)}; held out: "
          f"{', '.join(trainer.benchmark.test_tasks)}), {cfg.train.mode}, device {trainer.device}, "
          f"run dir {args.run_dir}", file=sys.stderr)
    out = trainer.train()
    print(json.dumps(out))
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint with the meta-test protocol")
    p.add_argument("--checkpoint", required=True, help="run directory")
    p.add_argument("--split", choices=("train", "test", "all"), default="all")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--variations", type=int, default=10, help="goal variations per task")
    p.add_argument("--adaptation-episodes", type=int, default=3)
    p.add_argument("--eval-episodes", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--goal", action="append", default=[], metavar="TASK=TEXT",
                   help="goal text for a task (default: its canonical text)")


def cmd_eval(args) -> int:
    from .api import load_agent

    agent = load_agent(args.checkpoint)
    goals = {}
    for item in args.goal:
        if "=" not in item:
            raise ConfigError(f"--goal expects TASK=TEXT, got {item!r}")
        task, text = item.split("=", 1)
        goals[task.strip()] = text
    splits = ("train", "test") if args.split == "all" else (args.split,)
    res = agent.evaluate(splits, args.variations, args.adaptation_episodes, args.eval_episodes,
                         args.seed, goals)
    res["command"] = "python -m cmrl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    for split, part in res["splits"].items():
        for task, r in part["tasks"].items():
            print(f"{split:5s} {task:18s} success {r['success_rate']:.2f}  return {r['mean_return']:.1f}")
        print(f"{split:5s} mean success {part['mean_success']:.2f}")
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="generate an offline dataset (Minari) from scripted experts")
    p.add_argument("--benchmark", default="ml4")
    p.add_argument("--horizon", type=int, default=200)
    p.add_argument("--episodes", type=int, default=30, help="expert episodes per task per noise level")
    p.add_argument("--noise", default="0.1,0.3,0.5", help="comma-separated action-noise stds")
    p.add_argument("--random-episodes", type=int, default=10, help="random-policy episodes per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")


def cmd_data(args) -> int:
    from .config import BenchmarkConfig
    from .data import generate_dataset

    noise = [float(x) for x in args.noise.split(",") if x.strip()]
    path = generate_dataset(BenchmarkConfig(name=args.benchmark, horizon=args.horizon, seed=0),
                            args.out, args.episodes, noise, args.random_episodes, args.seed,
                            args.workers, command="python -m cmrl " + " ".join(
                                shlex.quote(a) for a in sys.argv[1:]), overwrite=args.overwrite)
    print(path)
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed benchmark: collection vs bare env loop, update vs SB3 SAC")
    p.add_argument("--seconds", type=float, default=8.0, help="measuring time per figure")
    p.add_argument("--json", help="also write the figures here")


def cmd_bench(args) -> int:
    from .bench import run_bench

    figures = run_bench(args.seconds)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="describe a run directory")
    p.add_argument("run_dir")


def cmd_info(args) -> int:
    from .checkpoint import read_run_info

    info = read_run_info(args.run_dir)
    keep = ("agent", "mode", "prior_data", "env_steps", "grad_steps", "train_tasks", "test_tasks",
            "text_encoder", "device", "versions")
    print(json.dumps({k: info.get(k) for k in keep}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_eval, _add_data, _add_bench, _add_info):
        add(sub)
    args = parser.parse_args(argv)
    handlers = {"train": cmd_train, "eval": cmd_eval, "data": cmd_data, "bench": cmd_bench,
                "info": cmd_info}
    from .checkpoint import CheckpointError
    from .tasks import HeldOutTaskError, UnknownTaskError
    from .text_encoders import GoalTextError, TextEncoderError

    try:
        return handlers[args.command](args)
    except (ConfigError, CheckpointError, HeldOutTaskError, UnknownTaskError, GoalTextError,
            TextEncoderError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is intact; continue with --resume", file=sys.stderr)
        return 130
