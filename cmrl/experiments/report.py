"""Results: aggregate shipped run directories into `results.json`, tables and the results figures.

`python -m cmrl report --root checkpoints/ml4 [--finetune DIR] [--figures assets]` reads every run
directory under `root` (config.json + metrics.jsonl, and the evaluation files that `python -m cmrl eval`
wrote there: `evaluation.json` for the project's evaluator, `metaworld_evaluation.json` for Meta-World's
own protocol), groups them by agent, and writes `root/results.json`: per agent, split and task, the
mean and sample std over seeds of success and return, with each seed's value, the commands, budgets
and whether scripted prior data was used. Fine-tuning runs (`finetune.json`) add the learning-to-learn
table. Figures need matplotlib (`requirements-dev.txt`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..runs.checkpoint import CONFIG_FILE, find_run_dirs, portable_paths
from ..runs.logger import eval_values, read_metrics

EVAL_FILES = {"cmrl": "evaluation.json", "metaworld": "metaworld_evaluation.json"}
RESULTS_FILE = "results.json"
AGENT_ORDER = ("cmrl", "pearl", "sm", "care")


def _load(path: Path, parse, problems: list[str] | None):
    """`parse(json of path)`. With a `problems` list, a file that cannot be read, decoded or parsed
    (missing keys, wrong types) is noted there and None returned; without one, the error propagates."""
    try:
        return parse(json.loads(Path(path).read_text()))
    except (OSError, ValueError, LookupError, TypeError, AttributeError) as e:
        if problems is None:
            raise
        problems.append(f"{path}: skipped, unreadable ({type(e).__name__}: {e})")
        return None


def find_runs(root: str | Path, problems: list[str] | None = None) -> dict[str, list[Path]]:
    """Run directories under `root` grouped by agent kind, ordered by seed. A run whose config.json
    is unreadable raises, or is skipped and noted in `problems` when that list is given."""
    runs: dict[str, list[tuple[int, Path]]] = {}
    for run in find_run_dirs(root):
        if (run / "finetune.json").exists():
            continue
        found = _load(run / CONFIG_FILE, lambda c: (run_label(c["config"]),
                                           int(c["config"]["train"]["seed"])), problems)
        if found is not None:
            runs.setdefault(found[0], []).append((found[1], run))
    ordered = sorted(runs, key=lambda a: (AGENT_ORDER.index(a.split(":")[0])
                                          if a.split(":")[0] in AGENT_ORDER else 99, a))
    return {a: [r for _, r in sorted(runs[a])] for a in ordered}


def agent_color(label: str) -> str:
    """A run label's colour: its agent kind's (`agent_kinds.py`); cmrl variants a darker blue."""
    from ..agent_kinds import KINDS

    kind = label.split(":")[0]
    if kind == "cmrl" and ":" in label:
        return "#17456b"
    return KINDS[kind].color if kind in KINDS else "#7f7f7f"


def run_label(config: dict) -> str:
    """How a run is named in tables: its agent kind, with the method variant for cmrl runs that
    are not the baseline (`cmrl:task-routing-mlp`; `cmrl:custom` when no named variant fits)."""
    from ..config import RunConfig
    from ..variants import variant_of

    kind = str(config["train"]["agent"])
    if kind != "cmrl":
        return kind
    variant = variant_of(RunConfig.from_dict(config))
    return "cmrl" if variant == "baseline" else f"cmrl:{variant or 'custom'}"


def _mean_std(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "n": int(len(v)), "values": [float(x) for x in v]}


def _run_entry(info: dict, d: Path) -> dict:
    t = info["config"]["train"]
    return {"dir": str(d), "seed": t["seed"], "mode": t["mode"],
            "grad_steps": info.get("grad_steps"), "env_steps": info.get("env_steps"),
            "wall_time_s": info.get("wall_time_s"), "prior_data": t["prior_data"],
            "offline_data": (info.get("offline_data") or {}).get("command"),
            "device": info.get("device"), "benchmark": info["config"]["benchmark"]["name"],
            **({"trained_before": info["trained_before"]} if info.get("trained_before") else {})}


def _evaluation(ev: dict) -> tuple[dict, list[tuple[str, str, float, float, float | None]]]:
    """An evaluation file's header and its (split, task, success_rate, mean_return,
    zero_shot_success or None) rows."""
    def zero_shot(r):
        v = r.get("zero_shot_success")
        return None if v is None else float(v)

    rows = [(split, task, float(r["success_rate"]), float(r["mean_return"]), zero_shot(r))
            for split, part in ev["splits"].items() for task, r in part["tasks"].items()]
    return {"protocol": ev.get("protocol"), "command": ev.get("command")}, rows


def aggregate_evaluations(runs: dict[str, list[Path]], problems: list[str] | None = None) -> dict:
    """Per agent: its runs and, per protocol (`EVAL_FILES`), per task the split and the mean and
    sample std over seeds of success and return. An unreadable config.json or evaluation file
    raises, or, when a `problems` list is given, is noted there and left out (a run whose config.json
    is unreadable is left out entirely)."""
    out: dict = {}
    for agent, dirs in runs.items():
        entry: dict = {"runs": [], "protocols": {}}
        kept = []
        for d in dirs:
            run = _load(d / CONFIG_FILE, lambda info: _run_entry(info, d), problems)
            if run is not None:
                entry["runs"].append(run)
                kept.append(d)
        for proto, fname in EVAL_FILES.items():
            evals = [ev for ev in (_load(d / fname, _evaluation, problems)
                                   for d in kept if (d / fname).exists()) if ev is not None]
            if not evals:
                continue
            tasks: dict = {}
            for _, rows in evals:
                both = {t for s, t, *_ in rows if s == "test"} & {t for s, t, *_ in rows
                                                                 if s == "train"}
                for split, task, success, ret, zero_shot in rows:
                    # ML1 / point: one task in both splits (training goals and held-out goals)
                    key = f"{task} [train goals]" if split == "train" and task in both else task
                    e = tasks.setdefault(key, {"split": split, "success": [], "return": [],
                                                "zero_shot": [], "gain": []})
                    e["success"].append(success)
                    e["return"].append(ret)
                    if zero_shot is not None:
                        e["zero_shot"].append(zero_shot)
                        e["gain"].append(success - zero_shot)
            entry["protocols"][proto] = {
                **evals[0][0],
                "tasks": {task: {"split": e["split"], "success": _mean_std(e["success"]),
                                 "return": _mean_std(e["return"]),
                                 # zero-shot and gain only when every seed's file has them
                                 **({"zero_shot": _mean_std(e["zero_shot"]),
                                     "gain": _mean_std(e["gain"])}
                                    if len(e["zero_shot"]) == len(e["success"]) else {})}
                          for task, e in tasks.items()}}
        out[agent] = entry
    return out


def finetune_table(dirs: list[Path]) -> list[dict]:
    rows = []
    for d in dirs:
        f = Path(d) / "finetune.json"
        if f.exists():
            r = json.loads(f.read_text())
            r["dir"] = str(d)
            rows.append(r)
    return rows


def markdown(results: dict, protocol: str = "cmrl", metric: str = "success") -> str:
    """The per-task table of `metric` (`success` or `return`), mean ± sample std over seeds."""
    agents = [a for a in results["agents"] if protocol in results["agents"][a]["protocols"]]
    if not agents:
        return ""
    tasks: list[str] = []
    for a in agents:
        for task, e in results["agents"][a]["protocols"][protocol]["tasks"].items():
            if task not in tasks:
                tasks.append(task)
    tasks.sort(key=lambda t: next(results["agents"][a]["protocols"][protocol]["tasks"][t]["split"]
                                  for a in agents
                                  if t in results["agents"][a]["protocols"][protocol]["tasks"]) != "train")
    lines = ["| agent | " + " | ".join(
        f"{t}{' (held out)' if results['agents'][agents[0]]['protocols'][protocol]['tasks'].get(t, {}).get('split') == 'test' else ''}"
        for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    for a in agents:
        cells = []
        for t in tasks:
            e = results["agents"][a]["protocols"][protocol]["tasks"].get(t)
            fmt = ".2f" if metric == "success" else ".0f"
            cells.append(f"{e[metric]['mean']:{fmt}} ± {e[metric]['std']:{fmt}}" if e else "-")
        n = max(e["success"]["n"] for e in results["agents"][a]["protocols"][protocol]["tasks"].values())
        lines.append(f"| {a} (n={n}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def zero_shot_markdown(results: dict, protocol: str = "cmrl") -> str:
    """Per agent and task: success from the goal text alone (zero-shot episode), after adaptation,
    and the gain (adapted - zero-shot), mean ± sample std over seeds."""
    lines = ["| agent | task | zero-shot (text only) | adapted | gain |", "|---|---|---|---|---|"]
    for agent, entry in results["agents"].items():
        tasks = entry["protocols"].get(protocol, {}).get("tasks", {})
        for task, e in sorted(tasks.items(), key=lambda kv: (kv[1]["split"] != "train", kv[0])):
            if "zero_shot" not in e:
                continue
            held = " (held out)" if e["split"] == "test" else ""
            cells = [f"{e[k]['mean']:+.2f} ± {e[k]['std']:.2f}" if k == "gain" else
                     f"{e[k]['mean']:.2f} ± {e[k]['std']:.2f}" for k in ("zero_shot", "success", "gain")]
            lines.append(f"| {agent} (n={e['success']['n']}) | {task}{held} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _finetune_method(r: dict) -> str:
    bc, warm = r.get("bc_weight") or 0, r.get("critic_warmup_updates") or 0
    method = f"SAC + BC to own replay ({bc:g})" if bc else "SAC"
    return method + (f", critic warm-up {warm}" if warm else "")


def finetune_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["| agent | start | fine-tuning | seed | budget (env steps) | steps to 50% | steps to 90% "
             "| final success |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["agent"], r["arm"], r.get("bc_weight") or 0, r["seed"])):
        lines.append(f"| {r['agent']} | {r['arm']} | {_finetune_method(r)} | {r['seed']} | "
                     f"{r['env_step_budget']} | "
                     f"{r['steps_to_50'] if r['steps_to_50'] is not None else 'not reached'} | "
                     f"{r['steps_to_90'] if r['steps_to_90'] is not None else 'not reached'} | "
                     f"{r['final_success']:.2f} |")
    return "\n".join(lines)


def training_curves(runs: dict[str, list[Path]]) -> dict:
    """Per agent and seed: (step, mean eval success over meta-train tasks, per-task returns)."""
    out: dict = {}
    for agent, dirs in runs.items():
        for d in dirs:
            pts = []
            for rec in read_metrics(d):
                succ = list(eval_values(rec, "train", "success").values())
                if succ:
                    returns = {task: v for (_, metric, task), v in eval_values(rec).items()
                               if metric == "return"}
                    pts.append({"step": rec["step"], "success": float(np.mean(succ)),
                                "returns": returns})
            out.setdefault(agent, []).append({"dir": str(d), "points": pts})
    return out


def steps_to_success(curves: dict, threshold: float = 0.9) -> dict:
    """Per agent and run: the first logged step (gradient steps offline) whose mean meta-train
    evaluation success reached `threshold`, or None."""
    return {agent: [next((p["step"] for p in run["points"] if p["success"] >= threshold), None)
                    for run in runs] for agent, runs in curves.items()}


def report(root: str | Path, finetune_dirs: list[Path] | None = None,
           command: str = "") -> dict:
    root = Path(root)
    runs = find_runs(root)
    curves = training_curves(runs)
    agents = aggregate_evaluations(runs)
    results = {"command": command, "root": str(root), "benchmark": runs_benchmark(agents),
               "agents": agents,
               "training_curves": curves, "steps_to_90": steps_to_success(curves, 0.9),
               "finetune": finetune_table(finetune_dirs or [])}
    (root / RESULTS_FILE).write_text(json.dumps(portable_paths(results), indent=2))
    return results


def runs_benchmark(agents: dict) -> str:
    """The benchmark the aggregated runs (`aggregate_evaluations`) trained on, "mixed" when they
    differ, "unknown" when there are none."""
    names = {r["benchmark"] for a in agents.values() for r in a["runs"]}
    return names.pop() if len(names) == 1 else ("mixed" if names else "unknown")


def figures(results: dict, out_dir: str | Path) -> list[Path]:
    """The results figures (docs/results.md): success per task per agent (both protocols), training curves, fine-tuning."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("figures need matplotlib: pip install -r requirements-dev.txt") from e
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    bench = str(results.get("benchmark", "ml4"))  # results.json files older than the field: ML4
    name = bench.replace(":", "-").replace("/", "-")
    agents = list(results["agents"])
    colors = {a: agent_color(a) for a in set(agents) | {r["agent"] for r in results["finetune"]}}
    for proto in ("cmrl", "metaworld"):
        have = [a for a in agents if proto in results["agents"][a]["protocols"]]
        if not have:
            continue
        tasks = list(results["agents"][have[0]]["protocols"][proto]["tasks"])
        many = len(tasks) > 6  # ML10's 15 tasks: a wider figure, slanted names
        fig, ax = plt.subplots(figsize=(max(8.0, 0.75 * len(tasks)), 4.6 if many else 3.6))
        width = 0.8 / len(have)
        for i, a in enumerate(have):
            t = results["agents"][a]["protocols"][proto]["tasks"]
            means = [t[k]["success"]["mean"] if k in t else 0 for k in tasks]
            stds = [t[k]["success"]["std"] if k in t else 0 for k in tasks]
            n = max(v["success"]["n"] for v in t.values())
            ax.bar(np.arange(len(tasks)) + i * width - 0.4 + width / 2, means, width, yerr=stds,
                   capsize=3, label=f"{a} (n={n})", color=colors.get(a))
        ax.set_xticks(np.arange(len(tasks)),
                      [k + ("\n(held out)" if results["agents"][have[0]]["protocols"][proto]["tasks"]
                            [k]["split"] == "test" else "") for k in tasks],
                      rotation=35 if many else 0, ha="right" if many else "center",
                      fontsize=8 if many else None)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("success rate")
        ax.set_title(f"{bench.upper() if ':' not in bench else bench} success per task ({'project evaluator' if proto == 'cmrl' else 'Meta-World metalearning_evaluation'})")
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}_success_{proto}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    curves = results["training_curves"]
    if any(run["points"] for runs in curves.values() for run in runs):  # none: --eval-every 0
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for a, runs in curves.items():
            for j, run in enumerate(runs):
                pts = run["points"]
                ax.plot([p["step"] for p in pts], [p["success"] for p in pts], color=colors.get(a),
                        alpha=0.8, label=a if j == 0 else None)
        ax.set_xlabel("gradient steps (offline)")
        ax.set_ylabel("mean meta-train success\n(2 fresh variations per task)")
        ax.set_ylim(-0.02, 1.05)
        ax.legend(fontsize=8)
        ax.set_title("Training curves, one line per seed")
        fig.tight_layout()
        path = out_dir / f"{name}_training_curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    if results["finetune"]:
        fig, ax = plt.subplots(figsize=(10, 3.8))
        for r in results["finetune"]:
            ax.plot([p[0] for p in r["curve"]], [p[1] for p in r["curve"]],
                    color=colors.get(r["agent"]), linestyle=("--" if r["arm"] == "scratch" else
                                                              ":" if r.get("bc_weight") else "-"),
                    marker="o", markersize=3,
                    label=f"{r['agent']} {r['arm']}, {_finetune_method(r)} (seed {r['seed']})")
        ax.set_xlabel("env steps on the new task")
        ax.set_ylabel("success")
        ax.set_ylim(-0.02, 1.05)
        ax.set_title(f"Fine-tuning on {results['finetune'][0]['task']}")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        path = out_dir / "finetune_curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
