"""Command line: `python -m cmrl {train,finetune,sweep,eval,data,report,bench,info} ...`.

Subcommand and flag names are a contract the app, benchmarks and outside scripts rely on.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .config import AGENT_KINDS, DEVICES, ConfigError, RunConfig
from .variants import VARIANTS, variant_fields


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="meta-train an agent (online Algorithm 1, or offline from data)")
    p.add_argument("--run-dir", required=True, help="directory for checkpoints and metrics")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--online", action="store_true",
                   help="with --resume on an offline run: continue online (Algorithm 1), keeping the "
                        "offline data in the replay mix")
    p.add_argument("--agent", choices=AGENT_KINDS)
    _add_config_flags(p)


def _add_config_flags(p) -> None:
    """The run flags: a few by hand (the benchmark, its task lists, the offline dataset, named
    variants, --set), then one generated flag per config field (`_config_flags`), its help the
    field's docstring and its default the dataclass's."""
    p.add_argument("--config", help="a config.json to start from (flags below override it)")
    p.add_argument("--benchmark", help="ml4 (default), ml1:<env>, ml10, ml45, custom")
    p.add_argument("--train-tasks", help="custom benchmark: comma-separated meta-train envs")
    p.add_argument("--test-tasks", help="custom benchmark: comma-separated held-out envs")
    p.add_argument("--offline", metavar="DIR", help="train offline from a dataset made by `cmrl data`")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--variant", choices=tuple(VARIANTS),
                   help="a named method variant (cmrl/variants.py); flags and --set still win")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="set any config field, e.g. --set net.routing_input=cond "
                        "(VALUE is read as JSON, else as a string); repeatable")
    group = p.add_argument_group("config fields (cmrl/config.py; unset: the dataclass default)")
    for flag, info in _config_flags().items():
        kind = info.type.replace(" | None", "")
        extra: dict = {}
        if kind == "bool":
            extra["action"] = argparse.BooleanOptionalAction
        elif kind in ("int", "float"):
            extra["type"] = int if kind == "int" else float
        elif kind.startswith("list["):
            extra["type"] = _comma_list(int if kind == "list[int]" else str)
            extra["metavar"] = "A,B,..."
        if info.choices:
            extra["choices"] = info.choices
        doc = info.doc.split(". ")[0].rstrip(".")
        group.add_argument(f"--{flag}", default=None,
                           help=f"{doc} [{info.name}, default {info.default!r}]".replace("%", "%%"),
                           **extra)


_HAND_WRITTEN = {"benchmark.name", "benchmark.train_tasks", "benchmark.test_tasks", "train.offline",
                 "train.mode", "train.agent"}
"""Fields whose flags are written by hand above (or by the subcommand: --agent, --agents)."""


def _config_flags() -> dict:
    """{flag name: FieldInfo} for every other config field: the field's name with dashes, or
    SECTION-NAME where two sections share a name (the train section keeps the short one)."""
    from collections import Counter

    from .config import config_fields

    fields = [f for f in config_fields() if f.name not in _HAND_WRITTEN]
    counts = Counter(f.name.split(".")[1] for f in fields)
    out = {}
    for f in fields:
        section, name = f.name.split(".")
        flag = name if counts[name] == 1 or section == "train" else f"{section}_{name}"
        out[flag.replace("_", "-")] = f
    return out


def _comma_list(kind):
    def parse(text: str) -> list:
        try:
            return [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, "
                                             f"got {text!r}") from None
    return parse


_FLAG_TO_FIELD = {"agent": "train.agent",
                  **{flag.replace("-", "_"): info.name for flag, info in _config_flags().items()}}
"""argparse destination -> "section.field": --agent and every generated flag."""


def _set(cfg: RunConfig, dotted: str, value) -> None:
    section, name = dotted.split(".")
    setattr(getattr(cfg, section), name, value)


def _parse_set(item: str) -> tuple[str, object]:
    """One `--set section.field=value`: the value is read as JSON, else taken as a string."""
    key, sep, raw = item.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"--set expects SECTION.FIELD=VALUE, got {item!r}")
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


def config_from_args(args) -> RunConfig:
    if args.config:
        data = json.loads(Path(args.config).read_text())
        cfg = RunConfig.from_dict(data.get("config", data))
    else:
        cfg = RunConfig()
    if getattr(args, "variant", None):
        cfg = cfg.updated(variant_fields(args.variant))
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
    sets = dict(_parse_set(item) for item in getattr(args, "set", None) or [])
    if sets:
        cfg = cfg.updated(sets)
    if args.offline:
        cfg.train.offline = str(Path(args.offline).resolve())
        cfg.train.mode = "offline"  # sac.bc_weight, unless set, becomes OFFLINE_BC_WEIGHT
    cfg.validate()
    return cfg


def cmd_train(args) -> int:
    from .algo.onpolicy import make_trainer
    from .algo.trainer import start_or_resume

    overrides = {field: getattr(args, flag) for flag, field in _FLAG_TO_FIELD.items()
                 if getattr(args, flag, None) is not None and field in (
                     "train.steps", "train.device", "train.threads", "train.checkpoint_every",
                     "train.eval_every", "train.tensorboard")}
    if args.online:
        overrides["train.mode"] = "online"
    cfg, resume = start_or_resume(args.run_dir, args.resume, lambda: config_from_args(args),
                                  overrides)
    trainer = make_trainer(cfg, args.run_dir, resume=resume, progress=not args.no_progress)
    print(f"[cmrl] {cfg.train.agent} on {cfg.benchmark.name} ({', '.join(trainer.tasks)}; held out: "
          f"{', '.join(trainer.benchmark.test_tasks)}), {cfg.train.mode}, device {trainer.device}, "
          f"run dir {args.run_dir}", file=sys.stderr)
    out = trainer.train()
    print(json.dumps(out))
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="agents x seeds grid through Ray Tune (pip install -r "
                                     "requirements-ray.txt), with an aggregate table")
    p.add_argument("--agents", default="cmrl,pearl,sm", help="comma-separated agent kinds")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--out", required=True, help="sweep directory: one run directory per trial")
    p.add_argument("--cpus-per-trial", type=int, default=1)
    p.add_argument("--max-concurrent", type=int, default=0, help="0: as many as the CPUs allow")
    p.add_argument("--address", help="a Ray cluster to run on (default: a local Ray)")
    _add_config_flags(p)


def cmd_sweep(args) -> int:
    from .experiments.sweep import markdown_table, sweep

    try:
        agents = [a.strip() for a in args.agents.split(",") if a.strip()]
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError as e:
        raise ConfigError(f"--seeds must be integers: {e}") from e
    bad = [a for a in agents if a not in AGENT_KINDS]
    if bad:
        raise ConfigError(f"unknown agent(s) {bad}; choose from {', '.join(AGENT_KINDS)}")
    cfg = config_from_args(args)
    res = sweep(cfg, agents, seeds, args.out, args.cpus_per_trial, args.address,
                args.max_concurrent, command="python -m cmrl " + " ".join(
                    shlex.quote(a) for a in sys.argv[1:]))
    print(markdown_table(res["table"]))
    for err in res["errors"]:
        print(f"trial error: {err}", file=sys.stderr)
    return 1 if res["errors"] else 0


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="learning to learn: adapt a meta-trained agent to one task, "
                                        "then keep training it there with SAC")
    p.add_argument("--checkpoint", required=True,
                   help="meta-trained run directory (with --scratch: only its architecture is used)")
    p.add_argument("--task", required=True, help="the task to fine-tune on, e.g. window-close-v3")
    p.add_argument("--steps", type=int, required=True, help="env-step budget")
    p.add_argument("--run-dir", required=True, help="new run directory (the checkpoint is untouched)")
    p.add_argument("--scratch", action="store_true",
                   help="the comparison arm: the same network, randomly initialised")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=2000, help="env steps between evaluations")
    p.add_argument("--eval-variations", type=int, default=10)
    p.add_argument("--critic-warmup", type=int, default=0,
                   help="first N gradient updates train the critics only (both arms alike)")
    p.add_argument("--bc-weight", type=float, default=0.0,
                   help="keep a TD3+BC term towards the replay's own actions (0: plain SAC)")
    p.add_argument("--envs-per-task", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")


def cmd_finetune(args) -> int:
    from .experiments.finetune import finetune

    out = finetune(args.checkpoint, args.task, args.steps, args.run_dir, seed=args.seed,
                   scratch=args.scratch, resume=args.resume, progress=not args.no_progress,
                   **({} if args.resume else dict(
                       eval_every=args.eval_every, eval_variations=args.eval_variations,
                       envs_per_task=args.envs_per_task, device=args.device, threads=args.threads,
                       critic_warmup=args.critic_warmup, bc_weight=args.bc_weight)))
    out.pop("curve")
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
    p.add_argument("--protocol", choices=("cmrl", "metaworld"), default="cmrl",
                   help="cmrl: the project's evaluator (fresh goal variations for meta-train tasks); "
                        "metaworld: metaworld.evaluation.metalearning_evaluation, one env per task, "
                        "--variations evaluation rounds")
    p.add_argument("--goal", action="append", default=[], metavar="TASK=TEXT",
                   help="goal text for a task (default: its canonical text)")
    p.add_argument("--unseen-paraphrases", action="store_true",
                   help="give every task a phrasing training never used (cmrl.envs.tasks."
                        "UNSEEN_GOAL_TEXTS) instead of its canonical text; --goal still wins")
    p.add_argument("--workers", type=int,
                   help="worker processes sharing the (task, group of variations) units (default: "
                        "the cores); the numbers are the same for any count")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_eval(args) -> int:
    from .algo.trained_agent import load_agent

    agent = load_agent(args.checkpoint)
    goals = {}
    if args.unseen_paraphrases:
        from .envs.tasks import unseen_goal_text

        for task in agent.info.get("train_tasks", []) + agent.info.get("test_tasks", []):
            if unseen_goal_text(task):
                goals[task] = unseen_goal_text(task)
    for item in args.goal:
        if "=" not in item:
            raise ConfigError(f"--goal expects TASK=TEXT, got {item!r}")
        task, text = item.split("=", 1)
        goals[task.strip()] = text
    splits = ("train", "test") if args.split == "all" else (args.split,)
    if args.variations < 1 or args.adaptation_episodes < 0 or args.eval_episodes < 1:
        raise ConfigError("--variations and --eval-episodes must be >= 1, --adaptation-episodes >= 0")
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers must be >= 1")
    if args.protocol == "metaworld":
        from .algo.metaworld_adapter import metaworld_protocol

        res = metaworld_protocol(agent, splits, num_evals=args.variations, meta_batch_size=1,
                                 adaptation_episodes=args.adaptation_episodes,
                                 evaluation_episodes=args.eval_episodes, seed=args.seed,
                                 goal_texts=goals)
        res["checkpoint"] = {"run_dir": str(agent.run_dir), "env_steps": agent.info.get("env_steps"),
                             "grad_steps": agent.info.get("grad_steps"), "mode": agent.info.get("mode")}
    else:
        res = agent.evaluate(splits, args.variations, args.adaptation_episodes, args.eval_episodes,
                             args.seed, goals, workers=args.workers,
                             progress=not args.no_progress)
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
    p.add_argument("--train-tasks", help="custom benchmark: comma-separated meta-train envs")
    p.add_argument("--test-tasks", help="custom benchmark: comma-separated held-out envs "
                                        "(never generated)")
    p.add_argument("--horizon", type=int, default=200)
    p.add_argument("--episodes", type=int, default=30, help="expert episodes per task per noise level")
    p.add_argument("--noise", default="0.1,0.3,0.5", help="comma-separated action-noise stds")
    p.add_argument("--random-episodes", type=int, default=10, help="random-policy episodes per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int,
                   help="worker processes sharing the (task, noise level, chunk) jobs (default: the "
                        "cores); the data is the same for any count")
    p.add_argument("--out", help="dataset folder (required unless --check-experts)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--min-expert-success", type=float, default=0.5,
                   help="refuse a task whose scripted expert succeeds in fewer of its episodes at "
                        "some noise level (default 0.5)")
    p.add_argument("--allow-weak-experts", action="store_true",
                   help="keep such a task's episodes anyway (listed as weak_experts in the "
                        "manifest)")
    p.add_argument("--check-experts", action="store_true",
                   help="write nothing: print each meta-train task's scripted-expert success rate "
                        "per --noise level over --episodes episodes, at --check-horizons")
    p.add_argument("--check-horizons", help="with --check-experts: comma-separated horizons "
                                            "(default: --horizon)")


def cmd_data(args) -> int:
    from .config import BenchmarkConfig
    from .data import DatasetError, generate_dataset

    noise = [float(x) for x in args.noise.split(",") if x.strip()]
    def tasks(text):
        return [t.strip() for t in (text or "").split(",") if t.strip()]

    if args.check_experts:
        return _check_experts(args, noise, tasks(args.train_tasks), tasks(args.test_tasks))
    if not args.out:
        raise ConfigError("data needs --out DIR (or --check-experts)")
    bench = BenchmarkConfig(name=args.benchmark, horizon=args.horizon, seed=0,
                            train_tasks=tasks(args.train_tasks), test_tasks=tasks(args.test_tasks))
    try:
        path = generate_dataset(bench,
                                args.out, args.episodes, noise, args.random_episodes, args.seed,
                                args.workers, command="python -m cmrl " + " ".join(
                                    shlex.quote(a) for a in sys.argv[1:]), overwrite=args.overwrite,
                                min_expert_success=args.min_expert_success,
                                allow_weak_experts=args.allow_weak_experts)
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _check_experts(args, noise: list[float], train: list[str], test: list[str]) -> int:
    """`data --check-experts`: the scripted experts' success table, nothing written."""
    from .config import BenchmarkConfig
    from .envs.metaworld_env import TaskPool  # (importing it filters the experts' per-step warnings)
    from .envs.experts import expert_success_table, success_markdown
    from .envs.tasks import resolve_benchmark

    try:
        horizons = tuple(int(h) for h in (args.check_horizons or str(args.horizon)).split(","))
    except ValueError as e:
        raise ConfigError(f"--check-horizons must be integers: {e}") from e
    if not noise or args.episodes < 1 or min(horizons) < 1:
        raise ConfigError("--check-experts needs noise levels, --episodes >= 1 and horizons >= 1")
    bench = resolve_benchmark(BenchmarkConfig(name=args.benchmark, horizon=max(horizons), seed=0,
                                              train_tasks=train, test_tasks=test))
    table = expert_success_table(TaskPool(bench), tuple(noise), args.episodes, horizons, args.seed)
    print(f"scripted-expert success, {args.episodes} episodes per cell, training goal variations "
          f"of {bench.name} (the expert reads the goal position; held-out tasks not run)")
    print(success_markdown(table))
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="aggregate run directories and their evaluation files into "
                                      "results.json, tables and figures")
    p.add_argument("--root", required=True, help="directory holding the run directories")
    p.add_argument("--finetune", nargs="*", default=[], help="fine-tuning run directories")
    p.add_argument("--figures", help="write PNG figures here (needs matplotlib)")


