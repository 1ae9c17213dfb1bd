"""The Results tab's data: read what is shipped with the checkpoints, never compute anything new.

Sources under the results root (default `checkpoints/ml4/`), all optional:

- `results.json`, the multi-seed table `python -m cmrl report` writes
  (`agents.<agent>.protocols.<protocol>.tasks.<task>.{split,success,return}.{mean,std,n}`).
- run directories (config.json + model.safetensors) anywhere below the root, e.g. `cmrl/`, `pearl/`,
  `sm/` or `seeds/cmrl-s1/`..., each with its evaluation files (`evaluation.json`,
  `metaworld_evaluation.json`: `python -m cmrl eval --json`) and `metrics.jsonl` (training curves).
  For an agent and protocol that results.json lacks, they are averaged over seeds by
  `cmrl.experiments.report.aggregate_evaluations`, the same code that writes results.json.

Unreadable files become `Results.problems`, never exceptions. Nothing is read from a root holding a
link that leads out of both it and checkpoints/ (all links followed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from cmrl.runs.checkpoint import find_run_dirs
from cmrl.runs.logger import eval_series, read_metrics
from cmrl.experiments.report import AGENT_ORDER, RESULTS_FILE, aggregate_evaluations, find_runs

from .common import ML4_TASKS, ROOT, display_path, leaves_roots

DEFAULT_RESULTS_ROOT = ROOT / "checkpoints" / "ml4"
SHIPPED_ROOT = ROOT / "checkpoints"


def results_roots(root: Path | None = None) -> dict[str, Path]:
    """The benchmarks whose results the tab can show, by name: `root` alone when one is given;
    else every folder of checkpoints/ holding a results.json or run directories (ml4 first)."""
    if root is not None:
        return {Path(root).name: Path(root)}
    found = {}
    if SHIPPED_ROOT.is_dir():
        for d in sorted(SHIPPED_ROOT.iterdir(), key=lambda d: (d != DEFAULT_RESULTS_ROOT, d.name)):
            if d.is_dir() and ((d / RESULTS_FILE).is_file() or find_run_dirs(d)):
                found[d.name] = d
    return found or {DEFAULT_RESULTS_ROOT.name: DEFAULT_RESULTS_ROOT}


@dataclass
class Results:
    root: Path
    success: dict[str, dict[str, dict]] = field(default_factory=dict)
    """success[agent][task] = {"mean", "std", "n", "return_mean", "return_std", "zero_shot_mean",
    "zero_shot_std", "gain_mean", "gain_std", "split"} (zero-shot: the goal text alone; gain:
    adapted - zero-shot; None where the evaluation files predate the zero-shot episode)"""
    curves: dict[str, list[dict]] = field(default_factory=dict)
    """curves[agent] = [{"label", "x", "returns": {task: [...]}}]"""
    commands: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    held_out: set[str] = field(default_factory=set)
    x_label: str = "env steps"
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.success and not any(self.curves.values())

    def tasks(self) -> list[str]:
        seen: list[str] = []
        for per_task in self.success.values():
            seen += [t for t in per_task if t not in seen]
        for runs in self.curves.values():
            for run in runs:
                seen += [t for t in run["returns"] if t not in seen]
        order = {t: i for i, t in enumerate(ML4_TASKS)}
        return sorted(seen, key=lambda t: (t in self.held_out, order.get(t, 99), t))


def _load_json(path: Path, problems: list[str]):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        problems.append(f"{display_path(path)}: unreadable ({e})")
        return None


def _num(x):
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(
        x) else None


def _dig(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _add_agents(res: Results, agents: dict, protocol: str) -> None:
    """Agents in `aggregate_evaluations`' format (results.json's `agents`): their `protocol` table,
    for the agents `res` does not have yet."""
    for agent, entry in agents.items():
        p = _dig(entry, "protocols", protocol)
        if agent in res.success or not isinstance(_dig(p, "tasks"), dict):
            continue
        per_task: dict[str, dict] = {}
        for task, e in p["tasks"].items():
            n = _dig(e, "success", "n")
            per_task[task] = {"mean": _num(_dig(e, "success", "mean")),
                              "std": _num(_dig(e, "success", "std")) or 0.0,
                              "n": n if isinstance(n, int) and n > 0 else 1,
                              "return_mean": _num(_dig(e, "return", "mean")),
                              "return_std": _num(_dig(e, "return", "std")),
                              "zero_shot_mean": _num(_dig(e, "zero_shot", "mean")),
                              "zero_shot_std": _num(_dig(e, "zero_shot", "std")),
                              "gain_mean": _num(_dig(e, "gain", "mean")),
                              "gain_std": _num(_dig(e, "gain", "std")),
                              "split": _dig(e, "split")}
            if per_task[task]["split"] == "test":
                res.held_out.add(task)
        if per_task:
            res.success[agent] = per_task
            if p.get("command"):
                res.commands.append((f"{agent} evaluation", str(p["command"])))


def _from_results_json(res: Results, data, protocol: str) -> list[str]:
    """Add results.json's agents; return the names of all agents it lists."""
    agents = _dig(data, "agents")
    if not isinstance(agents, dict):
        res.problems.append("results.json has no 'agents' object")
        return []
    if data.get("command"):
        res.commands.append(("results.json", str(data["command"])))
    if data.get("notes"):
        res.notes.append(str(data["notes"]))
    _add_agents(res, agents, protocol)
    return list(agents)