def cmd_report(args) -> int:
    from .experiments.report import figures, finetune_markdown, markdown, report, zero_shot_markdown

    res = report(args.root, [Path(d) for d in args.finetune], command="python -m cmrl " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]))
    for proto in ("cmrl", "metaworld"):
        for metric in ("success", "return"):
            table = markdown(res, proto, metric)
            if table:
                print(f"{metric} ({proto} protocol), mean ± std over seeds\n{table}\n")
    table = zero_shot_markdown(res)
    if table:
        print(f"zero-shot (goal text only), adapted and gain (project evaluator)\n{table}\n")
    print("gradient steps to 90% mean meta-train success:", json.dumps(res["steps_to_90"]))
    if res["finetune"]:
        print(finetune_markdown(res["finetune"]))
    if args.figures:
        for path in figures(res, args.figures):
            print(path)
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed benchmark: our update paths against each other and "
                                     "against mtrl, SB3 and the bare env loop (CPU; CUDA if present)")
    p.add_argument("--seconds", type=float, default=8.0, help="measuring time per figure")
    p.add_argument("--json", help="also write the figures here (after each section, so a bench "
                                  "cut short keeps what it measured)")
    p.add_argument("--sections", default="all",
                   help="comma-separated parts to run: updates, modular_net, sb3, precision, "
                        "collection, eval, data, gpu (default: all)")