def _curves(res: Results, agents: dict) -> None:
    """Training curves from the metrics.jsonl of every run `aggregate_evaluations` listed."""
    offline = total = 0
    for agent, entry in agents.items():
        for run in entry["runs"]:
            rows = read_metrics(Path(run["dir"]), max_rows=5000)
            if not rows:
                continue
            total += 1
            mode = run.get("mode", "online")
            offline += mode == "offline"
            xkey = "grad_steps" if mode == "offline" else "env_steps"
            xs, series, held_out = eval_series(rows, "return", xkey)
            returns = {task: [_num(v) for v in values] for task, values in series.items()}
            res.held_out |= held_out
            if xs:
                seed = run.get("seed")
                res.curves.setdefault(agent, []).append(
                    {"label": f"seed {seed}" if seed is not None else Path(run["dir"]).name,
                     "x": xs, "returns": returns, "dir": display_path(Path(run["dir"]))})
    if offline:
        res.x_label = "gradient steps (offline)" if offline == total else "env / gradient steps"


def load_results(root: Path | str | None = None, protocol: str = "cmrl") -> Results:
    """What is shipped under `root`, with the success table of evaluation `protocol` (a key of
    `cmrl.experiments.report.EVAL_FILES`: "cmrl" or "metaworld")."""
    root = Path(root) if root else DEFAULT_RESULTS_ROOT
    res = Results(root)
    if not root.is_dir():
        return res
    if leaves_roots(root, [root, SHIPPED_ROOT]) is not None:
        res.problems.append(f"{display_path(root)}: holds a link leading out of it (or too many "
                            "files); nothing was read from it")
        return res
    listed: list[str] = []
    rj = root / RESULTS_FILE
    if rj.is_file():
        data = _load_json(rj, res.problems)
        if data is not None:
            listed = _from_results_json(res, data, protocol)
    runs = aggregate_evaluations(find_runs(root, res.problems), res.problems)
    _add_agents(res, runs, protocol)
    _curves(res, runs)
    missing = [a for a in dict.fromkeys(listed + list(runs)) if a not in res.success]
    if missing:
        res.notes.append(f"No `{protocol}` evaluation shipped for: {', '.join(missing)}.")
    order = {a: i for i, a in enumerate(AGENT_ORDER)}
    res.success = dict(sorted(res.success.items(),  # "cmrl:text-prior" sorts as cmrl
                              key=lambda kv: (order.get(kv[0].split(":")[0], 99), kv[0])))
    return res


def table_rows(res: Results) -> list[list]:
    rows = []
    for agent, per_task in res.success.items():
        for task in res.tasks():
            e = per_task.get(task)
            if not e:
                continue
            s = "-" if e["mean"] is None else (f"{e['mean']:.2f} ± {e['std']:.2f}" if e["n"] > 1
                                               else f"{e['mean']:.2f}")
            r = "-" if e.get("return_mean") is None else (
                f"{e['return_mean']:.1f} ± {e['return_std']:.1f}" if e.get("return_std") is not None
                and e["n"] > 1 else f"{e['return_mean']:.1f}")
            zs = _cell(e.get("zero_shot_mean"), e.get("zero_shot_std"), e["n"])
            gain = _cell(e.get("gain_mean"), e.get("gain_std"), e["n"], signed=True)
            rows.append([agent, task, "held out" if task in res.held_out else "meta-train", zs, s,
                         gain, r, e["n"]])
    return rows


def _cell(mean, std, n: int, signed: bool = False) -> str:
    if mean is None:
        return "-"
    fmt = "+.2f" if signed else ".2f"
    return f"{mean:{fmt}} ± {std:.2f}" if n > 1 and std is not None else f"{mean:{fmt}}"