def cmd_bench(args) -> int:
    from .experiments.bench import SECTIONS, run_bench

    sections = SECTIONS if args.sections == "all" else tuple(
        s.strip() for s in args.sections.split(",") if s.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        print(f"error: unknown bench section(s) {', '.join(unknown) or '(none given)'}; choose from "
              f"{', '.join(SECTIONS)} or all", file=sys.stderr)
        return 2

    def save(figures: dict) -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    save(run_bench(args.seconds, sections, on_section=save))
    return 0


def _add_recipe(sub) -> None:
    from .experiments.recipes import RECIPES

    p = sub.add_parser("recipe", help="train with a named recipe: data made on demand, then "
                                      "offline and/or online phases (cmrl/experiments/recipes.py)")
    p.add_argument("--name", choices=tuple(RECIPES), default="quick")
    p.add_argument("--run-dir", help="the run directory (not needed with --estimate)")
    p.add_argument("--benchmark", default="ml4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--data-root", default=None, help="where made datasets are cached "
                                                     "(default data/cache)")
    p.add_argument("--steps", type=int, help="replace every training phase's budget (smoke tests)")
    p.add_argument("--data-episodes", type=int, help="expert episodes per noise level of the "
                                                     "made data (smoke tests)")
    p.add_argument("--estimate", action="store_true",
                   help="only print how long each phase would take on this machine")
    p.add_argument("--no-progress", action="store_true")


def cmd_recipe(args) -> int:
    from .experiments.recipes import DATA_CACHE, estimate_seconds, get_recipe, run_recipe

    root = args.data_root or DATA_CACHE
    if args.estimate:
        est = estimate_seconds(get_recipe(args.name), args.benchmark, args.device, root)
        print(json.dumps(est, indent=2))
        return 0
    if not args.run_dir:
        raise ConfigError("recipe needs --run-dir (or --estimate)")
    out = run_recipe(args.name, args.run_dir, args.benchmark, args.seed, args.device, root,
                     progress=not args.no_progress, steps=args.steps,
                     data_episodes=args.data_episodes)
    print(json.dumps(out))
    return 0


def _add_ablation(sub) -> None:
    p = sub.add_parser("ablation", help="the cmrl variants' table and the pre-registered choice of "
                                        "the default (docs/method_selection.md)")
    p.add_argument("--root", required=True, help="screening runs (scripts/variant_runs.sh output)")
    p.add_argument("--finalists", help="the finalists' multi-seed runs, same layout")
    p.add_argument("--json", help="write the tables and choices here")


def cmd_ablation(args) -> int:
    from .experiments.ablation import report

    out = report(args.root, args.finalists)
    for stage in ("screening", "finalists"):
        if stage in out:
            part = out[stage]
            print(f"## {stage} ({part['root']})\n\n{part['table']}\n")
    s = out["screening"]
    print(f"finalists: {', '.join(s['finalists']) or 'none'} ({s['why']})")
    if "finalists" in out:
        print(f"chosen: {out['finalists']['chosen']} ({out['finalists']['why']})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def _add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="where each task lands: the meta-train task its z and its "
                                       "routing are nearest to, from the text alone and adapted")
    p.add_argument("--checkpoint", required=True, help="run directory")
    p.add_argument("--episodes", type=int, default=2, help="adaptation episodes")
    p.add_argument("--variations", type=int, default=3, help="goal variations per task (0..N-1)")
    p.add_argument("--metric", choices=("cosine", "centered-cosine", "jensen-shannon"),
                   default="centered-cosine", help="routing similarity")
    p.add_argument("--json", help="write the analysis here")


def cmd_analyze(args) -> int:
    from .algo.trained_agent import load_agent
    from .experiments.routing_analysis import context_map

    if args.episodes < 0 or not 1 <= args.variations <= 50:
        raise ConfigError("--episodes must be >= 0 and --variations in 1..50")
    out = context_map(load_agent(args.checkpoint), episodes=args.episodes,
                      variations=range(args.variations), metric=args.metric)
    for task, e in out["nearest"].items():
        cells = [f"{k}: {e[k]['nearest']}" for k in ("z_text", "z_adapted", "routing_text",
                                                     "routing_adapted") if k in e]
        print(f"{task:20s} success text {e['success_text']:.2f} adapted {e['success_adapted']:.2f}"
              f" | nearest " + ", ".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def _add_diagnose(sub) -> None:
    p = sub.add_parser("diagnose", help="does the context find the goal: the evaluation episode "
                                        "with the posterior from the agent's own episodes, an "
                                        "expert's, a random policy's, or none")
    p.add_argument("--checkpoint", required=True, help="run directory of a context agent")
    p.add_argument("--task", action="append", default=[], help="only these tasks (repeatable)")
    p.add_argument("--variations", type=int, default=10, help="goal variations per task")
    p.add_argument("--adaptation-episodes", type=int, default=3)
    p.add_argument("--split", choices=("train", "test", "all"), default="all",
                   help="train: meta-train tasks on fresh variations; test: held-out ones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the report here")
    p.add_argument("--save-probe", action="store_true",
                   help="keep the goal probe (z -> goal position) beside the checkpoint, where the "
                        "app's Adapt tab draws the agent's belief from it")


def cmd_diagnose(args) -> int:
    from .algo.trained_agent import load_agent
    from .experiments.context_diagnosis import diagnose, markdown

    if not 2 <= args.variations <= 50 or args.adaptation_episodes < 0:
        raise ConfigError("--variations must be in 2..50 and --adaptation-episodes >= 0")
    agent = load_agent(args.checkpoint)
    if not agent.uses_context:
        raise ConfigError(f"a {agent.kind} agent infers no context: nothing to diagnose")
    splits = ("train", "test") if args.split == "all" else (args.split,)
    report = diagnose(agent, args.task or None, args.variations, args.adaptation_episodes,
                      args.seed, splits)
    report["command"] = "python -m cmrl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(markdown(report))
    if args.save_probe:
        from .runs.goal_probe import save_goal_probe

        print(f"goal probe saved to {save_goal_probe(args.checkpoint, report)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _add_ship(sub) -> None:
    p = sub.add_parser("ship", help="copy a trained run's weights, config, curves and evaluations "
                                    "(no resumable state) with paths made relative to this folder")
    p.add_argument("run_dir")
    p.add_argument("dest")


def cmd_ship(args) -> int:
    from .runs.checkpoint import ship

    print(json.dumps({"shipped": ship(args.run_dir, args.dest), "to": args.dest}))
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="describe a run directory")
    p.add_argument("run_dir")
    p.add_argument("--finished", action="store_true",
                   help="exit 0 if the run's saved model reached its step budget, 1 if not")
    p.add_argument("--steps", type=int,
                   help="with --finished: the budget to check instead of the run's own (a run "
                        "to be carried on further)")


def cmd_info(args) -> int:
    from .runs.checkpoint import read_run_info

    info = read_run_info(args.run_dir)
    if args.finished:
        t = info["config"]["train"]
        done = info.get("grad_steps" if t["mode"] == "offline" else "env_steps") or 0
        budget = args.steps if args.steps is not None else t["steps"]
        print(f"{done} of {budget} steps")
        return 0 if done >= budget else 1
    keep = ("agent", "mode", "prior_data", "env_steps", "grad_steps", "train_tasks", "test_tasks",
            "text_encoder", "device", "versions")
    print(json.dumps({k: info.get(k) for k in keep}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_finetune, _add_sweep, _add_eval, _add_data, _add_report, _add_bench,
                _add_recipe, _add_ablation, _add_analyze, _add_diagnose, _add_ship, _add_info):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"train": cmd_train, "finetune": cmd_finetune, "sweep": cmd_sweep, "eval": cmd_eval,
                "data": cmd_data, "report": cmd_report, "bench": cmd_bench, "ablation": cmd_ablation,
                "recipe": cmd_recipe,
                "analyze": cmd_analyze, "diagnose": cmd_diagnose, "ship": cmd_ship,
                "info": cmd_info}
    from .errors import user_errors, user_message

    try:
        return handlers[args.command](args)
    except user_errors() as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is intact; continue with --resume", file=sys.stderr)
        return 130
